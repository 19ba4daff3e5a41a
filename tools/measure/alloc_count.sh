#!/usr/bin/env bash
# Allocations per routed QoS 0 message: callgrind counts the calls to
# MicroPython's gc_alloc while tools/measure/alloc_report.py routes N and 3N
# messages; the difference over 2N is the count per message (start-up and
# warm-up cancel out). Needs valgrind (Debian package).
#
#   tools/measure/alloc_count.sh [TREE] [N]     TREE: a checkout of midge (default: this one)
#
# Prints one line per mode: cached routes (the fast path) and full path.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/../.." && pwd)
TREE=${1:-$HERE}
N=${2:-1000}
MP="$HERE/.venv/bin/micropython"
command -v valgrind >/dev/null || { echo "alloc_count: valgrind not found (apt-get install valgrind)" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
count() {  # mode n -> gc_alloc calls
    (cd "$TREE" && MICROPYPATH=".frozen:lib:$HERE/tools" valgrind --tool=callgrind \
        --callgrind-out-file="$out/cg" "$MP" -X heapsize=64M "$HERE/tools/measure/alloc_report.py" "$2" "$1" >/dev/null 2>&1)
    "$HERE/.venv/bin/python" - "$out/cg" <<'PY'
import re, sys
names, total, cur = {}, 0, None
for line in open(sys.argv[1]):
    m = re.match(r'(c?fn)=\((\d+)\)(?: (.*))?', line.strip())
    if m:
        kind, fid, name = m.groups()
        if name:
            names[fid] = name.strip()
        if kind == 'cfn':
            cur = names.get(fid)
        continue
    m = re.match(r'calls=(\d+)', line)
    if m and cur == 'gc_alloc':
        total += int(m.group(1))
print(total)
PY
}
for mode in cached full; do
    a=$(count "$mode" "$N")
    b=$(count "$mode" $((3 * N)))
    "$HERE/.venv/bin/python" -c "import sys; a, b, n = map(int, sys.argv[1:4]); print('%-6s routes: %.2f allocations per routed QoS 0 message' % (sys.argv[4], (b - a) / (2 * n)))" "$a" "$b" "$N" "$mode"
done
