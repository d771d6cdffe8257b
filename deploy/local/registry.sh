#!/usr/bin/env bash
# A Confluent-compatible schema registry on loopback: Apicurio Registry 3.x (its runnable
# Quarkus application from Maven Central, in-memory storage: no Kafka, no database, no Docker).
# Its Confluent API (what the services and every registry-aware client speak) is at
# http://127.0.0.1:PORT/apis/ccompat/v7, and over TLS at https://127.0.0.1:PORT+2/apis/ccompat/v7
# with the local Kafka's certificate (`deploy/local/kafka.sh tls-dir`: trust its ca.pem).
#
#   deploy/local/registry.sh fetch     resolve the pinned Apicurio jar bundle into the cache (Maven)
#   deploy/local/registry.sh start     fetch if needed, start, wait until it answers
#   deploy/local/registry.sh stop      stop the registry started from this cache
#   deploy/local/registry.sh status    say whether it runs; exit 0 if it answers, 3 if not
#   deploy/local/registry.sh url       print the Confluent API's URL (registry.url)
#   deploy/local/registry.sh url-tls   print its https URL (trust `kafka.sh tls-dir`/ca.pem)
#   deploy/local/registry.sh reset     stop it (in-memory storage: its subjects are gone)
#
# Like Confluent's Schema Registry (and unlike Apicurio's own default of no rule), the global
# compatibility level is set to BACKWARD once it answers: a schema a reader of the previous
# version could not read is refused with 409.
#
# Apicurio 3 needs Java 21+. The JDK is the first of: LOCAL_REGISTRY_JAVA_HOME, a Temurin or
# OpenJDK 21+ under /usr/lib/jvm, the `java` on PATH if it is 21+.
#
# Environment (all optional):
#   LOCAL_REGISTRY_PORT            HTTP port (default 18081); management PORT+1, HTTPS PORT+2
#   LOCAL_REGISTRY_CACHE           where the bundle and the run directory live (default ~/.cache/abm)
#   LOCAL_REGISTRY_JAVA_HOME       the JDK (21+) to run it with
#   LOCAL_REGISTRY_HEAP            JVM heap (default 384m)
#   LOCAL_REGISTRY_START_TIMEOUT   seconds to wait for it to answer (default 180)
#
# Idempotent: `start` on a running registry says so and exits 0.
set -euo pipefail

version=3.3.3
port=${LOCAL_REGISTRY_PORT:-18081}
management_port=$((port + 1))
tls_port=$((port + 2))
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${LOCAL_REGISTRY_CACHE:-${LOCAL_KAFKA_CACHE:-$HOME/.cache/abm}}
case $cache in /*) ;; *) cache="$PWD/$cache" ;; esac
home="$cache/apicurio-registry-$version"
run="$cache/registry-run-$port"
pidfile="$run/registry.pid"
logfile="$run/registry.log"
heap=${LOCAL_REGISTRY_HEAP:-384m}
start_timeout=${LOCAL_REGISTRY_START_TIMEOUT:-180}
api="http://127.0.0.1:$port/apis/ccompat/v7"
tls_api="https://127.0.0.1:$tls_port/apis/ccompat/v7"

say() { printf 'registry.sh: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

answers() { curl -fsS -o /dev/null --max-time 2 "$api/subjects" 2>/dev/null; }

java_major() { "$1" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1; }

find_java() {
  local candidate
  for candidate in ${LOCAL_REGISTRY_JAVA_HOME:+"$LOCAL_REGISTRY_JAVA_HOME/bin/java"} /usr/lib/jvm/*/bin/java "$(command -v java || true)"; do
    [ -x "$candidate" ] || continue
    if [ "$(java_major "$candidate")" -ge 21 ] 2>/dev/null; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

fetch() {
  [ -f "$home/.complete" ] && return 0
  command -v mvn >/dev/null || die "Maven (mvn) is required to fetch Apicurio Registry; install it (apt-get install maven)"
  say "fetching Apicurio Registry $version from Maven Central into $home"
  mkdir -p "$cache"
  mvn -q -B dependency:copy -Dartifact="io.apicurio:apicurio-registry-app:$version:tar.gz:all" \
    -DoutputDirectory="$cache" -Dmdep.overWriteReleases=true >"$cache/registry-fetch.log" 2>&1 \
    || { cat "$cache/registry-fetch.log" >&2; die "Maven could not fetch io.apicurio:apicurio-registry-app:$version (log above)"; }
  rm -rf "$home.new"
  mkdir -p "$home.new"
  tar -xzf "$cache/apicurio-registry-app-$version-all.tar.gz" -C "$home.new"
  rm -f "$cache/apicurio-registry-app-$version-all.tar.gz"
  local jar
  jar=$(find "$home.new" -name quarkus-run.jar | head -n1)
  [ -n "$jar" ] || die "quarkus-run.jar missing from the Apicurio bundle"
  echo "${jar#"$home.new/"}" >"$home.new/.jar"
  touch "$home.new/.complete"
  rm -rf "$home"
  mv "$home.new" "$home"
}

start() {
  if pid=$(running_pid) && answers; then
    say "already running (pid $pid) at $api"
    return 0
  fi
  fetch
  local java
  java=$(find_java) || die "Apicurio Registry needs Java 21 or later (found none under /usr/lib/jvm or on PATH; set LOCAL_REGISTRY_JAVA_HOME)"
  mkdir -p "$run"
  local jar="$home/$(cat "$home/.jar")" tls
  # The HTTPS listener uses the local Kafka's certificate (SAN 127.0.0.1 and localhost).
  tls=$("$here/kafka.sh" tls-dir) || die "cannot make the local TLS certificates (deploy/local/kafka.sh tls-dir)"
  say "starting Apicurio Registry $version on 127.0.0.1:$port (https $tls_port) with $java"
  # Every listener on loopback only (the management port listens on 0.0.0.0:9000 by default).
  nohup "$java" "-Xmx$heap" \
    -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port="$port" \
    -Dquarkus.http.ssl-port="$tls_port" \
    -Dquarkus.http.ssl.certificate.files="$tls/broker.pem" \
    -Dquarkus.http.ssl.certificate.key-files="$tls/broker.key" \
    -Dquarkus.management.host=127.0.0.1 -Dquarkus.management.port="$management_port" \
    -Dquarkus.log.level=WARN -Dquarkus.banner.enabled=false \
    -jar "$jar" >"$logfile" 2>&1 </dev/null &
  echo $! >"$pidfile"
  local pid=$! ticks=0
  while [ "$ticks" -lt $((start_timeout * 4)) ]; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 40 "$logfile" >&2 || true
      rm -f "$pidfile"
      die "the registry exited during start-up (log above)"
    fi
    if answers; then
      curl -fsS -o /dev/null -X PUT -H 'Content-Type: application/json' \
        --data '{"compatibility":"BACKWARD"}' "$api/config" \
        || die "the registry answers but refused the global compatibility level BACKWARD"
      say "ready at $api after $((ticks / 4))s (compatibility BACKWARD)"
      return 0
    fi
    sleep 0.25
    ticks=$((ticks + 1))
  done
  tail -n 40 "$logfile" >&2 || true
  die "the registry did not answer within ${start_timeout}s"
}

stop() { stop_process registry "$pidfile"; }

status() {
  local pid
  if pid=$(running_pid) && answers; then
    echo "running pid=$pid url=$api version=$version"
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
  url) echo "$api" ;;
  url-tls) echo "$tls_api" ;;
  reset) stop ;;
  *) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
