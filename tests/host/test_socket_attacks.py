"""Issue 8: no client can exhaust the heap or lock everyone out.

Every attack of tools/attacks.py against the working tree's midge, the way
`make run` runs it (MicroPython unix port, the .mpy bundle, the board's
unix_heapsize, --board NAME), on both boards. Each test gets a fresh broker
and asserts the contract (README, "Heap contract" and the caps): the broker
stays up, a fresh client completes a publish round trip afterwards, the
heap comes back to its baseline once the attacker has gone, the attacker is
closed where the contract closes it (1a/1b/1c: output_overflows) and
answered where it answers (2a-2d), a bystander connected before the attack
stays connected and is served, and the right counter moves.

Speed is measured by tools/attack_report.py, never asserted here (attack 7
asserts that every client got in and the listen queue never overflowed,
not how fast). About 2 to 3 minutes for both boards.
"""
import json
import os

import pytest

from hardening import attacks

BOARDS = ["esp32", "pico_w"]

# Heap after the attacker has gone minus before it came ($SYS/broker/heap/alloc,
# after gc.collect(); the smaller of two $SYS rounds, or of four when those two
# are over 2 KB: connections may still be closing; bytes). What honestly stays:
# - the harness alone: 0-0.2 KB (attack "noop");
# - attacks that leave nothing behind, at 5eedceb: 0-1.2 KB (route cache
#   entries for the attack's topics, $SYS values with more digits, dict
#   tables and MicroPython's poll array at their high-water mark: they never
#   shrink);
# - the working tree of 2026-12-02 06:20 UTC left one step of 3.8-8.5 KB
#   after the first output overflow (1a, 1b, 1c) that did not grow when the
#   attack was repeated: a stale reference. asyncio's IO queue keeps a
#   removed entry's value (the closed Stream, with its unsent out_buf) in its
#   dict table until the slot is reused (MicroPython dicts keep a deleted
#   value); compat.close_stream now empties the stream's buffer, and the step
#   is 0.4-0.9 KB.
# 8 KB passes those and fails every leak the attacks of issue 8 left at
# 5eedceb: 12 KB (1c) to 171 KB (1a), a leaked connection with its unsent
# output or a session queue that could not be delivered.
HEAP_MARGIN = 8192


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    """The working tree's lib/midge, copied and compiled once for the file."""
    if attacks.bench_brokers.micropython_path() is None:
        msg = "micropython not found (.venv/bin/micropython or PATH); run tools/setup.sh"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return attacks.source(None, str(tmp_path_factory.mktemp("attack-src")))


@pytest.fixture
def run_attack(src, tmp_path):
    def go(name, board):
        r = attacks.run(name, board, src, str(tmp_path))
        # shown with a failing test's captured output
        print(json.dumps(r, indent=1, sort_keys=True, default=str))
        return r
    return go


def _brief(r):
    keys = ("attack", "board", "error", "alive", "heap_baseline", "heap_after", "heap_diff",
            "attacker_closed", "bystander_served", "fresh_ok", "fresh_error", "counters_moved",
            "figures", "log_path")
    return json.dumps(dict((k, r.get(k)) for k in keys), sort_keys=True, default=str)


def moved(r, name):
    return (r.get("counters_moved") or {}).get(name, 0)


