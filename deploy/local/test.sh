#!/usr/bin/env bash
# The test command: makes sure a Kafka broker (and Prometheus's tools) are there, then runs
# every test in the workspace.
#
#   deploy/local/test.sh [cargo test args...]
#
# With KAFKA_BOOTSTRAP_SERVERS set, the tests use that broker. Otherwise this starts the local
# Apache Kafka (deploy/local/kafka.sh: fetched from Maven Central on first use, then cached)
# and leaves it running for the next run; `deploy/local/kafka.sh stop` stops it.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"

# The ops tests check deploy/prometheus with promtool and scrape the services with a real
# Prometheus: Debian's prometheus package has both.
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test.sh: installing Debian's prometheus package (promtool, prometheus) for the ops tests" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq prometheus >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq prometheus >/dev/null; }
  else
    echo "test.sh: promtool and prometheus are needed: install Debian's prometheus package" >&2
    exit 1
  fi
fi

if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  deploy/local/kafka.sh start
  KAFKA_BOOTSTRAP_SERVERS=$(deploy/local/kafka.sh bootstrap)
  export KAFKA_BOOTSTRAP_SERVERS
fi
echo "test.sh: testing against Kafka at $KAFKA_BOOTSTRAP_SERVERS" >&2
exec cargo test --workspace "$@"
