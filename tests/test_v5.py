# MQTT 5.0 through the core: raw packets built with the independent
# tools/mqtt5spec.py go through handlers.handle (and the QoS 0 fast path,
# as Connection._handle takes it); replies are parsed with mqtt5spec (MQTT 5
# clients) or mqttspec (3.1.1 clients). Runs on both interpreters.
import mqttspec as m
import mqtt5spec as m5
from fakeconn import FakeConn, Clock, make_broker, frames, raises_protocol
from midge import handlers
from midge.connection import forward_qos0


def feed(broker, conn, data):
    """Every packet in data through the fast path or handlers.handle, as
    Connection._handle does; stops once the connection is closing. A
    ProtocolError propagates."""
    conn.broker = broker
    for first, start, end in frames(data):
        pos = start - 2 if end - start < 128 else start - 3
        if first != 0x30 or not forward_qos0(conn, data, pos, start, end):
            handlers.handle(broker, conn, first, data, start, end)
        if conn.closing:
            return


def err(broker, conn, data):
    """The ProtocolError feeding data raised (None if it did not)."""
    return raises_protocol(feed, broker, conn, data)


def take5(conn):
    pk, rest = m5.parse_all(conn.out)
    assert rest == b"", rest
    conn.out = b""
    return pk


def client5(broker, cid="c5", clean_start=True, plist=None, will=None, present=0):
    """A connected MQTT 5 FakeConn (keepalive 0: ticks never time it out)."""
    conn = FakeConn()
    feed(broker, conn, m5.connect(cid, clean_start=clean_start, keepalive=0, plist=plist, will=will))
    pk = take5(conn)
    assert pk[0]["type"] == "connack" and pk[0]["rc"] == 0, pk
    assert pk[0]["session_present"] == present
    conn.out = b"".join(p["raw"] for p in pk[1:])
    return conn


def client3(broker, cid="c3", clean=True):
    conn = FakeConn()
    feed(broker, conn, m.connect(cid, clean=clean, keepalive=0))
    assert conn.take()[0]["rc"] == 0
    return conn


def sub5(broker, conn, filt, opts=0, pid=1):
    feed(broker, conn, m5.subscribe(pid, [(filt, opts)]))
    pk = take5(conn)
    assert pk[0]["type"] == "suback" and pk[0]["pid"] == pid, pk
    conn.out = b"".join(p["raw"] for p in pk[1:])
    return pk[0]["codes"][0]


def pubs(pkts):
    return [p for p in pkts if p["type"] == "publish"]


# --- CONNECT / CONNACK ------------------------------------------------------------

def test_connack_states_the_broker_capabilities():
    b = make_broker(max_packet_size=4096, max_inflight_in=64, max_topic_aliases=10)
    conn = FakeConn()
    feed(b, conn, m5.connect("dev"))
    ack = take5(conn)[0]
    assert ack["rc"] == 0 and ack["session_present"] == 0
    assert m5.get(ack, m5.MAXIMUM_PACKET_SIZE) == 4096
    assert m5.get(ack, m5.RECEIVE_MAXIMUM) == 64
    assert m5.get(ack, m5.TOPIC_ALIAS_MAXIMUM) == 10
    assert m5.get(ack, m5.ASSIGNED_CLIENT_ID) is None  # the client named itself
    # not (yet) available: stated, so that a client does not try
    # available (the defaults: not stated)
    for pid in (m5.SUB_ID_AVAILABLE, m5.SHARED_SUB_AVAILABLE, m5.WILDCARD_SUB_AVAILABLE,
                m5.RETAIN_AVAILABLE, m5.MAXIMUM_QOS):
        assert m5.get(ack, pid) is None


def test_empty_client_id_is_assigned_and_returned():
    # [MQTT-3.2.2-16]; MQTT 5 allows it with clean start 0 too
    b = make_broker()
    for clean_start in (True, False):
        conn = FakeConn()
        feed(b, conn, m5.connect("", clean_start=clean_start))
        ack = take5(conn)[0]
        assert ack["rc"] == 0
        cid = m5.get(ack, m5.ASSIGNED_CLIENT_ID)
        assert cid and conn.session.client_id == cid


def test_session_expiry_is_capped_by_session_expiry_s_and_stated():
    b = make_broker(session_expiry_s=100)
    conn = FakeConn()
    feed(b, conn, m5.connect("x", plist=[(m5.SESSION_EXPIRY, 1000)]))
    ack = take5(conn)[0]
    assert m5.get(ack, m5.SESSION_EXPIRY) == 100
    assert conn.session.expiry_s == 100 and not conn.session.clean


