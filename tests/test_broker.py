# midge.broker: the core without sockets, driven through the connection
# interface with FakeConn (tools/fakeconn.py) and an injected clock.
import mqttspec as m
from fakeconn import (
    Clock, FakeConn, wrap_start, make_broker, mkconnect, connect, join, sub, pub,
    publishes, payloads, raises_protocol, fails_once,
)
from midge.message import Message
from midge.session import AWAIT_COMP


# --- CONNECT ----------------------------------------------------------------------

def test_connect_accepted():
    b = make_broker()
    conn, ok, ack = connect(b, "c1", keepalive_s=30)
    assert ok and ack["rc"] == 0 and ack["session_present"] == 0
    assert conn.session is not None and conn.session.client_id == "c1"
    assert conn.session.conn is conn
    assert conn.keepalive_ms == 30000
    assert b.online == 1 and len(b.sessions) == 1


def test_connect_not_authorized():
    b = make_broker(allow_anonymous=False)
    conn, ok, ack = connect(b, "c1")
    assert not ok and ack["rc"] == 5 and ack["session_present"] == 0
    assert conn.session is None and b.online == 0 and len(b.sessions) == 0


def test_connect_empty_client_id():
    b = make_broker()
    # clean 0 with an empty id: identifier rejected [MQTT-3.1.3-8]
    conn, ok, ack = connect(b, "", clean=False)
    assert not ok and ack["rc"] == 2
    assert len(b.sessions) == 0
    # clean 1: the broker assigns a unique id [MQTT-3.1.3-6]
    c1 = join(b, "")
    c2 = join(b, "")
    id1 = c1.session.client_id
    id2 = c2.session.client_id
    assert id1 != "" and id2 != "" and id1 != id2
    assert b.online == 2


def test_connect_client_id_length_cap():
    b = make_broker(max_client_id_length=23)
    conn, ok, ack = connect(b, "x" * 24)
    assert not ok and ack["rc"] == 2
    join(b, "y" * 23)  # 23 must always be accepted [MQTT-3.1.3-5]


def test_session_present_flag():
    b = make_broker()
    c = join(b, "p", clean=False)
    sub(b, c, "a/b", 1)
    b.detach(c, True)
    assert "p" in b.sessions and b.online == 0
    c, ok, ack = connect(b, "p", clean=False)
    assert ack["session_present"] == 1  # [MQTT-3.2.2-2]
    assert c.session.subs == {"a/b": 1}
    b.detach(c, True)
    c, ok, ack = connect(b, "p", clean=True)
    assert ack["session_present"] == 0  # [MQTT-3.2.2-1]
    assert c.session.subs == {}
    assert b.subs.count == 0


def test_first_connect_clean0_no_session_present():
    b = make_broker()
    c, ok, ack = connect(b, "fresh", clean=False)
    assert ok and ack["session_present"] == 0  # [MQTT-3.2.2-3]


def test_clean_session_dropped_on_detach():
    b = make_broker()
    c = join(b, "c", clean=True)
    sub(b, c, "a/#", 1)
    assert b.subs.count == 1
    b.detach(c, False)
    assert "c" not in b.sessions
    assert b.subs.count == 0
    assert c.session is None
    b.detach(c, False)  # idempotent
    assert b.online == 0


def test_will_on_unclean_detach():
    b = make_broker()
    watcher = join(b, "w")
    sub(b, watcher, "will/#", 1)
    c = join(b, "dying", will=("will/dying", b"gone", 1, False))
    b.detach(c, False)
    got = publishes(watcher.take())
    assert len(got) == 1
    assert got[0]["topic"] == "will/dying" and got[0]["payload"] == b"gone" and got[0]["qos"] == 1


def test_no_will_on_clean_detach():
    # DISCONNECT discards the will [MQTT-3.14.4-3]
    b = make_broker()
    watcher = join(b, "w")
    sub(b, watcher, "will/#", 1)
    c = join(b, "leaving", will=("will/leaving", b"gone", 1, False))
    b.detach(c, True)
    assert watcher.take() == []


def test_will_retained():
    b = make_broker()
    c = join(b, "d", will=("status/d", b"offline", 0, True))
    b.detach(c, False)
    late = join(b, "late")
    sub(b, late, "status/+", 1)
    got = publishes(late.take())
    assert len(got) == 1 and got[0]["payload"] == b"offline" and got[0]["retain"] == 1


def test_will_topic_with_wildcard_is_protocol_error():
    b = make_broker()
    conn = FakeConn()
    e = raises_protocol(b.connect, conn, mkconnect("x", will=("a/#", b"p", 0, False)))
    assert e is not None
    assert conn.session is None and len(b.sessions) == 0


def test_will_topic_over_topic_limits_is_protocol_error():
    b = make_broker(max_topic_length=8, max_topic_levels=2)
    for topic in ("a/b/c", "abcdefghi", "\u00e9\u00e9\u00e9\u00e9\u00e9"):
        conn = FakeConn()
        e = raises_protocol(b.connect, conn, mkconnect("x", will=(topic, b"p", 0, False)))
        assert e is not None and e.counter == "topic_limit", topic
        assert conn.session is None and conn.out == b""
    assert len(b.sessions) == 0


def test_will_to_sys_dropped():
    b = make_broker()
    mon = join(b, "mon")
    sub(b, mon, "$SYS/#", 0)
    assert "$SYS/broker/uptime" in [p["topic"] for p in publishes(mon.take())]  # the values of now
    c = join(b, "c", will=("$SYS/broker/fake", b"1", 0, True))
    b.detach(c, False)
    assert mon.take() == []
    assert b.counters["sys_publish_dropped"] == 1
    assert b.retained.total == 0
    # only $SYS itself is reserved, not every '$' topic
    c = join(b, "c2", will=("$SYSTEM/x", b"2", 0, False))
    watcher = join(b, "w")
    sub(b, watcher, "$SYSTEM/#", 0)
    b.detach(c, False)
    assert payloads(watcher.take()) == [b"2"]


def test_takeover_of_a_persistent_session_closes_old_without_its_will():
    # clean session 0 resumed by clean session 0: the device came back, so
    # its will (which would report it offline) is not published
    b = make_broker()
    watcher = join(b, "w")
    sub(b, watcher, "will/+", 0)
    old = join(b, "dup", clean=False, will=("will/dup", b"old-will", 0, False))
    sub(b, old, "x", 1)
    new, ok, ack = connect(b, "dup", clean=False)
    assert ok and ack["rc"] == 0
    assert ack["session_present"] == 1
    assert old.closed == 1
    assert old.session is None
    assert new.session.conn is new
    assert new.session.subs == {"x": 1}
    assert b.online == 2  # watcher + new
    assert payloads(watcher.take()) == []
    # the old connection reports its close later: nothing more happens
    b.detach(old, False)
    assert b.online == 2
    assert watcher.take() == []
    assert new.session is not None and b.sessions["dup"].conn is new


