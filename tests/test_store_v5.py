# The flash store with MQTT 5 state: session expiry, subscription options
# and identifiers, message properties and expiry (queued and retained),
# will properties and delay. Packets are built with tools/mqtt5spec.py; the
# store helpers are test_store.py's. Runs on both interpreters.
import mqtt5spec as m5
from fakeconn import FakeConn
from test_store import Env, crash, feed


def take5(conn):
    pk, rest = m5.parse_all(conn.out)
    assert rest == b""
    conn.out = b""
    return pk


def client5(b, cid, clean_start=False, plist=None, will=None):
    conn = FakeConn()
    feed(b, conn, m5.connect(cid, clean_start=clean_start, keepalive=0, plist=plist, will=will))
    pk = take5(conn)
    assert pk[0]["type"] == "connack" and pk[0]["rc"] == 0, pk
    return conn, pk[0]["session_present"], pk[1:]


PROPS = [(m5.USER_PROPERTY, ("k", "v")), (m5.CONTENT_TYPE, "text/plain"),
         (m5.USER_PROPERTY, ("k", "v"))]


def test_session_expiry_and_subscription_options_round_trip():
    with Env() as env:
        b = env.boot()
        c, _, _ = client5(b, "dev", plist=[(m5.SESSION_EXPIRY, 120)])
        feed(b, c, m5.subscribe(1, [("a/#", m5.options(1, no_local=True))], [(m5.SUBSCRIPTION_ID, 77)]))
        feed(b, c, m5.disconnect(0))
        env.settle(b)
        crash(b)

        b = env.boot()
        s = b.sessions["dev"]
        assert s.expiry_s == 120
        assert s.subs == {"a/#": 1 | 4 | (77 << 4)}
        p, _, _ = client5(b, "pub", clean_start=True)
        feed(b, p, m5.publish("a/1", b"x", qos=1, pid=1))
        c, present, pk = client5(b, "dev", plist=[(m5.SESSION_EXPIRY, 120)])
        assert present == 1
        pubs = [x for x in pk if x["type"] == "publish"]
        assert [m5.get_all(x, m5.SUBSCRIPTION_ID) for x in pubs] == [[77]]
        feed(b, c, m5.disconnect(0))
        # the interval still counts after the restart: 121 s offline ends it
        env.clock.advance(121000)
        b.tick()
        assert "dev" not in b.sessions


def test_queued_message_properties_and_expiry_round_trip():
    with Env() as env:
        b = env.boot()
        c, _, _ = client5(b, "sub", plist=[(m5.SESSION_EXPIRY, 3600)])
        feed(b, c, m5.subscribe(1, [("q/#", 1)]))
        feed(b, c, m5.disconnect(0))
        p, _, _ = client5(b, "pub", clean_start=True)
        feed(b, p, m5.publish("q/long", b"1", qos=1, pid=1, plist=PROPS + [(m5.MESSAGE_EXPIRY, 100)]))
        feed(b, p, m5.publish("q/short", b"2", qos=1, pid=2, plist=[(m5.MESSAGE_EXPIRY, 30)]))
        feed(b, p, m5.publish("q/plain", b"3", qos=1, pid=3))
        crash(b)  # (acknowledged QoS 1: written without waiting)

        b = env.boot()
        # the time left was stored: 31 s after the restart q/short has expired
        env.clock.advance(31000)
        b.tick()
        c, present, pk = client5(b, "sub", plist=[(m5.SESSION_EXPIRY, 3600)])
        assert present == 1
        pubs = [x for x in pk if x["type"] == "publish"]
        assert [x["payload"] for x in pubs] == [b"1", b"3"]
        props = [p for p in pubs[0]["props"] if p[0] != m5.MESSAGE_EXPIRY]
        assert props == PROPS
        assert 60 <= m5.get(pubs[0], m5.MESSAGE_EXPIRY) <= 69
        assert m5.get(pubs[1], m5.MESSAGE_EXPIRY) is None


def test_retained_properties_and_expiry_round_trip():
    with Env() as env:
        b = env.boot()
        p, _, _ = client5(b, "pub", clean_start=True)
        feed(b, p, m5.publish("r/a", b"kept", qos=1, pid=1, retain=True, plist=PROPS))
        feed(b, p, m5.publish("r/b", b"brief", qos=1, pid=2, retain=True,
                              plist=[(m5.MESSAGE_EXPIRY, 10)]))
        crash(b)

        b = env.boot()
        env.clock.advance(11000)
        b.tick()
        c, _, _ = client5(b, "late", clean_start=True)
        feed(b, c, m5.subscribe(1, [("r/#", 1)]))
        pubs = [x for x in take5(c) if x["type"] == "publish"]
        assert [(x["topic"], x["payload"]) for x in pubs] == [("r/a", b"kept")]
        assert pubs[0]["props"] == PROPS and pubs[0]["retain"] == 1