def test_auth_method_is_refused_with_0x8c():
    b = make_broker()
    conn = FakeConn()
    feed(b, conn, m5.connect("x", plist=[(m5.AUTH_METHOD, "SCRAM-SHA-1")]))
    ack = take5(conn)[0]
    assert ack["rc"] == 0x8C and ack["session_present"] == 0 and conn.closing


def test_auth_packet_is_a_protocol_error():
    b = make_broker()
    conn = client5(b)
    e = err(b, conn, m5.auth())
    assert e is not None and e.reason == 0x82


def test_connect_property_errors():
    b = make_broker()
    cases = (
        ([(m5.SESSION_EXPIRY, 1), (m5.SESSION_EXPIRY, 2)], 0x82),   # twice
        ([(m5.RECEIVE_MAXIMUM, 0)], 0x82),                           # 0 not allowed
        ([(m5.MAXIMUM_PACKET_SIZE, 0)], 0x82),
        ([(m5.TOPIC_ALIAS, 1)], 0x81),                               # not a CONNECT property
        ([(m5.REQUEST_PROBLEM_INFO, 2)], 0x82),
    )
    for plist, reason in cases:
        e = err(b, FakeConn(), m5.connect("x", plist=plist))
        assert e is not None and e.reason == reason, (plist, e)
    # a property length past the packet, an unknown identifier
    e = err(b, FakeConn(), m5.connect("x", raw_props=b"\x11\x00"))
    assert e is not None and e.reason == 0x81
    e = err(b, FakeConn(), m5.connect("x", raw_props=b"\x7f\x00"))
    assert e is not None and e.reason == 0x81


# --- PUBLISH and its properties -----------------------------------------------------

FWD = [(m5.USER_PROPERTY, ("b", "2")), (m5.CONTENT_TYPE, "text/plain"),
       (m5.USER_PROPERTY, ("a", "1")), (m5.RESPONSE_TOPIC, "reply/here"),
       (m5.CORRELATION_DATA, b"\x00\x01"), (m5.USER_PROPERTY, ("b", "2")),
       (m5.PAYLOAD_FORMAT, 1)]


def test_properties_are_forwarded_in_order_with_duplicates():
    b = make_broker()
    s5 = client5(b, "s5")
    sub5(b, s5, "t/#", 1)
    s3 = client3(b, "s3")
    handlers_sub = m.subscribe(1, [("t/#", 1)])
    feed(b, s3, handlers_sub)
    s3.take()
    p = client5(b, "p")
    for qos in (0, 1, 0):  # the QoS 0 twice: the second takes the fast path's route
        feed(b, p, m5.publish("t/1", b"hi", qos=qos, pid=7, plist=FWD))
    got = pubs(take5(s5))
    assert len(got) == 3
    for g in got:
        assert [x for x in g["props"] if x[0] != m5.TOPIC_ALIAS] == FWD
        assert g["payload"] == b"hi"
    got3 = [x for x in s3.take() if x["type"] == "publish"]
    assert [x["payload"] for x in got3] == [b"hi"] * 3  # 3.1.1: no properties


def test_payload_format_indicator_utf8_is_checked():
    b = make_broker()
    p = client5(b)
    e = err(b, p, m5.publish("t", b"\xff\xfe", plist=[(m5.PAYLOAD_FORMAT, 1)]))
    assert e is not None and e.reason == 0x99
    p = client5(b, "p2")
    assert err(b, p, m5.publish("t", b"\xff\xfe", plist=[(m5.PAYLOAD_FORMAT, 0)])) is None


def test_publish_property_errors():
    b = make_broker()
    for plist, reason in (
        ([(m5.SESSION_EXPIRY, 1)], 0x81),                       # not a PUBLISH property
        ([(m5.CONTENT_TYPE, "a"), (m5.CONTENT_TYPE, "b")], 0x82),
        ([(m5.SUBSCRIPTION_ID, 1)], 0x82),                      # only the server sends it
        ([(m5.TOPIC_ALIAS, 0)], 0x82),
        ([(m5.TOPIC_ALIAS, 11)], 0x94),                         # over the broker's maximum
    ):
        p = client5(b)
        e = err(b, p, m5.publish("t", b"x", plist=plist))
        assert e is not None and e.reason == reason, (plist, e)
    p = client5(b)
    e = err(b, p, m5.publish("t", b"x", raw_props=b"\x03\x00\x09ab"))  # string past the section
    assert e is not None and e.reason == 0x81