def test_takeover_publishes_the_will_unless_both_are_persistent():
    # [MQTT-3.1.4-2]: the old connection did not send DISCONNECT; its will
    # goes out when either side asked for a clean session
    for old_clean, new_clean in ((True, True), (True, False), (False, True)):
        b = make_broker()
        watcher = join(b, "w")
        sub(b, watcher, "will/+", 0)
        old = join(b, "dup", clean=old_clean, will=("will/dup", b"old-will", 0, False))
        new, ok, ack = connect(b, "dup", clean=new_clean)
        assert ok and ack["rc"] == 0 and old.closed == 1
        assert payloads(watcher.take()) == [b"old-will"], (old_clean, new_clean)


def test_takeover_with_clean_session():
    b = make_broker()
    old = join(b, "dup", clean=True)
    sub(b, old, "x", 1)
    new, ok, ack = connect(b, "dup", clean=True)
    assert ok and ack["session_present"] == 0
    assert old.closed == 1
    assert new.session.subs == {}
    assert b.subs.count == 0
    assert b.online == 1 and len(b.sessions) == 1


def test_max_sessions_evicts_least_recently_seen_offline():
    clock = Clock()
    b = make_broker(clock, max_sessions=2)
    a = join(b, "a", clean=False)
    z = join(b, "z", clean=False)
    clock.advance(1000)
    b.detach(z, True)   # z seen earlier
    clock.advance(1000)
    b.detach(a, True)   # a seen last
    clock.advance(1000)
    join(b, "new")
    assert "z" not in b.sessions and "a" in b.sessions and "new" in b.sessions
    assert b.counters["sessions_evicted"] == 1
    assert len(b.sessions) == 2


def test_max_sessions_refused_when_all_online():
    b = make_broker(max_sessions=2)
    join(b, "a")
    join(b, "b")
    conn, ok, ack = connect(b, "c")
    assert not ok and ack["rc"] == 3 and ack["session_present"] == 0
    assert b.counters["sessions_refused"] == 1
    assert "c" not in b.sessions and b.online == 2
    # an existing id can still take over
    conn, ok, ack = connect(b, "a")
    assert ok and ack["rc"] == 0


def test_max_sessions_eviction_with_wrapped_clock():
    clock = Clock(wrap_start(1500))
    b = make_broker(clock, max_sessions=2)
    a = join(b, "a", clean=False)
    z = join(b, "z", clean=False)
    b.detach(z, True)        # before the wrap
    clock.advance(3000)      # past the wrap on MicroPython
    b.detach(a, True)
    clock.advance(10)
    join(b, "new")
    assert "z" not in b.sessions and "a" in b.sessions


# --- routing -------------------------------------------------------------------------

def test_routing_qos_downgrade():
    # delivered at min(granted, published) [MQTT-3.8.4-6]
    b = make_broker()
    c = join(b, "c")
    sub(b, c, "q1", 1)
    sub(b, c, "q2", 2)
    sub(b, c, "q0", 0)
    for topic in ("q0", "q1", "q2"):
        for qos in (0, 1, 2):
            pub(b, topic, b"p", qos)
            got = publishes(c.take())
            assert len(got) == 1, (topic, qos)
            want = min(qos, int(topic[1]))
            assert got[0]["qos"] == want, (topic, qos)
            if want == 1:
                b.flow.puback(c.session, got[0]["pid"])
            elif want == 2:
                b.flow.pubrec(c.session, got[0]["pid"])
                c.take()
                b.flow.pubcomp(c.session, got[0]["pid"])
    assert len(c.session.inflight) == 0


def test_live_forwarding_clears_retain():
    b = make_broker()
    c = join(b, "c")
    sub(b, c, "t", 1)
    pub(b, "t", b"r", 1, retain=True)
    got = publishes(c.take())
    assert got[0]["retain"] == 0 and got[0]["payload"] == b"r"  # [MQTT-3.3.1-9]


def test_overlapping_subscriptions_one_delivery():
    b = make_broker()
    c = join(b, "c")
    sub(b, c, "a/#", 0)
    sub(b, c, "a/+", 2, pid=2)
    sub(b, c, "#", 1, pid=3)
    pub(b, "a/b", b"once", 2)
    got = publishes(c.take())
    assert len(got) == 1 and got[0]["qos"] == 2


def test_no_delivery_without_match_and_dollar_rule():
    b = make_broker()
    c = join(b, "c")
    sub(b, c, "#", 0)
    pub(b, "$SYS/x", b"1")
    pub(b, "$private", b"1")
    assert c.take() == []
    pub(b, "x", b"1")
    assert payloads(c.take()) == [b"1"]


def test_publisher_gets_own_message():
    b = make_broker()
    c = join(b, "c")
    sub(b, c, "echo", 0)
    pub(b, "echo", b"me")
    assert payloads(c.take()) == [b"me"]
    assert b.msgs_out == 1


def test_pids_and_payload_of_qos1_delivery():
    b = make_broker()
    c = join(b, "c")
    sub(b, c, "t", 1)
    for i in range(3):
        pub(b, "t", b"m%d" % i, 1)
    got = publishes(c.take())
    assert [p["payload"] for p in got] == [b"m0", b"m1", b"m2"]
    pids = [p["pid"] for p in got]
    assert 0 not in pids and len(set(pids)) == 3
    assert all(p["dup"] == 0 for p in got)


# --- flow control and caps --------------------------------------------------------------------

def test_inflight_window_and_queue():
    b = make_broker(max_inflight=2)
    c = join(b, "c")
    sub(b, c, "t", 1)
    for i in range(5):
        pub(b, "t", b"%d" % i, 1)
    got = publishes(c.take())
    assert [p["payload"] for p in got] == [b"0", b"1"]
    s = c.session
    assert len(s.inflight) == 2 and len(s.queue) == 3
    b.flow.puback(s, got[0]["pid"])
    nxt = publishes(c.take())
    assert [p["payload"] for p in nxt] == [b"2"]
    b.flow.puback(s, got[1]["pid"])
    b.flow.puback(s, nxt[0]["pid"])
    rest = publishes(c.take())
    assert [p["payload"] for p in rest] == [b"3", b"4"]
    assert len(s.queue) == 0 and s.queued_bytes == 0
    # a live message does not overtake queued ones
    pub(b, "t", b"5", 1)
    pub(b, "t", b"6", 1)
    assert c.take() == []
    assert [e[0].payload for e in s.queue] == [b"5", b"6"]
    assert b.counters["queue_dropped"] == 0


def test_qos0_not_limited_by_inflight_window():
    b = make_broker(max_inflight=1)
    c = join(b, "c")
    sub(b, c, "t", 1)
    pub(b, "t", b"q1", 1)
    pub(b, "t", b"q0-a", 0)
    pub(b, "t", b"q0-b", 0)
    assert payloads(c.take()) == [b"q1", b"q0-a", b"q0-b"]


