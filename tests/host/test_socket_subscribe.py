# SUBSCRIBE / UNSUBSCRIBE, topic filters and matching (MQTT 3.1.1 sections
# 3.8-3.11, 4.7).
import mqttspec as m


def test_suback_codes_several_filters(broker):
    c = broker.client("c")
    c.send(m.subscribe(321, [("a/b", 0), ("c/+", 1), ("d/#", 2), ("a/#/b", 0),
                             ("e+/f", 1), ("g/#h", 2), ("+/+/#", 2)]))
    ack = c.expect("suback", pid=321)
    # [MQTT-3.8.4-5] one code per filter, in order; 0x80 for each invalid
    # filter [MQTT-4.7.1-2, 4.7.1-3] (a zero-length one [MQTT-4.7.3-1] is a
    # malformed packet: test_zero_length_filter_closes)
    assert ack["codes"] == [0, 1, 2, 0x80, 0x80, 0x80, 2]
    # The valid ones work, the connection stays open.
    p = broker.client("p")
    for topic in ("a/b", "c/x", "d/e/f", "z/y/x"):
        p.publish(topic, b"ok")
    got = sorted(x["topic"] for x in c.publishes(0.3))
    assert got == sorted(["a/b", "c/x", "d/e/f", "z/y/x"])


def test_zero_length_filter_closes(broker):
    # [MQTT-4.7.3-1]: a topic filter is at least one character; a SUBSCRIBE
    # or UNSUBSCRIBE with an empty one is malformed and closes (mosquitto
    # does the same), and changes nothing
    for pkt in (m.subscribe(1, [("ok", 0), ("", 1)]), m.unsubscribe(2, ["ok", ""])):
        c = broker.client("z")
        c.send(pkt)
        assert c.closed(2.0)
    c = broker.client("z")
    c.send(m.subscribe(3, [("ok", 0)]))
    assert c.expect("suback", pid=3)["codes"] == [0]


def test_matching_rules(broker):
    # Section 4.7.1: '#' matches the parent level too, '+' exactly one level
    # (also an empty one), matching is case sensitive.
    cases = [
        ("sport/tennis/player1/#", ["sport/tennis/player1", "sport/tennis/player1/ranking",
                                    "sport/tennis/player1/score/wimbledon"],
         ["sport/tennis/player2", "sport/tennis"]),
        ("sport/+", ["sport/", "sport/x"], ["sport", "sport/x/y"]),
        ("+/+", ["/finance", "a/b"], ["a", "a/b/c"]),
        ("/+", ["/finance"], ["finance", "a/b"]),
        ("+", ["a", "b"], ["/a", "a/b"]),
        ("#", ["x", "x/y", "/"], []),
        ("a//b", ["a//b"], ["a/b", "a/x/b"]),
        ("Case", ["Case"], ["case", "CASE"]),
    ]
    marker = "zz/end/marker"
    p = broker.client("p")
    for flt, yes, no in cases:
        c = broker.client("m")
        assert c.subscribe([(flt, 0), (marker, 0)]) == [0, 0], flt
        for t in no + yes:
            p.publish(t, t.encode())
        p.publish(marker, b"end")
        got = []
        while True:
            x = c.expect_publish()
            if x["topic"] == marker:
                break
            got.append(x["topic"])
        assert sorted(got) == sorted(yes), (flt, got)
        c.disconnect()


