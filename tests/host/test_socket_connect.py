# CONNECT / CONNACK / takeover / PINGREQ / DISCONNECT over a real socket
# (MQTT 3.1.1 sections 3.1, 3.2, 3.12, 3.14; README.md "CONNECT", "Takeover").
import json
import os

import mqttspec as m
from brokerproc import REPO

with open(os.path.join(REPO, "boards", "host", "board.json")) as _f:
    HOST_PROFILE = json.load(_f)["config"]  # brokers started without --board run with it


def test_connect_accepted_exact_connack(broker):
    c = broker.raw()
    c.send(m.connect("c1"))
    ack = c.expect("connack")
    # [MQTT-3.2.2-1]: clean session 1 -> session present 0.
    assert ack["raw"] == b"\x20\x02\x00\x00"
    assert c.is_open()


def test_mqisdp_protocol_level_3_accepted(broker):
    c = broker.raw()
    ack = c.handshake("old", protocol_name="MQIsdp", protocol_level=3)
    assert ack["rc"] == 0
    s = broker.client("sub")
    s.subscribe([("t", 1)])
    c.publish("t", b"v3", qos=1)
    s.expect_publish("t", b"v3", qos=1)


def test_unsupported_protocol_level_rc1_then_close(broker):
    for level in (6, 2, 0xFF):
        c = broker.raw()
        ack = c.handshake("x", protocol_level=level)
        # [MQTT-3.1.2-2]: CONNACK 0x01 then disconnect.
        assert ack["rc"] == m.RC_BAD_PROTOCOL
        assert ack["session_present"] == 0
        assert c.closed(2.0)


def test_wrong_protocol_name_closed_without_connack(broker):
    # [MQTT-3.1.2-1]: a wrong protocol name MAY be closed without CONNACK;
    # README.md: closed without CONNACK.
    for name in ("MQTX", "mqtt", ""):
        c = broker.raw()
        c.send(m.connect("x", protocol_name=name, protocol_level=4))
        assert c.closed(2.0), name
        assert c.pending == [], (name, c.pending)


def test_mqisdp_name_with_level_4_refused(broker):
    # Name/level mismatch: closing, with or without CONNACK rc 1, are both
    # within the spec; accepting is not.
    c = broker.raw()
    c.send(m.connect("x", protocol_name="MQIsdp", protocol_level=4))
    assert c.closed(2.0)
    for p in c.pending:
        assert p["type"] == "connack" and p["rc"] == m.RC_BAD_PROTOCOL, p


def test_empty_client_id_clean0_rc2(broker):
    c = broker.raw()
    ack = c.handshake("", clean=False)
    # [MQTT-3.1.3-8]: CONNACK 0x02 then close.
    assert ack["rc"] == m.RC_ID_REJECTED
    assert ack["session_present"] == 0
    assert c.closed(2.0)


def test_empty_client_id_clean1_gets_assigned_id(broker):
    # [MQTT-3.1.3-6]: the server assigns a unique id; two such clients must
    # not take each other over.
    a = broker.client("")
    b = broker.client("")
    a.subscribe([("e/t", 0)])
    b.subscribe([("e/t", 0)])
    assert a.is_open() and b.is_open()
    b.publish("e/t", b"x")
    a.expect_publish("e/t", b"x")
    b.expect_publish("e/t", b"x")


def test_client_id_lengths(broker):
    # [MQTT-3.1.3-5]: 1..23 bytes of [0-9a-zA-Z] must be accepted; midge
    # accepts up to max_client_id_length (the host profile the fixture's
    # broker runs with: 256), longer gets rc 2.
    cap = HOST_PROFILE["max_client_id_length"]
    ok23 = "abcdefghijklmnopqrstuvw"
    assert len(ok23) == 23
    c = broker.client(ok23)
    assert c.is_open()
    c64 = broker.client("x" * cap)
    assert c64.is_open()
    c = broker.raw()
    ack = c.handshake("y" * (cap + 1))
    assert ack["rc"] == m.RC_ID_REJECTED
    assert c.closed(2.0)
    # UTF-8 client ids are allowed too.
    u = broker.client("cl\u00e9-\u20ac")
    assert u.is_open()


def test_client_id_length_cap_config(broker_factory):
    b = broker_factory({"max_client_id_length": 30})
    assert b.client("z" * 30).is_open()
    c = b.raw()
    assert c.handshake("z" * 31)["rc"] == m.RC_ID_REJECTED
    assert c.closed(2.0)