def test_queue_drops_oldest_message_count():
    b = make_broker(max_queued_messages=2)
    c = join(b, "c", clean=False)
    sub(b, c, "t", 1)
    b.detach(c, True)
    for i in range(5):
        pub(b, "t", b"%d" % i, 1)
    s = b.sessions["c"]
    assert len(s.queue) == 2
    assert b.counters["queue_dropped"] == 3
    c, ok, ack = connect(b, "c", clean=False)
    assert ack["session_present"] == 1
    assert payloads(c.take()) == [b"3", b"4"]


def test_queue_drops_oldest_bytes():
    b = make_broker(max_queued_bytes=30)
    c = join(b, "c", clean=False)
    sub(b, c, "t", 1)
    b.detach(c, True)
    # each message: topic 1 byte + payload 9 bytes = 10 bytes
    for i in range(5):
        pub(b, "t", b"%09d" % i, 1)
    s = b.sessions["c"]
    assert s.queued_bytes == 30 and len(s.queue) == 3
    assert b.counters["queue_dropped"] == 2
    # one message larger than the whole cap is dropped itself
    pub(b, "t", b"x" * 40, 1)
    assert b.counters["queue_dropped"] == 3
    assert len(s.queue) == 3
    c, ok, ack = connect(b, "c", clean=False)
    assert payloads(c.take()) == [b"000000002", b"000000003", b"000000004"]


def test_queue_total_caps_over_all_sessions():
    # max_queued_total 3 over all sessions: a's two messages and b's one
    # fill it; b's next message makes room by dropping the oldest message
    # of the session holding the most (a); z, holding nothing, still gets
    # its message: the largest holder (now b) pays for it.
    b = make_broker(max_queued_total=3)
    for cid in ("a", "b", "z"):
        c = join(b, cid, clean=False)
        sub(b, c, cid, 1)
        b.detach(c, True)
    pub(b, "a", b"a0", 1)
    pub(b, "a", b"a1", 1)
    pub(b, "b", b"b0", 1)
    assert b.flow.queued_total == 3 and b.counters["queue_dropped"] == 0
    pub(b, "b", b"b1", 1)
    assert b.counters["queue_dropped"] == 1
    assert [e[0].payload for e in b.sessions["a"].queue] == [b"a1"]
    assert [e[0].payload for e in b.sessions["b"].queue] == [b"b0", b"b1"]
    pub(b, "z", b"z0", 1)
    assert [e[0].payload for e in b.sessions["z"].queue] == [b"z0"]
    assert [e[0].payload for e in b.sessions["b"].queue] == [b"b1"]
    assert b.counters["queue_dropped"] == 2 and b.flow.queued_total == 3
    # delivering and dropping sessions keep the totals exact
    c, ok, ack = connect(b, "a", clean=False)
    assert payloads(c.take()) == [b"a1"]
    assert b.flow.queued_total == 2
    c2, ok, ack = connect(b, "b", clean=True)  # discards b's session
    assert b.flow.queued_total == 1 and b.flow.queued_bytes_total == len(b"z") + len(b"z0")


def test_queue_total_cap_hoarders_cannot_starve_a_small_session():
    # Two offline '#' sessions fill max_queued_total; a session that holds a
    # few messages still receives every one of them: the hoarders pay.
    b = make_broker(max_queued_total=20)
    for cid, filt in (("h1", "#"), ("h2", "#"), ("victim", "v/t")):
        c = join(b, cid, clean=False)
        sub(b, c, filt, 1)
        b.detach(c, True)
    for i in range(40):
        pub(b, "noise/%d" % i, b"n", 1)
    assert b.flow.queued_total == 20
    for i in range(5):
        pub(b, "v/t", b"v%d" % i, 1)
    assert b.flow.queued_total == 20
    c, ok, ack = connect(b, "victim", clean=False)
    assert payloads(c.take()) == [b"v%d" % i for i in range(5)]


def test_queue_total_bytes_cap():
    b = make_broker(max_queued_bytes_total=25)
    for cid in ("p", "q"):
        c = join(b, cid, clean=False)
        sub(b, c, "t", 1)
        b.detach(c, True)
    # "t" + 9 payload bytes = 10 per message, queued once per session
    pub(b, "t", b"%09d" % 0, 1)
    assert b.flow.queued_bytes_total == 20
    pub(b, "t", b"%09d" % 1, 1)
    # 20 + 10 > 25: the largest queue pays; on a tie the receiving session
    # drops its own oldest
    assert b.flow.queued_bytes_total == 20
    assert b.counters["queue_dropped"] == 2
    for cid in ("p", "q"):
        assert [e[0].payload for e in b.sessions[cid].queue] == [b"%09d" % 1]


def test_queue_disabled():
    b = make_broker(max_queued_messages=0)
    c = join(b, "c", clean=False)
    sub(b, c, "t", 1)
    b.detach(c, True)
    pub(b, "t", b"x", 1)
    assert len(b.sessions["c"].queue) == 0
    assert b.counters["queue_dropped"] == 1


def test_qos0_not_queued_offline():
    b = make_broker()
    c = join(b, "c", clean=False)
    sub(b, c, "t", 1)
    b.detach(c, True)
    pub(b, "t", b"zero", 0)
    pub(b, "t", b"one", 1)
    s = b.sessions["c"]
    assert len(s.queue) == 1
    c, ok, ack = connect(b, "c", clean=False)
    assert payloads(c.take()) == [b"one"]


def test_offline_delivery_at_granted_qos():
    b = make_broker()
    c = join(b, "c", clean=False)
    sub(b, c, "t", 1)
    b.detach(c, True)
    pub(b, "t", b"two", 2)
    c, ok, ack = connect(b, "c", clean=False)
    got = publishes(c.take())
    assert len(got) == 1 and got[0]["qos"] == 1 and got[0]["dup"] == 0


def test_slow_consumer_drops_qos0_queues_qos1():
    b = make_broker()
    c = join(b, "slow", cap=20)
    sub(b, c, "t", 1)
    c.out = b"x" * 20   # 20 bytes not drained: room() == 0
    assert c.room() <= 0
    pub(b, "t", b"q0", 0)
    assert b.counters["slow_dropped"] == 1
    pub(b, "t", b"q1", 1)
    s = c.session
    assert len(s.queue) == 1 and len(s.inflight) == 0
    assert c.out == b"x" * 20   # nothing was written
    c.out = b""            # the socket drained
    b.flow.pump(s)
    got = publishes(c.take())
    assert [p["payload"] for p in got] == [b"q1"] and got[0]["qos"] == 1
    assert len(s.queue) == 0


