#!/usr/bin/env bash
# The main job: the pipeline on a simulated ABM event stream, on this machine.
#
#   deploy/local/demo.sh [--accounts N] [--events N] [--rate EVENTS_PER_S] [--duration SECONDS] [--mock] [--keep]
#
# --keep: the services keep running after the summary (for the console) until Ctrl-C.
#
# What it does:
#   1. builds the workspace (release),
#   2. starts the local Apache Kafka 4.x broker (deploy/local/kafka.sh; fetched from Maven
#      Central on first use), or, where Java or Maven is absent (or with --mock), librdkafka's
#      in-process mock cluster, saying which; KAFKA_BOOTSTRAP_SERVERS uses an existing broker,
#   then starts ingest (:8080), scorer (:8081, with the console at /console) and alerter
#   (:8082), which create the topics of
#   deploy/topics.toml and report ready,
#   3. imports a generated TAL (ingest import-tal) and prints each sales alert as it fires
#      (account, tier, owner, why, next step),
#   4. runs the simulator: a seeded ABM world (buying committees, in-market surges, bots,
#      free-mail and unknown visitors, duplicates, malformed events) sent over the HTTP
#      collector and the raw topics; every two seconds a summary (events in, rejected,
#      unresolved, scored, crossings, alerts, throughput) from the services' /metrics; then
#      the top accounts from the scorer's query API and the ABM program (GET /v1/program: the
#      journey funnel, the TAL's engagement rate and coverage by tier, stage conversion,
#      pipeline and win rate TAL vs non-TAL, alerts followed by opportunities),
#   5. stops everything cleanly (SIGTERM) after --duration seconds or on Ctrl-C.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"

accounts=200 events=20000 rate=1000 duration=120 mock=no keep=no
while [ $# -gt 0 ]; do
  case "$1" in
    --accounts) accounts=$2; shift 2 ;;
    --events) events=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --mock) mock=yes; shift ;;
    --keep) keep=yes; shift ;;
    -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "demo.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