def test_message_expiry_drops_and_counts_down():
    clock = Clock()
    b = make_broker(clock, sys_interval_s=0)
    s = client5(b, "s", plist=[(m5.SESSION_EXPIRY, 3600)])
    sub5(b, s, "e/#", 1)
    b.detach(s, False)  # offline: messages queue
    p = client5(b, "p")
    feed(b, p, m5.publish("e/short", b"1", qos=1, pid=1, plist=[(m5.MESSAGE_EXPIRY, 5)]))
    feed(b, p, m5.publish("e/long", b"2", qos=1, pid=2, plist=[(m5.MESSAGE_EXPIRY, 60)]))
    clock.advance(20000)
    b.tick()
    s2 = client5(b, "s", clean_start=False, plist=[(m5.SESSION_EXPIRY, 3600)], present=1)
    got = pubs(take5(s2))
    assert [g["payload"] for g in got] == [b"2"]
    assert 39 <= m5.get(got[0], m5.MESSAGE_EXPIRY) <= 40  # the time left [MQTT-3.3.2-6]
    assert b.counters["messages_expired"] == 1


def test_topic_alias_inbound():
    b = make_broker()
    s = client5(b, "s")
    sub5(b, s, "#")
    p = client5(b, "p")
    feed(b, p, m5.publish("long/topic/name", b"1", plist=[(m5.TOPIC_ALIAS, 3)]))
    feed(b, p, m5.publish("", b"2", plist=[(m5.TOPIC_ALIAS, 3)]))
    got = pubs(take5(s))
    assert [(g["topic"], g["payload"]) for g in got] == [("long/topic/name", b"1"), ("long/topic/name", b"2")]
    e = err(b, p, m5.publish("", b"3", plist=[(m5.TOPIC_ALIAS, 4)]))  # never set
    assert e is not None and e.reason == 0x82
    p2 = client5(b, "p2")
    e = err(b, p2, m5.publish("", b"3"))  # empty topic, no alias
    assert e is not None and e.reason == 0x82


def test_topic_alias_outbound_within_the_client_maximum():
    b = make_broker()
    s = client5(b, "s", plist=[(m5.TOPIC_ALIAS_MAXIMUM, 1)])
    sub5(b, s, "#")
    p = client3(b, "p")
    for t in ("home/kitchen", "home/kitchen", "home/hall", "home/hall", "ab", "ab"):
        feed(b, p, m.publish(t, b"x"))
    got = pubs(take5(s))
    # the first long topic gets the one alias the client allows; the second
    # goes in full; a short one never gets one (it would cost more than it saves)
    assert [(g["topic"], m5.get(g, m5.TOPIC_ALIAS)) for g in got] == [
        ("home/kitchen", 1), ("", 1), ("home/hall", None), ("home/hall", None), ("ab", None), ("ab", None)]


def test_outbound_aliases_are_capped_by_max_topic_aliases_too():
    # a client may state 65535: the broker still keeps at most
    # max_topic_aliases topics for it (heap contract)
    b = make_broker(max_topic_aliases=2)
    s = client5(b, "s", plist=[(m5.TOPIC_ALIAS_MAXIMUM, 65535)])
    sub5(b, s, "#")
    p = client3(b, "p")
    for i in range(5):
        feed(b, p, m.publish("sensor/%d" % i, b"x"))
    got = pubs(take5(s))
    assert [m5.get(g, m5.TOPIC_ALIAS) for g in got] == [1, 2, None, None, None]
    assert len(s.wire.aliases_out) == 2


def test_maximum_packet_size_of_the_client():
    b = make_broker()
    s = client5(b, "s", plist=[(m5.MAXIMUM_PACKET_SIZE, 40)])
    sub5(b, s, "#", 1)
    p = client5(b, "p")
    feed(b, p, m5.publish("t", b"x" * 10, qos=1, pid=1))
    feed(b, p, m5.publish("t", b"x" * 100, qos=1, pid=2))
    feed(b, p, m5.publish("t", b"x" * 100, qos=0))
    got = pubs(take5(s))
    assert [len(g["payload"]) for g in got] == [10]
    assert all(len(g["raw"]) <= 40 for g in got)
    assert b.counters["oversize_dropped"] == 2
    assert len(s.session.inflight) == 1  # the dropped one never entered the window


