# midge.handlers: raw packets (built with tools/mqttspec.py) through
# handlers.handle, replies parsed with mqttspec.
import mqttspec as m
from fakeconn import FakeConn, make_broker, frames, publishes, payloads, raises_protocol
from midge import handlers


def feed(broker, conn, data):
    """Hand every packet in data to handlers.handle, as the connection
    does; stop once the handler asks to close. A ProtocolError propagates."""
    for first, start, end in frames(data):
        handlers.handle(broker, conn, first, data, start, end)
        if conn.closing:
            return


def feed_err(broker, conn, data):
    return raises_protocol(feed, broker, conn, data)


def client(broker, cid="c", **kw):
    conn = FakeConn()
    feed(broker, conn, m.connect(cid, **kw))
    pk = conn.take()
    assert len(pk) == 1 and pk[0]["type"] == "connack" and pk[0]["rc"] == 0
    return conn


def subscribe(broker, conn, filt, qos, pid=1):
    feed(broker, conn, m.subscribe(pid, [(filt, qos)]))
    pk = conn.take()
    assert pk[0]["type"] == "suback" and pk[0]["pid"] == pid
    return pk[0]["codes"][0]


# --- CONNECT ----------------------------------------------------------------------

def test_connect_connack():
    b = make_broker()
    conn = FakeConn()
    feed(b, conn, m.connect("dev1", keepalive=20))
    pk = conn.take()
    assert len(pk) == 1 and pk[0]["type"] == "connack"
    assert pk[0]["rc"] == 0 and pk[0]["session_present"] == 0
    assert conn.session.client_id == "dev1" and conn.keepalive_ms == 20000
    assert not conn.closing


def test_connect_mqisdp_level3_accepted():
    b = make_broker()
    conn = FakeConn()
    feed(b, conn, m.connect("old", protocol_name="MQIsdp", protocol_level=3))
    pk = conn.take()
    assert pk[0]["rc"] == 0 and conn.session is not None


def test_connect_unsupported_level_gets_rc1_and_close():
    b = make_broker()
    conn = FakeConn()
    feed(b, conn, m.connect("x", protocol_level=6))
    pk = conn.take()
    assert len(pk) == 1 and pk[0]["rc"] == 1  # [MQTT-3.1.2-2]
    assert conn.closing and conn.session is None and len(b.sessions) == 0


def test_connect_wrong_protocol_name_closes_without_connack():
    b = make_broker()
    conn = FakeConn()
    assert feed_err(b, conn, m.connect("x", protocol_name="HTTP")) is not None  # [MQTT-3.1.2-1]
    assert conn.out == b"" and conn.session is None


def test_refused_connect_sets_closing():
    b = make_broker()
    conn = FakeConn()
    feed(b, conn, m.connect("", clean=False))
    pk = conn.take()
    assert pk[0]["rc"] == 2 and conn.closing
    b2 = make_broker(allow_anonymous=False)
    conn = FakeConn()
    feed(b2, conn, m.connect("x", username="u", password=b"p"))
    pk = conn.take()
    assert pk[0]["rc"] == 5 and conn.closing


def test_packet_before_connect():
    b = make_broker()
    for pkt in (m.publish("t", b"x"), m.pingreq(), m.subscribe(1, [("a", 0)]),
                m.puback(1), m.disconnect(), m.pubrel(1)):
        conn = FakeConn()
        e = feed_err(b, conn, pkt)
        assert e is not None  # [MQTT-3.1.0-1]
        assert conn.out == b"" and conn.session is None
    assert len(b.sessions) == 0


def test_second_connect_is_protocol_error():
    b = make_broker()
    conn = client(b)
    e = feed_err(b, conn, m.connect("c"))
    assert e is not None and e.counter == "malformed_packets"  # [MQTT-3.1.0-2]
    assert conn.out == b""


def test_server_only_and_reserved_types_rejected():
    b = make_broker()
    conn = client(b)
    for pkt in (m.connack(0, 0), m.suback(1, [0]), m.unsuback(1), m.pingresp(),
                m.packet(0x00, b""), m.packet(0xF0, b"")):
        e = feed_err(b, conn, pkt)
        assert e is not None, pkt
    assert conn.out == b""


def test_connect_malformed_is_protocol_error():
    b = make_broker()
    for pkt in (m.connect("x", flags=0x03), m.connect(b"\xff"), m.connect("x", extra=b"z"),
                bytes([0x12]) + m.connect("x")[1:]):
        conn = FakeConn()
        assert feed_err(b, conn, pkt) is not None
        assert conn.out == b""


# --- PUBLISH in ----------------------------------------------------------------------------

