#!/usr/bin/env bash
# What the test command leaves behind: servers and helpers it starts (buildbox-casd, its FUSE
# helper, buildbox-run, BuildGrid, the tests' PostgreSQL, `sa` services) and FUSE mounts.
#   leftovers.sh snapshot FILE   records what is there now
#   leftovers.sh check FILE      fails naming every such process or mount not in FILE
set -euo pipefail
list() {
    # Processes: pid and command line, for the programs the tests start.
    ps -eo pid=,args= | grep -E 'buildbox-(casd|fuse|run)|bgd server|sa-postgres-|/sa (proxy|worker|serve)' \
        | grep -v -E 'grep -E|leftovers.sh' | sed 's/^ *//' | sed 's/^/process /' || true
    # Mounts: FUSE file systems (casd's staging) anywhere.
    awk '$0 ~ / - fuse/ {print "mount " $5}' /proc/self/mountinfo || true
}
case "${1:-}" in
    snapshot) list | sort > "$2" ;;
    check)
        # A process in the snapshot is matched by its pid; a mount by its path. Watchers that
        # stop a server when its test process ends get 20 s to finish.
        for _ in $(seq 1 40); do
            left=$(comm -13 "$2" <(list | sort) || true)
            [ -z "$left" ] && break
            sleep 0.5
        done
        if [ -n "$left" ]; then
            echo "leftovers: the test command left these behind:" >&2
            echo "$left" >&2
            exit 1
        fi
        echo "leftovers: none" ;;
    *) echo "usage: leftovers.sh snapshot|check FILE" >&2; exit 2 ;;
esac
