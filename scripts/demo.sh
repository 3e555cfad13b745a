#!/usr/bin/env bash
# The main job: `sa demo` on its own local store. Installs gcc, make and binutils first when
# they are missing (as root), then builds sa in release mode and runs the demo. Extra arguments
# go to `sa demo` (e.g. --workdir DIR --jobs N); `SA_ARGS` go before it (e.g. --stats, --json).
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
for pair in gcc:gcc make:make ar:binutils; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || { echo "demo: ${missing[*]} missing and this is not root: install them" >&2; exit 1; }
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# shellcheck disable=SC2086 # SA_ARGS is a list of flags
exec cargo run --quiet --release --locked -p sa-cli -- ${SA_ARGS:-} demo "$@"