def test_slow_consumer_others_unaffected():
    b = make_broker()
    slow = join(b, "slow", cap=16)
    fast = join(b, "fast")
    sub(b, slow, "t", 0)
    sub(b, fast, "t", 0)
    for i in range(10):
        pub(b, "t", b"%02d" % i, 0)
    assert len(payloads(fast.take())) == 10
    got = payloads(slow.take())
    assert 0 < len(got) < 10
    assert b.counters["slow_dropped"] == 10 - len(got)


def test_subscription_cap():
    b = make_broker(max_subscriptions=2)
    c = join(b, "c")
    assert sub(b, c, "a", 1) == 1
    assert sub(b, c, "b", 2) == 2
    assert sub(b, c, "c", 0) == 0x80
    assert b.counters["subscriptions_refused"] == 1
    assert sub(b, c, "a", 0) == 0  # re-subscribing an existing filter always works
    assert c.session.subs == {"a": 0, "b": 2}
    pub(b, "c", b"x")
    assert c.take() == []


def test_suback_codes_in_order_with_mixed_results():
    b = make_broker(max_topic_levels=2, max_topic_length=10)
    c = join(b, "c")
    b.subscribe(c.session, 9, [("ok/+", 2), ("a/b/c", 1), ("bad#", 0), ("x" * 11, 0), ("#", 1)])
    pkts = c.take()
    assert pkts[0]["type"] == "suback" and pkts[0]["pid"] == 9
    assert pkts[0]["codes"] == [2, 0x80, 0x80, 0x80, 1]  # [MQTT-3.8.4-5]
    assert b.counters["topic_limit"] == 2
    assert b.subs.count == 2


def test_subscribe_topic_limits():
    b = make_broker(max_topic_levels=3, max_topic_length=8)
    c = join(b, "c")
    assert sub(b, c, "a/b/c", 0) == 0
    assert sub(b, c, "a/b/c/d", 0) == 0x80
    assert sub(b, c, "abcdefgh", 0) == 0
    assert sub(b, c, "abcdefghi", 0) == 0x80
    assert b.counters["topic_limit"] == 2


def test_unsubscribe():
    b = make_broker()
    c = join(b, "c")
    sub(b, c, "a/+", 1)
    sub(b, c, "b", 1)
    b.unsubscribe(c.session, 77, ["a/+", "not-subscribed"])
    pkts = c.take()
    assert len(pkts) == 1 and pkts[0]["type"] == "unsuback" and pkts[0]["pid"] == 77
    assert c.session.subs == {"b": 1}
    assert b.subs.count == 1
    pub(b, "a/x", b"1", 1)
    assert c.take() == []
    pub(b, "b", b"2", 0)
    assert payloads(c.take()) == [b"2"]


# --- retained ----------------------------------------------------------------------------------

def test_retained_sent_on_subscribe_with_retain_flag():
    b = make_broker()
    pub(b, "s/a", b"A", 2, retain=True)
    pub(b, "s/b", b"B", 0, retain=True)
    c = join(b, "c")
    assert sub(b, c, "s/+", 1) == 1
    got = publishes(c.take())
    assert len(got) == 2
    byp = {}
    for p in got:
        byp[p["payload"]] = p
    assert byp[b"A"]["retain"] == 1 and byp[b"A"]["qos"] == 1  # min(1, 2)
    assert byp[b"B"]["retain"] == 1 and byp[b"B"]["qos"] == 0
    b.flow.puback(c.session, byp[b"A"]["pid"])
    # re-subscribing the same filter sends them again [MQTT-3.8.4-3]
    assert sub(b, c, "s/+", 0, pid=2) == 0
    got = publishes(c.take())
    assert len(got) == 2 and all(p["retain"] == 1 and p["qos"] == 0 for p in got)


def test_retained_replaced_and_cleared():
    b = make_broker()
    watcher = join(b, "w")
    sub(b, watcher, "t", 0)
    pub(b, "t", b"v1", 0, retain=True)
    pub(b, "t", b"v2", 0, retain=True)
    pub(b, "t", b"", 0, retain=True)          # clears, and is forwarded live
    assert payloads(watcher.take()) == [b"v1", b"v2", b""]
    late = join(b, "late")
    sub(b, late, "t", 0)
    assert late.take() == []
    assert b.retained.count == 0


def test_retained_cap_refused_still_delivered_live():
    b = make_broker(max_retained_messages=1)
    watcher = join(b, "w")
    sub(b, watcher, "#", 0)
    pub(b, "a", b"1", 0, retain=True)
    pub(b, "b", b"2", 0, retain=True)
    assert payloads(watcher.take()) == [b"1", b"2"]
    assert b.counters["retained_refused"] == 1
    late = join(b, "late")
    sub(b, late, "#", 0)
    assert payloads(late.take()) == [b"1"]


def test_retained_backlog_pumped_by_inflight_window():
    b = make_broker(max_inflight=1)
    for i in range(3):
        pub(b, "r/%d" % i, b"%d" % i, 1, retain=True)
    c = join(b, "c")
    sub(b, c, "r/#", 1)
    s = c.session
    got = publishes(c.take())
    assert len(got) == 1 and got[0]["retain"] == 1
    seen = [got[0]["payload"]]
    for _ in range(2):
        b.flow.puback(s, got[0]["pid"])
        got = publishes(c.take())
        assert len(got) == 1 and got[0]["retain"] == 1
        seen.append(got[0]["payload"])
    b.flow.puback(s, got[0]["pid"])
    assert c.take() == []
    seen.sort()
    assert seen == [b"0", b"1", b"2"]
    assert not s.has_pending()


def test_retained_backlog_pumped_as_buffer_drains():
    b = make_broker()
    for i in range(6):
        pub(b, "r/%d" % i, b"payload-%d" % i, 0, retain=True)
    c = join(b, "c", cap=30)
    sub(b, c, "r/+", 0)
    s = c.session
    seen = []
    rounds = 0
    while True:
        got = publishes(c.take())
        if not got:
            break
        assert all(p["retain"] == 1 for p in got)
        seen += [p["payload"] for p in got]
        b.flow.pump(s)   # the connection drained
        rounds += 1
    assert rounds > 1   # the cap held some back for later
    seen.sort()
    assert seen == [b"payload-%d" % i for i in range(6)]
    assert b.counters["slow_dropped"] == 0
    assert not s.has_pending()


# --- acknowledgement flows ------------------------------------------------------------------------

def test_qos1_puback_flow():
    b = make_broker()
    c = join(b, "c")
    sub(b, c, "t", 1)
    pub(b, "t", b"x", 1)
    p = publishes(c.take())[0]
    s = c.session
    assert len(s.inflight) == 1
    b.flow.puback(s, p["pid"] + 1)  # unknown pid: ignored
    assert len(s.inflight) == 1
    b.flow.puback(s, p["pid"])
    assert len(s.inflight) == 0
    b.flow.puback(s, p["pid"])      # duplicate: harmless
    assert c.take() == []


