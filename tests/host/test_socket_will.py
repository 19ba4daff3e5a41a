# Will messages (MQTT 3.1.1 sections 3.1.2.5-3.1.2.7, 3.14.4).
import time

import mqttspec as m


def _watch(broker, topic="will/#", qos=2):
    w = broker.client("watcher")
    w.subscribe([(topic, qos)])
    return w


def test_will_on_abrupt_close_with_qos_and_retain(broker):
    w = _watch(broker)
    v = broker.client("victim", will_topic="will/v", will_payload=b"bye", will_qos=1,
                      will_retain=True)
    v.abort()
    # [MQTT-3.1.2-8]: published when the connection is closed without
    # DISCONNECT; QoS honoured [MQTT-3.1.2-14]. Live delivery: retain 0.
    w.expect_publish("will/v", b"bye", qos=1, retain=0)
    # Will retain 1 -> stored as retained [MQTT-3.1.2-17].
    s = broker.client("late")
    s.subscribe([("will/v", 2)])
    s.expect_publish("will/v", b"bye", qos=1, retain=1)


def test_will_on_plain_close(broker):
    w = _watch(broker)
    v = broker.client("victim", will_topic="will/fin", will_payload=b"fin")
    v.close()  # FIN, not RST
    w.expect_publish("will/fin", b"fin", qos=0)


def test_will_qos2_not_retained(broker):
    w = _watch(broker)
    v = broker.client("victim", will_topic="will/q2", will_payload=b"x", will_qos=2)
    v.abort()
    w.expect_publish("will/q2", b"x", qos=2, retain=0)
    s = broker.client("late")
    s.subscribe([("will/q2", 2)])
    s.no_packet(0.3)  # [MQTT-3.1.2-16] will retain 0: not retained


def test_will_qos_downgraded_to_subscription(broker):
    w = _watch(broker, qos=0)
    v = broker.client("victim", will_topic="will/d", will_payload=b"x", will_qos=2)
    v.abort()
    w.expect_publish("will/d", b"x", qos=0)


def test_no_will_after_disconnect(broker):
    w = _watch(broker)
    v = broker.client("victim", will_topic="will/none", will_payload=b"no", will_qos=1,
                      will_retain=True)
    v.send(m.disconnect())
    assert v.closed(2.0)
    # [MQTT-3.1.2-10], [MQTT-3.14.4-3]: the will is discarded.
    w.no_packet(0.5)
    s = broker.client("late")
    s.subscribe([("will/none", 1)])
    s.no_packet(0.3)


def test_will_on_protocol_error(broker):
    w = _watch(broker)
    v = broker.client("victim", will_topic="will/err", will_payload=b"err", will_qos=1)
    v.send(m.publish("bad/+", b"x"))  # wildcard in a topic name [MQTT-3.3.2-2]
    assert v.closed(2.0)
    w.expect_publish("will/err", b"err", qos=1)


def test_will_on_keepalive_timeout(broker):
    w = _watch(broker)
    t0 = time.monotonic()
    broker.client("victim", keepalive=1, will_topic="will/ka", will_payload=b"ka")
    w.expect_publish("will/ka", b"ka", timeout=4.0)
    # [MQTT-3.1.2-24]: 1.5 x keepalive, not earlier than 1 s.
    assert time.monotonic() - t0 >= 1.0


def test_will_with_empty_payload_and_binary(broker):
    w = _watch(broker)
    v = broker.client("victim", will_topic="will/e", will_payload=b"")
    v.abort()
    w.expect_publish("will/e", b"")
    v = broker.client("victim2", will_topic="will/b", will_payload=b"\x00\xff\x80")
    v.abort()
    w.expect_publish("will/b", b"\x00\xff\x80")


def test_will_retained_empty_clears(broker):
    p = broker.client("p")
    p.publish("will/r", b"old", retain=True, qos=1)
    v = broker.client("victim", will_topic="will/r", will_payload=b"", will_retain=True)
    v.abort()
    time.sleep(0.3)
    s = broker.client("late")
    s.subscribe([("will/r", 1)])
    s.no_packet(0.3)


def test_will_not_published_for_refused_connect(broker):
    # A CONNACK rc != 0 means no session and no will.
    w = _watch(broker)
    c = broker.raw()
    ack = c.handshake("x", protocol_level=9, will_topic="will/refused", will_payload=b"r")
    assert ack["rc"] == m.RC_BAD_PROTOCOL
    assert c.closed(2.0)
    w.no_packet(0.4)

