#!/usr/bin/env bash
# Installs Debian's nginx (the plain gRPC proxy `sa proxy` is measured against in the benchmark
# report) when missing, as root. Prints the nginx binary on its last line.
set -euo pipefail
nginx=$(command -v nginx || true)
[ -z "$nginx" ] && [ -x /usr/sbin/nginx ] && nginx=/usr/sbin/nginx
if [ -z "$nginx" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "provision-nginx: nginx is missing and this is not root: apt-get install nginx" >&2
        exit 1
    fi
    echo "provision-nginx: installing nginx" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null
    nginx=/usr/sbin/nginx
fi
echo "$nginx"