def test_publish_qos0_routed():
    b = make_broker()
    rx = client(b, "rx")
    subscribe(b, rx, "t/#", 2)
    tx = client(b, "tx")
    feed(b, tx, m.publish("t/1", b"hello"))
    assert tx.out == b""  # no ack for QoS 0
    got = publishes(rx.take())
    assert len(got) == 1 and got[0]["topic"] == "t/1" and got[0]["payload"] == b"hello"
    assert b.msgs_in == 1


def test_publish_qos1_puback():
    b = make_broker()
    tx = client(b, "tx")
    feed(b, tx, m.publish("t", b"x", qos=1, pid=0x1234))
    pk = tx.take()
    assert len(pk) == 1 and pk[0]["type"] == "puback" and pk[0]["pid"] == 0x1234  # [MQTT-4.3.2-2]


def test_publish_qos2_exactly_once():
    b = make_broker()
    rx = client(b, "rx")
    subscribe(b, rx, "t", 2)
    tx = client(b, "tx")
    feed(b, tx, m.publish("t", b"once", qos=2, pid=7))
    pk = tx.take()
    assert [p["type"] for p in pk] == ["pubrec"] and pk[0]["pid"] == 7
    assert len(publishes(rx.take())) == 1
    # the client resends before PUBREL (with DUP): PUBREC again, no second delivery
    feed(b, tx, m.publish("t", b"once", qos=2, pid=7, dup=True))
    pk = tx.take()
    assert [p["type"] for p in pk] == ["pubrec"] and pk[0]["pid"] == 7
    assert rx.take() == []
    feed(b, tx, m.pubrel(7))
    pk = tx.take()
    assert [p["type"] for p in pk] == ["pubcomp"] and pk[0]["pid"] == 7
    # PUBREL again (the PUBCOMP was lost): PUBCOMP again [MQTT-4.3.3-2]
    feed(b, tx, m.pubrel(7))
    assert tx.take()[0]["type"] == "pubcomp"
    # after the release, pid 7 is a new message
    feed(b, tx, m.publish("t", b"again", qos=2, pid=7))
    assert payloads(rx.take()) == [b"again"]


def test_publish_qos2_duplicate_across_reconnect():
    b = make_broker()
    rx = client(b, "rx")
    subscribe(b, rx, "t", 2)
    tx = client(b, "tx", clean=False)
    feed(b, tx, m.publish("t", b"p", qos=2, pid=3))
    tx.take()
    b.detach(tx, False)
    tx2 = FakeConn()
    feed(b, tx2, m.connect("tx", clean=False))
    assert tx2.take()[0]["session_present"] == 1
    feed(b, tx2, m.publish("t", b"p", qos=2, pid=3, dup=True))
    assert tx2.take()[0]["type"] == "pubrec"
    assert len(publishes(rx.take())) == 1


def test_max_inflight_in():
    b = make_broker(max_inflight_in=2)
    tx = client(b, "tx")
    feed(b, tx, m.publish("t", b"1", qos=2, pid=1))
    feed(b, tx, m.publish("t", b"2", qos=2, pid=2))
    assert len(tx.take()) == 2
    e = feed_err(b, tx, m.publish("t", b"3", qos=2, pid=3))
    assert e is not None and e.counter == "inflight_in_exceeded"
    # a duplicate of a pending one is still fine, and a release makes room
    tx.closing = False
    feed(b, tx, m.publish("t", b"2", qos=2, pid=2, dup=True))
    feed(b, tx, m.pubrel(1))
    feed(b, tx, m.publish("t", b"3", qos=2, pid=3))
    assert [p["type"] for p in tx.take()] == ["pubrec", "pubcomp", "pubrec"]


def test_publish_to_sys_acknowledged_but_dropped():
    b = make_broker()
    mon = client(b, "mon")
    subscribe(b, mon, "$SYS/#", 1)
    tx = client(b, "tx")
    feed(b, tx, m.publish("$SYS/broker/fake", b"1", qos=1, pid=5, retain=True))
    pk = tx.take()
    assert pk[0]["type"] == "puback" and pk[0]["pid"] == 5
    feed(b, tx, m.publish("$SYS", b"1"))
    assert mon.take() == []
    assert b.counters["sys_publish_dropped"] == 2
    assert b.retained.total == 0


def test_publish_to_other_dollar_topic_allowed():
    b = make_broker()
    rx = client(b, "rx")
    subscribe(b, rx, "$app/#", 0)
    tx = client(b, "tx")
    feed(b, tx, m.publish("$app/x", b"1"))
    assert payloads(rx.take()) == [b"1"]
    assert b.counters["sys_publish_dropped"] == 0


def test_publish_bad_topic_closes():
    b = make_broker()
    for topic in ("a/+", "#", "a/#", ""):
        tx = client(b, "tx")
        e = feed_err(b, tx, m.publish(topic, b"x", qos=1, pid=1))
        assert e is not None, topic  # [MQTT-3.3.2-2], [MQTT-4.7.3-1]
        assert tx.out == b""
    assert b.msgs_in == 0


