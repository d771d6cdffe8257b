#!/usr/bin/env bash
# A single-node Apache Kafka 4.x broker (KRaft, combined broker+controller) on loopback,
# built from the broker jars on Maven Central: no release tarball, no Docker.
#
#   deploy/local/kafka.sh fetch          resolve the pinned broker jars into the cache (Maven)
#   deploy/local/kafka.sh start          fetch if needed, format storage once, start, wait until it answers
#   deploy/local/kafka.sh stop           stop the broker started from this cache (SIGTERM, then wait)
#   deploy/local/kafka.sh status         say whether it runs; exit 0 if it answers, 3 if not
#   deploy/local/kafka.sh bootstrap      print the PLAINTEXT bootstrap address (host:port)
#   deploy/local/kafka.sh bootstrap-sasl print the SASL_SSL (SCRAM-SHA-512/256) address
#   deploy/local/kafka.sh bootstrap-ssl  print the SSL address (mTLS: client certificate required)
#   deploy/local/kafka.sh tls-dir        print the directory of the local CA and client files
#   deploy/local/kafka.sh client-env     print `export ABM_KAFKA__...` lines for a service to use
#                                        SASL_SSL/SCRAM-SHA-512 (they include the SCRAM password)
#   deploy/local/kafka.sh oauth-token [SUBJECT [SECONDS]]
#                                        print a JWT the SASL_SSL listener accepts for OAUTHBEARER
#                                        (signed with the local issuer's key; default subject abm,
#                                        valid 3600 s): what a test's token endpoint hands out
#   deploy/local/kafka.sh reset          stop and delete this port's data directory (and its TLS dir)
#
# Listeners, all on 127.0.0.1: PLAINTEXT on PORT (also the inter-broker listener), CONTROLLER
# on PORT+1, SASL_SSL on PORT+2 (SCRAM user `abm`, and OAUTHBEARER with JWTs of the local
# issuer, checked against its JWKS as an OIDC provider's would be) and SSL on PORT+3 (mTLS). The TLS dir is
# made once per data directory with openssl and keytool: ca.pem (the CA to trust), client.pem +
# client.key (a client certificate the SSL listener accepts), untrusted-ca.pem (a CA that signed
# nothing here), truststore.p12 + client.p12 (the same for JDK clients; password in
# store-password), sasl-password (user abm's), client-sasl.properties + client-ssl.properties
# (JDK client settings), oauth.key + jwks.json (the local token issuer's RSA key and its public
# JWKS). Only `client-env` and `oauth-token` print a secret.
#
# Environment (all optional):
#   LOCAL_KAFKA_PORT             PLAINTEXT client port (default 9092)
#   LOCAL_KAFKA_CONTROLLER_PORT  controller port (default PORT+1)
#   LOCAL_KAFKA_SASL_PORT        SASL_SSL port (default PORT+2)
#   LOCAL_KAFKA_SSL_PORT         SSL (mTLS) port (default PORT+3)
#   LOCAL_KAFKA_CACHE            where jars and data live (default ~/.cache/abm)
#   LOCAL_KAFKA_HEAP             JVM heap (default 768m)
#   LOCAL_KAFKA_START_TIMEOUT    seconds to wait while the broker shows no progress (default 120)
#   LOCAL_KAFKA_START_LIMIT      seconds to wait at most, progress or not (default 900)
#
# Idempotent: `start` on a running broker says so and exits 0.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
kafka_version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/pom.xml")
port=${LOCAL_KAFKA_PORT:-9092}
controller_port=${LOCAL_KAFKA_CONTROLLER_PORT:-$((port + 1))}
sasl_port=${LOCAL_KAFKA_SASL_PORT:-$((port + 2))}
ssl_port=${LOCAL_KAFKA_SSL_PORT:-$((port + 3))}
cache=${LOCAL_KAFKA_CACHE:-$HOME/.cache/abm}
case $cache in /*) ;; *) cache="$PWD/$cache" ;; esac
libs="$cache/kafka-$kafka_version/libs"
run="$cache/kafka-run-$port"
tls="$run/tls"
pidfile="$run/kafka.pid"
logfile="$run/kafka.log"
heap=${LOCAL_KAFKA_HEAP:-768m}
start_timeout=${LOCAL_KAFKA_START_TIMEOUT:-120}
start_limit=${LOCAL_KAFKA_START_LIMIT:-900}
scram_user=abm
scram_mechanisms=(SCRAM-SHA-512 SCRAM-SHA-256)
# What the broker requires of an OAUTHBEARER token besides its signature and expiry.
oauth_issuer=https://abm-local-issuer.invalid
oauth_audience=abm-local-kafka
oauth_kid=abm-local-1
sasl_mechanisms="SCRAM-SHA-512,SCRAM-SHA-256,OAUTHBEARER"
listeners="PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port,SASL_SSL://127.0.0.1:$sasl_port,SSL://127.0.0.1:$ssl_port"

say() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

port_answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
all_ports_answer() { port_answers "$port" && port_answers "$sasl_port" && port_answers "$ssl_port"; }

fetch() {
  if [ -f "$libs/.complete" ]; then
    return 0
  fi
  command -v mvn >/dev/null || die "Maven (mvn) is required to fetch the Kafka jars; install it (apt-get install maven)"
  command -v java >/dev/null || die "Java 17+ is required to run the Kafka broker"
  say "fetching Apache Kafka $kafka_version broker jars from Maven Central into $libs"
  rm -rf "$libs"
  mkdir -p "$libs"
  mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$libs" >"$cache/mvn-fetch.log" 2>&1 \
    || { cat "$cache/mvn-fetch.log" >&2; die "Maven could not resolve the Kafka jars (log above)"; }
  [ -f "$libs/kafka_2.13-$kafka_version.jar" ] || die "kafka_2.13-$kafka_version.jar missing after fetch"
  touch "$libs/.complete"
  say "fetched $(find "$libs" -name '*.jar' | wc -l) jars"
}

# The local CA and the broker's and clients' certificates, made once per run directory (`reset`
# deletes them with the data). Built in a scratch directory and moved into place when complete.
make_tls() {
  [ -f "$tls/.complete" ] && return 0
  command -v openssl >/dev/null || die "openssl is required to make the local TLS certificates"
  command -v keytool >/dev/null || die "keytool (from the JDK) is required to make the local truststore"
  mkdir -p "$run"
  local scratch="$run/tls.new"
  rm -rf "$scratch"
  say "making a local CA and broker and client certificates in $tls"
  if ! (
    umask 077
    mkdir "$scratch"
    cd "$scratch"
    openssl rand -hex 24 >store-password
    openssl rand -hex 24 >sasl-password
    key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }
    ca() { # ca KEY CERT CN
      printf '[req]\ndistinguished_name=dn\nprompt=no\nx509_extensions=ext\n[dn]\nCN=%s\n[ext]\n%s\n%s\n%s\n' \
        "$3" 'basicConstraints=critical,CA:TRUE' 'keyUsage=critical,keyCertSign,cRLSign' \
        'subjectKeyIdentifier=hash' >ca.cnf
      openssl req -x509 -new -config ca.cnf -key "$1" -sha256 -days 3650 -out "$2"
    }
    leaf() { # leaf NAME CN EXTENDED_KEY_USAGE [SUBJECT_ALT_NAME]
      key "$1.key"
      printf '[req]\ndistinguished_name=dn\nprompt=no\n[dn]\nCN=%s\n' "$2" >"$1.cnf"
      openssl req -new -config "$1.cnf" -key "$1.key" -out "$1.csr"
      {
        echo 'basicConstraints=CA:FALSE'
        echo 'keyUsage=critical,digitalSignature'
        echo "extendedKeyUsage=$3"
        echo 'subjectKeyIdentifier=hash'
        echo 'authorityKeyIdentifier=keyid'
        if [ -n "${4:-}" ]; then echo "subjectAltName=$4"; fi
      } >"$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -set_serial "0x$(openssl rand -hex 12)" \
        -sha256 -days 3650 -extfile "$1.ext" -out "$1.pem"
      openssl pkcs12 -export -in "$1.pem" -inkey "$1.key" -certfile ca.pem -name "$1" \
        -passout file:store-password -out "$1.p12"
    }
    key ca.key
    ca ca.key ca.pem 'abm local Kafka CA'
    leaf broker localhost serverAuth,clientAuth 'IP:127.0.0.1,DNS:localhost'
    leaf client abm-client clientAuth
    key untrusted-ca.key
    ca untrusted-ca.key untrusted-ca.pem 'abm untrusted CA (signed nothing)'
    keytool -importcert -noprompt -alias abm-local-ca -file ca.pem -keystore truststore.p12 \
      -storetype PKCS12 -storepass:file store-password
    rm -f ./*.cnf ./*.csr ./*.ext untrusted-ca.key
    store_password=$(cat store-password)
    sasl_password=$(cat sasl-password)
    cat >client-sasl.properties <<PROPS
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="$scram_user" password="$sasl_password";
ssl.truststore.type=PKCS12
ssl.truststore.location=$tls/truststore.p12
ssl.truststore.password=$store_password
PROPS
    cat >client-ssl.properties <<PROPS
security.protocol=SSL
ssl.truststore.type=PKCS12
ssl.truststore.location=$tls/truststore.p12
ssl.truststore.password=$store_password
ssl.keystore.type=PKCS12
ssl.keystore.location=$tls/client.p12
ssl.keystore.password=$store_password
ssl.key.password=$store_password
PROPS
    touch .complete
  ) >"$run/tls.log" 2>&1; then
    cat "$run/tls.log" >&2
    rm -rf "$scratch"
    die "making the TLS certificates failed (log above)"
  fi
  rm -rf "$tls"
  mv "$scratch" "$tls"
}

b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }

# The local token issuer: an RSA key and its public JWKS (a file the broker reads, as it would
# fetch an OIDC provider's). Separate from make_tls so TLS dirs made before it get it too.
make_oauth() {
  [ -f "$tls/jwks.json" ] && return 0
  local modulus exponent
  (umask 077 && openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$tls/oauth.key.new" 2>"$run/tls.log") \
    || { cat "$run/tls.log" >&2; die "making the local token issuer's key failed (log above)"; }
  modulus=$(openssl rsa -in "$tls/oauth.key.new" -noout -modulus | sed 's/^Modulus=//')
  # The exponent openssl uses for new RSA keys: 65537, AQAB in base64url.
  openssl rsa -in "$tls/oauth.key.new" -noout -text 2>/dev/null | grep -q 'publicExponent: 65537' \
    || die "the local token issuer's key does not have exponent 65537"
  exponent=AQAB
  # shellcheck disable=SC2059 # the format is the modulus as \xNN escapes
  modulus=$(printf "$(sed 's/../\\x&/g' <<<"$modulus")" | b64url)
  printf '{"keys":[{"kty":"RSA","use":"sig","alg":"RS256","kid":"%s","n":"%s","e":"%s"}]}\n' \
    "$oauth_kid" "$modulus" "$exponent" >"$tls/jwks.json.new"
  mv "$tls/oauth.key.new" "$tls/oauth.key"
  mv "$tls/jwks.json.new" "$tls/jwks.json"
}

# A JWT of the local issuer for SUBJECT, valid for SECONDS (RS256).
oauth_token() {
  local subject=${1:-abm} seconds=${2:-3600} now header payload signature
  [[ $subject =~ ^[A-Za-z0-9._-]+$ ]] || die "oauth-token: the subject must be letters, digits, '.', '_' or '-'"
  [[ $seconds =~ ^[0-9]+$ ]] || die "oauth-token: SECONDS must be a number"
  # KAFKA_TLS_DIR: another broker's TLS dir laid out as this script's (its issuer's oauth.key).
  local key="${KAFKA_TLS_DIR:-$tls}/oauth.key"
  if [ -z "${KAFKA_TLS_DIR:-}" ]; then make_tls; make_oauth; fi
  [ -f "$key" ] || die "oauth-token: no issuer key at $key"
  now=$(date +%s)
  header=$(printf '{"alg":"RS256","typ":"JWT","kid":"%s"}' "$oauth_kid" | b64url)
  payload=$(printf '{"iss":"%s","aud":"%s","sub":"%s","iat":%d,"exp":%d,"scope":"kafka"}' \
    "$oauth_issuer" "$oauth_audience" "$subject" "$now" "$((now + seconds))" | b64url)
  signature=$(printf '%s.%s' "$header" "$payload" | openssl dgst -sha256 -sign "$key" -binary | b64url)
  printf '%s.%s.%s\n' "$header" "$payload" "$signature"
}

write_config() {
  mkdir -p "$run/data"
  local store_password
  store_password=$(cat "$tls/store-password")
  # The keystore passwords are in it: readable by this user only.
  rm -f "$run/server.properties"
  (umask 077 && cat >"$run/server.properties") <<EOF
# Written by deploy/local/kafka.sh; rewritten at every start.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$controller_port
listeners=$listeners
advertised.listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port,SASL_SSL://127.0.0.1:$sasl_port,SSL://127.0.0.1:$ssl_port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL
sasl.enabled.mechanisms=$sasl_mechanisms
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.oauthbearer.sasl.jaas.config=org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required;
listener.name.sasl_ssl.oauthbearer.sasl.server.callback.handler.class=org.apache.kafka.common.security.oauthbearer.OAuthBearerValidatorCallbackHandler
sasl.oauthbearer.jwks.endpoint.url=file://$tls/jwks.json
sasl.oauthbearer.expected.issuer=$oauth_issuer
sasl.oauthbearer.expected.audience=$oauth_audience
listener.name.ssl.ssl.client.auth=required
ssl.keystore.type=PKCS12
ssl.keystore.location=$tls/broker.p12
ssl.keystore.password=$store_password
ssl.key.password=$store_password
ssl.truststore.type=PKCS12
ssl.truststore.location=$tls/truststore.p12
ssl.truststore.password=$store_password
log.dirs=$run/data
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.segment.bytes=67108864
log.retention.check.interval.ms=300000
EOF
  cat >"$run/log4j2.properties" <<EOF
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = out
logger.kafka.name = kafka
logger.kafka.level = WARN
logger.kafkaserver.name = kafka.server.KafkaRaftServer
logger.kafkaserver.level = INFO
logger.apache.name = org.apache.kafka
logger.apache.level = WARN
EOF
}

# The broker reads the local issuer's JWKS from a file; Kafka 4 refuses any URL not allowed here.
jvm=(java -Xms"$heap" -Xmx"$heap" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true
  -Dorg.apache.kafka.sasl.oauthbearer.allowed.urls="file://$tls/jwks.json"
  -Dlog4j2.configurationFile="$run/log4j2.properties" -cp "$libs/*")
java_cmd() { "${jvm[@]}" "$@"; }
# Short-lived admin tools: a small heap and no optimising JIT start faster.
tool_cmd() {
  java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$run/log4j2.properties" -cp "$libs/*" "$@"
}

cluster_id() { sed -n 's/^cluster\.id=//p' "$run/data/meta.properties" 2>/dev/null; }

# The SCRAM user: storage formatted by this script has it from the start (--add-scram); storage
# formatted before the secured listeners existed gets it added once through the running broker.
# $tls/scram-cluster-id records the cluster that has the current sasl-password.
ensure_scram() {
  local marker="$tls/scram-cluster-id" id mechanism
  id=$(cluster_id)
  [ -n "$id" ] && [ "$(cat "$marker" 2>/dev/null)" = "$id" ] && return 0
  say "adding SCRAM user $scram_user (${scram_mechanisms[*]}) to the broker"
  local request="$tls/scram-request.properties" scram_log="$run/scram.log"
  : >"$scram_log"
  for mechanism in "${scram_mechanisms[@]}"; do
    # One mechanism per request (the broker refuses a user twice in one request); the password
    # goes through a file, not the command line.
    (umask 077 && printf '%s=password=%s\n' "$mechanism" "$(cat "$tls/sasl-password")" >"$request")
    if ! tool_cmd kafka.admin.ConfigCommand --bootstrap-server "127.0.0.1:$port" --alter \
      --add-config-file "$request" --entity-type users --entity-name "$scram_user" >>"$scram_log" 2>&1; then
      rm -f "$request"
      cat "$scram_log" >&2
      die "adding the SCRAM user failed (log above)"
    fi
  done
  rm -f "$request"
  # Proof over the SASL_SSL listener itself: the broker knows the user and the password.
  local tries=0
  until tool_cmd kafka.admin.ConfigCommand --bootstrap-server "127.0.0.1:$sasl_port" \
    --command-config "$tls/client-sasl.properties" --describe --entity-type users \
    --entity-name "$scram_user" >>"$scram_log" 2>&1; do
    tries=$((tries + 1))
    if [ "$tries" -ge 5 ]; then
      cat "$scram_log" >&2
      die "the SCRAM user cannot authenticate on 127.0.0.1:$sasl_port (log above)"
    fi
    sleep 1
  done
  echo "$id" >"$marker"
  say "SCRAM user $scram_user authenticates on 127.0.0.1:$sasl_port"
}

port_taken() {
  die "port $1 is in use by a process this script did not start; set LOCAL_KAFKA_PORT (or LOCAL_KAFKA_SASL_PORT, LOCAL_KAFKA_SSL_PORT) or KAFKA_BOOTSTRAP_SERVERS"
}

start() {
  local pid p
  if pid=$(running_pid); then
    if grep -qxF "listeners=$listeners" "$run/server.properties" 2>/dev/null \
      && grep -qxF "sasl.enabled.mechanisms=$sasl_mechanisms" "$run/server.properties" \
      && [ -f "$tls/.complete" ] && [ -f "$tls/jwks.json" ]; then
      if all_ports_answer; then
        ensure_scram
        say "already running (pid $pid) at 127.0.0.1:$port (SASL_SSL $sasl_port, SSL $ssl_port)"
        return 0
      fi
      say "broker pid $pid exists but does not answer on all its ports yet; waiting"
      wait_ready "$pid"
      ensure_scram
      return 0
    fi
    # Started by an older kafka.sh (other listeners or mechanisms) or with other ports: restart it, unless
    # a port it does not hold itself is taken by someone else.
    local serving
    serving=$(sed -n 's/^listeners=//p' "$run/server.properties" 2>/dev/null)
    for p in "$port" "$sasl_port" "$ssl_port"; do
      if port_answers "$p" && [[ ",$serving," != *":$p,"* ]]; then port_taken "$p"; fi
    done
    say "broker pid $pid serves other listeners than $listeners or other SASL mechanisms than $sasl_mechanisms (an older kafka.sh or other ports started it); restarting it"
    stop
  fi
  for p in "$port" "$sasl_port" "$ssl_port"; do
    if port_answers "$p"; then port_taken "$p"; fi
  done
  fetch
  make_tls
  make_oauth
  chmod 700 "$run" # the data and the TLS dir hold credentials
  write_config
  if [ ! -f "$run/data/meta.properties" ]; then
    local cluster_id sasl_password mechanism scram=()
    cluster_id=$(java_cmd kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)
    sasl_password=$(cat "$tls/sasl-password")
    for mechanism in "${scram_mechanisms[@]}"; do
      scram+=(--add-scram "$mechanism=[name=$scram_user,password=$sasl_password]")
    done
    say "formatting KRaft storage in $run/data (cluster id $cluster_id, SCRAM user $scram_user)"
    # The tool logs the SCRAM records (salted keys): its log is readable by this user only.
    (umask 077 && java_cmd kafka.tools.StorageTool format --standalone -t "$cluster_id" \
      -c "$run/server.properties" "${scram[@]}" >"$run/format.log" 2>&1) \
      || { cat "$run/format.log" >&2; die "formatting storage failed"; }
    echo "$cluster_id" >"$tls/scram-cluster-id"
  fi
  local partitions
  partitions=$(find "$run/data" -mindepth 1 -maxdepth 1 -type d -name '*-[0-9]*' | wc -l)
  if [ "$partitions" -gt 5000 ]; then
    say "warning: $partitions partitions in $run/data make start-up slow; 'kafka.sh reset' deletes them"
  fi
  say "starting Apache Kafka $kafka_version at 127.0.0.1:$port (controller $controller_port, SASL_SSL $sasl_port, SSL $ssl_port), log $logfile"
  nohup "${jvm[@]}" kafka.Kafka "$run/server.properties" >"$logfile" 2>&1 </dev/null &
  echo $! >"$pidfile"
  wait_ready "$!"
  ensure_scram
}

wait_ready() {
  # Waits until all client ports answer and the log says the server started. The time limit
  # counts from the broker's last sign of progress (its log growing): a broker that is loading
  # many partitions keeps writing and is given up to LOCAL_KAFKA_START_LIMIT in all; a silent
  # one is given up on after LOCAL_KAFKA_START_TIMEOUT.
  local pid=$1 ticks=0 idle=0 size=-1 now
  while [ "$idle" -lt $((start_timeout * 4)) ] && [ "$ticks" -lt $((start_limit * 4)) ]; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 40 "$logfile" >&2 || true
      rm -f "$pidfile"
      die "the broker exited during start-up (log above)"
    fi
    if all_ports_answer && grep -q 'Kafka Server started' "$logfile" 2>/dev/null; then
      say "ready at 127.0.0.1:$port (SASL_SSL $sasl_port, SSL $ssl_port) after $((ticks / 4))s"
      return 0
    fi
    now=$(stat -c %s "$logfile" 2>/dev/null || echo 0)
    if [ "$now" != "$size" ]; then size=$now; idle=0; else idle=$((idle + 1)); fi
    if [ $((ticks % 120)) -eq 119 ]; then say "still starting after $(((ticks + 1) / 4))s (log $logfile)"; fi
    sleep 0.25
    ticks=$((ticks + 1))
  done
  tail -n 40 "$logfile" >&2 || true
  if [ "$idle" -ge $((start_timeout * 4)) ]; then
    die "the broker did not answer and its log did not move for ${start_timeout}s"
  fi
  die "the broker did not answer within ${start_limit}s"
}

stop() { stop_process broker "$pidfile"; }

status() {
  local pid
  if pid=$(running_pid) && port_answers "$port"; then
    echo "running pid=$pid bootstrap=127.0.0.1:$port sasl_ssl=127.0.0.1:$sasl_port ssl=127.0.0.1:$ssl_port version=$kafka_version"
    return 0
  fi
  echo "not running (port $port)"
  return 3
}

client_env() {
  make_tls
  local password
  password=$(cat "$tls/sasl-password")
  printf 'export %s=%q\n' \
    ABM_KAFKA__BOOTSTRAP_SERVERS "127.0.0.1:$sasl_port" \
    ABM_KAFKA__LIBRDKAFKA__SECURITY_PROTOCOL SASL_SSL \
    ABM_KAFKA__LIBRDKAFKA__SASL_MECHANISMS SCRAM-SHA-512 \
    ABM_KAFKA__LIBRDKAFKA__SASL_USERNAME "$scram_user" \
    ABM_KAFKA__LIBRDKAFKA__SASL_PASSWORD "$password" \
    ABM_KAFKA__LIBRDKAFKA__SSL_CA_LOCATION "$tls/ca.pem"
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  bootstrap) echo "127.0.0.1:$port" ;;
  bootstrap-sasl) echo "127.0.0.1:$sasl_port" ;;
  bootstrap-ssl) echo "127.0.0.1:$ssl_port" ;;
  tls-dir) make_tls; echo "$tls" ;;
  client-env) client_env ;;
  oauth-token) shift; oauth_token "$@" ;;
  reset) stop; rm -rf "$run"; say "deleted $run" ;;
  *) sed -n '2,41p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
