# midge.session: packet identifier allocation and delivery state.
from midge.message import Message
from midge.session import Session, PID, MSG, QOS, STATE, AWAIT_ACK, AWAIT_COMP


def _inflight(s, pid):
    s.add_inflight([pid, Message("t", b"x", 1, False), 1, False, AWAIT_ACK])


def test_new_session_fields():
    s = Session("c1", False, 1234)
    assert s.client_id == "c1" and s.clean is False
    assert s.last_seen_ms == 1234
    assert s.conn is None and s.will is None
    assert s.subs == {} and len(s.inflight) == 0 and len(s.queue) == 0
    assert not s.has_pending()


def test_next_pid_sequential_and_nonzero():
    s = Session("c", True, 0)
    assert [s.next_pid() for _ in range(5)] == [1, 2, 3, 4, 5]


def test_next_pid_skips_in_use():
    s = Session("c", True, 0)
    for pid in (1, 2, 4):
        _inflight(s, pid)
    assert s.next_pid() == 3  # [MQTT-2.3.1-2]: not one still in use
    assert s.next_pid() == 5
    _inflight(s, 6)
    _inflight(s, 7)
    assert s.next_pid() == 8


def test_next_pid_wraps_at_65535():
    s = Session("c", True, 0)
    s._next_pid = 65534
    got = [s.next_pid() for _ in range(4)]
    assert got == [65534, 65535, 1, 2]
    assert 0 not in got


def test_next_pid_wrap_skips_in_use():
    s = Session("c", True, 0)
    _inflight(s, 65535)
    _inflight(s, 1)
    _inflight(s, 2)
    s._next_pid = 65534
    assert s.next_pid() == 65534
    assert s.next_pid() == 3       # 65535, 1, 2 are in use, never 0
    assert s.next_pid() == 4


def test_pids_unique_over_a_full_cycle():
    s = Session("c", True, 0)
    window = []
    seen_zero = False
    for i in range(70000):
        pid = s.next_pid()
        if pid == 0:
            seen_zero = True
        assert pid not in window
        _inflight(s, pid)
        window.append(pid)
        if len(window) > 10:  # acknowledge the oldest, like a client would
            old = window.pop(0)
            s.inflight.remove(s.find_inflight(old))
    assert not seen_zero


def test_find_inflight():
    s = Session("c", True, 0)
    _inflight(s, 10)
    _inflight(s, 11)
    e = s.find_inflight(11)
    assert e is not None and e[PID] == 11 and e[QOS] == 1 and e[STATE] == AWAIT_ACK
    assert e[MSG].topic == "t"
    assert s.find_inflight(12) is None
    e[STATE] = AWAIT_COMP
    assert s.find_inflight(11)[STATE] == AWAIT_COMP


def test_has_pending_and_clear():
    s = Session("c", False, 0)
    m1 = Message("a", b"1", 1, False)
    s.add_queued((m1, 1))
    s.queued_bytes = m1.size()
    assert s.has_pending()
    s.queue = []
    assert not s.has_pending()
    s.backlog = {"a": (m1, 1)}
    assert s.has_pending()
    s.backlog = {}
    assert not s.has_pending()
    _inflight(s, 5)
    assert not s.has_pending() and s.holds_messages()
    s.resend = 1
    assert s.has_pending()
    s.add_in_qos2(9)
    s.add_queued((m1, 1))
    s.clear_delivery_state()
    assert len(s.inflight) == 0 and len(s.queue) == 0 and s.queued_bytes == 0
    assert s.backlog is None and s.resend == 0 and len(s.in_qos2) == 0
    assert not s.has_pending() and not s.holds_messages()


def test_resend_count_follows_acknowledged_entries():
    # the last `resend` inflight entries wait to be sent again; an entry
    # acknowledged before its resend needs none, one already resent keeps
    # the count
    s = Session("c", False, 0)
    for pid in (1, 2, 3, 4):
        _inflight(s, pid)
    s.resend = 2            # 1 and 2 were resent already, 3 and 4 wait
    s.drop_inflight(s.find_inflight(1))
    assert s.resend == 2
    s.drop_inflight(s.find_inflight(4))
    assert s.resend == 1 and [e[PID] for e in s.inflight] == [2, 3]
    assert s.inflight[len(s.inflight) - s.resend][PID] == 3


def test_containers_start_shared_and_return_to_empty():
    # an idle session holds no containers of its own (class-level empty
    # tuples); the add_/drop_/pop_ helpers create and release them
    s = Session("c", True, 0)
    t = Session("d", True, 0)
    assert s.inflight is t.inflight and s.queue is t.queue and s.in_qos2 is t.in_qos2
    e = [1, Message("t", b"x", 1, False), 1, False, AWAIT_ACK]
    s.add_inflight(e)
    assert len(s.inflight) == 1 and len(t.inflight) == 0
    s.drop_inflight(e)
    assert s.inflight == ()
    m1 = Message("t", b"x", 1, False)
    s.add_queued((m1, 1))
    s.add_queued((m1, 0))
    assert s.pop_queued() == (m1, 1) and len(s.queue) == 1
    assert s.pop_queued() == (m1, 0) and s.queue == ()
    s.add_in_qos2(5)
    s.add_in_qos2(6)
    s.drop_in_qos2(5)
    assert 6 in s.in_qos2 and 5 not in s.in_qos2
    s.drop_in_qos2(6)
    s.drop_in_qos2(7)  # unknown pid: nothing happens
    assert s.in_qos2 == ()
    assert len(t.queue) == 0 and len(t.in_qos2) == 0
