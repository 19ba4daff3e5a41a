# QoS 0/1/2 flows in both directions (MQTT 3.1.1 sections 3.3-3.7, 4.3, 4.6).
import mqttspec as m


def test_qos0_both_ways(broker):
    s = broker.client("s")
    s.subscribe([("q/0", 0)])
    p = broker.client("p")
    p.send(m.publish("q/0", b"zero"))
    got = s.expect_publish("q/0", b"zero", qos=0, retain=0, dup=0)
    # [MQTT-2.3.1-5]: no packet identifier at QoS 0.
    assert got["pid"] is None
    assert got["raw"] == m.publish("q/0", b"zero")
    p.no_packet(0.2)  # nothing to acknowledge at QoS 0


def test_qos1_both_ways(broker):
    s = broker.client("s")
    assert s.subscribe([("q/1", 1)]) == [1]
    p = broker.client("p")
    p.send(m.publish("q/1", b"one", qos=1, pid=4242))
    # [MQTT-4.3.2-2] PUBACK carries the PUBLISH packet identifier.
    p.expect("puback", pid=4242)
    got = s.expect_publish("q/1", b"one", qos=1, dup=0, retain=0, ack=False)
    assert 1 <= got["pid"] <= 65535
    s.send(m.puback(got["pid"]))
    s.no_packet(0.3)  # acknowledged: not resent while connected


def test_qos2_both_ways(broker):
    s = broker.client("s")
    assert s.subscribe([("q/2", 2)]) == [2]
    p = broker.client("p")
    p.send(m.publish("q/2", b"two", qos=2, pid=77))
    p.expect("pubrec", pid=77)
    p.send(m.pubrel(77))
    p.expect("pubcomp", pid=77)
    got = s.expect_publish("q/2", b"two", qos=2, dup=0, ack=False)
    pid = got["pid"]
    s.send(m.pubrec(pid))
    rel = s.expect("pubrel", pid=pid)
    assert rel["raw"][0] == 0x62  # [MQTT-3.6.1-1]
    s.send(m.pubcomp(pid))
    s.no_packet(0.3)


def test_qos2_inbound_exactly_once(broker):
    s = broker.client("s")
    s.subscribe([("x/once", 2)])
    p = broker.client("p")
    p.send(m.publish("x/once", b"m1", qos=2, pid=5))
    p.expect("pubrec", pid=5)
    # Duplicate before PUBREL, DUP set as a real client would: must not be
    # delivered again [MQTT-4.3.3-2], but PUBREC is sent again.
    p.send(m.publish("x/once", b"m1", qos=2, pid=5, dup=True))
    p.expect("pubrec", pid=5)
    p.send(m.publish("x/once", b"m1", qos=2, pid=5, dup=True))
    p.expect("pubrec", pid=5)
    p.send(m.pubrel(5))
    p.expect("pubcomp", pid=5)
    got = s.publishes(0.3)
    assert [g["payload"] for g in got] == [b"m1"]
    # After PUBCOMP the packet id is free: the same id is a new message.
    p.send(m.publish("x/once", b"m2", qos=2, pid=5))
    p.expect("pubrec", pid=5)
    p.send(m.pubrel(5))
    p.expect("pubcomp", pid=5)
    got = s.publishes(0.3)
    assert [g["payload"] for g in got] == [b"m2"]


def test_pubrel_unknown_pid_gets_pubcomp(broker):
    # [MQTT-4.3.3-2] / 3.6.4: PUBREL is answered with PUBCOMP, same id.
    p = broker.client("p")
    p.send(m.pubrel(999))
    p.expect("pubcomp", pid=999)
    assert p.is_open()


def test_duplicate_pubrel_gets_pubcomp_each_time(broker):
    p = broker.client("p")
    p.send(m.publish("t", b"v", qos=2, pid=3))
    p.expect("pubrec", pid=3)
    p.send(m.pubrel(3))
    p.expect("pubcomp", pid=3)
    p.send(m.pubrel(3))
    p.expect("pubcomp", pid=3)


def test_qos_downgraded_to_granted(broker):
    # [MQTT-3.8.4-6] delivery QoS = min(published QoS, granted QoS).
    subs = {}
    for g in (0, 1, 2):
        c = broker.client("s%d" % g)
        assert c.subscribe([("dg", g)]) == [g]
        subs[g] = c
    p = broker.client("p")
    for q in (0, 1, 2):
        p.publish("dg", b"q%d" % q, qos=q)
        for g in (0, 1, 2):
            got = subs[g].expect_publish("dg", b"q%d" % q)
            assert got["qos"] == min(q, g), (q, g, got["qos"])


def test_outbound_packet_ids_distinct_while_inflight(broker):
    s = broker.client("s")
    s.subscribe([("ids", 1)])
    p = broker.client("p")
    for i in range(5):
        p.publish("ids", b"%d" % i, qos=1)
    got = [s.expect_publish("ids", b"%d" % i, qos=1, ack=False) for i in range(5)]
    pids = [g["pid"] for g in got]
    assert len(set(pids)) == 5 and 0 not in pids, pids
    for pid in pids:
        s.send(m.puback(pid))
    assert s.is_open()


def test_order_preserved_per_topic_and_qos(broker):
    # Section 4.6: ordered topic, messages in the order published.
    s = broker.client("s")
    s.subscribe([("ord/#", 2)])
    p = broker.client("p")
    payloads = []
    for i in range(20):
        q = i % 3
        pl = b"m%d" % i
        payloads.append(pl)
        pid = p.pid() if q else None
        p.send(m.publish("ord/a", pl, qos=q, pid=pid))
        if q == 2:
            p.wait_for("pubrec", 2.0, lambda x, pid=pid: x["pid"] == pid)
            p.send(m.pubrel(pid))
    got = [s.expect_publish("ord/a") for _ in range(20)]
    assert sorted(g["payload"] for g in got) == sorted(payloads)
    # [MQTT-4.6.0-6]: order is guaranteed per topic AND QoS (a QoS 0
    # message may overtake QoS 1/2 ones waiting for the inflight window).
    for q in (0, 1, 2):
        sent = [pl for i, pl in enumerate(payloads) if i % 3 == q]
        assert [g["payload"] for g in got if g["qos"] == q] == sent, q


def test_publisher_receives_own_message(broker):
    # MQTT 3.1.1 has no "no local": a publisher subscribed to its topic
    # receives its own message.
    c = broker.client("self")
    c.subscribe([("me", 1)])
    c.publish("me", b"echo", qos=1)
    c.expect_publish("me", b"echo", qos=1)


def test_payload_sizes_and_binary(broker):
    s = broker.client("s")
    s.subscribe([("big", 1)])
    p = broker.client("p")
    for size in (0, 1, 127, 128, 300, 2000):
        data = (bytes(range(256)) * 10)[:size]
        p.publish("big", data, qos=1)
        s.expect_publish("big", data, qos=1)


def test_no_subscriber_publish_still_acked(broker):
    p = broker.client("p")
    p.publish("nobody/home", b"x", qos=1)
    p.publish("nobody/home", b"x", qos=2)
    assert p.is_open()


def test_unicode_topic_delivered(broker):
    s = broker.client("s")
    s.subscribe([("\u00e9t\u00e9/+", 1)])
    p = broker.client("p")
    p.publish("\u00e9t\u00e9/\U0001d11e", b"u", qos=1)
    s.expect_publish("\u00e9t\u00e9/\U0001d11e", b"u")
