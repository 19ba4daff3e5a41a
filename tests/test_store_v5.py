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
