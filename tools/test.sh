#!/usr/bin/env bash
# Run the whole test suite on both interpreters (what `make test` and
# .ci/run call).
#
#   tools/test.sh
#
#   1. tools/setup.sh --with-debian   (.venv, micropython, mosquitto clients)
#   2. MicroPython: the shared unit tests tests/test_*.py via tools/mptest.py
#      under `micropython -X heapsize=$MP_HEAPSIZE`
#   3. CPython: pytest over tests/ (shared tests + tests/host), junit xml in
#      .test-results/ for the counts
#
# Prints one summary line per interpreter, then, as the LAST line, the totals
# "N passed, N failed" (", N skipped" added when something was skipped).
# Exits non-zero if either run failed. A runner that fails without reporting
# a failed test (crash, no tests collected: pytest exit 5, ...) counts as one
# failure so that the totals never read "0 failed" on a failing run.
#
# Environment:
#   MP_HEAPSIZE=3M         heap cap of the MicroPython unit-test run (one process holds every
#                          test module and lib/midge compiled from source: 2M was too small
#                          once the MQTT 5 tests came)
#   MP_TIMEOUT=900         seconds before the MicroPython run is killed
#   PYTEST_ARGS="..."      extra pytest arguments, e.g. "-x -k retained"
#   MPTEST_ARGS="..."      extra mptest.py arguments, e.g. "-k codec"
#   MIDGE_SKIP_SETUP=1     do not run tools/setup.sh
set -uo pipefail   # no -e: both runs always happen, failures are counted

cd "$(dirname "$0")/.."

MP_HEAPSIZE=${MP_HEAPSIZE:-3M}
MP_TIMEOUT=${MP_TIMEOUT:-900}
RESULTS=.test-results
mkdir -p "$RESULTS"

if [ "${MIDGE_SKIP_SETUP:-0}" != "1" ]; then
    tools/setup.sh --with-debian || { echo "test: tools/setup.sh failed"; echo "0 passed, 1 failed"; exit 1; }
fi

# ---- MicroPython: shared unit tests -------------------------------------------
echo "==== micropython (-X heapsize=$MP_HEAPSIZE): tests/test_*.py"
mp_log="$RESULTS/micropython.log"
# shellcheck disable=SC2086  # MPTEST_ARGS is split on purpose
MICROPYPATH=.frozen:lib:tests:tools timeout "$MP_TIMEOUT" \
    .venv/bin/micropython -X "heapsize=$MP_HEAPSIZE" tools/mptest.py ${MPTEST_ARGS:-} tests 2>&1 \
    | tee "$mp_log"
mp_rc=${PIPESTATUS[0]}
mp_summary=$(grep -E '^micropython: [0-9]+ passed, [0-9]+ failed$' "$mp_log" | tail -n 1)
if [ -n "$mp_summary" ]; then
    mp_passed=$(echo "$mp_summary" | sed -E 's/^micropython: ([0-9]+) passed.*/\1/')
    mp_failed=$(echo "$mp_summary" | sed -E 's/.* ([0-9]+) failed$/\1/')
else
    mp_passed=0
    mp_failed=0
fi
if [ "$mp_rc" != "0" ] && [ "$mp_failed" = "0" ]; then
    # Crash, timeout (124) or no test ran: count the run itself as a failure.
    echo "micropython: runner exited with status $mp_rc"
    mp_failed=$((mp_failed + 1))
fi

# ---- CPython: pytest over tests/ -----------------------------------------------
echo "==== cpython: pytest tests/"
junit="$RESULTS/junit-cpython.xml"
rm -f "$junit"
# shellcheck disable=SC2086
.venv/bin/python -m pytest --junitxml="$junit" ${PYTEST_ARGS:-}
py_rc=$?
# Count test cases from the junit xml: one <testcase> per test; a failure or
# error element (setup, call or teardown; collection errors too) -> failed,
# skipped (xfail included) -> skipped, else passed.
read -r py_passed py_failed py_skipped < <(.venv/bin/python - "$junit" <<'EOF'
import sys
import xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except (OSError, ET.ParseError):
    print(0, 0, 0)
    sys.exit()
p = f = s = 0
for case in root.iter("testcase"):
    tags = {child.tag for child in case}
    if tags & {"failure", "error"}:
        f += 1
    elif "skipped" in tags:
        s += 1
    else:
        p += 1
print(p, f, s)
EOF
)
py_passed=${py_passed:-0}; py_failed=${py_failed:-0}; py_skipped=${py_skipped:-0}
if [ "$py_rc" != "0" ] && [ "$py_failed" = "0" ]; then
    case "$py_rc" in
        5) echo "cpython: pytest collected no tests (exit 5)" ;;
        *) echo "cpython: pytest exited with status $py_rc" ;;
    esac
    py_failed=$((py_failed + 1))
fi

# ---- summary ---------------------------------------------------------------------
passed=$((mp_passed + py_passed))
failed=$((mp_failed + py_failed))
skipped=$py_skipped
py_line="cpython: $py_passed passed, $py_failed failed"
[ "$py_skipped" != "0" ] && py_line="$py_line, $py_skipped skipped"
total_line="$passed passed, $failed failed"
[ "$skipped" != "0" ] && total_line="$total_line, $skipped skipped"

echo
echo "micropython: $mp_passed passed, $mp_failed failed"
echo "$py_line"
echo "$total_line"
if [ "$mp_rc" != "0" ] || [ "$py_rc" != "0" ] || [ "$failed" != "0" ]; then
    exit 1
fi
exit 0