def test_receive_maximum_is_the_window():
    b = make_broker(max_inflight=10)
    s = client5(b, "s", plist=[(m5.RECEIVE_MAXIMUM, 2)])
    sub5(b, s, "t", 1)
    p = client5(b, "p")
    for i in range(4):
        feed(b, p, m5.publish("t", b"%d" % i, qos=1, pid=i + 1))
    got = pubs(take5(s))
    assert [g["payload"] for g in got] == [b"0", b"1"]
    feed(b, s, m5.puback(got[0]["pid"]))
    assert [g["payload"] for g in pubs(take5(s))] == [b"2"]


# --- acknowledgements --------------------------------------------------------------

def test_acks_with_reason_codes_and_properties():
    b = make_broker()
    s = client5(b, "s")
    sub5(b, s, "t", 2)
    p = client5(b, "p")
    feed(b, p, m5.publish("t", b"1", qos=1, pid=1))
    feed(b, p, m5.publish("t", b"2", qos=2, pid=2))
    assert [(x["type"], x["pid"], x["reason"]) for x in take5(p)] == [("puback", 1, 0), ("pubrec", 2, 0)]
    feed(b, p, m5.pubrel(2, 0, [(m5.REASON_STRING, "ok")]))
    assert [(x["type"], x["pid"]) for x in take5(p)] == [("pubcomp", 2)]
    got = pubs(take5(s))
    assert [g["qos"] for g in got] == [1, 2]
    feed(b, s, m5.puback(got[0]["pid"], 0x10, [(m5.USER_PROPERTY, ("k", "v"))]))
    # a PUBREC with a failure reason ends the QoS 2 exchange: no PUBREL
    feed(b, s, m5.pubrec(got[1]["pid"], 0x80))
    assert take5(s) == [] and not s.session.inflight


def test_unknown_packet_ids_get_0x92():
    # PUBREL / PUBREC for a packet id the broker does not hold: answered,
    # with reason 0x92 (packet identifier not found) on MQTT 5
    b = make_broker()
    c = client5(b, "c")
    feed(b, c, m5.pubrel(77))
    feed(b, c, m5.pubrec(78))
    assert [(x["type"], x["pid"], x["reason"]) for x in take5(c)] == [("pubcomp", 77, 0x92), ("pubrel", 78, 0x92)]
    c3 = client3(b, "c3")
    feed(b, c3, m.pubrel(77))
    assert [(x["type"], x["pid"]) for x in c3.take()] == [("pubcomp", 77)]  # 3.1.1: no reason


def test_puback_for_qos2_and_pubrec_for_qos1_are_protocol_errors():
    b = make_broker()
    for wrong in (m.pubrec, m.puback):
        s = client3(b, "s")
        feed(b, s, m.subscribe(1, [("t", 2)]))
        s.take()
        p = client3(b, "p")
        qos = 1 if wrong is m.pubrec else 2
        feed(b, p, m.publish("t", b"x", qos=qos, pid=1))
        got = [x for x in s.take() if x["type"] == "publish"]
        assert got[0]["qos"] == qos
        assert err(b, s, wrong(got[0]["pid"])) is not None


def test_suback_and_unsuback_reason_codes():
    b = make_broker(max_subscriptions=2)
    s = client5(b, "s")
    feed(b, s, m5.subscribe(1, [("a", 1), ("b", 2), ("c", 0), ("$share//t", 1)]))
    ack = take5(s)[0]
    assert ack["codes"] == [1, 2, 0x80, 0x8F]
    feed(b, s, m5.unsubscribe(2, ["a", "nope"]))
    ack = take5(s)[0]
    assert ack["type"] == "unsuback" and ack["codes"] == [0, 0x11]


