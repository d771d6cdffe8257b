#!/usr/bin/env bash
# A single-node Apache Kafka 4.x broker (KRaft, combined broker+controller) on loopback,
# built from the broker jars on Maven Central: no release tarball, no Docker.
#
#   deploy/local/kafka.sh fetch     resolve the pinned broker jars into the cache (Maven)
#   deploy/local/kafka.sh start     fetch if needed, format storage once, start, wait until it answers
#   deploy/local/kafka.sh stop      stop the broker started from this cache (SIGTERM, then wait)
#   deploy/local/kafka.sh status    say whether it runs; exit 0 if it answers, 3 if not
#   deploy/local/kafka.sh bootstrap print the bootstrap address (host:port)
#   deploy/local/kafka.sh reset     stop and delete this port's data directory
#
# Environment (all optional):
#   LOCAL_KAFKA_PORT             client port (default 9092); the controller uses PORT+1
#   LOCAL_KAFKA_CONTROLLER_PORT  controller port (default PORT+1)
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
cache=${LOCAL_KAFKA_CACHE:-$HOME/.cache/abm}
libs="$cache/kafka-$kafka_version/libs"
run="$cache/kafka-run-$port"
pidfile="$run/kafka.pid"
logfile="$run/kafka.log"
heap=${LOCAL_KAFKA_HEAP:-768m}
start_timeout=${LOCAL_KAFKA_START_TIMEOUT:-120}
start_limit=${LOCAL_KAFKA_START_LIMIT:-900}

say() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

port_answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

running_pid() {
  [ -f "$pidfile" ] || return 1
  local pid
  pid=$(cat "$pidfile")
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

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

write_config() {
  mkdir -p "$run/data"
  cat >"$run/server.properties" <<EOF
# Written by deploy/local/kafka.sh; rewritten at every start.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$controller_port
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
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

jvm=(java -Xms"$heap" -Xmx"$heap" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true
  -Dlog4j2.configurationFile="$run/log4j2.properties" -cp "$libs/*")
java_cmd() { "${jvm[@]}" "$@"; }

start() {
  local pid
  if pid=$(running_pid); then
    if port_answers "$port"; then
      say "already running (pid $pid) at 127.0.0.1:$port"
      return 0
    fi
    say "broker pid $pid exists but port $port does not answer yet; waiting"
    wait_ready "$pid"
    return 0
  fi
  if port_answers "$port"; then
    die "port $port is in use by a process this script did not start; set LOCAL_KAFKA_PORT or KAFKA_BOOTSTRAP_SERVERS"
  fi
  fetch
  write_config
  if [ ! -f "$run/data/meta.properties" ]; then
    local cluster_id
    cluster_id=$(java_cmd kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)
    say "formatting KRaft storage in $run/data (cluster id $cluster_id)"
    java_cmd kafka.tools.StorageTool format --standalone -t "$cluster_id" -c "$run/server.properties" \
      >"$run/format.log" 2>&1 || { cat "$run/format.log" >&2; die "formatting storage failed"; }
  fi
  local partitions
  partitions=$(find "$run/data" -mindepth 1 -maxdepth 1 -type d -name '*-[0-9]*' | wc -l)
  if [ "$partitions" -gt 5000 ]; then
    say "warning: $partitions partitions in $run/data make start-up slow; 'kafka.sh reset' deletes them"
  fi
  say "starting Apache Kafka $kafka_version at 127.0.0.1:$port (controller $controller_port), log $logfile"
  nohup "${jvm[@]}" kafka.Kafka "$run/server.properties" >"$logfile" 2>&1 </dev/null &
  echo $! >"$pidfile"
  wait_ready "$!"
}

wait_ready() {
  # Waits until the port answers and the log says the server started. The time limit counts
  # from the broker's last sign of progress (its log growing): a broker that is loading many
  # partitions keeps writing and is given up to LOCAL_KAFKA_START_LIMIT in all; a silent
  # one is given up on after LOCAL_KAFKA_START_TIMEOUT.
  local pid=$1 ticks=0 idle=0 size=-1 now
  while [ "$idle" -lt $((start_timeout * 4)) ] && [ "$ticks" -lt $((start_limit * 4)) ]; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 40 "$logfile" >&2 || true
      rm -f "$pidfile"
      die "the broker exited during start-up (log above)"
    fi
    if port_answers "$port" && grep -q 'Kafka Server started' "$logfile" 2>/dev/null; then
      say "ready at 127.0.0.1:$port after $((ticks / 4))s"
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

stop() {
  local pid
  if ! pid=$(running_pid); then
    say "not running (no live pid in $pidfile)"
    rm -f "$pidfile"
    return 0
  fi
  say "stopping broker pid $pid"
  kill -TERM "$pid"
  for _ in $(seq 1 120); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; say "stopped"; return 0; }
    sleep 0.25
  done
  say "still running after 30s; sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

status() {
  local pid
  if pid=$(running_pid) && port_answers "$port"; then
    echo "running pid=$pid bootstrap=127.0.0.1:$port version=$kafka_version"
    return 0
  fi
  echo "not running (port $port)"
  return 3
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  bootstrap) echo "127.0.0.1:$port" ;;
  reset) stop; rm -rf "$run"; say "deleted $run" ;;
  *) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