def test_qos2_pubrec_pubrel_pubcomp_flow():
    b = make_broker()
    c = join(b, "c")
    sub(b, c, "t", 2)
    pub(b, "t", b"x", 2)
    p = publishes(c.take())[0]
    assert p["qos"] == 2
    s = c.session
    b.flow.pubcomp(s, p["pid"])     # PUBCOMP before PUBREC: ignored
    assert len(s.inflight) == 1
    b.flow.pubrec(s, p["pid"])
    pk = c.take()
    assert len(pk) == 1 and pk[0]["type"] == "pubrel" and pk[0]["pid"] == p["pid"]
    assert s.inflight[0][4] == AWAIT_COMP
    b.flow.pubrec(s, p["pid"])      # a repeated PUBREC gets PUBREL again
    pk = c.take()
    assert pk[0]["type"] == "pubrel" and pk[0]["pid"] == p["pid"]
    b.flow.pubcomp(s, p["pid"])
    assert len(s.inflight) == 0


def test_qos2_puback_is_a_protocol_error_and_does_not_complete():
    b = make_broker()
    c = join(b, "c")
    sub(b, c, "t", 2)
    pub(b, "t", b"x", 2)
    p = publishes(c.take())[0]
    assert raises_protocol(b.flow.puback, c.session, p["pid"]) is not None
    assert len(c.session.inflight) == 1


def test_resend_with_dup_on_reconnect():
    b = make_broker(max_inflight=3)
    c = join(b, "c", clean=False)
    sub(b, c, "t", 2)
    pub(b, "t", b"a", 1)
    pub(b, "t", b"b", 2)
    pub(b, "t", b"c", 2)
    pub(b, "t", b"d", 1)   # window full: queued
    got = publishes(c.take())
    assert [p["payload"] for p in got] == [b"a", b"b", b"c"]
    pa, pb, pc = got
    b.flow.pubrec(c.session, pb["pid"])   # b awaits PUBCOMP
    c.take()
    b.detach(c, False)
    pub(b, "t", b"e", 1)   # while offline
    c2, ok, ack = connect(b, "c", clean=False)
    assert ack["session_present"] == 1
    pk = c2.take()
    kinds = [(p["type"], p.get("payload"), p.get("dup")) for p in pk]
    # unacknowledged PUBLISHes again with DUP=1 [MQTT-3.3.1-1] and PUBREL
    # again, in the original order [MQTT-4.4.0-1]; then the queue
    assert kinds[0] == ("publish", b"a", 1)
    assert kinds[1] == ("pubrel", None, None)
    assert kinds[2] == ("publish", b"c", 1)
    assert pk[0]["pid"] == pa["pid"] and pk[1]["pid"] == pb["pid"] and pk[2]["pid"] == pc["pid"]
    assert pk[0]["qos"] == 1 and pk[2]["qos"] == 2
    assert len(pk) == 3   # window still full: d and e wait
    s = c2.session
    b.flow.puback(s, pa["pid"])
    b.flow.pubcomp(s, pb["pid"])
    more = publishes(c2.take())
    assert [p["payload"] for p in more] == [b"d", b"e"]
    assert all(p["dup"] == 0 for p in more)
    for p in more:
        assert p["pid"] != pc["pid"]


def test_resend_retained_flag_kept():
    b = make_broker()
    pub(b, "r", b"kept", 1, retain=True)
    c = join(b, "c", clean=False)
    sub(b, c, "r", 1)
    p = publishes(c.take())[0]
    assert p["retain"] == 1
    b.detach(c, False)
    c2, ok, ack = connect(b, "c", clean=False)
    p2 = publishes(c2.take())[0]
    assert p2["dup"] == 1 and p2["retain"] == 1 and p2["pid"] == p["pid"]


# --- keepalive -------------------------------------------------------------------------------------

def test_keepalive_one_and_a_half_times():
    clock = Clock()
    b = make_broker(clock, sys_interval_s=0)
    watcher = join(b, "w")
    sub(b, watcher, "will", 0)
    c = join(b, "k", keepalive_s=10, will=("will", b"ka", 0, False))
    c.last_rx_ms = clock()
    clock.advance(15000)
    b.tick()
    assert c.closed == 0 and c.session is not None
    clock.advance(1)
    b.tick()
    assert c.closed == 1
    assert c.session is None and "k" not in b.sessions
    assert b.counters["keepalive_timeouts"] == 1
    assert payloads(watcher.take()) == [b"ka"]
    b.tick()
    assert b.counters["keepalive_timeouts"] == 1


def test_keepalive_traffic_keeps_alive():
    clock = Clock()
    b = make_broker(clock, sys_interval_s=0)
    c = join(b, "k", keepalive_s=2)
    c.last_rx_ms = clock()
    for _ in range(10):
        clock.advance(2500)
        c.last_rx_ms = clock()  # a PINGREQ arrived
        b.tick()
    assert c.closed == 0
    clock.advance(3001)
    b.tick()
    assert c.closed == 1


def test_keepalive_zero_never_times_out():
    clock = Clock()
    b = make_broker(clock, sys_interval_s=0)
    c = join(b, "k", keepalive_s=0)
    c.last_rx_ms = clock()
    clock.advance(10 ** 9)
    b.tick()
    assert c.closed == 0 and b.counters["keepalive_timeouts"] == 0


def test_keepalive_across_ticks_wrap():
    clock = Clock(wrap_start(5000))
    b = make_broker(clock, sys_interval_s=0)
    c = join(b, "k", keepalive_s=4)
    c.last_rx_ms = clock()
    clock.advance(5500)   # past the wrap (MicroPython); 5.5 s < 6 s
    b.tick()
    assert c.closed == 0
    clock.advance(600)
    b.tick()
    assert c.closed == 1


# --- $SYS ---------------------------------------------------------------------------------------------

def _sys_values(conn):
    out = {}
    for p in publishes(conn.take()):
        out[p["topic"]] = p
    return out


def test_sys_published_at_interval():
    clock = Clock()
    b = make_broker(clock, sys_interval_s=10)
    c = join(b, "mon")
    assert sub(b, c, "$SYS/#", 0) == 0
    b.tick()   # first tick publishes at once
    v = _sys_values(c)
    assert v["$SYS/broker/version"]["payload"] == b"midge 0.1.0"
    assert v["$SYS/broker/clients/connected"]["payload"] == b"1"
    assert v["$SYS/broker/uptime"]["payload"] == b"0"
    assert v["$SYS/broker/version"]["retain"] == 0  # live forwarding
    clock.advance(9999)
    b.tick()
    assert c.take() == []
    clock.advance(1)
    b.tick()
    v = _sys_values(c)
    assert v["$SYS/broker/uptime"]["payload"] == b"10"
    clock.advance(10000)
    b.tick()
    assert _sys_values(c)["$SYS/broker/uptime"]["payload"] == b"20"


