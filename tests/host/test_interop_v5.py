# Interop, MQTT 5.0: paho-mqtt 2 (protocol=MQTTv5), mosquitto_pub /
# mosquitto_sub -V 5 and raw MQTT 5 packets (tools/mqtt5spec.py) against the
# real server under MicroPython with a heap cap (conftest.py), and a mixed
# run in which 3.1.1 and 5.0 clients share topics, retained messages, wills
# and a shared subscription.
import socket
import time

import pytest

import mqtt5spec as m5
from interop_util import HOST, SIGKILL, mosq, mosquitto_pub, paho_pool, require_paho, wait_until  # noqa: F401

CAPS = {"max_packet_size": 4096, "max_inflight_in": 64, "max_topic_aliases": 10}


def _paho():
    m = require_paho()
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    from paho.mqtt.subscribeoptions import SubscribeOptions
    return m, PacketTypes, Properties, SubscribeOptions


def test_paho_v5_connack_states_capabilities(broker_factory, paho_pool):
    mqtt, PacketTypes, Properties, _ = _paho()
    broker = broker_factory(CAPS)
    c = paho_pool(broker.port, client_id="", protocol=mqtt.MQTTv5)
    sp, rc = c.connect()
    assert rc == "Success" and sp is False
    props = c.connack_properties[-1]
    assert props.MaximumPacketSize == 4096
    assert props.TopicAliasMaximum == 10
    assert props.ReceiveMaximum == 64
    assert props.AssignedClientIdentifier  # [MQTT-3.2.2-16]


def test_paho_v5_properties_forwarded(broker, paho_pool):
    mqtt, PacketTypes, Properties, _ = _paho()
    sub = paho_pool.connected(broker.port, client_id="p5-sub", protocol=mqtt.MQTTv5)
    assert sub.subscribe("p5/#", 2) == [2]
    pub = paho_pool.connected(broker.port, client_id="p5-pub", protocol=mqtt.MQTTv5)
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("b", "2"), ("a", "1"), ("b", "2")]
    props.ContentType = "application/json"
    props.ResponseTopic = "p5/reply"
    props.CorrelationData = b"\x00\x01id"
    props.PayloadFormatIndicator = 1
    props.MessageExpiryInterval = 60
    for qos in (0, 1, 2):
        pub.publish("p5/t", b'{"v": %d}' % qos, qos=qos, properties=props)
    sub.wait_messages(3)
    for m in sub.received:
        p = m.properties
        assert p.UserProperty == [("b", "2"), ("a", "1"), ("b", "2")]  # order and duplicates kept
        assert p.ContentType == "application/json" and p.ResponseTopic == "p5/reply"
        assert p.CorrelationData == b"\x00\x01id" and p.PayloadFormatIndicator == 1
        assert 58 <= p.MessageExpiryInterval <= 60
    assert sorted(m.qos for m in sub.received) == [0, 1, 2]


def test_paho_v5_session_expiry_keeps_the_queue(broker, paho_pool):
    mqtt, PacketTypes, Properties, _ = _paho()
    cp = Properties(PacketTypes.CONNECT)
    cp.SessionExpiryInterval = 300
    s = paho_pool(broker.port, client_id="p5-sess", protocol=mqtt.MQTTv5, properties=cp,
                  clean_start=True)
    s.connect()
    s.subscribe("p5q/t", 1)
    s.disconnect()
    pub = paho_pool.connected(broker.port, client_id="p5q-pub", protocol=mqtt.MQTTv5)
    for i in range(3):
        pub.publish("p5q/t", b"m%d" % i, qos=1)
    s2 = paho_pool(broker.port, client_id="p5-sess", protocol=mqtt.MQTTv5, properties=cp,
                   clean_start=False)
    sp, rc = s2.connect()
    assert sp is True
    assert [m.payload for m in s2.wait_messages(3)] == [b"m0", b"m1", b"m2"]
    # Session Expiry 0 on DISCONNECT ends it [MQTT-3.14.2-2 allows lowering]
    dp = Properties(PacketTypes.DISCONNECT)
    dp.SessionExpiryInterval = 0
    s2.c.disconnect(properties=dp)
    time.sleep(0.3)
    s3 = paho_pool(broker.port, client_id="p5-sess", protocol=mqtt.MQTTv5, properties=cp,
                   clean_start=False)
    sp, rc = s3.connect()
    assert sp is False


