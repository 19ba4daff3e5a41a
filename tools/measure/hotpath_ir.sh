#!/usr/bin/env bash
# Instructions per message on the broker's hot paths (tools/measure/hotpath.py)
# under the MicroPython unix port, counted by callgrind: a figure that does
# not move with the machine's load, to compare two versions of midge where
# tools/bench.py's rates are too noisy to tell a few per cent. Each figure is
# the difference between a run of R and one of 3R rounds, over the messages
# in between (start-up, imports and warm-up cancel out); the trees run
# from source (the compiling cancels out too). Needs valgrind
# (Debian package). Lower is better; the unix port is 64-bit.
#
#   tools/measure/hotpath_ir.sh [TREE ...]     TREE: a checkout of midge (default: this one)
#   SCENARIOS="fanout fanin qos1 qos2 qos1-split qos2-split" R=20 tools/measure/hotpath_ir.sh
#
# Prints one line per tree and scenario: TREE SCENARIO INSTRUCTIONS-PER-MESSAGE
# (per delivery for fanout).
set -euo pipefail
HERE=$(cd "$(dirname "$0")/../.." && pwd)
MP="$HERE/.venv/bin/micropython"
SCENARIOS=${SCENARIOS:-"fanout fanin qos1 qos2 qos1-split qos2-split"}
R=${R:-20}
command -v valgrind >/dev/null || { echo "hotpath_ir: valgrind not found (apt-get install valgrind)" >&2; exit 1; }
[ $# -gt 0 ] || set -- "$HERE"
run() {  # tree scenario rounds split -> "instructions messages"
    local out ir
    out=$(cd "$1" && MICROPYPATH=".frozen:lib:$HERE/tools" valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        "$MP" -X heapsize=16M "$HERE/tools/measure/hotpath.py" "$2" "$3" $4 2>&1)
    ir=$(echo "$out" | sed -n 's/.*Collected : \([0-9]*\).*/\1/p')
    echo "$ir $(echo "$out" | awk -v s="$2" '$1 == s {print $2}')"
}
for tree in "$@"; do
    tree=$(cd "$tree" && pwd)
    [ -x "$MP" ] || { echo "hotpath_ir: $MP missing (tools/setup.sh)" >&2; exit 1; }
    for sc in $SCENARIOS; do
        name=${sc%-split}
        split=""
        [ "$name" != "$sc" ] && split="--split"
        read -r i1 n1 < <(run "$tree" "$name" "$R" "$split")
        read -r i2 n2 < <(run "$tree" "$name" "$((3 * R))" "$split")
        echo "$tree $sc $(( (i2 - i1) / (n2 - n1) ))"
    done
done