def check_common(r, attacker_closed, heap_bound=HEAP_MARGIN):
    """What every attack must leave: a live broker that serves a new client,
    its heap back (within heap_bound of the baseline), the bystander served,
    no internal error, and the attacker closed (True), answered (False) or
    nothing to say (None)."""
    b = _brief(r)
    assert r["error"] is None, "the attack itself failed: %s\n%s" % (r["error"], b)
    assert r["alive"], "broker died: " + b
    assert r["fresh_ok"], "a fresh client failed after the attack (%s): %s" % (r["fresh_error"], b)
    assert r["heap_diff"] is not None, "no heap figure (no $SYS round after the attack): " + b
    assert abs(r["heap_diff"]) <= heap_bound, "heap after the attack %+d bytes from its baseline: %s" % (
        r["heap_diff"], b)
    assert r.get("bystander_connected"), "the bystander was disconnected: " + b
    assert r.get("bystander_served"), "the bystander was not served after the attack: " + b
    if r["attack"] != "5":  # 5: a MemoryError may close a subscriber, never the publisher
        assert not r.get("monitor_closed"), "the $SYS monitor was disconnected: " + b
    if attacker_closed is not None:
        assert r["attacker_closed"] is attacker_closed, (
            "attacker %s, expected %s: %s" % ("closed" if r["attacker_closed"] else "not closed",
                                             "closed" if attacker_closed else "answered, not closed", b))
    assert moved(r, "internal_errors") == 0, "internal_errors moved: " + b
    log = r["log"]
    assert log["tracebacks"] == 0 and log["task_exception_not_retrieved"] == 0, (
        "broker log: %s\n%s" % (log["first_error"], b))


@pytest.mark.parametrize("board", BOARDS)
def test_harness_alone(run_attack, board):
    """No attack: the harness's own heap noise is well inside HEAP_MARGIN."""
    r = run_attack("noop", board)
    check_common(r, None)
    assert r["counters_moved"] == {}, _brief(r)


# --- 1: replies piling up in the output of a client that never reads ----------------------------

@pytest.mark.parametrize("board", BOARDS)
@pytest.mark.parametrize("name", ["1a", "1b", "1c"])
def test_reply_flood_closed_by_output_cap(run_attack, board, name):
    """Closed by the output cap, or, on a heap fragmented past what the
    output needs (no 4 KB block for the next write), by a MemoryError in its
    own output: either way the attacker alone, nobody else."""
    r = run_attack(name, board)
    check_common(r, True)
    who = r["log"]["memory_error_clients"]
    assert moved(r, "output_overflows") + moved(r, "memory_errors") >= 1, _brief(r)
    assert all("attacker" in c for c in who), "a MemoryError closed %s: %s" % (who, _brief(r))
    assert moved(r, "memory_errors") == len(who), _brief(r)


# --- 2: one SUBSCRIBE is answered without exhausting the heap -------------------------------

@pytest.mark.parametrize("board", BOARDS)
def test_repeated_filter_is_one_subscription(run_attack, board):
    """'#' x16 with the retained store full: one subscription, every
    retained message sent once."""
    r = run_attack("2a", board)
    check_common(r, False)
    f = r["figures"]
    assert f["suback"] and len(f["suback_code_list"]) == 16, _brief(r)
    assert f["suback_code_list"] == [0] * 16, _brief(r)
    assert f["retained_received"] == f["retained_distinct"] == f["retained_seeded"], _brief(r)


@pytest.mark.parametrize("board", BOARDS)
def test_sys_filter_x40(run_attack, board):
    """'$SYS/#' x40: past max_filters_per_packet (16) each filter gets 0x80;
    the 16 repeats are one subscription and each $SYS value comes once."""
    r = run_attack("2b", board)
    check_common(r, False)
    f = r["figures"]
    codes = f["suback_code_list"]
    assert f["suback"] and len(codes) == 40, _brief(r)
    assert codes[:16] == [0] * 16 and codes[16:] == [0x80] * 24, _brief(r)
    assert moved(r, "subscriptions_refused") >= 24, _brief(r)
    assert f["retained_received"] == f["retained_distinct"] > 0, _brief(r)


@pytest.mark.parametrize("board", BOARDS)
def test_350_filters_in_one_packet(run_attack, board):
    r = run_attack("2c", board)
    check_common(r, False)
    f = r["figures"]
    codes = f["suback_code_list"]
    assert f["suback"] and len(codes) == 350, _brief(r)
    assert codes[16:] == [0x80] * 334, _brief(r)  # past max_filters_per_packet
    assert moved(r, "subscriptions_refused") >= 334, _brief(r)