def test_publish_malformed_closes():
    b = make_broker()
    tx = client(b, "tx")
    for pkt in (m.publish("t", b"x", qos=3, pid=1), m.publish("t", b"x", dup=True),
                m.publish("t", b"x", qos=1, pid=0), m.publish(b"\xed\xa0\x80", b"x"),
                m.publish(b"a\x00", b"x")):
        e = feed_err(b, tx, pkt)
        assert e is not None and e.counter == "malformed_packets"
    assert tx.out == b""


def test_publish_topic_limits():
    b = make_broker(max_topic_length=8, max_topic_levels=3)
    rx = client(b, "rx")
    subscribe(b, rx, "#", 0)
    tx = client(b, "tx")
    feed(b, tx, m.publish("a/b/c", b"ok"))
    feed(b, tx, m.publish("abcdefgh", b"ok"))
    assert payloads(rx.take()) == [b"ok", b"ok"]
    e = feed_err(b, tx, m.publish("a/b/c/d", b"x"))
    assert e is not None and e.counter == "topic_limit"
    e = feed_err(b, tx, m.publish("abcdefghi", b"x"))
    assert e is not None and e.counter == "topic_limit"
    assert rx.take() == []


def test_publish_topic_length_counts_utf8_bytes():
    # config.py SPEC: max_topic_length is in UTF-8 bytes. "\u00e9\u00e9\u00e9" is
    # 3 characters but 6 bytes, over a cap of 4.
    b = make_broker(max_topic_length=4)
    tx = client(b, "tx")
    e = feed_err(b, tx, m.publish("\u00e9\u00e9\u00e9", b"x"))
    assert e is not None and e.counter == "topic_limit"


def test_subscribe_filter_length_counts_utf8_bytes():
    b = make_broker(max_topic_length=4)
    c = client(b)
    assert subscribe(b, c, "\u00e9\u00e9\u00e9", 0) == 0x80


# --- acknowledgements in -----------------------------------------------------------------------

def test_puback_and_pubrec_pubcomp_from_client():
    b = make_broker()
    rx = client(b, "rx")
    subscribe(b, rx, "one", 1)
    subscribe(b, rx, "two", 2, pid=2)
    b.publish(_msg("one", 1))
    b.publish(_msg("two", 2))
    got = publishes(rx.take())
    p1 = got[0]["pid"]
    p2 = got[1]["pid"]
    feed(b, rx, m.puback(p1))
    assert len(rx.session.inflight) == 1
    feed(b, rx, m.pubrec(p2))
    pk = rx.take()
    assert pk[0]["type"] == "pubrel" and pk[0]["pid"] == p2
    feed(b, rx, m.pubcomp(p2))
    assert len(rx.session.inflight) == 0


def _msg(topic, qos):
    from midge.message import Message
    return Message(topic, b"m", qos, False)


def test_ack_wrong_flags_closes():
    b = make_broker()
    c = client(b)
    assert feed_err(b, c, m.packet(0x60, m.u16(1))) is not None   # PUBREL flags 0000
    assert feed_err(b, c, m.packet(0x42, m.u16(1))) is not None   # PUBACK flags 0010
    assert feed_err(b, c, m.puback(0)) is not None


# --- SUBSCRIBE / UNSUBSCRIBE, PING, DISCONNECT -----------------------------------------------

def test_subscribe_unsubscribe():
    b = make_broker()
    c = client(b)
    feed(b, c, m.subscribe(4, [("a/+", 1), ("b/#", 2), ("c#", 0)]))
    pk = c.take()
    assert pk[0]["type"] == "suback" and pk[0]["pid"] == 4 and pk[0]["codes"] == [1, 2, 0x80]
    feed(b, c, m.unsubscribe(5, ["a/+", "zzz"]))
    pk = c.take()
    assert pk[0]["type"] == "unsuback" and pk[0]["pid"] == 5
    assert c.session.subs == {"b/#": 2}


def test_subscribe_malformed_closes():
    b = make_broker()
    c = client(b)
    assert feed_err(b, c, m.subscribe(1, [("a", 0)], first_byte=0x80)) is not None
    assert feed_err(b, c, m.subscribe(1, [])) is not None
    assert feed_err(b, c, m.subscribe(1, [("a", 3)])) is not None
    assert feed_err(b, c, m.unsubscribe(1, [])) is not None
    assert feed_err(b, c, m.unsubscribe(1, ["a"], first_byte=0xA0)) is not None
    assert c.out == b""


