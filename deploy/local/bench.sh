#!/usr/bin/env bash
# Runs the benchmarks against the local Apache Kafka (or KAFKA_BOOTSTRAP_SERVERS) and prints
# their figures. Record them in benches/README.md with the machine they ran on.
#
#   deploy/local/bench.sh            codec, engine, ingest, scorer, scorer_state, changelog_bytes, leaderboard, program, latency, one_api, backtest
#   deploy/local/bench.sh ingest     one of those, ingest_flood (RSS under 50 connections of 1 MiB
#                                    junk bodies), or peer (side by side with the Kafka Streams
#                                    peer: needs a JDK and Maven, ~6 minutes)
#   deploy/local/bench.sh outages    the broker-restart end-to-end run OUTAGE_RUNS times (default
#                                    10): how often the pipeline rides out two broker restarts
#                                    exactly (ABM_TEST_KEEP_LOGS=1 keeps the services' logs)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  deploy/local/kafka.sh start
  KAFKA_BOOTSTRAP_SERVERS=$(deploy/local/kafka.sh bootstrap)
  export KAFKA_BOOTSTRAP_SERVERS
fi
cargo build --release --workspace --bins --quiet
echo "bench.sh: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" >&2
benches=("$@")
[ ${#benches[@]} -gt 0 ] || benches=(codec engine ingest scorer scorer_state changelog_bytes leaderboard program latency one_api backtest)
for bench in "${benches[@]}"; do
  case "$bench" in
    # The services' debug binaries next to the bench's own (see benches/outages.rs).
    outages) cargo build --workspace --bins --quiet && cargo bench -p abm-benches --bench outages --profile dev --quiet ;;
    *) cargo bench -p abm-benches --bench "$bench" --quiet ;;
  esac
done
