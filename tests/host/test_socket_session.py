# Persistent sessions, clean session 0 (MQTT 3.1.1 sections 3.1.2.4, 4.1,
# 4.4; README.md "Persistent session").
import mqttspec as m


def test_subscriptions_kept_across_reconnect(broker):
    c = broker.client("ps", clean=False)
    c.subscribe([("ps/t", 1)])
    c.disconnect()
    c = broker.client("ps", clean=False)
    assert c.connack["session_present"] == 1
    p = broker.client("p")
    p.publish("ps/t", b"still", qos=1)
    c.expect_publish("ps/t", b"still", qos=1)


def test_offline_queue_qos1_qos2_in_order_qos0_dropped(broker):
    c = broker.client("off", clean=False)
    c.subscribe([("off/#", 2)])
    c.disconnect()
    p = broker.client("p")
    p.publish("off/a", b"m1", qos=1)
    p.publish("off/a", b"m2", qos=0)   # QoS 0 not queued (README.md)
    p.publish("off/b", b"m3", qos=2)
    p.publish("off/a", b"m4", qos=1)
    p.publish("off/c", b"m5", qos=2)
    c = broker.client("off", clean=False)
    assert c.connack["session_present"] == 1
    got = c.publishes(0.3)
    assert [(g["payload"], g["qos"]) for g in got] == [
        (b"m1", 1), (b"m3", 2), (b"m4", 1), (b"m5", 2)]
    # Queued (never sent) messages are not DUP.
    assert all(g["dup"] == 0 for g in got)
    # Delivered once only: nothing comes back on the next reconnect.
    c.disconnect()
    c = broker.client("off", clean=False)
    c.no_packet(0.3)


def test_offline_queue_downgraded_to_granted_qos(broker):
    c = broker.client("dq", clean=False)
    c.subscribe([("dq", 1)])
    c.disconnect()
    p = broker.client("p")
    p.publish("dq", b"x", qos=2)
    c = broker.client("dq", clean=False)
    c.expect_publish("dq", b"x", qos=1)


def test_unacked_qos1_resent_with_dup_same_pid(broker):
    c = broker.client("dup1", clean=False)
    c.subscribe([("d1", 1)])
    p = broker.client("p")
    p.publish("d1", b"first", qos=1)
    first = c.expect_publish("d1", b"first", qos=1, dup=0, ack=False)
    c.abort()  # never acknowledged
    c = broker.client("dup1", clean=False)
    assert c.connack["session_present"] == 1
    # [MQTT-4.4.0-1] resent with the original packet id; [MQTT-3.3.1-1] DUP=1.
    again = c.expect_publish("d1", b"first", qos=1, dup=1, ack=False)
    assert again["pid"] == first["pid"]
    c.send(m.puback(again["pid"]))
    c.no_packet(0.3)
    c.disconnect()
    c = broker.client("dup1", clean=False)
    c.no_packet(0.3)


def test_unacked_qos2_publish_resent_with_dup(broker):
    c = broker.client("dup2", clean=False)
    c.subscribe([("d2", 2)])
    p = broker.client("p")
    p.publish("d2", b"two", qos=2)
    first = c.expect_publish("d2", b"two", qos=2, ack=False)
    c.abort()
    c = broker.client("dup2", clean=False)
    again = c.expect_publish("d2", b"two", qos=2, dup=1, ack=False)
    assert again["pid"] == first["pid"]
    c.send(m.pubrec(again["pid"]))
    c.expect("pubrel", pid=again["pid"])
    c.send(m.pubcomp(again["pid"]))
    c.no_packet(0.3)


def test_pubrel_resent_after_reconnect(broker):
    c = broker.client("rel", clean=False)
    c.subscribe([("rel", 2)])
    p = broker.client("p")
    p.publish("rel", b"x", qos=2)
    got = c.expect_publish("rel", b"x", qos=2, ack=False)
    c.send(m.pubrec(got["pid"]))
    c.expect("pubrel", pid=got["pid"])
    c.abort()  # PUBCOMP never sent
    c = broker.client("rel", clean=False)
    # The message is not resent, its PUBREL is [MQTT-4.4.0-1].
    c.expect("pubrel", pid=got["pid"])
    c.send(m.pubcomp(got["pid"]))
    c.no_packet(0.3)