def test_subscription_options_and_identifiers():
    b = make_broker()
    s = client5(b, "s")
    feed(b, s, m5.subscribe(1, [("t/#", m5.options(1, no_local=True))], [(m5.SUBSCRIPTION_ID, 7)]))
    feed(b, s, m5.subscribe(2, [("t/+", m5.options(2, retain_as_published=True))],
                            [(m5.SUBSCRIPTION_ID, 300000)]))
    feed(b, s, m5.subscribe(3, [("x", 0)]))
    assert [a["codes"] for a in take5(s)] == [[1], [2], [0]]
    p = client5(b, "p")
    feed(b, p, m5.publish("t/1", b"a", qos=2, pid=1, retain=True))
    got = pubs(take5(s))
    # one copy for both filters [MQTT-3.3.5-1], at the higher QoS, with both
    # identifiers [MQTT-3.3.4-3], retain as published
    assert len(got) == 1 and got[0]["qos"] == 2 and got[0]["retain"] == 1
    assert sorted(m5.get_all(got[0], m5.SUBSCRIPTION_ID)) == [7, 300000]
    # its own message: t/# has No Local, t/+ does not
    feed(b, s, m5.publish("t/2", b"own", qos=1, pid=9))
    got = [x for x in take5(s) if x["type"] == "publish"]
    assert len(got) == 1 and m5.get_all(got[0], m5.SUBSCRIPTION_ID) == [300000]
    feed(b, s, m5.publish("t/a/b", b"own", qos=1, pid=10))  # only t/# matches: No Local
    assert pubs(take5(s)) == []
    # a retained message sent for a new subscription carries its identifier
    late = client5(b, "late")
    feed(b, late, m5.subscribe(1, [("t/1", 1)], [(m5.SUBSCRIPTION_ID, 42)]))
    got = pubs(take5(late))
    assert len(got) == 1 and m5.get_all(got[0], m5.SUBSCRIPTION_ID) == [42] and got[0]["retain"] == 1
    # a 3.1.1 publisher on the fast path reaches the options too
    p3 = client3(b, "p3")
    for _ in range(2):
        feed(b, p3, m.publish("t/3", b"q0"))
    got = pubs(take5(s))
    assert len(got) == 2 and all(sorted(m5.get_all(g, m5.SUBSCRIPTION_ID)) == [7, 300000] for g in got)


def test_subscription_identifier_zero_is_a_protocol_error():
    b = make_broker()
    s = client5(b, "s")
    e = err(b, s, m5.subscribe(1, [("a", 0)], [(m5.SUBSCRIPTION_ID, 0)]))
    assert e is not None and e.reason == 0x82


def test_retain_handling():
    b = make_broker()
    p = client3(b, "p")
    feed(b, p, m.publish("r/1", b"kept", retain=True))
    for rh, first, again in ((0, 1, 1), (1, 1, 0), (2, 0, 0)):
        s = client5(b, "s%d" % rh)
        sub5(b, s, "r/#", m5.options(0, retain_handling=rh))
        n1 = len(pubs(take5(s)))
        sub5(b, s, "r/#", m5.options(0, retain_handling=rh), pid=2)
        n2 = len(pubs(take5(s)))
        assert (n1, n2) == (first, again), rh


# --- DISCONNECT, wills, session expiry -----------------------------------------------

def test_disconnect_with_will_message_publishes_it():
    b = make_broker()
    w = client5(b, "w")
    sub5(b, w, "will/#")
    c = client5(b, "c", will=("will/c", b"gone", 0, False, [(m5.CONTENT_TYPE, "x")]))
    feed(b, c, m5.disconnect(0x04))
    b.detach(c, c.graceful)
    got = pubs(take5(w))
    assert [g["payload"] for g in got] == [b"gone"] and m5.get(got[0], m5.CONTENT_TYPE) == "x"


def test_disconnect_normal_sends_no_will():
    b = make_broker()
    w = client5(b, "w")
    sub5(b, w, "will/#")
    c = client5(b, "c", will=("will/c", b"gone", 0, False))
    feed(b, c, m5.disconnect(0))
    b.detach(c, c.graceful)
    assert pubs(take5(w)) == []


def test_session_expiry_changed_on_disconnect():
    b = make_broker()
    c = client5(b, "c", plist=[(m5.SESSION_EXPIRY, 60)])
    feed(b, c, m5.disconnect(0, [(m5.SESSION_EXPIRY, 0)]))
    b.detach(c, c.graceful)
    assert "c" not in b.sessions  # ends at the close now
    c = client5(b, "c")  # session expiry 0 in CONNECT
    e = err(b, c, m5.disconnect(0, [(m5.SESSION_EXPIRY, 30)]))
    assert e is not None and e.reason == 0x82  # [MQTT-3.14.2-2]


def test_session_expiry_per_session():
    clock = Clock()
    b = make_broker(clock, sys_interval_s=0)
    c = client5(b, "c", plist=[(m5.SESSION_EXPIRY, 10)])
    b.detach(c, False)
    clock.advance(9000)
    b.tick()
    assert "c" in b.sessions
    clock.advance(2000)
    b.tick()
    assert "c" not in b.sessions and b.counters["sessions_expired"] == 1


