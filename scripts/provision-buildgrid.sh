#!/usr/bin/env bash
# Installs what the BuildGrid tests need on a fresh machine, idempotently:
# - BuildGrid 0.9.1 from PyPI in target/buildgrid-venv (it needs Python >= 3.13: python3.13 on
#   PATH, or pyenv's 3.13);
# - PostgreSQL 15 from Debian (its scheduler's database), as root, when missing, without
#   starting Debian's own cluster (the tests start a private one on loopback).
# Prints two lines at the end: the `bgd` executable and PostgreSQL's bin directory.
# Fails loudly when anything cannot be installed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/target/buildgrid-venv"
want=buildgrid==0.9.1

if ! "$venv/bin/bgd" --help >/dev/null 2>&1; then
    py=$(command -v python3.13 || true)
    if [ -z "$py" ] || ! "$py" -c 'import sys; assert sys.version_info >= (3, 13)' 2>/dev/null; then
        py=$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.13*/bin/python3.13 2>/dev/null | tail -n 1 || true)
    fi
    [ -n "$py" ] || { echo "provision-buildgrid: BuildGrid needs Python >= 3.13 and none was found (python3.13, pyenv)" >&2; exit 1; }
    echo "provision-buildgrid: installing $want into $venv with $py" >&2
    rm -rf "$venv"
    "$py" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$want"
fi
"$venv/bin/bgd" --help >/dev/null

pg=/usr/lib/postgresql/15/bin
if [ ! -x "$pg/initdb" ] || [ ! -x "$pg/pg_ctl" ] || ! command -v psql >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ]; then
        echo "provision-buildgrid: PostgreSQL 15 is missing and this is not root: apt-get install postgresql-15" >&2
        exit 1
    fi
    echo "provision-buildgrid: installing postgresql-15" >&2
    # Keep Debian's own cluster from starting during the install.
    policy=/usr/sbin/policy-rc.d
    had_policy=0; [ -e "$policy" ] && had_policy=1
    [ $had_policy = 1 ] || { printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; }
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >/dev/null
    [ $had_policy = 1 ] || rm -f "$policy"
fi
for tool in initdb pg_ctl; do
    [ -x "$pg/$tool" ] || { echo "provision-buildgrid: $pg/$tool is missing after the install" >&2; exit 1; }
done
id postgres >/dev/null 2>&1 || { echo "provision-buildgrid: no postgres user (initdb refuses to run as root)" >&2; exit 1; }
echo "$venv/bin/bgd"
echo "$pg"
