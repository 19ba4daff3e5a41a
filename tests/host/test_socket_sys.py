# $SYS topics (README.md "$SYS").
from rawclient import sys_values, wait_sys_value

TOPICS = [
    "$SYS/broker/version", "$SYS/broker/uptime", "$SYS/broker/clients/connected",
    "$SYS/broker/clients/total", "$SYS/broker/messages/received",
    "$SYS/broker/messages/sent", "$SYS/broker/bytes/received", "$SYS/broker/bytes/sent",
    "$SYS/broker/retained/count", "$SYS/broker/subscriptions/count",
    "$SYS/broker/heap/free", "$SYS/broker/heap/alloc",
]
COUNTERS = [
    "clients_refused", "connect_timeouts", "keepalive_timeouts", "malformed_packets",
    "oversize_packets", "sessions_evicted", "sessions_refused", "queue_dropped",
    "slow_dropped", "slow_disconnects", "retained_refused", "subscriptions_refused",
    "topic_limit", "sys_publish_dropped",
]
# Counters that config.py documents beyond the README.md list.
EXTRA_COUNTERS = ["inflight_in_exceeded"]
ALL = TOPICS + ["$SYS/broker/counters/" + c for c in COUNTERS + EXTRA_COUNTERS]


def _all_seen(values):
    return all(t in values for t in ALL)


def test_sys_topics_published_retained_with_decimal_payloads(broker_factory):
    b = broker_factory({"sys_interval_s": 1})
    c = b.client("sys")
    assert c.subscribe([("$SYS/#", 0)]) == [0]
    vals = sys_values(c, 3.0, _all_seen)
    missing = [t for t in ALL if t not in vals]
    assert not missing, missing
    assert vals["$SYS/broker/version"].startswith("midge "), vals["$SYS/broker/version"]
    for t in ALL:
        if t == "$SYS/broker/version":
            continue
        v = vals[t]
        if t == "$SYS/broker/heap/free" or t == "$SYS/broker/heap/alloc":
            assert v.lstrip("-").isdigit(), (t, v)   # -1 where unknown
            continue
        assert v.isdigit(), (t, v)
    for t in COUNTERS + EXTRA_COUNTERS:
        assert vals["$SYS/broker/counters/" + t] == "0", (t, vals["$SYS/broker/counters/" + t])
    # Retained: a new subscriber gets them at once with retain=1.
    d = b.client("late")
    d.subscribe([("$SYS/broker/version", 0)])
    x = d.expect_publish("$SYS/broker/version", timeout=0.5)
    assert x["retain"] == 1
    # Under MicroPython the heap numbers are real.
    import brokerproc
    if brokerproc.interpreter() == "micropython":
        assert int(vals["$SYS/broker/heap/free"]) > 0
        assert int(vals["$SYS/broker/heap/alloc"]) > 0


def test_sys_uptime_and_clients(broker_factory):
    b = broker_factory({"sys_interval_s": 1})
    c = b.client("sys", clean=False)
    c.subscribe([("$SYS/broker/uptime", 0), ("$SYS/broker/clients/#", 0)])
    others = [b.client("o%d" % i) for i in range(2)]
    off = b.client("offline", clean=False)
    off.disconnect()
    # connected: sys + o0 + o1 = 3; total sessions kept: also "offline" = 4.
    assert wait_sys_value(c, "$SYS/broker/clients/connected", 3) == "3"
    assert wait_sys_value(c, "$SYS/broker/clients/total", 4) == "4"
    vals = sys_values(c, 2.5, lambda v: "$SYS/broker/uptime" in v)
    up1 = int(vals["$SYS/broker/uptime"])
    vals = sys_values(c, 2.5, lambda v: "$SYS/broker/uptime" in v and
                      int(v["$SYS/broker/uptime"]) > up1)
    assert int(vals["$SYS/broker/uptime"]) > up1
    for o in others:
        o.disconnect()
    assert wait_sys_value(c, "$SYS/broker/clients/connected", 1) == "1"


def test_sys_message_and_subscription_counts(broker_factory):
    b = broker_factory({"sys_interval_s": 1})
    mon = b.client("mon")
    mon.subscribe([("$SYS/broker/messages/#", 0), ("$SYS/broker/retained/count", 0),
                   ("$SYS/broker/subscriptions/count", 0)])
    key = "$SYS/broker/retained/count"
    first = sys_values(mon, 2.5, lambda v: "$SYS/broker/messages/received" in v and key in v
                       and "$SYS/broker/messages/sent" in v)
    base = int(first["$SYS/broker/messages/received"])
    rbase = int(first[key])   # whether $SYS topics count here is not specified
    p = b.client("p")
    p.subscribe([("cnt/a", 0), ("cnt/b", 0)])
    for i in range(5):
        p.publish("cnt/x%d" % i, b"v", qos=1, retain=(i < 2))
    sent_key = "$SYS/broker/messages/sent"
    sent0 = int(first[sent_key])
    assert wait_sys_value(mon, "$SYS/broker/messages/received", base + 5) == str(base + 5)
    vals = sys_values(mon, 2.5, lambda v: sent_key in v and int(v[sent_key]) > sent0)
    assert int(vals[sent_key]) > sent0
    assert wait_sys_value(mon, key, rbase + 2) == str(rbase + 2)
    # mon's 3 filters + p's 2.
    assert wait_sys_value(mon, "$SYS/broker/subscriptions/count", 5) == "5"


def test_sys_publish_from_client_acked_but_dropped(broker_factory):
    b = broker_factory({"sys_interval_s": 1})
    s = b.client("s")
    s.subscribe([("$SYS/broker/fake", 1), ("$SYS/broker/counters/sys_publish_dropped", 0)])
    p = b.client("p")
    p.publish("$SYS/broker/fake", b"evil", qos=1)      # PUBACK awaited in publish()
    p.publish("$SYS/broker/fake", b"evil2", qos=2)
    p.publish("$SYS/broker/uptime", b"999999", retain=True)
    assert p.is_open()
    vals = sys_values(s, 3.0, lambda v: v.get("$SYS/broker/counters/sys_publish_dropped") == "3")
    assert "$SYS/broker/fake" not in vals, vals
    assert vals.get("$SYS/broker/counters/sys_publish_dropped") == "3", vals
    # The fake uptime was not stored either.
    d = b.client("d")
    d.subscribe([("$SYS/broker/uptime", 0)])
    x = d.expect_publish("$SYS/broker/uptime", timeout=2.5)
    assert x["payload"] != b"999999"


def test_sys_interval_zero_turns_sys_off(broker_factory):
    b = broker_factory({"sys_interval_s": 0})
    c = b.client("c")
    c.subscribe([("$SYS/#", 0)])
    c.no_packet(1.1)


def test_default_interval_sys_retained_not_matched_by_hash(broker):
    # Default sys_interval_s is 10: nothing within a second, and '#' never
    # gets $SYS retained messages [MQTT-4.7.2-1].
    c = broker.client("c")
    c.subscribe([("#", 0)])
    c.no_packet(0.3)
