# Retained messages (MQTT 3.1.1 section 3.3.1.3; README.md "Retained").


def test_retained_stored_and_sent_to_new_subscriber(broker):
    p = broker.client("p")
    p.publish("r/1", b"v1", qos=1, retain=True)
    s = broker.client("s")
    s.subscribe([("r/1", 1)])
    # [MQTT-3.3.1-6], [MQTT-3.3.1-8]: retain=1 on a new subscription.
    s.expect_publish("r/1", b"v1", retain=1, qos=1)
    s.no_packet(0.2)


def test_retained_qos0_is_stored(broker):
    # [MQTT-3.3.1-7]: a QoS 0 retained message is kept as well.
    p = broker.client("p")
    p.publish("r/q0", b"zero", qos=0, retain=True)
    p.is_open()  # round trip: the PUBLISH was processed
    s = broker.client("s")
    s.subscribe([("r/q0", 2)])
    s.expect_publish("r/q0", b"zero", retain=1, qos=0)


def test_retained_replaced(broker):
    p = broker.client("p")
    p.publish("r/x", b"old", qos=1, retain=True)
    p.publish("r/x", b"new", qos=1, retain=True)
    s = broker.client("s")
    s.subscribe([("r/x", 0)])
    s.expect_publish("r/x", b"new", retain=1)
    s.no_packet(0.2)


def test_retained_cleared_by_empty_payload_and_forwarded_live(broker):
    p = broker.client("p")
    p.publish("r/c", b"keep", qos=1, retain=True)
    live = broker.client("live")
    live.subscribe([("r/c", 1)])
    live.expect_publish("r/c", b"keep", retain=1)
    # [MQTT-3.3.1-10]/[MQTT-3.3.1-11]: zero-length retained clears; it is
    # still delivered to current subscribers (README.md).
    p.publish("r/c", b"", qos=1, retain=True)
    live.expect_publish("r/c", b"", retain=0)
    s = broker.client("s")
    s.subscribe([("r/c", 1), ("r/#", 1)])
    s.no_packet(0.3)


def test_live_forwarding_clears_retain_flag(broker):
    s = broker.client("s")
    s.subscribe([("r/live", 1)])
    p = broker.client("p")
    p.publish("r/live", b"v", qos=1, retain=True)
    # [MQTT-3.3.1-9]: retain 0 for an established subscription.
    s.expect_publish("r/live", b"v", retain=0)


def test_retained_resent_on_resubscribe(broker):
    p = broker.client("p")
    p.publish("r/re", b"v", retain=True)
    s = broker.client("s")
    s.subscribe([("r/re", 0)])
    s.expect_publish("r/re", b"v", retain=1)
    # README.md: also when re-subscribing the same filter.
    s.subscribe([("r/re", 0)])
    s.expect_publish("r/re", b"v", retain=1)


def test_retained_with_wildcards_and_qos(broker):
    p = broker.client("p")
    p.publish("w/a", b"a", qos=2, retain=True)
    p.publish("w/b/c", b"bc", qos=1, retain=True)
    p.publish("w", b"w", qos=0, retain=True)
    p.publish("other", b"o", qos=0, retain=True)
    s = broker.client("s")
    s.subscribe([("w/#", 1)])
    got = {}
    for _ in range(3):
        x = s.expect_publish(retain=1)
        got[x["topic"]] = (x["payload"], x["qos"])
    # Delivered at min(stored QoS, granted QoS).
    assert got == {"w/a": (b"a", 1), "w/b/c": (b"bc", 1), "w": (b"w", 0)}
    s.no_packet(0.2)
    s2 = broker.client("s2")
    s2.subscribe([("+/a", 2)])
    s2.expect_publish("w/a", b"a", retain=1, qos=2)


def test_retained_not_sent_for_unsubscribed_then_other_topic(broker):
    p = broker.client("p")
    p.publish("r/one", b"1", retain=True)
    s = broker.client("s")
    s.subscribe([("r/two", 0)])
    s.no_packet(0.2)


def test_retained_survives_publisher_disconnect(broker):
    p = broker.client("p")
    p.publish("r/persist", b"v", qos=1, retain=True)
    p.disconnect()
    s = broker.client("s")
    s.subscribe([("r/persist", 1)])
    s.expect_publish("r/persist", b"v", retain=1)


def test_non_retained_does_not_replace_retained(broker):
    p = broker.client("p")
    p.publish("r/nr", b"ret", retain=True, qos=1)
    p.publish("r/nr", b"plain", retain=False, qos=1)
    s = broker.client("s")
    s.subscribe([("r/nr", 1)])
    s.expect_publish("r/nr", b"ret", retain=1)
    s.no_packet(0.2)