def test_subscribe_past_the_per_packet_cap_refused_unread():
    # 350 short filters in one 2.1 KB packet: the first 16 are handled, the
    # rest get 0x80 without any work (no subscription, no retained match)
    b = make_broker(max_filters_per_packet=16, max_subscriptions=400, max_subscriptions_total=400)
    b.publish(_retained("f/3"))
    c = client(b)
    feed(b, c, m.subscribe(9, [("f/%d" % i, 0) for i in range(350)]))
    pk = c.take()
    assert pk[0]["type"] == "suback" and pk[0]["codes"] == [0] * 16 + [0x80] * 334
    assert b.subs.count == 16 and b.counters["subscriptions_refused"] == 334
    assert payloads(pk[1:]) == [b"r"]


def test_subscribe_over_long_filter_refused_without_decoding():
    b = make_broker()
    c = client(b)
    feed(b, c, m.subscribe(2, [("/" * 4080, 0), ("x" * 200, 1), ("ok", 1)]))
    assert c.take()[0]["codes"] == [0x80, 0x80, 1]
    assert b.counters["topic_limit"] == 2 and b.subs.count == 1


def test_subscribe_malformed_filter_anywhere_changes_nothing():
    # the whole packet is checked before any filter is applied
    b = make_broker()
    c = client(b)
    assert feed_err(b, c, m.subscribe(1, [("a", 0), ("b", 1), (b"\xff", 0)])) is not None
    assert feed_err(b, c, m.subscribe(1, [("a", 0), ("b", 7)])) is not None
    assert b.subs.count == 0 and c.session.subs == {} and c.out == b""


def test_unsubscribe_many_filters():
    b = make_broker()
    c = client(b)
    subscribe(b, c, "keep", 0)
    subscribe(b, c, "f/7", 0, pid=2)
    feed(b, c, m.unsubscribe(3, ["f/%d" % i for i in range(500)]))
    pk = c.take()
    assert pk[0]["type"] == "unsuback" and pk[0]["pid"] == 3
    assert c.session.subs == {"keep": 0} and b.subs.count == 1


def _retained(topic):
    from midge.message import Message
    return Message(topic, b"r", 0, True)


def test_pingreq():
    b = make_broker()
    c = client(b)
    feed(b, c, m.pingreq())
    pk = c.take()
    assert len(pk) == 1 and pk[0]["type"] == "pingresp"  # [MQTT-3.12.4-1]
    assert feed_err(b, c, m.packet(0xC0, b"\x00")) is not None
    assert feed_err(b, c, m.packet(0xC1, b"")) is not None


def test_disconnect_is_graceful_and_stops_handling():
    b = make_broker()
    watcher = client(b, "w")
    subscribe(b, watcher, "will", 0)
    c = client(b, "c", will_topic="will", will_payload=b"bye")
    feed(b, c, m.disconnect() + m.pingreq())
    assert c.closing and c.graceful
    assert c.out == b""  # nothing after DISCONNECT is handled
    b.detach(c, c.graceful)
    assert watcher.take() == []  # [MQTT-3.14.4-3]


def test_disconnect_with_flags_is_error_and_will_sent():
    b = make_broker()
    watcher = client(b, "w")
    subscribe(b, watcher, "will", 0)
    c = client(b, "c", will_topic="will", will_payload=b"bye")
    assert feed_err(b, c, m.packet(0xE1, b"")) is not None
    assert not c.graceful
    b.detach(c, c.graceful)
    assert payloads(watcher.take()) == [b"bye"]


def test_many_packets_one_buffer():
    b = make_broker()
    conn = FakeConn()
    data = (m.connect("x") + m.subscribe(1, [("t", 1)]) + m.publish("t", b"self", qos=1, pid=9)
            + m.pingreq())
    feed(b, conn, data)
    kinds = [p["type"] for p in conn.take()]
    assert kinds[0] == "connack" and kinds[1] == "suback"
    assert "publish" in kinds and "puback" in kinds and kinds[-1] == "pingresp"


def test_messages_copied_out_of_the_read_buffer():
    # the connection reuses its read buffer: a queued or retained message
    # must not change when the buffer is overwritten
    b = make_broker()
    rx = client(b, "rx", clean=False)
    subscribe(b, rx, "t", 1)
    b.detach(rx, True)                  # offline: the message waits in its queue
    tx = client(b, "tx")
    buf = bytearray(m.publish("t", b"keep", qos=1, pid=1, retain=True))
    mv = memoryview(buf)
    for first, start, end in frames(bytes(buf)):
        handlers.handle(b, tx, first, mv, start, end)
    for i in range(len(buf)):
        buf[i] = 0x58
    assert tx.take()[0]["type"] == "puback"
    assert b.retained.get(["t"]).payload == b"keep"
    rx2 = FakeConn()
    feed(b, rx2, m.connect("rx", clean=False))
    got = publishes(rx2.take())
    assert len(got) == 1 and got[0]["topic"] == "t" and got[0]["payload"] == b"keep"
