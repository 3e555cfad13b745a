#!/usr/bin/env bash
# Every check CI runs, in the order that fails fastest. Run from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
export SA_BUILDBOX_DIR="${SA_BUILDBOX_DIR:-$(bash scripts/provision.sh | tail -n 1)}"
echo "== buildbox: $SA_BUILDBOX_DIR"
if [ -z "${SA_BGD:-}" ] || [ -z "${SA_PG_BIN:-}" ]; then
    grid=$(bash scripts/provision-buildgrid.sh | tail -n 2)
    export SA_BGD=$(echo "$grid" | sed -n 1p) SA_PG_BIN=$(echo "$grid" | sed -n 2p)
fi
echo "== BuildGrid: $SA_BGD, PostgreSQL: $SA_PG_BIN"
echo "== Bazel: $(bash scripts/provision-bazel.sh | tail -n 1)"
echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo xtask codegen --check"
cargo xtask codegen --check
echo "== cargo xtask layering"
cargo xtask layering
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet
echo "== fuzz (a bounded run of every target; scripts/fuzz.sh SECONDS for a campaign)"
bash scripts/fuzz.sh "${SA_FUZZ_SECONDS:-20}"
echo "== cargo test"
mkdir -p target
cargo test --workspace --locked 2>&1 | tee target/test.log
# The last binary cargo runs is a doc-test one with 0 tests: close with the totals.
awk '/^test result:/ {p += $4; f += $6} END {printf "tests: %d passed, %d failed\n", p, f}' \
    target/test.log
