# Every cap of README.md / lib/midge/config.py SPEC, with small values, and
# the $SYS/broker/counters/<name> value that counts its hits.
import time

import mqttspec as m
from rawclient import Closed, counter_monitor, wait_counter


def _sys(extra):
    cfg = {"sys_interval_s": 1}
    cfg.update(extra)
    return cfg


# --- connections ------------------------------------------------------------------

def test_max_clients_extra_socket_closed_at_once(broker_factory):
    b = broker_factory(_sys({"max_clients": 2}))
    mon = counter_monitor(b)          # client 1
    a = b.client("a")                 # client 2
    extra = b.raw()
    t0 = time.monotonic()
    assert extra.closed(1.5), "third connection not closed"
    assert time.monotonic() - t0 < 1.0
    extra2 = b.raw()
    extra2.send(m.connect("extra2"))
    assert extra2.closed(1.5)
    assert extra2.pending == [], extra2.pending  # no CONNACK: nothing was read
    assert a.is_open() and mon.is_open()
    assert wait_counter(mon, "clients_refused", 2) == "2"
    # A freed slot can be used again.
    a.disconnect()
    deadline = time.monotonic() + 2.0
    while True:
        c = b.raw()
        c.send(m.connect("d"))
        try:
            p = c.recv(1.0)
        except Closed:
            p = None
        if p is not None:
            assert p["type"] == "connack" and p["rc"] == 0
            break
        assert time.monotonic() < deadline, "slot not freed after DISCONNECT"
        time.sleep(0.1)


def test_connect_timeout(broker_factory):
    b = broker_factory(_sys({"connect_timeout_ms": 300}))
    mon = counter_monitor(b)
    silent = b.raw()
    partial = b.raw()
    partial.send(m.connect("slow")[:6])
    t0 = time.monotonic()
    assert silent.closed(3.0), "silent socket not closed"
    assert time.monotonic() - t0 >= 0.2
    assert partial.closed(2.0), "socket with a partial CONNECT not closed"
    assert silent.pending == [] and partial.pending == []
    # A client that connected in time is not affected.
    time.sleep(0.4)
    assert mon.is_open()
    assert wait_counter(mon, "connect_timeouts", 2) == "2"


def test_max_sessions_evicts_oldest_offline_then_refuses(broker_factory):
    b = broker_factory(_sys({"max_sessions": 4}))
    mon = counter_monitor(b)                  # session 1, online
    o1 = b.client("old1", clean=False)        # session 2
    o1.subscribe([("ms/1", 1)])
    o1.disconnect()
    time.sleep(0.05)
    o2 = b.client("old2", clean=False)        # session 3, seen later than old1
    o2.subscribe([("ms/2", 1)])
    o2.disconnect()
    time.sleep(0.05)
    n = b.client("new1", clean=False)         # session 4
    n2 = b.raw()
    ack = n2.handshake("new2", clean=False)   # full: evicts old1 (least recently seen)
    assert ack["rc"] == 0
    c = b.client("old2", clean=False)
    assert c.connack["session_present"] == 1, "old2 was evicted instead of old1"
    # Now mon, new1, new2, old2 are all online: a 5th session is refused.
    x = b.raw()
    ack = x.handshake("old1", clean=False)
    assert ack["rc"] == m.RC_UNAVAILABLE, ack
    assert x.closed(2.0)
    # old1's session really is gone: after a slot frees it starts fresh.
    n.disconnect()          # new1 stays as an offline session; evicted next
    time.sleep(0.1)
    y = b.client("old1", clean=False)
    assert y.connack["session_present"] == 0
    assert wait_counter(mon, "sessions_evicted", 2) == "2"
    assert wait_counter(mon, "sessions_refused", 1) == "1"


def test_max_sessions_clean_sessions_count_while_online(broker_factory):
    b = broker_factory({"max_sessions": 2})
    a = b.client("a")
    c = b.client("c")
    x = b.raw()
    assert x.handshake("x")["rc"] == m.RC_UNAVAILABLE
    assert x.closed(2.0)
    c.disconnect()          # clean session: gone with the connection
    time.sleep(0.1)
    assert b.client("x").is_open()
    assert a.is_open()


