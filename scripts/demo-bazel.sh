#!/usr/bin/env bash
# The Bazel loop, end to end and incremental (examples/bazel): Bazel 4.2.3 builds a C workspace
# on BuildGrid (two `sa worker` bots) through `sa serve`, one output base and no clean, for three
# edits in a row (examples/bazel/edits: a library header every compile reads with an
# application source and one of two identical headers; an application source; a generated
# header's input with the library header again). No sa command runs between builds: sa serve
# learns each build and primes each edit by itself. Then the same builds without sa, on a fresh
# BuildGrid, for the build times. Provisions what it needs (bazel-bootstrap, BuildGrid,
# PostgreSQL) and runs the integration test that is this loop; fails unless every compile, link
# and genrule step no earlier build ran was a cache hit sa primed, and every primed action a
# build did not ask for is one a clean build of the same sources asks for.
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