def test_dollar_topics_not_matched_by_wildcards(broker_factory):
    # [MQTT-4.7.2-1]: '#' and '+' at the first level do not match topics
    # starting with '$'. $SYS is published every second here.
    b = broker_factory({"sys_interval_s": 1})
    wild = b.client("wild")
    assert wild.subscribe([("#", 0), ("+/broker/uptime", 0), ("+/#", 0)]) == [0, 0, 0]
    sysc = b.client("sys")
    assert sysc.subscribe([("$SYS/broker/uptime", 0)]) == [0]
    got = sysc.expect_publish("$SYS/broker/uptime", timeout=2.5)
    assert got["payload"].isdigit()
    # Let one more $SYS round go out, then check the wildcard client.
    sysc.expect_publish("$SYS/broker/uptime", timeout=2.5)
    p = b.client("p")
    p.publish("normal", b"n")
    topics = [x["topic"] for x in wild.publishes(0.3)]
    assert topics and all(t == "normal" for t in topics), topics
    # '$SYS/#' does match.
    assert wild.subscribe([("$SYS/#", 0)]) == [0]
    got = wild.expect_publish(timeout=2.5)
    assert got["topic"].startswith("$SYS/")


def test_overlapping_subscriptions_one_delivery_highest_qos(broker):
    c = broker.client("c", clean=True)
    assert c.subscribe([("ov/+", 1), ("ov/#", 2), ("ov/a", 0), ("#", 0)]) == [1, 2, 0, 0]
    p = broker.client("p")
    p.publish("ov/a", b"q2", qos=2)
    got = c.publishes(0.3)
    assert len(got) == 1, got
    assert got[0]["qos"] == 2
    p.publish("ov/a", b"q1", qos=1)
    got = c.publishes(0.3)
    assert len(got) == 1 and got[0]["qos"] == 1, got
    p.publish("ov/b", b"q0", qos=0)
    got = c.publishes(0.3)
    assert len(got) == 1 and got[0]["qos"] == 0, got


def test_resubscribe_replaces_qos(broker):
    # [MQTT-3.8.4-3]: the existing subscription is replaced, new max QoS.
    c = broker.client("c")
    assert c.subscribe([("rs", 0)]) == [0]
    assert c.subscribe([("rs", 2)]) == [2]
    p = broker.client("p")
    p.publish("rs", b"x", qos=2)
    got = c.publishes(0.3)
    assert len(got) == 1 and got[0]["qos"] == 2
    assert c.subscribe([("rs", 1)]) == [1]
    p.publish("rs", b"y", qos=2)
    got = c.publishes(0.3)
    assert len(got) == 1 and got[0]["qos"] == 1


def test_unsubscribe(broker):
    c = broker.client("c")
    c.subscribe([("u/1", 1), ("u/2", 1), ("u/+", 0)])
    c.send(m.unsubscribe(4711, ["u/1", "u/+"]))
    # [MQTT-3.10.4-4]: UNSUBACK with the same packet identifier.
    ack = c.expect("unsuback", pid=4711)
    assert ack["raw"] == b"\xb0\x02\x12\x67"
    p = broker.client("p")
    p.publish("u/1", b"no", qos=1)
    p.publish("u/2", b"yes", qos=1)
    got = c.publishes(0.3)
    assert [(g["topic"], g["payload"]) for g in got] == [("u/2", b"yes")]


def test_unsubscribe_unknown_filter_still_acked(broker):
    # [MQTT-3.10.4-5]: UNSUBACK even if nothing was deleted.
    c = broker.client("c")
    c.send(m.unsubscribe(9, ["never/subscribed", "a/#"]))
    c.expect("unsuback", pid=9)
    assert c.is_open()


def test_subscription_qos_granted_as_requested(broker):
    c = broker.client("c")
    codes = c.subscribe([("g0", 0), ("g1", 1), ("g2", 2)])
    # [MQTT-3.9.3-2] codes are 0x00, 0x01, 0x02 or 0x80; midge grants what
    # was asked.
    assert codes == [0, 1, 2]


def test_subscribe_many_filters_one_packet(broker):
    c = broker.client("c")
    filters = [("many/%d" % i, i % 3) for i in range(10)]
    assert c.subscribe(filters) == [i % 3 for i in range(10)]
    p = broker.client("p")
    p.publish("many/7", b"7", qos=2)
    got = c.expect_publish("many/7", b"7")
    assert got["qos"] == 7 % 3