# --- outbound flow ----------------------------------------------------------------

def test_max_inflight_flow_control(broker_factory):
    b = broker_factory({"max_inflight": 2})
    s = b.client("s")
    s.subscribe([("if", 1)])
    p = b.client("p")
    for i in range(6):
        p.publish("if", b"%d" % i, qos=1)
    first = [s.expect_publish("if", ack=False) for _ in range(2)]
    s.no_packet(0.3)  # window full: the rest wait in the queue
    assert [f["payload"] for f in first] == [b"0", b"1"]
    s.send(m.puback(first[0]["pid"]))
    third = s.expect_publish("if", b"2", ack=False)
    s.no_packet(0.2)
    s.send(m.puback(first[1]["pid"]))
    s.send(m.puback(third["pid"]))
    rest = [s.expect_publish("if")["payload"] for _ in range(3)]
    assert rest == [b"3", b"4", b"5"]
    s.no_packet(0.2)


def test_max_inflight_qos2_counts_until_pubcomp(broker_factory):
    b = broker_factory({"max_inflight": 1})
    s = b.client("s")
    s.subscribe([("if2", 2)])
    p = b.client("p")
    p.publish("if2", b"a", qos=2)
    p.publish("if2", b"b", qos=2)
    a = s.expect_publish("if2", b"a", ack=False)
    s.send(m.pubrec(a["pid"]))
    s.expect("pubrel", pid=a["pid"])
    s.no_packet(0.3)   # still inflight until PUBCOMP
    s.send(m.pubcomp(a["pid"]))
    s.expect_publish("if2", b"b", qos=2)


def test_max_queued_messages_offline_drops_oldest(broker_factory):
    b = broker_factory(_sys({"max_queued_messages": 3}))
    mon = counter_monitor(b)
    s = b.client("q", clean=False)
    s.subscribe([("mq", 1)])
    s.disconnect()
    p = b.client("p")
    for i in range(1, 6):
        p.publish("mq", b"m%d" % i, qos=1)
    s = b.client("q", clean=False)
    got = [x["payload"] for x in s.publishes(0.3)]
    assert got == [b"m3", b"m4", b"m5"]
    assert wait_counter(mon, "queue_dropped", 2) == "2"


def test_max_queued_messages_online_behind_inflight_window(broker_factory):
    b = broker_factory({"max_inflight": 1, "max_queued_messages": 2})
    s = b.client("s")
    s.subscribe([("mo", 1)])
    p = b.client("p")
    for i in range(1, 6):
        p.publish("mo", b"m%d" % i, qos=1)
    first = s.expect_publish("mo", b"m1", ack=False)
    s.no_packet(0.2)
    s.send(m.puback(first["pid"]))
    got = [s.expect_publish("mo")["payload"] for _ in range(2)]
    assert got == [b"m4", b"m5"]
    s.no_packet(0.3)


def test_max_queued_bytes_drops_oldest(broker_factory):
    b = broker_factory(_sys({"max_queued_bytes": 2500}))
    mon = counter_monitor(b)
    s = b.client("qb", clean=False)
    s.subscribe([("qb", 1)])
    s.disconnect()
    p = b.client("p")
    for i in range(1, 6):
        p.publish("qb", (b"%d" % i) * 1000, qos=1)
    s = b.client("qb", clean=False)
    got = [x["payload"][:1] for x in s.publishes(0.3)]
    assert got == [b"4", b"5"]
    assert wait_counter(mon, "queue_dropped", 3) == "3"


def test_max_queued_messages_zero_queues_nothing(broker_factory):
    b = broker_factory({"max_queued_messages": 0})
    s = b.client("z", clean=False)
    s.subscribe([("zq", 1)])
    s.disconnect()
    p = b.client("p")
    p.publish("zq", b"x", qos=1)
    s = b.client("z", clean=False)
    s.no_packet(0.3)
    # Online delivery still works (inflight window, not the queue).
    p.publish("zq", b"y", qos=1)
    s.expect_publish("zq", b"y")


