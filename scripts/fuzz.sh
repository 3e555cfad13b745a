#!/usr/bin/env bash
# Fuzzing: every cargo-fuzz target in fuzz/ (decoders of outside data, and the pipeline over
# adversarial stores) for SECONDS each (default 60), with libFuzzer and AddressSanitizer.
# Installs cargo-fuzz when missing. Exits non-zero on any crash, leak, timeout or OOM; the
# input that caused it is kept in fuzz/artifacts/TARGET/. Corpora grow in target/fuzz-corpus/.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    cargo install --quiet --locked cargo-fuzz --version 0.13.2
fi
# This machine has one stable toolchain; cargo-fuzz needs the -Z flags of the sanitizers.
export RUSTC_BOOTSTRAP=1
targets=(directory messages digest pipeline)
mkdir -p target
if ! cargo fuzz build --release > target/fuzz-build.log 2>&1; then
    tail -n 40 target/fuzz-build.log >&2
    echo "fuzz: building the targets failed" >&2
    exit 1
fi
for target in "${targets[@]}"; do
    corpus="target/fuzz-corpus/$target"
    mkdir -p "$corpus"
    log="target/fuzz-$target.log"
    if ! cargo fuzz run --release "$target" "$corpus" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=65536 -timeout=10 \
        -print_final_stats=1 > "$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "fuzz: $target FAILED (input kept in fuzz/artifacts/$target/)" >&2
        exit 1
    fi
    runs=$(grep -m1 -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    cover=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 || true)
    echo "fuzz: $target: $runs inputs in ${seconds}s, $cover, 0 crashes"
done
