#!/usr/bin/env bash
# The test command: makes sure a Kafka broker is running, then runs every test in the workspace.
#
#   deploy/local/test.sh [cargo test args...]
#
# With KAFKA_BOOTSTRAP_SERVERS set, the tests use that broker. Otherwise this starts the local
# Apache Kafka (deploy/local/kafka.sh: fetched from Maven Central on first use, then cached)
# and leaves it running for the next run; `deploy/local/kafka.sh stop` stops it.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"

if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  deploy/local/kafka.sh start
  KAFKA_BOOTSTRAP_SERVERS=$(deploy/local/kafka.sh bootstrap)
  export KAFKA_BOOTSTRAP_SERVERS
fi
echo "test.sh: testing against Kafka at $KAFKA_BOOTSTRAP_SERVERS" >&2
exec cargo test --workspace "$@"