# --- subscriptions -------------------------------------------------------------------

def test_max_subscriptions(broker_factory):
    b = broker_factory(_sys({"max_subscriptions": 2}))
    mon = counter_monitor(b)
    c = b.client("c")
    assert c.subscribe([("a", 1), ("b", 1), ("c", 1)]) == [1, 1, 0x80]
    assert c.subscribe([("a", 2)]) == [2]       # re-subscribing always works
    assert c.subscribe([("d", 0)]) == [0x80]
    c.unsubscribe(["b"])
    assert c.subscribe([("d", 0)]) == [0]
    p = b.client("p")
    p.publish("c", b"no")
    p.publish("d", b"yes")
    got = [x["topic"] for x in c.publishes(0.3)]
    assert got == ["d"]
    assert wait_counter(mon, "subscriptions_refused", 2) == "2"


# --- packets and topics -------------------------------------------------------------

def test_max_packet_size(broker_factory):
    b = broker_factory(_sys({"max_packet_size": 256}))
    mon = counter_monitor(b)
    s = b.client("s")
    s.subscribe([("ps", 0)])
    p = b.client("p", will_topic="ps", will_payload=b"gone")
    exact = m.publish("ps", b"x" * 249)
    assert len(exact) == 256
    p.send(exact)
    s.expect_publish("ps", b"x" * 249)
    p.send(m.publish("ps", b"x" * 250))   # 257 bytes
    assert p.closed(2.0)
    s.expect_publish("ps", b"gone")       # closed like any protocol error
    # Only the header of a huge packet: closed as soon as the length is read.
    q = b.client("q")
    q.send(b"\x30" + m.encode_remaining_length(200000000))
    assert q.closed(1.0)
    assert s.is_open()
    assert wait_counter(mon, "oversize_packets", 2) == "2"


def test_max_topic_length(broker_factory):
    # 24 leaves room for the monitor's "$SYS/broker/counters/#" (22 bytes).
    b = broker_factory(_sys({"max_topic_length": 24}))
    mon = counter_monitor(b)
    c = b.client("c")
    assert c.subscribe([("t" * 24, 1), ("u" * 25, 1), ("#", 0)]) == [1, 0x80, 0]
    c.publish("t" * 24, b"ok", qos=1)
    c.expect_publish("t" * 24, b"ok")
    c.send(m.publish("v" * 25, b"x", qos=1, pid=3))
    assert c.closed(2.0)
    assert not [x for x in c.pending if x["type"] == "puback"]
    assert wait_counter(mon, "topic_limit", 2) == "2"


def test_max_topic_length_counts_utf8_bytes(broker_factory):
    # config.py SPEC: "longer (UTF-8 bytes)". 10 x U+00E9 = 20 bytes.
    b = broker_factory({"max_topic_length": 12})
    c = b.client("c")
    assert c.subscribe([("\u00e9" * 6, 0), ("\u00e9" * 10, 0)]) == [0, 0x80]
    c.publish("\u00e9" * 6, b"ok", qos=1)
    c.expect_publish("\u00e9" * 6, b"ok")
    c.send(m.publish("\u00e9" * 10, b"x", qos=1, pid=3))
    assert c.closed(2.0)


def test_max_topic_levels(broker_factory):
    # 4 leaves room for the monitor's "$SYS/broker/counters/#".
    b = broker_factory(_sys({"max_topic_levels": 4}))
    mon = counter_monitor(b)
    c = b.client("c")
    codes = c.subscribe([("a/b/c/d", 0), ("a/b/c/#", 0), ("a/b/c/d/e", 0), ("a/+/c/d/#", 0),
                         ("a/b//d/", 0)])
    assert codes == [0, 0, 0x80, 0x80, 0x80]
    c.publish("a/b/c/d", b"ok", qos=1)
    got = c.publishes(0.3)
    assert len(got) == 1 and got[0]["topic"] == "a/b/c/d"
    c.send(m.publish("a/b/c/d/e", b"x"))
    assert c.closed(2.0)
    assert wait_counter(mon, "topic_limit", 4) == "4"


