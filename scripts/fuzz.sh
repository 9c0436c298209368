#!/usr/bin/env bash
# Runs each fuzz target (fuzz/fuzz_targets: wire, join, config, selector, hetzner) for SECONDS
# (default 60) with cargo-fuzz, from the seeds in fuzz/seeds/TARGET, and prints each target's
# executions. Stops at the first crash (libFuzzer writes the input to fuzz/artifacts/TARGET/;
# `cargo +nightly fuzz run TARGET FILE` replays it). RGRID_FUZZ_TARGETS picks targets.
#
# One build for all targets, into target/fuzz (the working corpora too: the seeds in the repo
# stay as they are). Built without a sanitizer (`-s none`: the code is safe Rust, so ASan would
# find little more than the panics libFuzzer catches anyway) in cargo-fuzz's release mode with
# debug assertions (overflow checks on). Measured cold: 1,897 s wall on 2 cores shared with three
# other builds (load 7); a rebuild after a change to the targets: 16 s.
# RGRID_FUZZ_PROFILE=dev builds unoptimized instead (CI's short runs: a cold build took 259 s
# with a test run sharing the machine; fewer executions per second).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
targets=${RGRID_FUZZ_TARGETS:-wire join config selector hetzner}
flags=(--sanitizer none --target-dir target/fuzz)
if [ "${RGRID_FUZZ_PROFILE:-release}" = dev ]; then flags+=(--dev); fi

# cargo-fuzz needs a nightly compiler; without one, the stable compiler is allowed its
# unstable flags.
if cargo +nightly --version >/dev/null 2>&1; then
  fuzz=(cargo +nightly fuzz)
else
  fuzz=(env RUSTC_BOOTSTRAP=1 cargo fuzz)
fi
command -v cargo-fuzz >/dev/null 2>&1 || {
  echo "fuzz: cargo-fuzz is missing: run scripts/setup.sh (or cargo install --locked cargo-fuzz)" >&2
  exit 1
}

"${fuzz[@]}" build "${flags[@]}"
mkdir -p target/fuzz/logs
for target in $targets; do
  corpus=target/fuzz/corpus/$target
  log=target/fuzz/logs/$target.log
  mkdir -p "$corpus"
  echo "fuzz: $target for $seconds s" >&2
  if ! "${fuzz[@]}" run "${flags[@]}" "$target" "$corpus" "fuzz/seeds/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
    -print_final_stats=1 >"$log" 2>&1; then
    tail -40 "$log" >&2
    echo "fuzz: $target FAILED (log: $log; the input is in fuzz/artifacts/$target/)" >&2
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  echo "fuzz: $target: ${runs:-?} executions in $seconds s (${rate:-?}/s), no crash" >&2
done
