#!/usr/bin/env bash
# Start the midge broker in the foreground with a board's budget.
#
#   tools/run.sh [extra midge args...]        (what `make run` calls; make
#                                               passes ARGS="..." as the extra args)
#
# Environment (all optional; `make run` passes its variables of the same name):
#   BOARD=esp32|pico_w   board profile boards/$BOARD/board.json   (default esp32)
#   HOST=127.0.0.1       address to listen on
#   PORT=1883            TCP port
#   INTERP=micropython   micropython: unix port with -X heapsize=<unix_heapsize
#                        of the board> on the .mpy bundle (tools/build_mpy.py),
#                        the closest thing to the device here;
#                        cpython: .venv/bin/python (debugging)
#   HEAPSIZE=...         override the board's unix_heapsize (micropython only)
#   MIDGE_SKIP_SETUP=1   do not run tools/setup.sh first
# Extra arguments go to midge unchanged, e.g. `tools/run.sh --config my.json`.
# Only what running needs is installed (tools/setup.sh --run).
# Ctrl-C stops the broker and exits 0: on a terminal the broker runs as the
# terminal's foreground job (set -m), so the interrupt reaches the broker,
# which stops cleanly, and not make, which would report "*** Interrupt".
set -euo pipefail

cd "$(dirname "$0")/.."

BOARD=${BOARD:-esp32}
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-1883}
INTERP=${INTERP:-micropython}

if [ "${MIDGE_SKIP_SETUP:-0}" != "1" ]; then
    tools/setup.sh --run
fi

board_json="boards/$BOARD/board.json"
if [ ! -f "$board_json" ]; then
    echo "run: no board '$BOARD' ($board_json missing); boards: $(ls boards | grep -v '\.md$' | tr '\n' ' ')" >&2
    exit 2
fi

# run_broker CMD...: on a terminal, CMD is a job of its own, in the
# foreground (it alone gets Ctrl-C); otherwise exec (it gets the signals
# sent to this script: SIGTERM stops it).
run_broker() {
    if [ -t 0 ]; then
        set -m
        "$@"
        exit $?
    fi
    exec "$@"
}

case "$INTERP" in
    micropython)
        if [ -z "${HEAPSIZE:-}" ]; then
            HEAPSIZE=$(.venv/bin/python -c 'import json, sys; print(json.load(open(sys.argv[1]))["unix_heapsize"])' "$board_json")
        fi
        # the compiled bundle, as a board runs it (tools/build_mpy.py)
        bundle=$(.venv/bin/python tools/build_mpy.py)
        echo "run: midge on MicroPython (.mpy bundle), board $BOARD, -X heapsize=$HEAPSIZE, $HOST:$PORT" >&2
        run_broker env MICROPYPATH=".frozen:$bundle" .venv/bin/micropython -X "heapsize=$HEAPSIZE" \
            -m midge --board "$BOARD" --host "$HOST" --port "$PORT" "$@"
        ;;
    cpython)
        echo "run: midge on CPython, board $BOARD, $HOST:$PORT" >&2
        run_broker env PYTHONPATH=lib .venv/bin/python -m midge --board "$BOARD" --host "$HOST" --port "$PORT" "$@"
        ;;
    *)
        echo "run: INTERP must be micropython or cpython, not '$INTERP'" >&2
        exit 2
        ;;
esac