# --- retained --------------------------------------------------------------------------

def _retained_topics(b, flt="r/#"):
    s = b.client("reader")
    s.subscribe([(flt, 0)])
    got = {}
    for x in s.publishes(0.3):
        assert x["retain"] == 1
        got[x["topic"]] = x["payload"]
    s.disconnect()
    return got


def test_max_retained_messages(broker_factory):
    b = broker_factory(_sys({"max_retained_messages": 2}))
    mon = counter_monitor(b)
    live = b.client("live")
    live.subscribe([("r/#", 1)])
    p = b.client("p")
    p.publish("r/1", b"1", qos=1, retain=True)
    p.publish("r/2", b"2", qos=1, retain=True)
    p.publish("r/3", b"3", qos=1, retain=True)   # new topic past the cap: not stored
    got = [(x["topic"], x["payload"]) for x in live.publishes(0.3)]
    assert got == [("r/1", b"1"), ("r/2", b"2"), ("r/3", b"3")]  # still delivered live
    assert _retained_topics(b) == {"r/1": b"1", "r/2": b"2"}
    p.publish("r/1", b"1b", qos=1, retain=True)  # replacing always works
    assert _retained_topics(b) == {"r/1": b"1b", "r/2": b"2"}
    p.publish("r/2", b"", qos=1, retain=True)    # clear frees a slot
    p.publish("r/3", b"3b", qos=1, retain=True)
    assert _retained_topics(b) == {"r/1": b"1b", "r/3": b"3b"}
    # $SYS retained topics do not count against the cap.
    assert wait_counter(mon, "retained_refused", 1) == "1"


def test_max_retained_bytes(broker_factory):
    b = broker_factory(_sys({"max_retained_bytes": 2500}))
    mon = counter_monitor(b)
    p = b.client("p")
    p.publish("r/1", b"a" * 1000, qos=1, retain=True)
    p.publish("r/2", b"b" * 1000, qos=1, retain=True)
    p.publish("r/3", b"c" * 1000, qos=1, retain=True)
    got = _retained_topics(b)
    assert sorted(got) == ["r/1", "r/2"]
    p.publish("r/1", b"d" * 1000, qos=1, retain=True)
    got = _retained_topics(b)
    assert got["r/1"] == b"d" * 1000 and sorted(got) == ["r/1", "r/2"]
    assert wait_counter(mon, "retained_refused", 1) == "1"


# --- slow consumers ----------------------------------------------------------------------

