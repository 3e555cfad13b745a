#!/usr/bin/env bash
# Installs Bazel for the Bazel loop on a fresh machine, idempotently: Debian's bazel-bootstrap
# (Bazel 4.2.3, an API 2.0 client; about a minute), as root. Prints bazel's path on its last
# line. Fails loudly when it cannot be installed.
set -euo pipefail
if ! command -v bazel >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ]; then
        echo "provision-bazel: bazel is missing and this is not root: apt-get install bazel-bootstrap" >&2
        exit 1
    fi
    echo "provision-bazel: installing bazel-bootstrap" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bazel-bootstrap >/dev/null
fi
command -v bazel