say() { printf '\n== %s\n' "$*"; }
logs="${LOCAL_KAFKA_CACHE:-$HOME/.cache/abm}/demo"
mkdir -p "$logs"
pids=()
mock_pid=""
cleanup() {
  if [ ${#pids[@]} -gt 0 ]; then
    say "stopping the services (SIGTERM: readiness 503, drain, commit, exit)"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
    pids=()
  fi
  # The mock cluster goes last: the services commit their final transactions to it first.
  if [ -n "$mock_pid" ]; then kill -TERM "$mock_pid" 2>/dev/null || true; wait "$mock_pid" 2>/dev/null || true; fi
  echo "demo.sh: logs in $logs; the broker keeps running (deploy/local/kafka.sh stop)"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "1. build (release; the first build takes a few minutes)"
cargo build --release --workspace --bins --quiet
bin=target/release

say "2. Kafka"
if [ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  echo "using the broker at $KAFKA_BOOTSTRAP_SERVERS"
elif [ "$mock" = yes ] || ! command -v java >/dev/null || ! command -v mvn >/dev/null; then
  echo "using librdkafka's in-process MOCK cluster (no Java/Maven here, or --mock): a stand-in for a demo, not a"
  echo "real broker (no compaction, nothing kept after exit); with Java 17 and Maven the demo runs real Apache Kafka"
  "$bin/simulate" mock-kafka >"$logs/mock.out" 2>&1 &
  mock_pid=$!
  for _ in $(seq 1 50); do grep -q '^bootstrap=' "$logs/mock.out" 2>/dev/null && break; sleep 0.1; done
  KAFKA_BOOTSTRAP_SERVERS=$(sed -n 's/^bootstrap=//p' "$logs/mock.out")
  [ -n "$KAFKA_BOOTSTRAP_SERVERS" ] || { cat "$logs/mock.out"; exit 1; }
  # The mock cluster cannot create topics over the admin API; mock-kafka created them.
  export ABM_KAFKA__CREATE_TOPICS=false
else
  deploy/local/kafka.sh start
  KAFKA_BOOTSTRAP_SERVERS=$(deploy/local/kafka.sh bootstrap)
  echo "using Apache Kafka at $KAFKA_BOOTSTRAP_SERVERS"
fi
export ABM_KAFKA__BOOTSTRAP_SERVERS=$KAFKA_BOOTSTRAP_SERVERS

say "3. import the TAL and start the services"
"$bin/simulate" tal --accounts "$accounts" --out "$logs/tal.csv"
"$bin/ingest" import-tal "$logs/tal.csv" 2>"$logs/import.log" || { cat "$logs/import.log"; exit 1; }
port_of() { case $1 in ingest) echo 8080 ;; scorer) echo 8081 ;; alerter) echo 8082 ;; esac; }
for service in ingest scorer alerter; do
  # Each service accepts only its own ABM_ keys: the write key goes to ingest alone.
  extra=()
  [ "$service" = ingest ] && extra=(ABM_INGEST__WRITE_KEYS__DEMO=demo-write-key)
  # The scorer's query API answers only with a token (it returns contacts' emails).
  [ "$service" = scorer ] && extra=(ABM_HTTP__API_TOKENS__DEMO=demo-api-token)
  env "${extra[@]}" ABM_HTTP__LISTEN="127.0.0.1:$(port_of $service)" "$bin/$service" >"$logs/$service.log" 2>&1 &
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
echo "console: http://127.0.0.1:8081/console (sign in with the API token demo-api-token): accounts, alerts as they fire, the program"

metric_sum() { # port metric [label filter]
  { curl -fs "http://127.0.0.1:$1/metrics" || true; } | { grep "^$2" || true; } | { grep -- "${3:-}" || true; } |
    awk '{s+=$2} END {printf "%d", s}'
}

say "4. alerts as they fire (account, tier, owner, why, next step)"
"$bin/alerter" tail 2>"$logs/tail.log" > >(sed -u 's/^/  ALERT /') &
pids+=($!)
sleep 1

say "5. simulate: $accounts accounts, $events events at ${rate}/s over HTTP and the raw topics (seeded)"
"$bin/simulate" run --bootstrap-servers "$KAFKA_BOOTSTRAP_SERVERS" --accounts "$accounts" --events "$events" \
  --rate "$rate" --write-key demo-write-key --id-prefix "demo-$(date +%s)" >"$logs/simulate.log" 2>&1 &
sim=$!
start=$(date +%s)
last="" steady=0
while :; do
  elapsed=$(( $(date +%s) - start ))
  received=$(metric_sum 8080 abm_ingest_events_received_total)
  rejected=$(metric_sum 8080 abm_ingest_events_rejected_total)
  unresolved=$(metric_sum 8080 abm_ingest_events_accepted_total 'destination="unresolved"')
  scored=$(metric_sum 8081 abm_scorer_events_applied_total)
  duplicates=$(metric_sum 8081 abm_scorer_duplicates_total)
  crossings=$(metric_sum 8081 abm_scorer_crossings_total)
  alerts=$(metric_sum 8082 abm_alerter_alerts_total)
  suppressed=$(metric_sum 8082 abm_alerter_suppressed_total)
  echo "  t=${elapsed}s events in=$received rejected=$rejected unresolved=$unresolved scored=$scored duplicates=$duplicates crossings=$crossings alerts=$alerts suppressed=$suppressed ($(( received / (elapsed > 0 ? elapsed : 1) )) events/s)"
  now="$received/$scored/$alerts"
  if ! kill -0 "$sim" 2>/dev/null; then
    if [ "$now" = "$last" ]; then steady=$((steady + 1)); else steady=0; fi
    [ "$steady" -ge 2 ] && { echo "  the simulation is over and the pipeline has settled"; break; }
  fi
  last=$now
  [ "$elapsed" -ge "$duration" ] && { echo "  --duration reached"; break; }
  sleep 2
done
wait "$sim" || { cat "$logs/simulate.log"; exit 1; }
tail -n 1 "$logs/simulate.log"
say "6. the top accounts by score (scorer API: GET /v1/accounts?top=5)"
curl -fs -H "Authorization: Bearer demo-api-token" "http://127.0.0.1:8081/v1/accounts?top=5" | python3 -c '
import json, sys
for a in json.load(sys.stdin)["accounts"]:
    print("  {:<12} {:<9} score now {:9.1f}  armed={}".format(a["account_id"], a["tier"], a["score_now"], a["armed"]))
' || true

say "7. the ABM program: journey funnel, engagement rate, coverage, conversion, pipeline (GET /v1/program)"
program() { curl -fs -H "Authorization: Bearer demo-api-token" "http://127.0.0.1:8081/v1/program" || true; }
# Wait until the program's book has every account the scorer holds (it follows abm.account-program).
for _ in $(seq 1 15); do
  held=$(metric_sum 8081 "abm_scorer_accounts ")
  known=$(program | python3 -c 'import json,sys
try: s = json.load(sys.stdin)["all"]["accounts_by_stage"]; print(sum(s.values()) - s["unaware"])
except Exception: print(-1)')
  [ "$held" -gt 0 ] && [ "$known" -ge "$held" ] && break
  sleep 1
done
program | python3 -c '
import json, sys
report = json.load(sys.stdin)
everyone = report["all"]
stages = everyone["accounts_by_stage"]
total = sum(stages.values()) or 1
for name in ["unaware", "aware", "engaged", "mqa", "opportunity", "customer"]:
    n = stages.get(name, 0)
    print("  {:<12} {:5d} accounts {}".format(name, n, "#" * round(40 * n / total)))
pct = lambda x: "-" if x is None else "{:.0%}".format(x)
for tier in ["tier_1", "tier_2", "tier_3"]:
    f = report["tiers"][tier]
    if f["tal_accounts"]:
        print("  {:<7} engaged in the last 30 days: {:4d} of {:4d} TAL accounts ({}), mean committee coverage {}".format(
            tier, f["engaged_tal_accounts"], f["tal_accounts"], pct(f["engagement_rate"]), pct(f["mean_coverage"])))
print("  conversion: " + ", ".join("{} -> later {} of {}".format(c["stage"], c["converted"], c["entered"]) for c in everyone["conversion"]))
for name in ["tal", "non_tal"]:
    o = report[name]["opportunities"]
    money = ", ".join("{} open {:,.0f} won {:,.0f}".format(c, m["open_pipeline"], m["won_revenue"]) for c, m in o["by_currency"].items())
    print("  {:<7} opportunities: {} open, {} won, {} lost, win rate {}; {}".format(name, o["open"], o["won"], o["lost"], pct(o["win_rate"]), money or "no pipeline"))
a = everyone["alerts"]
print("  alerts followed by an opportunity: {} of {} alerts (median {} days later); within 30 days: {} of the {} alerts 30 days old".format(
    a["followed"], a["alerts"], "-" if a["median_days_to_opportunity"] is None else "{:.1f}".format(a["median_days_to_opportunity"]),
    a["windows"][0]["followed"], a["windows"][0]["matured"]))
' || true
say "8. the console: http://127.0.0.1:8081/console (token demo-api-token)"
if [ "${keep:-}" = yes ]; then
  echo "  the services keep running for the console: Ctrl-C stops everything"
  while :; do sleep 3600; done
fi
echo "  (the services stop now: run with --keep to browse the console after the summary)"