def test_paho_v5_no_local_and_subscription_identifiers(broker, paho_pool):
    mqtt, PacketTypes, Properties, SubscribeOptions = _paho()
    c = paho_pool.connected(broker.port, client_id="p5-nl", protocol=mqtt.MQTTv5)
    sp = Properties(PacketTypes.SUBSCRIBE)
    sp.SubscriptionIdentifier = 5
    assert c.subscribe("nl/#", options=SubscribeOptions(qos=1, noLocal=True), properties=sp) == [1]
    c.publish("nl/own", b"mine", qos=1)
    other = paho_pool.connected(broker.port, client_id="p5-other", protocol=mqtt.MQTTv5)
    other.publish("nl/x", b"theirs", qos=1)
    got = c.wait_messages(1)
    time.sleep(0.2)
    assert [m.payload for m in c.received] == [b"theirs"] and got
    assert c.received[0].properties.SubscriptionIdentifier == [5]


def test_mosquitto_clients_v5(broker, mosq):
    port = broker.port
    sub = mosq.sub(port, "mv5/#", qos=2, count=3, wait_s=10, fmt="%t|%p|%P",
                   args=["-V", "mqttv5"])
    assert sub.wait_subscribed() == [2]
    for q in (0, 1, 2):
        mosquitto_pub(port, "mv5/%d" % q, "v5 at %d" % q, qos=q,
                      args=["-V", "mqttv5", "-D", "publish", "user-property", "k", "v%d" % q])
    rc, lines = sub.finish()
    assert rc == 0
    assert sorted(lines) == [b"mv5/%d|v5 at %d|k:v%d" % (q, q, q) for q in (0, 1, 2)]


def test_mixed_v311_and_v5_clients(broker, paho_pool, mosq):
    # 3.1.1 and 5.0 clients on the same topics, retained messages, wills and
    # one shared subscription
    mqtt, PacketTypes, Properties, _ = _paho()
    port = broker.port
    s3 = paho_pool.connected(port, client_id="mix-s3")
    s5 = paho_pool.connected(port, client_id="mix-s5", protocol=mqtt.MQTTv5)
    assert s3.subscribe("mix/#", 1) == [1]
    assert s5.subscribe("mix/#", 1) == [1]
    g3 = paho_pool.connected(port, client_id="mix-g3")
    g5 = paho_pool.connected(port, client_id="mix-g5", protocol=mqtt.MQTTv5)
    assert g3.subscribe("$share/workers/jobs/+", 1) == [1]
    assert g5.subscribe("$share/workers/jobs/+", 1) == [1]
    # a 5.0 client with a will dies; the 3.1.1 publisher sends retained state
    w5 = paho_pool(port, client_id="mix-w5", protocol=mqtt.MQTTv5, will=("mix/w5/status", b"offline", 1, True))
    w5.connect()
    p3 = paho_pool.connected(port, client_id="mix-p3")
    p3.publish("mix/state", b"on", qos=1, retain=True)
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("from", "v5")]
    p5 = paho_pool.connected(port, client_id="mix-p5", protocol=mqtt.MQTTv5)
    p5.publish("mix/v5", b"hello", qos=1, retain=True, properties=props)
    for i in range(10):
        mosquitto_pub(port, "jobs/%d" % i, "job%d" % i, qos=1, args=["-V", "mqttv5"])
    w5.kill()
    want = {("mix/state", b"on"), ("mix/v5", b"hello"), ("mix/w5/status", b"offline")}
    for c in (s3, s5):
        got = c.wait_messages(3)
        assert {(m.topic, m.payload) for m in got} == want
    assert [m.properties.UserProperty for m in s5.received if m.topic == "mix/v5"] == [[("from", "v5")]]
    assert wait_until(lambda: len(g3.messages) + len(g5.messages) >= 10, 5)
    time.sleep(0.2)
    jobs = sorted(m.payload for m in g3.messages + g5.messages)
    assert jobs == sorted(b"job%d" % i for i in range(10))  # each once, to one member
    assert g3.messages and g5.messages
    # a late 3.1.1 subscriber gets the retained messages of both kinds
    late = paho_pool.connected(port, client_id="mix-late")
    late.subscribe("mix/#", 1)
    got = late.wait_messages(3)
    assert {(m.topic, m.payload, m.retain) for m in got} == {(t, p, True) for t, p in want}


