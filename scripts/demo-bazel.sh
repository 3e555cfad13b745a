#!/usr/bin/env bash
# The Bazel loop, end to end (examples/bazel): Bazel 4.2.3 builds a C workspace on BuildGrid
# (two `sa worker` bots) through `sa proxy`; sa learns from build 1's recording (graph
# from-recording, generate), the edit is applied (a library header, an application source, one
# of two identical headers), `sa prime --remote` primes build 2 with no local store, and build 2
# runs through the proxy. Then the same two builds without priming, on a fresh BuildGrid.
# Provisions what it needs (bazel-bootstrap, BuildGrid, PostgreSQL) and runs the integration
# test that is this loop; fails unless every changed compile and link step of build 2 was a
# cache hit sa primed, and every action sa primed is one Bazel asked for, byte for byte.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/provision-bazel.sh >/dev/null
grid=$(bash scripts/provision-buildgrid.sh | tail -n 2)
export SA_BGD=$(echo "$grid" | sed -n 1p) SA_PG_BIN=$(echo "$grid" | sed -n 2p)
export SA_BUILDBOX_DIR="${SA_BUILDBOX_DIR:-$(bash scripts/provision.sh | tail -n 1)}"
log=target/demo-bazel.log
mkdir -p target
if ! cargo test --quiet --locked -p sa-cli --test cli bazel:: -- --nocapture >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "demo-bazel: FAILED (full log: $log)" >&2
    exit 1
fi
grep '^bazel:' "$log"
