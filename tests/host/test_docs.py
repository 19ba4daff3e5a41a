"""The README's configuration reference and board table stay true to the code."""
import json
import os
import re

from midge.broker import COUNTERS
from midge.listeners import ACCESS_COUNTERS, TLS_COUNTERS
from midge.config import SPEC, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _readme():
    with open(os.path.join(ROOT, "README.md")) as f:
        return f.read()


def _table_rows(text, header_start):
    """Rows (lists of cells) of the markdown table whose header begins with header_start."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(header_start):
            rows = []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                rows.append([c.strip() for c in row.strip().strip("|").split("|")])
            return rows
    raise AssertionError("table %r not found in README" % header_start)


def _fmt_default(v):
    if v is None:
        return "unset"
    if isinstance(v, list):
        return "[]" if not v else str(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def test_every_config_key_documented_with_default_and_range():
    rows = _table_rows(_readme(), "| key | default | range |")
    documented = {r[0].strip("`"): r for r in rows}
    assert set(documented) == set(SPEC), set(documented) ^ set(SPEC)
    for key, (default, low, high) in SPEC.items():
        row = documented[key]
        assert row[1].strip("`") == _fmt_default(default), (key, row[1])
        if default is None or isinstance(default, bool):
            assert row[2] == "true, false", (key, row[2])
            continue
        if isinstance(default, list):
            assert row[2] == "list of listeners", (key, row[2])
            continue
        if isinstance(default, int):
            assert row[2] == "%d..%d" % (low, high), (key, row[2])
        elif low is not None:
            assert row[2] == ", ".join(low), (key, row[2])
        elif high is not None:
            assert row[2] == "at most %d bytes" % high, (key, row[2])


def test_every_counter_documented():
    text = _readme()
    for name in COUNTERS + ACCESS_COUNTERS + TLS_COUNTERS:
        assert "`%s`" % name in text, name


def test_board_table_matches_board_files():
    rows = _table_rows(_readme(), "| key | generic | host | esp32 | pico_w |")
    table = {r[0].strip("`"): r for r in rows}
    for col, board in ((2, "host"), (3, "esp32"), (4, "pico_w")):
        with open(os.path.join(ROOT, "boards", board, "board.json")) as f:
            data = json.load(f)
        cfg = load_config(data["config"])  # board files hold only valid keys
        for key in data["config"]:
            assert table[key][col] == str(cfg[key]), (board, key)
        for field in ("device_heap_bytes", "unix_heapsize", "tcp_sockets"):
            assert table[field][col] == str(data.get(field, "")), (board, field)


def test_sys_topics_documented():
    text = _readme()
    from midge.broker import Broker
    from midge.sys_topics import snapshot
    b = Broker(load_config())
    for topic, _ in snapshot(b):
        leaf = topic[len("$SYS/broker/"):]
        if leaf.startswith("counters/"):
            continue
        assert re.search(r"`(\$SYS/broker/)?%s`" % re.escape(leaf), text), leaf
