#!/usr/bin/env bash
# The Eclipse Paho MQTT interoperability suites (third-party conformance
# tests: github.com/eclipse/paho.mqtt.testing, interoperability/) against
# midge as `make run` runs it: the MicroPython unix port with the ESP32
# budget, on a free port of 127.0.0.1. Not part of `make test`: the suite is
# not in this repository and CI cannot fetch it.
#
#   git clone https://github.com/eclipse/paho.mqtt.testing /tmp/paho.mqtt.testing
#   tools/paho_interop.sh /tmp/paho.mqtt.testing [5|311|both] [TEST ...]
#
# TEST: one of the suite's tests (Test.test_will_delay), all by default.
# For the MQTT 5 suite midge runs with max_keepalive_s 60: its
# test_server_keep_alive expects a broker that lowers a keep alive of 120 to
# 60 (Server Keep Alive). The 3.1.1 suite gets the defaults.
# test_subscribe_failure needs a topic the broker refuses to subscribe to (an
# ACL): it fails until midge has ACLs. Prints the suite's own report.
set -uo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
SRC=${1:?usage: tools/paho_interop.sh PAHO_TESTING_DIR [5|311|both] [TEST ...]}
WHICH=${2:-both}
shift $(( $# >= 2 ? 2 : 1 ))
SUITE="$SRC/interoperability"
[ -f "$SUITE/client_test5.py" ] || { echo "paho_interop: $SUITE/client_test5.py not found" >&2; exit 2; }
"$HERE/tools/setup.sh" --run >/dev/null || exit 1
work=$(mktemp -d)
pid=""
trap 'stop; rm -rf "$work"' EXIT
BUNDLE=$("$HERE/.venv/bin/python" "$HERE/tools/build_mpy.py")
start() {  # CONFIG-JSON: midge on a free port ($PORT), as make run starts it
    PORT=$("$HERE/.venv/bin/python" -c 'import sys; sys.path.insert(0, "'"$HERE"'/tools"); import hostlib; print(hostlib.free_port())')
    echo "$1" > "$work/midge.json"
    (cd "$HERE" && MICROPYPATH=".frozen:$BUNDLE" exec "$HERE/.venv/bin/micropython" -X heapsize=4M -m midge \
        --board esp32 --port "$PORT" --config "$work/midge.json") > "$work/broker.log" 2>&1 &
    pid=$!
    "$HERE/.venv/bin/python" -c 'import sys; sys.path.insert(0, "'"$HERE"'/tools"); import hostlib; hostlib.wait_listening('"$PORT"', timeout=10)' \
        || { cat "$work/broker.log"; exit 1; }
}
stop() {  # the broker must still be running: it exits only when stopped
    [ -n "$pid" ] || return 0
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "paho_interop: midge exited during the run"; cat "$work/broker.log"; rc=1
    fi
    kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
    pid=""
}
report() {  # the unittest summary lines of a suite's output
    grep -E "^(Ran |OK|FAILED|FAIL: test|ERROR: test)" || true
}
rc=0
cd "$SUITE" || exit 2
if [ "$WHICH" = 5 ] || [ "$WHICH" = both ]; then
    start '{"max_keepalive_s": 60, "log_level": "warning"}'
    echo "==== MQTT 5.0: client_test5.py against midge on port $PORT"
    "$HERE/.venv/bin/python" client_test5.py -p "$PORT" "$@" > "$work/out5" 2>&1 || rc=1
    report < "$work/out5"
    stop
fi
if [ "$WHICH" = 311 ] || [ "$WHICH" = both ]; then
    start '{"log_level": "warning"}'
    echo "==== MQTT 3.1.1: client_test.py against midge on port $PORT"
    # (its unittest.main() parses sys.argv again, where -p is unknown: the
    # wrapper hands it only the test names)
    "$HERE/.venv/bin/python" -c '
import runpy, sys, unittest
port, tests = sys.argv[1], sys.argv[2:]
sys.argv = ["client_test.py", "-p", port]
main = unittest.main
unittest.main = lambda *a, **k: main(*a, argv=["client_test.py"] + tests, **k)
runpy.run_path("client_test.py", run_name="__main__")' "$PORT" "$@" > "$work/out311" 2>&1 || rc=1
    report < "$work/out311"
    stop
fi
exit $rc
