#!/usr/bin/env bash
# Fuzzes the parsers that read untrusted bytes, each for a bounded time, with cargo fuzz
# (libFuzzer, AddressSanitizer) on the nightly toolchain. A benchmark-style script: not part
# of the test command. Record what it finds in benches/README.md ("Fuzzing").
#
#   deploy/local/fuzz.sh                 every target, FUZZ_SECONDS (default 120) each
#   deploy/local/fuzz.sh avro_decode     one or more targets by name
#
# Targets (tests/fuzz/fuzz_targets/):
#   collector_json     request bodies through split, validation and resolution (server and browser keys)
#   segment_json       Segment/RudderStack bodies through the translation and the stitcher's merge and settle
#   avro_decode        datums behind a valid header, decoded as every record the services read
#   engagement_direct  the hand-written EngagementEvent decoder against the Avro library's
#   state_restore      changelog records (heads, chunks, tombstones) through the scorer's Restorer
#
# Needs: rustup's nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`); installs
# cargo-fuzz when missing. Corpora grow in tests/fuzz/corpus/<target> (not committed); a crash is
# written to tests/fuzz/artifacts/<target>/ and the script exits non-zero.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root/tests/fuzz"
seconds=${FUZZ_SECONDS:-120}
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(collector_json segment_json avro_decode engagement_direct state_restore)
cargo +nightly fuzz build -O
failed=0
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target"
  echo "fuzz.sh: $target for ${seconds}s" >&2
  # -rss_limit_mb: a forged length that makes a decoder allocate gigabytes is a finding too.
  if ! cargo +nightly fuzz run -O "$target" "corpus/$target" -- \
      -max_total_time="$seconds" -rss_limit_mb=1024 -max_len=65536 -print_final_stats=1 2>"/tmp/fuzz-$target.log"; then
    failed=1
    echo "fuzz.sh: $target FOUND A CRASH (artifacts in tests/fuzz/artifacts/$target):" >&2
    grep -E "panicked|ERROR|SUMMARY|Test unit written" "/tmp/fuzz-$target.log" | head -20 >&2 || true
  fi
  { grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb|cov: " "/tmp/fuzz-$target.log" || true; } \
    | tail -3 | sed "s/^/fuzz.sh: $target: /" >&2
done
exit $failed
