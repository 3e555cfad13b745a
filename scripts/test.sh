#!/usr/bin/env bash
# Every check CI runs, in the order that fails fastest. Run from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== [$(date +%T)] cargo fmt --check"
cargo fmt --all --check
echo "== [$(date +%T)] cargo xtask codegen --check"
cargo xtask codegen --check
echo "== [$(date +%T)] cargo xtask layering"
cargo xtask layering
echo "== [$(date +%T)] cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== [$(date +%T)] cargo machete (no unused dependency in any crate)"
if ! command -v cargo-machete >/dev/null 2>&1; then
    echo "installing cargo-machete" >&2
    cargo install --quiet --locked cargo-machete --version 0.9.2
fi
cargo machete
echo "== [$(date +%T)] cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet
# What the tests start must be gone when they end: compare with what is here before.
mkdir -p target
bash scripts/leftovers.sh snapshot target/leftovers.before
export SA_BUILDBOX_DIR="${SA_BUILDBOX_DIR:-$(bash scripts/provision.sh | tail -n 1)}"
echo "== [$(date +%T)] buildbox: $SA_BUILDBOX_DIR"
if [ -z "${SA_BGD:-}" ] || [ -z "${SA_PG_BIN:-}" ]; then
    grid=$(bash scripts/provision-buildgrid.sh | tail -n 2)
    export SA_BGD=$(echo "$grid" | sed -n 1p) SA_PG_BIN=$(echo "$grid" | sed -n 2p)
fi
echo "== [$(date +%T)] BuildGrid: $SA_BGD, PostgreSQL: $SA_PG_BIN"
echo "== [$(date +%T)] Bazel: $(bash scripts/provision-bazel.sh | tail -n 1)"
echo "== [$(date +%T)] cargo package (every crate as it would be published, built from its package)"
# cargo verifies each package against the others built as registry crates, which it takes to
# be immutable: a build of ours from an earlier run (same version, same checkout path) would be
# reused, sources and all. Forget every build of our crates and their extracted packages first
# (on a fresh clone there are none; locally, the tests below rebuild them anyway).
for extracted in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/-*/; do
  rm -rf "$extracted"sa-*
done
rm -rf target/debug/.fingerprint/sa-*
cargo package --workspace --locked --offline --allow-dirty --quiet
echo "== [$(date +%T)] examples (each library crate used alone)"
for example in sa-proto:wire sa-exec:run_locally sa-generator:generate_in_memory \
    sa-instantiator:instantiate_in_memory sa-prime:prime_locally sa-learn:incremental \
    sa-compile:recognize; do
    cargo run --quiet --locked -p "${example%%:*}" --example "${example#*:}" >/dev/null
done
cargo run --quiet --locked -p sa-cas --example cas_client -- crates/sa-cli/demo >/dev/null
# sa-cas as a REAPI client of a real buildbox-casd.
casd_dir=$(mktemp -d)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$SA_BUILDBOX_DIR/buildbox-casd" --bind="127.0.0.1:$port" "$casd_dir" 2>/dev/null &
casd=$!
# The output is read whole before it is searched: `grep -q` on a pipe would close it at the
# first match, and the example's next print would fail with a broken pipe.
listed=$(cargo run --quiet --locked -p sa-cas --example cas_client -- "grpc://127.0.0.1:$port" \
    crates/sa-cli/demo) && grep -q "src/main.c" <<<"$listed" \
    || { kill "$casd"; echo "the cas_client example failed against casd" >&2; exit 1; }
# sa-proxy in front of the same casd: a blob stored and read back through it.
recordings=$(mktemp -d)
cargo run --quiet --locked -p sa-proxy --example record -- "grpc://127.0.0.1:$port" "$recordings" \
    --once >/dev/null || { kill "$casd"; echo "the sa-proxy example failed against casd" >&2; exit 1; }
rm -rf "$recordings"
kill "$casd"; wait "$casd" 2>/dev/null || true; rm -rf "$casd_dir"
echo "== [$(date +%T)] fuzz (a bounded run of every target; scripts/fuzz.sh SECONDS for a campaign)"
bash scripts/fuzz.sh "${SA_FUZZ_SECONDS:-20}"
echo "== [$(date +%T)] cargo test"
mkdir -p target
cargo test --workspace --locked 2>&1 | tee target/test.log
echo "== [$(date +%T)] leftovers (processes and mounts the tests started)"
bash scripts/leftovers.sh check target/leftovers.before
# The last binary cargo runs is a doc-test one with 0 tests: close with the totals.
awk '/^test result:/ {p += $4; f += $6} END {printf "tests: %d passed, %d failed\n", p, f}' \
    target/test.log
echo "== [$(date +%T)] done"