def test_sys_retained_for_late_subscribers_not_counted():
    clock = Clock()
    b = make_broker(clock, max_retained_messages=1)
    b.tick()
    assert b.retained.count == 0   # $SYS is exempt from the caps
    pub(b, "user", b"1", 0, retain=True)
    assert b.retained.count == 1
    c = join(b, "late")
    sub(b, c, "$SYS/broker/version", 0)
    got = publishes(c.take())
    assert len(got) == 1 and got[0]["retain"] == 1 and got[0]["payload"] == b"midge 0.1.0"
    sub(b, c, "#", 0, pid=2)
    assert payloads(c.take()) == [b"1"]   # '#' never gives $SYS [MQTT-4.7.2-1]


def test_sys_counters_follow_events():
    clock = Clock()
    b = make_broker(clock, max_subscriptions=1)
    c = join(b, "c")
    sub(b, c, "a", 0)
    sub(b, c, "b", 0, pid=2)   # refused
    pub(b, "a", b"1")
    b.tick()
    c2 = join(b, "mon")
    sub(b, c2, "$SYS/#", 0)
    v = _sys_values(c2)
    assert v["$SYS/broker/counters/subscriptions_refused"]["payload"] == b"1"
    assert v["$SYS/broker/subscriptions/count"]["payload"] == b"2"  # taken at SUBSCRIBE: mon's too
    assert v["$SYS/broker/messages/sent"]["payload"] == b"1"
    assert v["$SYS/broker/clients/total"]["payload"] == b"2"  # (c and mon)


def test_sys_interval_zero_disables():
    clock = Clock()
    b = make_broker(clock, sys_interval_s=0)
    b.tick()
    clock.advance(100000)
    b.tick()
    assert b.retained.total == 0


def test_sys_interval_across_ticks_wrap():
    clock = Clock(wrap_start(3000))
    b = make_broker(clock, sys_interval_s=5)
    c = join(b, "mon")
    sub(b, c, "$SYS/broker/uptime", 0)
    b.tick()
    assert _sys_values(c)["$SYS/broker/uptime"]["payload"] == b"0"
    clock.advance(4999)   # crosses the wrap on MicroPython
    b.tick()
    assert c.take() == []
    clock.advance(1)
    b.tick()
    assert _sys_values(c)["$SYS/broker/uptime"]["payload"] == b"5"


def test_message_counters():
    b = make_broker()
    c = join(b, "c")
    sub(b, c, "t", 0)
    sub(b, c, "u", 1, pid=2)
    pub(b, "t", b"1")
    pub(b, "u", b"2", 1)
    pub(b, "nobody", b"3")
    assert b.msgs_out == 2
    assert len(publishes(c.take())) == 2


# --- backpressure (connected subscriber's queue over half a cap) ------------------------

def test_backpressure_pressured_set():
    b = make_broker(max_inflight=1, max_queued_messages=4)
    slow = join(b, "slow")
    other = join(b, "other")
    sub(b, slow, "t", 1)
    s = slow.session
    pub(b, "t", b"0", 1)       # inflight
    pub(b, "t", b"1", 1)       # queued 1 of 4
    assert not b.flow.pressured
    assert not b.flow.should_pause(other)
    pub(b, "t", b"2", 1)       # queued 2 of 4: half full
    assert s in b.flow.pressured
    assert b.flow.should_pause(other)      # other clients are slowed down
    assert not b.flow.should_pause(slow)   # never the session whose acks drain it
    got = publishes(slow.take())
    b.flow.puback(s, got[0]["pid"])        # one moves from the queue to the wire
    assert s not in b.flow.pressured
    assert not b.flow.should_pause(other)


def test_backpressure_stops_after_a_stuck_subscriber_times_out():
    # a subscriber that never acknowledges slows others for at most
    # _PRESSURE_MAX_MS (5 s), then its queue just drops oldest
    clock = Clock()
    b = make_broker(clock, max_inflight=1, max_queued_messages=4, sys_interval_s=0)
    stuck = join(b, "stuck")
    other = join(b, "other")
    sub(b, stuck, "t", 1)
    for i in range(3):
        pub(b, "t", b"%d" % i, 1)
    assert b.flow.should_pause(other)
    clock.advance(4900)
    b.tick()
    assert b.flow.should_pause(other)
    clock.advance(200)
    b.tick()
    assert not b.flow.should_pause(other)
    for i in range(10):
        pub(b, "t", b"more", 1)
    assert len(stuck.session.queue) == 4 and b.counters["queue_dropped"] > 0


def test_backpressure_bytes_and_detach():
    b = make_broker(max_inflight=1, max_queued_bytes=40)
    slow = join(b, "slow", clean=False)
    other = join(b, "other")
    sub(b, slow, "t", 1)
    pub(b, "t", b"x" * 9, 1)    # inflight
    pub(b, "t", b"x" * 19, 1)   # 20 bytes queued: half of 40
    assert slow.session in b.flow.pressured
    assert b.flow.should_pause(other)
    b.detach(slow, True)        # offline sessions do not slow anyone down
    assert not b.flow.pressured
    pub(b, "t", b"x" * 19, 1)
    assert not b.flow.pressured


def test_backpressure_cleared_when_session_dropped():
    b = make_broker(max_inflight=1, max_queued_messages=2)
    slow = join(b, "slow")
    sub(b, slow, "t", 1)
    pub(b, "t", b"0", 1)
    pub(b, "t", b"1", 1)
    assert b.flow.pressured
    join(b, "slow")             # takeover of a clean session drops it
    assert not b.flow.pressured


# --- 32-bit board ticks (period 2**30 ms, ~12.4 days) ---------------------------------
# The unix port's ticks never wrap in practice, so a board is simulated by
# swapping the broker module's ticks_diff/ticks_add for 30-bit ones (what
# MicroPython does on ESP32/rp2: ticks_diff is only meaningful within half
# a period, ~6.2 days).

_P = 1 << 30


def _board_diff(a, b):
    return ((a - b + (_P >> 1)) & (_P - 1)) - (_P >> 1)


def _board_add(a, d):
    return (a + d) & (_P - 1)


def _on_board(fn):
    import midge.broker as mb
    saved = mb.ticks_diff  # the broker's only ticks arithmetic
    mb.ticks_diff = _board_diff
    try:
        fn()
    finally:
        mb.ticks_diff = saved


_DAY_MS = 86400000


def test_board_ticks_keepalive_and_sys_across_wrap():
    def body():
        clock = Clock(_P - 2000)
        b = make_broker(clock, sys_interval_s=10)
        c = join(b, "k", keepalive_s=10)
        c.last_rx_ms = clock()
        b.tick()
        clock.now = _board_add(clock.now, 14000)   # wrapped past 0
        c.last_rx_ms = clock.now
        b.tick()
        assert c.closed == 0
        assert b.uptime_s() == 14
        clock.now = _board_add(clock.now, 15001)
        b.tick()
        assert c.closed == 1
    _on_board(body)