def _recv_all(s):
    """Everything the broker sends until it closes (a reset raises
    ConnectionResetError)."""
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            return data
        data += chunk


def _raw5(port, *packets):
    s = socket.create_connection((HOST, port), timeout=5)
    s.sendall(b"".join(packets))
    s.settimeout(3)
    try:
        data = _recv_all(s)
    finally:
        s.close()
    pk, rest = m5.parse_all(data)
    return pk


@pytest.mark.parametrize("bad, reason", [
    (m5.publish("t", b"x", plist=[(m5.TOPIC_ALIAS, 999)]), 0x94),          # over the maximum
    (m5.publish("", b"x"), 0x82),                                          # no topic, no alias
    (m5.publish("t", b"\xff", plist=[(m5.PAYLOAD_FORMAT, 1)]), 0x99),      # not UTF-8
    (m5.publish("t", b"x", plist=[(m5.CONTENT_TYPE, "a"), (m5.CONTENT_TYPE, "b")]), 0x82),
    (m5.publish("t", b"x", plist=[(m5.SESSION_EXPIRY, 1)]), 0x81),         # wrong packet type
    (m5.auth(), 0x82),
])
def test_protocol_errors_get_disconnect_with_reason(broker, bad, reason):
    pk = _raw5(broker.port, m5.connect("raw5", keepalive=0), bad)
    assert [p["type"] for p in pk] == ["connack", "disconnect"], pk
    assert pk[1]["reason"] == reason
    assert m5.get(pk[1], m5.REASON_STRING)  # what went wrong, in words
    # only that connection: the broker serves the next one
    pk = _raw5(broker.port, m5.connect("raw5b", keepalive=0), m5.disconnect(0))
    assert pk[0]["type"] == "connack" and pk[0]["rc"] == 0


def test_oversize_packet_gets_disconnect_0x95(broker_factory):
    broker = broker_factory(CAPS)
    # only the head of it: the broker answers as soon as it has read the
    # length (nothing past the header is buffered), and a socket closed
    # with unread bytes would reset the connection before we read that
    big = m5.publish("t", b"x" * 4100)[:16]
    pk = _raw5(broker.port, m5.connect("raw5big", keepalive=0), big)
    assert [(p["type"], p.get("reason")) for p in pk][-1] == ("disconnect", 0x95)


def test_disconnect_reaches_a_client_that_is_still_sending(broker_factory):
    # The broker ends the connection (receive maximum exceeded: 0x93) while
    # the client is still sending (PUBRELs for the PUBRECs before the
    # DISCONNECT, as the Eclipse Paho MQTT 5 test client does in
    # test_flow_control2). The broker's lingering close reads and drops that
    # input until the client closes, so the client's writes succeed and it
    # reads the DISCONNECT.
    broker = broker_factory(CAPS)
    s = socket.create_connection((HOST, broker.port), timeout=5)
    try:
        s.sendall(m5.connect("linger5", keepalive=0))
        pk, rest = m5.parse_all(s.recv(4096))
        assert pk[0]["type"] == "connack" and pk[0]["rc"] == 0
        n = m5.get(pk[0], m5.RECEIVE_MAXIMUM)
        assert n == CAPS["max_inflight_in"]
        s.sendall(b"".join(m5.publish("t", b"x", qos=2, pid=i) for i in range(1, n + 2)))
        time.sleep(0.3)  # the broker answers, says why, and closes its side meanwhile
        # the client goes on answering the PUBRECs it reads one by one: to a
        # socket closed with unread input, the first write draws a reset,
        # the next fails (EPIPE), and the client never reads the DISCONNECT
        for i in range(1, n + 1):
            s.sendall(m5.pubrel(i))
            time.sleep(0.002)
        data = _recv_all(s)
    finally:
        s.close()
    pk, rest = m5.parse_all(data)
    assert [p["type"] for p in pk] == ["pubrec"] * n + ["disconnect"]
    assert pk[-1]["reason"] == 0x93
