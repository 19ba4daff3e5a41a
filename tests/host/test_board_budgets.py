"""Each board's caps fit its own heap: a store filled to every cap (sessions,
subscriptions, queues, retained) survives SIGKILL and loads again under the
board's unix heap cap, with everything in it. Figures are printed by
tools/store_heap.py, not asserted here."""
import os

import pytest

import brokerproc
from measure import store_heap


@pytest.mark.parametrize("board", ["esp32", "pico_w"])
def test_full_store_loads_within_board_heap(board):
    if brokerproc.find_micropython() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("micropython not found (CI)")
        pytest.skip("micropython not found")
    fig = store_heap.measure(board)
    with open(fig["log"]) as f:
        log = f.read()
    assert "Traceback" not in log and "memory allocation failed" not in log, log[-3000:]
    assert fig["sessions_loaded"] == fig["sessions"]
    assert fig["retained_loaded"] == fig["retained_messages"]