def test_board_uptime_past_half_ticks_period():
    # $SYS/broker/uptime must keep counting on a board that runs for a week
    # (ticks_diff alone is only valid for ~6.2 days there)
    def body():
        clock = Clock(1000)
        b = make_broker(clock, sys_interval_s=10)
        b.tick()
        for day in range(1, 8):
            for _ in range(24):   # the server ticks all the time
                clock.now = _board_add(clock.now, 3600000)
                b.tick()
            assert b.uptime_s() == day * 86400, (day, b.uptime_s())
    _on_board(body)


def test_board_eviction_prefers_oldest_after_a_week():
    def body():
        clock = Clock(1000)
        b = make_broker(clock, max_sessions=2, sys_interval_s=0)
        z = join(b, "z", clean=False)
        a = join(b, "a", clean=False)
        b.detach(z, True)          # z offline for 7 days
        clock.now = _board_add(clock.now, 6 * _DAY_MS)
        b.detach(a, True)          # a offline for 1 day
        clock.now = _board_add(clock.now, _DAY_MS)
        join(b, "new")
        assert "z" not in b.sessions, "evicted the more recently seen session"
        assert "a" in b.sessions
    _on_board(body)


# --- hardening: fair caps, bounded SUBSCRIBE work, resends, heap steps (issue 8) ---------

def _offline(b, cid, filt=None, clock=None):
    c = join(b, cid, clean=False)
    if filt is not None:
        sub(b, c, filt, 1)
    b.detach(c, True)
    if clock is not None:
        clock.advance(10)
    return c


def test_eviction_takes_an_idle_session_before_one_holding_messages():
    clock = Clock()
    b = make_broker(clock, max_sessions=3)
    _offline(b, "victim", "v", clock)
    pub(b, "v", b"owed", 1)
    _offline(b, "idle", None, clock)   # seen later than victim, holds nothing
    join(b, "online")
    join(b, "new")                     # full: evicts idle, not the older victim
    assert "idle" not in b.sessions and "victim" in b.sessions
    assert b.counters["sessions_evicted"] == 1


def test_clean_client_never_evicts_a_session_holding_messages():
    b = make_broker(max_sessions=2)
    _offline(b, "victim", "v")
    pub(b, "v", b"owed", 1)
    join(b, "online")
    conn, ok, ack = connect(b, "throwaway")
    assert not ok and ack["rc"] == 3
    assert b.counters["sessions_refused"] == 1 and b.counters["sessions_evicted"] == 0
    c = join(b, "victim", clean=False) if b.sessions["online"].conn is None else None
    assert c is None  # still full: the victim reconnects after the online client leaves
    b.detach(b.sessions["online"].conn, True)
    c, ok, ack = connect(b, "victim", clean=False)
    assert ok and ack["session_present"] == 1 and payloads(c.take()) == [b"owed"]


def test_throwaway_persistent_sessions_churn_each_other_not_an_established_one():
    # Twelve throw-away persistent clients, each subscribed to '#' so that
    # they too hold messages, come and go: each evicts the most recently
    # created holder (another throw-away), never the established victim.
    clock = Clock()
    b = make_broker(clock, max_sessions=4)
    _offline(b, "victim", "v", clock)
    for i in range(5):
        pub(b, "v", b"%d" % i, 1)
    join(b, "online")
    for i in range(12):
        _offline(b, "throwaway-%d" % i, "#", clock)
        pub(b, "noise", b"n", 1)
    assert "victim" in b.sessions
    b.detach(b.sessions["online"].conn, True)
    c, ok, ack = connect(b, "victim", clean=False)
    assert ok and ack["session_present"] == 1
    assert payloads(c.take()) == [b"%d" % i for i in range(5)]


def test_sessions_loaded_from_the_store_count_as_oldest():
    b = make_broker(max_sessions=3)
    for cid, sid in (("old1", 1), ("old2", 2)):
        _offline(b, cid, "t/" + cid)
        b.sessions[cid].serial = 0     # as loaded from a store
        b.sessions[cid].sid = sid
    pub(b, "t/old1", b"x", 1)
    pub(b, "t/old2", b"y", 1)
    join(b, "online")
    c, ok, ack = connect(b, "newcomer", clean=False)
    assert ok and "old1" in b.sessions and "old2" not in b.sessions  # the higher sid is newer


def test_repeated_filter_in_one_subscribe_is_one_subscription():
    b = make_broker()
    for i in range(24):
        pub(b, "r/%d" % i, b"v", 0, retain=True)
    c = join(b, "c", cap=64)           # reads nothing: room for a few messages only
    b.subscribe(c.session, 1, [("#", 0)] * 16)
    pk = c.take()
    assert pk[0]["type"] == "suback" and pk[0]["codes"] == [0] * 16
    assert b.subs.count == 1 and len(c.session.subs) == 1
    sent = len(publishes(pk))
    assert sent + len(c.session.backlog) == 24   # each retained topic once
    for _ in range(40):                # more of the same while not reading
        b.subscribe(c.session, 2, [("#", 0)] * 16)
    assert len(c.session.backlog) <= 24


def test_backlog_holds_each_topic_once_and_is_capped():
    b = make_broker(max_retained_messages=4, sys_interval_s=1)
    c = join(b, "c", cap=16)
    for i in range(4):
        pub(b, "r/%d" % i, b"v", 1, retain=True)
    b.subscribe(c.session, 1, [("r/#", 1)])
    b.subscribe(c.session, 2, [("$SYS/#", 0)])   # the $SYS values of now
    assert len(c.session.backlog) <= b.flow.backlog_cap()
    # retained topics replaced and new ones made while the client does not
    # read: the backlog keeps the newest value per topic, within its cap
    for rnd in range(10):
        for i in range(4):
            pub(b, "r/%d" % i, b"v%d" % rnd, 1, retain=True)
        b.subscribe(c.session, 3, [("r/#", 1)])
    bl = c.session.backlog
    assert len(bl) <= b.flow.backlog_cap()
    mine = [e[0].payload for e in bl.values() if e[0].topic.startswith("r/")]
    assert mine and mine == [b"v9"] * len(mine)


def test_sys_retained_set_counts_toward_the_backlog_cap():
    clock = Clock()
    b = make_broker(clock, sys_interval_s=1, max_retained_messages=2)
    b.tick()                            # publishes the $SYS set (exempt from the caps)
    n_sys = b.sys_count
    assert n_sys > 10 and b.retained.total == 0
    assert b.flow.backlog_cap() == 2 + n_sys
    c = join(b, "c", cap=16)
    for i in range(40):
        b.subscribe(c.session, i + 1, [("$SYS/#", 0)])
    assert len(c.session.backlog) <= n_sys


