#!/usr/bin/env bash
# The main job: the pipeline on a simulated ABM event stream, on this machine.
#
#   deploy/local/demo.sh [--accounts N] [--events N] [--rate EVENTS_PER_S] [--duration SECONDS]
#
# What it does today (issue #2 of the roadmap; the full demo with alerts is issue #6):
#   1. starts the local Apache Kafka 4.x broker (deploy/local/kafka.sh; fetched on first use),
#   2. builds and starts ingest (:8080), scorer (:8081) and alerter (:8082), which create the
#      topics of deploy/topics.toml and report ready,
#   3. runs the simulator: a seeded TAL into abm.accounts and Avro engagement events into
#      abm.engagement,
#   4. prints each sales alert as it fires (account, tier, owner, why, next step) and, every two
#      seconds, what the scorer applied and the crossings and alerts so far (from /metrics),
#      then the top accounts from the scorer's query API,
#   5. stops everything cleanly (SIGTERM) after --duration seconds or on Ctrl-C.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"

accounts=200 events=5000 rate=500 duration=60
while [ $# -gt 0 ]; do
  case "$1" in
    --accounts) accounts=$2; shift 2 ;;
    --events) events=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "demo.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

say() { printf '\n== %s\n' "$*"; }
logs="${LOCAL_KAFKA_CACHE:-$HOME/.cache/abm}/demo"
mkdir -p "$logs"
pids=()
cleanup() {
  if [ ${#pids[@]} -gt 0 ]; then
    say "stopping the services (SIGTERM: readiness 503, drain, commit, exit)"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
    pids=()
  fi
  echo "demo.sh: logs in $logs; the broker keeps running (deploy/local/kafka.sh stop)"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "1. Kafka"
if [ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  echo "using the broker at $KAFKA_BOOTSTRAP_SERVERS"
else
  deploy/local/kafka.sh start
  KAFKA_BOOTSTRAP_SERVERS=$(deploy/local/kafka.sh bootstrap)
fi
export ABM_KAFKA__BOOTSTRAP_SERVERS=$KAFKA_BOOTSTRAP_SERVERS

say "2. build (release; the first build takes a few minutes) and start the services"
cargo build --release --workspace --bins --quiet
bin=target/release
port_of() { case $1 in ingest) echo 8080 ;; scorer) echo 8081 ;; alerter) echo 8082 ;; esac; }
for service in ingest scorer alerter; do
  ABM_HTTP__LISTEN="127.0.0.1:$(port_of $service)" "$bin/$service" >"$logs/$service.log" 2>&1 &
  pids+=($!)
done
for service in ingest scorer alerter; do
  port=$(port_of $service)
  for _ in $(seq 1 120); do
    curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 0.5
  done
  curl -fs "http://127.0.0.1:$port/readyz" >/dev/null || { tail "$logs/$service.log"; echo "$service did not become ready" >&2; exit 1; }
  echo "$service ready at http://127.0.0.1:$port (/metrics, /healthz, /readyz)"
done

metric_sum() { # port metric [label filter]
  { curl -fs "http://127.0.0.1:$1/metrics" || true; } | { grep "^$2" || true; } | { grep -- "${3:-}" || true; } |
    awk '{s+=$2} END {printf "%d", s}'
}

# Alerts as they fire, one line each (the alerter's own tail command).
"$bin/alerter" tail 2>"$logs/tail.log" > >(sed -u 's/^/  ALERT /') &
pids+=($!)

# The scorer's group resumes where it left off; count what this run adds.
sleep 1
seen() { echo $(( $(metric_sum 8081 abm_scorer_events_applied_total) + $(metric_sum 8081 abm_scorer_duplicates_total) )); }
baseline=$(seen)
say "3. simulate: $accounts accounts, $events events at ${rate}/s (seeded, deterministic)"
"$bin/simulate" --bootstrap-servers "$KAFKA_BOOTSTRAP_SERVERS" --accounts "$accounts" --events "$events" --rate "$rate" \
  --id-prefix "demo-$(date +%s)" \
  >"$logs/simulate.log" 2>&1 &
sim=$!

say "4. what the scorer consumed (abm_scorer_events_applied_total by kind), every 2 s for up to ${duration}s"
start=$(date +%s)
while :; do
  line="t=$(( $(date +%s) - start ))s"
  for kind in web_visit ad_click email demo_request; do
    line+="  $kind=$(metric_sum 8081 abm_scorer_events_applied_total "kind=\"$kind\"")"
  done
  total=$(( $(seen) - baseline ))
  line+="  this_run=$total  duplicates=$(metric_sum 8081 abm_scorer_duplicates_total)"
  line+="  crossings=$(metric_sum 8081 abm_scorer_crossings_total)  alerts=$(metric_sum 8082 abm_alerter_alerts_total)"
  echo "$line"
  if ! kill -0 "$sim" 2>/dev/null && [ "$total" -ge "$events" ]; then
    echo "all $events simulated events were consumed by the scorer"
    break
  fi
  [ $(( $(date +%s) - start )) -ge "$duration" ] && { echo "duration reached"; break; }
  sleep 2
done
wait "$sim" || { cat "$logs/simulate.log"; exit 1; }
tail -n 1 "$logs/simulate.log"
say "5. the top accounts by score (scorer API: GET /v1/accounts?top=5)"
curl -fs "http://127.0.0.1:8081/v1/accounts?top=5" | python3 -c '
import json, sys
for a in json.load(sys.stdin)["accounts"]:
    print("  {:<12} {:<9} score now {:9.1f}  armed={}".format(a["account_id"], a["tier"], a["score_now"], a["armed"]))
' || true
echo "The HTTP collector path and the full simulated world (bots, malformed input, unresolved visitors) arrive with issue #6; see README.md."