def test_will_delay():
    clock = Clock()
    b = make_broker(clock, sys_interval_s=0)
    w = client5(b, "w")
    sub5(b, w, "will/#")
    will = ("will/c", b"gone", 0, False, [(m5.WILL_DELAY, 5)])
    c = client5(b, "c", plist=[(m5.SESSION_EXPIRY, 100)], will=will)
    b.detach(c, False)
    clock.advance(3000)
    b.tick()
    assert pubs(take5(w)) == []
    # back within the delay: no will [MQTT-3.1.3-9]
    c = client5(b, "c", clean_start=False, plist=[(m5.SESSION_EXPIRY, 100)], will=will, present=1)
    b.detach(c, False)
    clock.advance(4000)
    b.tick()
    assert pubs(take5(w)) == []
    clock.advance(2000)
    b.tick()
    assert [g["payload"] for g in pubs(take5(w))] == [b"gone"]
    # the session ends first: the will goes then
    c = client5(b, "c2", plist=[(m5.SESSION_EXPIRY, 2)], will=("will/c2", b"bye", 0, False,
                                                               [(m5.WILL_DELAY, 60)]))
    b.detach(c, False)
    clock.advance(3000)
    b.tick()
    assert [g["payload"] for g in pubs(take5(w))] == [b"bye"]


def test_takeover_and_keepalive_send_disconnect_with_reason():
    clock = Clock()
    b = make_broker(clock, sys_interval_s=0)
    old = client5(b, "d")
    client5(b, "d")
    pk = take5(old)
    assert [(x["type"], x["reason"]) for x in pk] == [("disconnect", 0x8E)] and old.closed
    assert _silent_then_ticked(b, clock, "k", 1, 2000) == [("disconnect", 0x8D)]


def _silent_then_ticked(b, clock, cid, keepalive, silent_ms):
    """An MQTT 5 client asking for `keepalive` stays silent for silent_ms;
    what the broker sends it at the next tick, as (type, reason)."""
    k = FakeConn()
    feed(b, k, m5.connect(cid, keepalive=keepalive))
    take5(k)
    k.last_rx_ms = clock()
    clock.advance(silent_ms)
    b.tick()
    return [(x["type"], x["reason"]) for x in take5(k)]


def test_max_keepalive_is_stated_as_server_keep_alive_or_refuses_311():
    # max_keepalive_s (mosquitto's max_keepalive): MQTT 5 gets Server Keep
    # Alive [MQTT-3.2.2-21] and is checked against it; 3.1.1 cannot be told
    clock = Clock()
    b = make_broker(clock, max_keepalive_s=60, sys_interval_s=0)
    for asked, want in ((30, None), (60, None), (120, 60), (0, 60)):
        conn = FakeConn()
        feed(b, conn, m5.connect("k%d" % asked, keepalive=asked))
        ack = take5(conn)[0]
        assert ack["rc"] == 0 and m5.get(ack, m5.SERVER_KEEP_ALIVE) == want, asked
        assert conn.keepalive_ms == (want or asked) * 1000
    for asked, rc in ((60, 0), (61, 2), (0, 2)):
        conn = FakeConn()
        feed(b, conn, m.connect("c%d" % asked, keepalive=asked))
        assert conn.take()[0]["rc"] == rc, asked
    # the imposed keep alive is the one checked: 1.5 x 60 s of silence
    assert _silent_then_ticked(b, clock, "quiet", 0, 91000) == [("disconnect", 0x8D)]
    # 0: no limit
    conn = FakeConn()
    feed(make_broker(), conn, m5.connect("free", keepalive=0))
    assert m5.get(take5(conn)[0], m5.SERVER_KEEP_ALIVE) is None


def test_response_information_when_asked_and_configured():
    # Request Response Information 1 asks for it [MQTT-3.1.2-28]; the
    # broker sends response_information, if set, and only when asked
    for configured, asked, want in (("resp/", 1, "resp/"), ("resp/", 0, None), ("", 1, None)):
        b = make_broker(response_information=configured)
        conn = FakeConn()
        feed(b, conn, m5.connect("dev", plist=[(m5.REQUEST_RESPONSE_INFO, asked)]))
        ack = take5(conn)[0]
        assert ack["rc"] == 0 and m5.get(ack, m5.RESPONSE_INFO) == want, (configured, asked)