@pytest.mark.parametrize("board", BOARDS)
def test_filter_of_slashes(run_attack, board):
    """One filter of '/' x 4,080 (pico_w: as many as max_packet_size 2048
    allows): 0x80 before it is split, counted as topic_limit."""
    r = run_attack("2d", board)
    check_common(r, False)
    assert r["figures"]["suback_code_list"] == [0x80], _brief(r)
    assert moved(r, "topic_limit") == 1, _brief(r)


# --- 3: sockets that never send CONNECT -------------------------------------------------------

@pytest.mark.parametrize("board", BOARDS)
def test_preconnect_sockets_do_not_lock_out(run_attack, board):
    r = run_attack("3", board)
    check_common(r, True)
    f = r["figures"]
    assert f["legit_ok"] >= 0.9 * f["legit_attempts"], _brief(r)
    assert moved(r, "preconnect_closed") >= 1, _brief(r)


# --- 5: MemoryError is paid by the connection that caused it ----------------------------------

@pytest.mark.parametrize("board", BOARDS)
def test_offline_queue_past_heap_spares_publisher(run_attack, board):
    r = run_attack("5", board)
    check_common(r, None)
    f = r["figures"]
    assert not f["publisher_closed"], _brief(r)
    assert f["pubacks"] == f["published"] == f["planned"], _brief(r)
    assert moved(r, "memory_errors") == 0 or "pub5" not in " ".join(r["log"]["memory_error_clients"]), (
        "a MemoryError closed the publisher: " + _brief(r))
    assert moved(r, "heap_dropped") + moved(r, "queue_dropped") >= 1, _brief(r)


# --- 6: throw-away clients do not destroy acknowledged messages ------------------------------

@pytest.mark.parametrize("board", BOARDS)
def test_throwaway_ids_keep_victims_messages(run_attack, board):
    r = run_attack("6a", board)
    check_common(r, None)
    f = r["figures"]
    assert f["victim_acked"] == 5, _brief(r)
    assert f["victim_received"] == 5, _brief(r)


@pytest.mark.parametrize("board", BOARDS)
def test_queue_hogs_keep_victims_messages(run_attack, board):
    r = run_attack("6b", board)
    check_common(r, None)
    f = r["figures"]
    assert f["victim_acked"] == 5, _brief(r)
    assert f["victim_received"] == 5, _brief(r)
    assert moved(r, "queue_dropped") >= 1, _brief(r)  # the hogs paid


# --- 7: a connect storm ------------------------------------------------------------------------

@pytest.mark.parametrize("board", BOARDS)
def test_connect_storm(run_attack, board):
    """200 clients at once: all get CONNACK 0 and the kernel's listen queue
    never overflows (ListenOverflows counts the whole host: another suite
    running at the same moment could move it too)."""
    r = run_attack("7", board)
    f = r["figures"]
    # Known open finding (README "Heap contract"; seen before issue 8 too):
    # after a storm, a varying part of its connections (up to all of them,
    # about 1 KB each on the 64-bit port) can stay reachable in some runs.
    # Asserted here: it is bounded by what one storm holds while connected,
    # and does not grow over STORM_REPEATS more storms (a leak would).
    base = r["heap_baseline"]
    one_storm = f["heap_connected"] - base if f["heap_connected"] and base else None
    assert one_storm and one_storm > 0, _brief(r)
    check_common(r, None, heap_bound=one_storm + HEAP_MARGIN)
    reps = f["heap_after_repeated_storms"]
    assert reps and None not in reps, _brief(r)
    assert max(reps) - base <= one_storm + HEAP_MARGIN, _brief(r)
    assert f["connected"] == f["clients"] == 200, _brief(r)
    if f["listen_overflows"] is not None:
        assert f["listen_overflows"] == 0, _brief(r)