def test_over_long_and_over_deep_filters_refused_before_split():
    b = make_broker(max_topic_length=128, max_topic_levels=8)
    c = join(b, "c")
    b.subscribe(c.session, 1, [(None, 0), ("/" * 4080, 1), ("a/b/c/d/e/f/g/h/i", 0), ("ok/+", 1)])
    assert c.take()[0]["codes"] == [0x80, 0x80, 0x80, 1]
    assert b.counters["topic_limit"] == 3 and b.subs.count == 1


def test_filters_past_the_per_packet_cap_refused():
    b = make_broker()
    c = join(b, "c")
    b.subscribe(c.session, 1, [("a/%d" % i, 0) for i in range(3)], 5)
    assert c.take()[0]["codes"] == [0, 0, 0] + [0x80] * 5
    assert b.counters["subscriptions_refused"] == 5 and b.subs.count == 3


def test_resend_after_reconnect_waits_for_room_and_keeps_order():
    b = make_broker(max_inflight=8)
    c = join(b, "c", clean=False)
    sub(b, c, "t", 1)
    for i in range(8):
        pub(b, "t", b"%d" % i + b"x" * 100, 1)
    assert len(publishes(c.take())) == 8    # all in flight, none acknowledged
    b.detach(c, False)
    c, ok, ack = connect(b, "c", clean=False, cap=250)   # room for two at a time
    s = c.session
    pub(b, "t", b"new", 1)                  # must wait behind the resends
    got = publishes(c.take())
    assert 1 <= len(got) <= 3 and all(p["dup"] == 1 for p in got)
    seen = [p["payload"][:1] for p in got]
    b.flow.puback(s, got[0]["pid"])              # acknowledged: room and window for more
    while True:
        b.flow.pump(s)
        more = publishes(c.take())
        if not more:
            break
        seen += [p["payload"][:1] for p in more]
        for p in more:
            b.flow.puback(s, p["pid"])
    for p in got[1:]:
        b.flow.puback(s, p["pid"])
    b.flow.pump(s)
    seen += [p["payload"][:1] for p in publishes(c.take())]
    assert seen == [b"%d" % i for i in range(8)] + [b"n"]


def test_memory_error_delivering_to_one_subscriber_spares_the_publisher_and_others():
    b = make_broker()
    victim = _offline(b, "victim", "t")
    other = join(b, "other")
    sub(b, other, "t", 1)
    pubc = join(b, "pub")

    def no_heap(item):
        raise MemoryError()
    b.sessions["victim"].add_queued = no_heap
    pub(b, "t", b"x", 1)          # raises nothing into the publisher's path
    assert b.counters["memory_errors"] == 1
    assert payloads(other.take()) == [b"x"]
    assert pubc.closed == 0 and b.sessions["pub"].conn is pubc
    assert len(b.sessions["victim"].queue) == 0


def test_memory_error_delivering_closes_an_online_subscriber():
    b = make_broker()
    s1 = join(b, "s1")
    sub(b, s1, "t", 0)

    def no_heap(data):
        raise MemoryError()
    s1.send = no_heap
    pub(b, "t", b"x", 0)
    assert s1.closed == 1 and b.counters["memory_errors"] == 1


def test_heap_low_refuses_new_sessions_and_drops_qos0_to_slow_subscribers():
    b = make_broker(max_outbound_bytes=1000)
    fast = join(b, "fast")
    slow = join(b, "slow", cap=1000)
    _offline(b, "back", "t")
    sub(b, fast, "t", 0)
    sub(b, slow, "t", 0)
    slow.send(bytes(m.pingresp()))      # the slow one has output waiting
    b.heap.level = 1                    # heap.LOW
    conn, ok, ack = connect(b, "newcomer")
    assert not ok and ack["rc"] == 3 and b.counters["heap_refused"] == 1
    c, ok, ack = connect(b, "back", clean=False)   # an existing session may return
    assert ok and ack["session_present"] == 1
    pub(b, "t", b"q0", 0)
    assert payloads(fast.take()) == [b"q0"]
    assert payloads(slow.take()) == []
    assert b.counters["heap_dropped"] == 1


def test_heap_critical_refuses_new_subscriptions_retained_topics_and_queueing():
    b = make_broker()
    c = join(b, "c")
    sub(b, c, "old", 1)
    pub(b, "keep", b"1", 0, retain=True)
    _offline(b, "away", "q")
    b.heap.level = 2                    # heap.CRITICAL
    b.subscribe(c.session, 5, [("old", 0), ("new", 0)])
    assert c.take()[0]["codes"] == [0, 0x80]
    pub(b, "keep", b"2", 0, retain=True)     # replacing a retained topic: allowed
    pub(b, "fresh", b"1", 0, retain=True)    # a new one: refused
    assert b.retained.get(["keep"]).payload == b"2" and b.retained.get(["fresh"]) is None
    pub(b, "q", b"later", 1)                 # would have to wait in a queue
    assert len(b.sessions["away"].queue) == 0
    assert b.counters["heap_refused"] == 2 and b.counters["heap_dropped"] == 1


def test_make_room_drops_the_oldest_messages_of_the_largest_queue():
    b = make_broker(max_queued_messages=100, max_queued_total=1000)
    _offline(b, "big", "t/#")
    _offline(b, "small", "t/s")
    for i in range(20):
        pub(b, "t/b", b"%d" % i, 1)
    for i in range(3):
        pub(b, "t/s", b"s%d" % i, 1)
    calls = []

    def fits():
        calls.append(1)
        return len(calls) >= 2    # a block of one packet is free after 16 drops
    b.heap.fits = fits
    assert b.flow.make_room()
    big = b.sessions["big"].queue
    assert b.counters["heap_dropped"] == 16 and len(b.sessions["small"].queue) == 3
    # big held 23 (its '#' matched the three of t/s too): the 16 oldest went
    assert [e[0].payload for e in big] == [b"16", b"17", b"18", b"19", b"s0", b"s1", b"s2"]
    assert not make_broker().flow.make_room()   # nothing queued: nothing to give back


def test_publish_without_a_block_for_its_payload_makes_room_and_goes_on():
    import midge.handlers as handlers
    from midge import codec
    import mqttspec as m
    b = make_broker()
    _offline(b, "hoarder", "h")
    for i in range(10):
        pub(b, "h", b"x" * 50, 1)
    c = join(b, "pub")
    from midge.wire311 import Wire311
    real = codec.decode_publish  # (what the 3.1.1 wire decodes a PUBLISH with)
    Wire311.decode_publish = staticmethod(fails_once(real))
    b.heap.fits = lambda: True
    try:
        data = m.publish("t", b"payload", qos=1, pid=7)
        n, k = m.decode_remaining_length(data, 1)
        handlers.handle(b, c, data[0], data, 1 + k, 1 + k + n)
    finally:
        Wire311.decode_publish = staticmethod(real)
    pk = c.take()
    assert pk[0]["type"] == "puback" and pk[0]["pid"] == 7
    assert b.counters["heap_dropped"] >= 1 and c.closed == 0
