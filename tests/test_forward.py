# The QoS 0 forwarding fast path (connection.forward_qos0 and the route cache
# in Subscriptions): packets go in as the connection hands them over, with
# the fast path tried first for fixed header 0x30 exactly as
# Connection._handle does, and what each subscriber receives is parsed with
# mqttspec.
import mqttspec as m
from fakeconn import FakeConn, make_broker, frames, publishes, payloads, raises_protocol
from midge import handlers
from midge.connection import forward_qos0


def feed(broker, conn, data):
    """Returns how many packets took the fast path."""
    fast = 0
    conn.broker = broker
    for first, start, end in frames(data):
        pos = start - 2 if end - start < 128 else start - 3
        if first == 0x30 and forward_qos0(conn, data, pos, start, end):
            fast += 1
        else:
            handlers.handle(broker, conn, first, data, start, end)
    return fast


def client(broker, cid, filt=None, qos=0):
    conn = FakeConn()
    feed(broker, conn, m.connect(cid))
    if filt is not None:
        feed(broker, conn, m.subscribe(1, [(filt, qos)]))
    conn.take()
    return conn


def test_second_publish_on_a_topic_is_forwarded_byte_for_byte():
    b = make_broker()
    a = client(b, "a", "room/+", 1)
    c = client(b, "c", "room/#", 0)
    p = client(b, "p")
    pkt = m.publish("room/1", b"21.5")
    assert feed(b, p, pkt) == 0  # first: full path, fills the cache
    assert feed(b, p, pkt) == 1  # then the fast path
    for conn in (a, c):
        out = conn.out
        got = publishes(conn.take())
        assert [x["payload"] for x in got] == [b"21.5", b"21.5"]
        assert all(x["qos"] == 0 and not x["retain"] for x in got)
        assert out[len(out) // 2:] == pkt  # the client's own bytes
    assert b.msgs_in == 2 and b.msgs_out == 4


def test_a_new_subscription_is_seen_by_the_next_publish():
    b = make_broker()
    a = client(b, "a", "t/1")
    p = client(b, "p")
    feed(b, p, m.publish("t/1", b"x"))
    c = client(b, "c", "t/+")  # empties the route cache
    assert feed(b, p, m.publish("t/1", b"y")) == 0
    assert feed(b, p, m.publish("t/1", b"z")) == 1
    assert payloads(a.take()) == [b"x", b"y", b"z"]
    assert payloads(c.take()) == [b"y", b"z"]
    feed(b, c, m.unsubscribe(2, ["t/+"]))
    c.take()
    assert feed(b, p, m.publish("t/1", b"w")) == 0
    assert payloads(c.take()) == [] and payloads(a.take()) == [b"w"]


def test_offline_and_congested_subscribers():
    b = make_broker()
    a = FakeConn()
    feed(b, a, m.connect("a", clean=False) + m.subscribe(1, [("t", 0)]))
    a.take()
    slow = FakeConn(cap=40)
    feed(b, slow, m.connect("slow") + m.subscribe(1, [("t", 0)]))
    slow.take()
    p = client(b, "p")
    feed(b, p, m.publish("t", b"1"))
    assert payloads(a.take()) == [b"1"] and payloads(slow.take()) == [b"1"]
    b.detach(a, False)  # persistent: its subscription stays, it is offline
    for i in range(5):
        assert feed(b, p, m.publish("t", b"x" * 10)) == 1
    # packets of 15 bytes go while there is room left (0, 15, 30 < 40);
    # the other 2 are dropped and counted, never queued (QoS 0); nothing
    # goes to the offline session
    assert len(payloads(m.parse_all(slow.out)[0])) == 3
    assert b.counters["slow_dropped"] == 2
    assert len(b.sessions["a"].queue) == 0 and a.out == b""


def test_invalid_and_reserved_topics_never_take_the_fast_path():
    b = make_broker()
    w = client(b, "w", "#")
    s = client(b, "s", "$SYS/#")
    p = client(b, "p")
    for _ in range(2):
        assert feed(b, p, m.publish("$SYS/fake", b"x")) == 0
    assert b.counters["sys_publish_dropped"] == 2
    assert payloads(w.take()) == [] and payloads(s.take()) == []
    e = raises_protocol(feed, b, p, m.publish("a/+", b"x"))
    assert e is not None
    p2 = client(b, "p2")
    assert raises_protocol(feed, b, p2, m.publish("a/+", b"x")) is not None


def test_before_connect_the_fast_path_does_nothing():
    b = make_broker()
    client(b, "a", "t")
    p = client(b, "p")
    feed(b, p, m.publish("t", b"1"))
    fresh = FakeConn()
    assert raises_protocol(feed, b, fresh, m.publish("t", b"2")) is not None


def test_route_cache_is_bounded():
    b = make_broker()
    client(b, "a", "#")
    p = client(b, "p")
    for i in range(100):
        feed(b, p, m.publish("t/%d" % i, b"x"))
    assert len(b.subs.routes) <= 16


def test_routing_lookup_allocates_nothing():
    # Under MicroPython, micropython.heap_lock() makes any allocation raise
    # MemoryError: matching a topic through the subscription trie and
    # looking up its cached route must not allocate (DESIGN.md section 6).
    # CPython has no heap lock; there the same calls are checked for their
    # results only.
    b = make_broker()
    subs = [client(b, "s%d" % i, f, i % 3) for i, f in enumerate(("room/+", "room/#", "#", "room/1", "+/1"))]
    p = client(b, "p")
    feed(b, p, m.publish("room/1", b"x"))
    from midge import topics
    levels = topics.split("room/1")
    out = {}
    b.subs.match(levels, out)  # first call fills `out`
    key = b"room/1"
    got = [None, None]
    try:
        import micropython
        lock, unlock = micropython.heap_lock, micropython.heap_unlock
    except (ImportError, AttributeError):
        lock = unlock = lambda: None
    lock()
    try:
        b.subs.match(levels, out)
        got[0] = b.subs.route(key)
        got[1] = len(out)
    finally:
        unlock()
    assert got[1] == 5
    assert set(got[0]) == set(c.session for c in subs)