def test_resend_order_inflight_then_pubrel_then_queued(broker):
    c = broker.client("ord", clean=False)
    c.subscribe([("o/1", 1), ("o/2", 2)])
    p = broker.client("p")
    p.publish("o/2", b"a", qos=2)
    a = c.expect_publish("o/2", b"a", ack=False)
    c.send(m.pubrec(a["pid"]))
    c.expect("pubrel", pid=a["pid"])
    p.publish("o/1", b"b", qos=1)
    p.publish("o/1", b"c", qos=1)
    b = c.expect_publish("o/1", b"b", ack=False)
    cc = c.expect_publish("o/1", b"c", ack=False)
    c.abort()
    p.publish("o/1", b"d", qos=1)  # queued while offline
    c = broker.client("ord", clean=False)
    got = c.drain(0.5)
    kinds = [(x["type"], x.get("payload"), x.get("dup"), x.get("pid")) for x in got]
    pubs = [k for k in kinds if k[0] == "publish"]
    # Unacknowledged PUBLISHes in order with DUP, then the queued one.
    assert pubs[:2] == [("publish", b"b", 1, b["pid"]), ("publish", b"c", 1, cc["pid"])], kinds
    assert pubs[2][1] == b"d" and pubs[2][2] == 0, kinds
    assert len(pubs) == 3, kinds
    assert ("pubrel", None, None, a["pid"]) in kinds, kinds
    # The queued message comes after every resend (README.md).
    assert kinds.index(pubs[2]) == len(kinds) - 1, kinds


def test_clean_session_discards_subscriptions_and_queue(broker):
    c = broker.client("cs", clean=False)
    c.subscribe([("cs", 1)])
    c.disconnect()
    p = broker.client("p")
    p.publish("cs", b"queued", qos=1)
    c = broker.client("cs", clean=True)
    assert c.connack["session_present"] == 0
    p.publish("cs", b"live", qos=1)
    c.no_packet(0.4)
    c.disconnect()
    c = broker.client("cs", clean=False)
    assert c.connack["session_present"] == 0
    c.no_packet(0.3)


def test_clean_session_state_dropped_at_disconnect(broker):
    # [MQTT-3.1.2-6]: a clean session lasts as long as the connection.
    c = broker.client("cl", clean=True)
    c.subscribe([("cl", 1)])
    c.abort()
    c = broker.client("cl", clean=False)
    assert c.connack["session_present"] == 0
    p = broker.client("p")
    p.publish("cl", b"x", qos=1)
    c.no_packet(0.3)


def test_inbound_qos2_exactly_once_across_reconnect(broker):
    # Section 4.1: the session keeps QoS 2 messages received from the client
    # but not completely acknowledged; a resend after reconnect is not a new
    # message.
    s = broker.client("s")
    s.subscribe([("eo", 2)])
    p = broker.client("pub2", clean=False)
    p.send(m.publish("eo", b"once", qos=2, pid=11))
    p.expect("pubrec", pid=11)
    p.abort()
    p = broker.client("pub2", clean=False)
    assert p.connack["session_present"] == 1
    p.send(m.publish("eo", b"once", qos=2, pid=11, dup=True))
    p.expect("pubrec", pid=11)
    p.send(m.pubrel(11))
    p.expect("pubcomp", pid=11)
    got = s.publishes(0.3)
    assert [g["payload"] for g in got] == [b"once"]


def test_session_queue_persists_across_several_reconnects(broker):
    c = broker.client("multi", clean=False)
    c.subscribe([("mu", 1)])
    c.disconnect()
    p = broker.client("p")
    for i in range(3):
        p.publish("mu", b"%d" % i, qos=1)
        c = broker.client("multi", clean=False)
        c.expect_publish("mu", b"%d" % i, qos=1)
        c.disconnect()