def test_reason_strings_follow_request_problem_information():
    # acknowledgements with a failure carry a Reason String unless the
    # client set Request Problem Information 0 [MQTT-3.1.2-29]
    for asked, want in ((None, True), (1, True), (0, False)):
        b = make_broker(max_subscriptions=1)
        c = client5(b, "c", plist=None if asked is None else [(m5.REQUEST_PROBLEM_INFO, asked)])
        feed(b, c, m5.pubrel(77))
        feed(b, c, m5.subscribe(1, [("a", 1), ("b", 1)]))
        feed(b, c, m5.unsubscribe(2, ["nope"]))
        comp, suback, unsuback = take5(c)
        assert comp["reason"] == 0x92 and suback["codes"] == [1, 0x80] and unsuback["codes"] == [0x11]
        got = [m5.get(x, m5.REASON_STRING) for x in (comp, suback)]
        assert got == (["packet identifier not found", "refused"] if want else [None, None]), asked
        assert m5.get(unsuback, m5.REASON_STRING) is None  # 0x11 is no failure
        # a success carries none
        feed(b, c, m5.publish("t", b"x", qos=1, pid=5))
        assert [m5.get(x, m5.REASON_STRING) for x in take5(c)] == [None]


def test_server_disconnect_says_why_within_the_maximum_packet_size():
    # a protocol error's own text goes in the DISCONNECT's Reason String
    # (allowed whatever Request Problem Information says), unless it would
    # pass the client's Maximum Packet Size [MQTT-3.1.2-25]
    b = make_broker()
    for limit, want in ((None, "second CONNECT"), (30, "second CONNECT"), (20, None)):
        plist = [(m5.REQUEST_PROBLEM_INFO, 0)]
        if limit is not None:
            plist.append((m5.MAXIMUM_PACKET_SIZE, limit))
        w = client5(b, "c", plist=plist).wire
        pk, rest = m5.parse_all(w.disconnect(0x82, "second CONNECT"))
        assert rest == b"" and pk[0]["reason"] == 0x82
        assert m5.get(pk[0], m5.REASON_STRING) == want, limit
        assert limit is None or len(pk[0]["raw"]) <= limit
    # without a text, the reason's name (a takeover: 0x8E)
    pk, _ = m5.parse_all(w.disconnect(0x8E))
    assert m5.get(pk[0], m5.REASON_STRING) is None  # (20 bytes: no room)
    pk, _ = m5.parse_all(client5(b, "d").wire.disconnect(0x8E))
    assert m5.get(pk[0], m5.REASON_STRING) == "session taken over"


# --- mixed 3.1.1 and 5 -----------------------------------------------------------------

def test_mixed_clients_share_topics_retained_and_wills():
    b = make_broker()
    s3 = client3(b, "s3")
    feed(b, s3, m.subscribe(1, [("room/#", 1)]))
    s3.take()
    s5 = client5(b, "s5")
    sub5(b, s5, "room/#", 1)
    p3 = client3(b, "p3")
    p5 = client5(b, "p5", will=("room/will", b"p5 gone", 1, True))
    feed(b, p3, m.publish("room/a", b"from3", retain=True))
    feed(b, p5, m5.publish("room/b", b"from5", qos=1, pid=1, retain=True,
                           plist=[(m5.USER_PROPERTY, ("u", "v"))]))
    for _ in range(2):
        feed(b, p3, m.publish("room/fast", b"q0"))  # the second on the fast path
    b.detach(p5, False)  # the will, retained
    got3 = [(x["topic"], x["payload"]) for x in s3.take() if x["type"] == "publish"]
    got5 = [(x["topic"], x["payload"]) for x in pubs(take5(s5))]
    want = [("room/a", b"from3"), ("room/b", b"from5"), ("room/fast", b"q0"), ("room/fast", b"q0"),
            ("room/will", b"p5 gone")]
    assert got3 == want and got5 == want
    # a late 5.0 subscriber gets the retained messages of both, with properties
    late = client5(b, "late")
    sub5(b, late, "room/#", 1)
    got = pubs(take5(late))
    assert sorted((g["topic"], g["retain"]) for g in got) == [("room/a", 1), ("room/b", 1), ("room/will", 1)]
    assert [m5.get(g, m5.USER_PROPERTY) for g in got if g["topic"] == "room/b"] == [("u", "v")]


# --- stricter 3.1 / 3.1.1 ----------------------------------------------------------------

def test_mqtt31_connack_has_no_session_present_and_ids_are_1_to_23():
    b = make_broker()
    conn = FakeConn()
    feed(b, conn, m.connect("p", clean=False, protocol_name="MQIsdp", protocol_level=3))
    conn.take()
    b.detach(conn, False)
    conn = FakeConn()
    feed(b, conn, m.connect("p", clean=False, protocol_name="MQIsdp", protocol_level=3))
    assert conn.out[:4] == b"\x20\x02\x00\x00"  # present would be 1 in 3.1.1
    for cid in ("x" * 24, ""):
        conn = FakeConn()
        feed(b, conn, m.connect(cid, protocol_name="MQIsdp", protocol_level=3))
        assert conn.take()[0]["rc"] == 2 and conn.closing


