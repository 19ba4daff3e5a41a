# midge: build / run / test entry points. The work is done by tools/*.sh,
# which also run without make.
#
#   make run  [BOARD=esp32|pico_w] [PORT=1883] [HOST=127.0.0.1] [INTERP=micropython|cpython]
#             [ARGS="--store DIR --config FILE ..."]   extra midge flags
#   make test [MP_HEAPSIZE=3M]     whole suite on MicroPython and CPython
#   make setup                     .venv only (tools/setup.sh)
#   make clean

BOARD ?= esp32
PORT ?= 1883
HOST ?= 127.0.0.1
INTERP ?= micropython
ARGS ?=
MP_HEAPSIZE ?= 3M

.PHONY: run test setup clean

# tools/run.sh runs tools/setup.sh --run itself (only what running needs),
# then starts the broker with -X heapsize=<unix_heapsize of
# boards/$(BOARD)/board.json>. Ctrl-C stops it and exits 0.
run:
	@BOARD="$(BOARD)" PORT="$(PORT)" HOST="$(HOST)" INTERP="$(INTERP)" tools/run.sh $(ARGS)

# tools/setup.sh --with-debian, then both interpreters; last line is the
# plain "N passed, N failed" total.
test:
	@MP_HEAPSIZE="$(MP_HEAPSIZE)" tools/test.sh

setup:
	@tools/setup.sh

clean:
	rm -rf .venv .pytest_cache .test-results
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	find . -name '*.mpy' -type f -not -path './.git/*' -delete