def _flood_count(size=8000):
    """Messages of `size` bytes needed to overflow the kernel socket buffers
    between midge and a client that does not read (the send buffer grows up
    to tcp_wmem's maximum, 4 MB by default; ~3 MB measured on loopback)."""
    wmax = 4194304
    try:
        with open("/proc/sys/net/ipv4/tcp_wmem") as f:
            wmax = int(f.read().split()[2])
    except (OSError, ValueError, IndexError):
        pass
    return min(4000, wmax * 4 // 3 // size + 100)


def _paced_flood(p, pacer, topic, n, size):
    """Publish n QoS 0 messages of `size` bytes, one at a time: each is
    received by the `pacer` subscriber (which reads promptly) before the
    next is sent, so no burst ever exceeds a reading client's outbound cap
    and only a client that stops reading falls behind."""
    pad = b"x" * (size - 6)
    for i in range(n):
        p.send(m.publish(topic, (b"%06d" % i) + pad))
        x = pacer.wait_for("publish", 5.0)
        assert x is not None and x["payload"][:6] == b"%06d" % i, (
            "reading subscriber lost message %d" % i)


def test_max_outbound_bytes_slow_consumer(broker_factory):
    # The slow client never reads: once the kernel buffers are full (~3 MB
    # on Linux loopback) midge buffers at most max_outbound_bytes, then drops
    # QoS 0 for it (slow_dropped) and queues QoS 1/2 in its session. A client
    # that reads is not affected.
    b = broker_factory(_sys({"max_outbound_bytes": 16384, "write_timeout_ms": 600000,
                             "max_packet_size": 16384}))
    mon = counter_monitor(b)
    slow = b.raw(rcvbuf=4096)
    assert slow.handshake("slow")["rc"] == 0
    slow.subscribe([("flood", 1)])
    fast = b.client("fast")
    fast.subscribe([("flood", 0)])
    p = b.client("p")
    n = _flood_count()
    _paced_flood(p, fast, "flood", n, 8000)
    p.publish("flood", b"marker", qos=1)
    fast.expect_publish("flood", b"marker")
    # Now read the slow one.
    slow.sock.setsockopt(6, 1, 1)
    received = []
    marker = None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        x = slow.wait_for("publish", 1.0)
        if x is None:
            break
        if x["payload"] == b"marker":
            marker = x
            slow.ack(x)
            break
        received.append(int(x["payload"][:6]))
    assert marker is not None and marker["qos"] == 1, "QoS 1 message lost"
    assert 0 < len(received) < n, len(received)
    assert received == sorted(received)
    dropped = n - len(received)
    assert wait_counter(mon, "slow_dropped", dropped, timeout=4.0) == str(dropped)


def test_write_timeout_closes_stuck_connection(broker_factory):
    b = broker_factory(_sys({"write_timeout_ms": 300, "max_outbound_bytes": 16384,
                             "max_packet_size": 16384}))
    mon = counter_monitor(b)
    w = b.client("w")
    w.subscribe([("stuck/will", 0)])
    slow = b.raw(rcvbuf=4096)
    assert slow.handshake("stuck", will_topic="stuck/will", will_payload=b"slow")["rc"] == 0
    slow.subscribe([("flood2", 0)])
    pacer = b.client("pacer")
    pacer.subscribe([("flood2", 0)])
    p = b.client("p")
    _paced_flood(p, pacer, "flood2", _flood_count(), 8000)
    # Closed within write_timeout_ms (+ tick slack), will published.
    w.expect_publish("stuck/will", b"slow", timeout=4.0)
    assert wait_counter(mon, "slow_disconnects", 1) == "1"
    assert slow.closed(10.0)


def test_retained_fed_to_new_subscription_despite_small_outbound_cap(broker_factory):
    # config.py: retained messages for a new subscription are fed in as the
    # outbound buffer drains, never dropped as slow_dropped.
    b = broker_factory({"max_outbound_bytes": 256, "max_packet_size": 1024})
    p = b.client("p")
    for i in range(20):
        p.publish("feed/%02d" % i, (b"%02d" % i) + b"r" * 198, qos=1, retain=True)
    s = b.client("s")
    s.subscribe([("feed/#", 0)])
    got = s.publishes(0.5)
    assert sorted(x["topic"] for x in got) == ["feed/%02d" % i for i in range(20)]
    assert all(x["retain"] == 1 for x in got)


# --- inbound QoS 2 window ---------------------------------------------------------------

def test_max_inflight_in(broker_factory):
    # config.py: more QoS 2 messages awaiting PUBREL than max_inflight_in
    # disconnects the client (counter inflight_in_exceeded).
    b = broker_factory(_sys({"max_inflight_in": 2}))
    mon = counter_monitor(b)
    w = b.client("w")
    w.subscribe([("ii/#", 2)])
    c = b.client("c", will_topic="ii/will", will_payload=b"w")
    for pid in (1, 2):
        c.send(m.publish("ii/t", b"%d" % pid, qos=2, pid=pid))
        c.expect("pubrec", pid=pid)
    # Releasing one frees a slot.
    c.send(m.pubrel(1))
    c.expect("pubcomp", pid=1)
    c.send(m.publish("ii/t", b"3", qos=2, pid=3))
    c.expect("pubrec", pid=3)
    c.send(m.publish("ii/t", b"4", qos=2, pid=4))
    assert c.closed(2.0)
    got = w.publishes(0.3)
    assert ("ii/will", b"w") in [(x["topic"], x["payload"]) for x in got]
    assert wait_counter(mon, "inflight_in_exceeded", 1) == "1"