def test_control_characters_close_the_connection():
    b = make_broker()
    for bad in (b"a\x01b", b"a\x7f", b"a\xc2\x85"):
        assert err(b, FakeConn(), m.connect(bad)) is not None, bad
        c = client3(b)
        assert err(b, c, m.publish(bad, b"x")) is not None, bad
        c = client3(b)
        assert err(b, c, m.subscribe(1, [(bad, 0)])) is not None, bad
        assert err(b, FakeConn(), m.connect("w", will_topic=bad, will_payload=b"x")) is not None
        assert err(b, FakeConn(), m.connect("u", username=bad)) is not None
    c = client3(b)
    assert err(b, c, m.publish("caf\xe9/\u00a0ok", b"x")) is None  # U+00A0 and up are fine


def test_zero_length_filter_is_malformed():
    b = make_broker()
    c = client3(b)
    assert err(b, c, m.subscribe(1, [("", 0)])) is not None
    c = client3(b)
    assert err(b, c, m.unsubscribe(1, [""])) is not None


# --- shared subscriptions ----------------------------------------------------------------

def test_shared_subscription_each_message_to_one_member():
    b = make_broker()
    m1 = client5(b, "m1")
    m3 = client3(b, "m3")  # a 3.1.1 client in the same group
    m2 = client5(b, "m2")
    sub5(b, m1, "$share/g/s/+", 1)
    sub5(b, m2, "$share/g/s/+", 1)
    feed(b, m3, m.subscribe(1, [("$share/g/s/+", 1)]))
    assert m3.take()[0]["codes"] == [1]
    other = client5(b, "other")
    sub5(b, other, "$share/h/s/#", 0)  # another group gets its own copy
    p = client3(b, "p")
    for i in range(9):
        for _ in range(2):  # QoS 0 twice: no fast path for a topic a group matches
            feed(b, p, m.publish("s/%d" % i, b"%d" % i))
    got1 = [g["payload"] for g in pubs(take5(m1))]
    got2 = [g["payload"] for g in pubs(take5(m2))]
    got3 = [x["payload"] for x in m3.take() if x["type"] == "publish"]
    assert len(got1) == len(got2) == len(got3) == 6  # round robin
    assert sorted(got1 + got2 + got3) == sorted(b"%d" % i for i in range(9) for _ in range(2))
    assert len(pubs(take5(other))) == 18


def test_shared_subscription_gets_no_retained_and_refuses_no_local():
    b = make_broker()
    p = client3(b, "p")
    feed(b, p, m.publish("r", b"kept", retain=True))
    s = client5(b, "s")
    assert sub5(b, s, "$share/g/r", 0) == 0
    assert pubs(take5(s)) == []
    e = err(b, s, m5.subscribe(2, [("$share/g/r", m5.options(0, no_local=True))]))
    assert e is not None and e.reason == 0x82


def test_shared_member_that_leaves_hands_over_its_unacknowledged_messages():
    b = make_broker(max_inflight=2)
    a = client5(b, "a")
    sub5(b, a, "$share/g/q", 1)
    p = client3(b, "p")
    for i in range(4):
        feed(b, p, m.publish("q", b"%d" % i, qos=1, pid=i + 1))
    assert [g["payload"] for g in pubs(take5(a))] == [b"0", b"1"]  # 2 inflight, 2 queued
    c = client5(b, "c")
    sub5(b, c, "$share/g/q", 1)
    b.detach(a, False)  # a clean session ends: its four go to c
    got = []
    for _ in range(3):
        pk = pubs(take5(c))
        got += [g["payload"] for g in pk]
        for g in pk:
            feed(b, c, m5.puback(g["pid"]))
    assert sorted(got) == [b"0", b"1", b"2", b"3"]
    assert "a" not in b.sessions and b.shared_members == 1
    b.detach(c, False)
    assert b.groups == {} and b.shared_members == 0


def test_shared_subscription_unsubscribe_and_caps():
    b = make_broker(max_subscriptions=2)
    s = client5(b, "s")
    assert sub5(b, s, "$share/g/a", 1) == 1
    assert sub5(b, s, "$share/g/b", 1, pid=2) == 1
    assert sub5(b, s, "$share/g/c", 1, pid=3) == 0x80
    feed(b, s, m5.unsubscribe(4, ["$share/g/a", "$share/g/a"]))
    assert take5(s)[0]["codes"] == [0, 0x11]
    assert list(b.groups) == ["$share/g/b"]