def test_will_properties_and_delay_round_trip():
    with Env() as env:
        b = env.boot()
        will = ("w/dev", b"gone", 1, False, PROPS + [(m5.WILL_DELAY, 5)])
        c, _, _ = client5(b, "dev", plist=[(m5.SESSION_EXPIRY, 600)], will=will)
        env.settle(b)
        crash(b)  # connected when the broker stopped: the will is owed

        b = env.boot()
        w, _, _ = client5(b, "watch", clean_start=True)
        feed(b, w, m5.subscribe(1, [("w/#", 1)]))
        take5(w)
        s = b.sessions["dev"]
        assert s.will is not None and s.will.delay_s == 5
        env.clock.advance(3000)
        b.tick()
        assert [x for x in take5(w) if x["type"] == "publish"] == []  # still within the delay
        env.clock.advance(3000)
        b.tick()
        pubs = [x for x in take5(w) if x["type"] == "publish"]
        assert [(x["topic"], x["payload"]) for x in pubs] == [("w/dev", b"gone")]
        assert pubs[0]["props"] == PROPS


def _sub_with_options(b, cid, window=None):
    """A persistent MQTT 5 subscriber to r/# with Retain As Published and
    subscription identifier 9 (Receive Maximum `window`, if given)."""
    plist = [(m5.SESSION_EXPIRY, 3600)]
    if window is not None:
        plist.append((m5.RECEIVE_MAXIMUM, window))
    c, present, pk = client5(b, cid, plist=plist)
    return c, present, pk


def _publish_retained(b, topics):
    p, _, _ = client5(b, "pub", clean_start=True)
    for i, t in enumerate(topics):
        feed(b, p, m5.publish(t, t.encode(), qos=1, retain=True, pid=i + 1))
    feed(b, p, m5.disconnect(0))


def _twice(env, b):
    """Crash, boot (the journal is read, then compacted into a snapshot),
    crash again and boot from the snapshot: both ways of reading back."""
    crash(b)
    crash(env.boot())
    return env.boot()


def test_queued_and_inflight_options_survive_restarts():
    # Retain As Published and subscription identifiers of messages waiting
    # in a queue (R_QUEUE5), sent from it and unacknowledged (R_SEND), and
    # sent directly and unacknowledged (R_INFLIGHT5)
    with Env() as env:
        b = env.boot()
        c, _, _ = _sub_with_options(b, "dev", window=1)
        feed(b, c, m5.subscribe(1, [("r/#", m5.options(1, retain_as_published=True))],
                                [(m5.SUBSCRIPTION_ID, 9)]))
        take5(c)
        _publish_retained(b, ["r/1"])  # sent at once, not acknowledged: inflight
        feed(b, c, m5.disconnect(0))
        _publish_retained(b, ["r/2", "r/3"])  # queued while offline
        c, present, pk = _sub_with_options(b, "dev", window=1)
        assert present == 1
        # r/1 resent, acknowledged; r/2 sent from the queue, not acknowledged
        first = [x for x in pk if x["type"] == "publish"]
        assert [x["payload"] for x in first] == [b"r/1"]
        feed(b, c, m5.puback(first[0]["pid"]))
        second = [x for x in take5(c) if x["type"] == "publish"]
        assert [x["payload"] for x in second] == [b"r/2"]
        b = _twice(env, b)

        s = b.sessions["dev"]
        assert [(e[1].payload, e[2], e[3], e[5]) for e in s.inflight] == [(b"r/2", 1, True, (9,))]
        assert [(e[0].payload, e[1], e[2], e[3]) for e in s.queue] == [(b"r/3", 1, True, (9,))]
        c, present, pk = _sub_with_options(b, "dev", window=1)
        pubs = [x for x in pk if x["type"] == "publish"]
        assert [(x["payload"], x["dup"], x["retain"], m5.get_all(x, m5.SUBSCRIPTION_ID)) for x in pubs] == [
            (b"r/2", True, True, [9])]
        feed(b, c, m5.puback(pubs[0]["pid"]))
        pubs = [x for x in take5(c) if x["type"] == "publish"]
        assert [(x["payload"], x["retain"], m5.get_all(x, m5.SUBSCRIPTION_ID)) for x in pubs] == [
            (b"r/3", True, [9])]


def test_inflight_subscription_ids_sent_directly_survive_restarts():
    with Env() as env:
        b = env.boot()
        c, _, _ = _sub_with_options(b, "dev")
        feed(b, c, m5.subscribe(1, [("r/#", m5.options(2, retain_as_published=True))],
                                [(m5.SUBSCRIPTION_ID, 300000)]))
        take5(c)
        _publish_retained(b, ["r/9"])  # QoS 1, sent at once (R_INFLIGHT5), never acknowledged
        pubs = [x for x in take5(c) if x["type"] == "publish"]
        assert [(x["payload"], m5.get_all(x, m5.SUBSCRIPTION_ID)) for x in pubs] == [(b"r/9", [300000])]
        b = _twice(env, b)

        c, present, pk = _sub_with_options(b, "dev")
        assert present == 1
        pubs = [x for x in pk if x["type"] == "publish"]
        assert [(x["payload"], x["dup"], x["retain"], m5.get_all(x, m5.SUBSCRIPTION_ID)) for x in pubs] == [
            (b"r/9", True, True, [300000])]