def test_allow_anonymous_false_rc5(broker_factory):
    b = broker_factory({"allow_anonymous": False})
    for kw in ({}, {"username": "u", "password": b"p"}):
        c = b.raw()
        ack = c.handshake("anon", **kw)
        assert ack["rc"] == m.RC_NOT_AUTHORIZED
        assert ack["session_present"] == 0
        assert c.closed(2.0)


def test_username_password_accepted_when_anonymous_allowed(broker):
    c = broker.raw()
    assert c.handshake("up", username="user", password=b"\x00\xffbin")["rc"] == 0
    c2 = broker.raw()
    assert c2.handshake("u-only", username="user")["rc"] == 0
    assert c.is_open() and c2.is_open()


def test_session_present_flag(broker):
    # [MQTT-3.2.2-2]: clean 0 with stored session -> 1;
    # [MQTT-3.2.2-3]: clean 0 without stored session -> 0;
    # [MQTT-3.2.2-1]: clean 1 -> 0 and the session is discarded [MQTT-3.1.2-6].
    c = broker.client("sp", clean=False)
    assert c.connack["session_present"] == 0
    c.disconnect()
    c = broker.client("sp", clean=False)
    assert c.connack["session_present"] == 1
    c.disconnect()
    c = broker.client("sp", clean=True)
    assert c.connack["session_present"] == 0
    c.disconnect()
    c = broker.client("sp", clean=False)
    assert c.connack["session_present"] == 0
    c.disconnect()


def test_session_present_after_abrupt_close(broker):
    c = broker.client("sp2", clean=False)
    c.abort()
    c = broker.client("sp2", clean=False)
    assert c.connack["session_present"] == 1


def test_takeover_closes_old_and_publishes_its_will(broker):
    w = broker.client("watch")
    w.subscribe([("will/old", 1)])
    old = broker.client("dup-id", will_topic="will/old", will_payload=b"gone", will_qos=1)
    new = broker.raw()
    ack = new.handshake("dup-id")
    assert ack["rc"] == 0
    # [MQTT-3.1.4-2]: the server disconnects the existing client.
    assert old.closed(2.0)
    # README.md: the old connection's will IS published.
    w.expect_publish("will/old", b"gone", qos=1, retain=0)
    assert new.is_open()
    # The new connection works.
    new.subscribe([("after", 0)])
    w.publish("after", b"1")
    new.expect_publish("after", b"1")


def test_takeover_keeps_persistent_session(broker):
    old = broker.client("tk", clean=False)
    old.subscribe([("tk/t", 1)])
    new = broker.raw()
    ack = new.handshake("tk", clean=False)
    assert ack["rc"] == 0 and ack["session_present"] == 1
    assert old.closed(2.0)
    p = broker.client("pub")
    p.publish("tk/t", b"kept", qos=1)
    new.expect_publish("tk/t", b"kept", qos=1)


def test_pingreq_pingresp(broker):
    c = broker.client("pinger")
    for _ in range(3):
        c.send(m.pingreq())
        p = c.expect("pingresp")
        assert p["raw"] == b"\xd0\x00"


def test_disconnect_closes_connection(broker):
    c = broker.client("bye")
    c.send(m.disconnect())
    # [MQTT-3.14.4-1]: the server closes the connection after DISCONNECT.
    assert c.closed(2.0)
    assert c.pending == []
    # The broker goes on.
    assert broker.client("again").is_open()


def test_many_packets_in_one_write_and_split_writes(broker):
    import time
    s = broker.client("s")
    s.subscribe([("b/#", 0)])
    c = broker.raw()
    # CONNECT + SUBSCRIBE + 3 PUBLISH + PINGREQ in one segment.
    data = (m.connect("batch") + m.subscribe(1, [("b/self", 0)]) +
            m.publish("b/1", b"a") + m.publish("b/2", b"b") + m.publish("b/3", b"c") +
            m.pingreq())
    c.send(data)
    c.expect("connack", rc=0)
    c.expect("suback", codes=[0])
    for t, v in (("b/1", b"a"), ("b/2", b"b"), ("b/3", b"c")):
        s.expect_publish(t, v)
    assert c.wait_for("pingresp") is not None
    # One packet byte by byte.
    raw = m.publish("b/4", b"split", qos=1, pid=9)
    for i in range(len(raw)):
        c.send(raw[i:i + 1])
        time.sleep(0.002)
    c.expect("puback", pid=9)
    s.expect_publish("b/4", b"split", qos=0)
