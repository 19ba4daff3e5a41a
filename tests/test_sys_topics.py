# midge.sys_topics: the $SYS snapshot and its publication (README.md,
# "$SYS").
from fakeconn import Clock, make_broker, join, sub, pub, publishes
from midge import sys_topics
from midge.broker import VERSION, COUNTERS

DOCUMENTED_TOPICS = (
    "$SYS/broker/version", "$SYS/broker/uptime", "$SYS/broker/clients/connected",
    "$SYS/broker/clients/total", "$SYS/broker/messages/received",
    "$SYS/broker/messages/sent", "$SYS/broker/bytes/received", "$SYS/broker/bytes/sent",
    "$SYS/broker/retained/count", "$SYS/broker/subscriptions/count",
    "$SYS/broker/heap/free", "$SYS/broker/heap/alloc",
)
DOCUMENTED_COUNTERS = (
    "clients_refused", "connect_timeouts", "keepalive_timeouts", "malformed_packets",
    "oversize_packets", "sessions_evicted", "sessions_refused", "queue_dropped",
    "slow_dropped", "slow_disconnects", "retained_refused", "subscriptions_refused",
    "topic_limit", "sys_publish_dropped",
)


def _snap(b, now=None):
    if now is None:
        now = b.clock()
    out = {}
    for topic, value in sys_topics.snapshot(b):
        assert topic not in out, topic  # each topic once
        out[topic] = value
    return out


def _is_int(text):
    if text[:1] == "-":
        text = text[1:]
    return text != "" and all(ch in "0123456789" for ch in text)


def test_snapshot_has_every_contract_topic():
    v = _snap(make_broker())
    for t in DOCUMENTED_TOPICS:
        assert t in v, t
    for name in DOCUMENTED_COUNTERS:
        assert "$SYS/broker/counters/" + name in v, name
    for name in COUNTERS:
        assert "$SYS/broker/counters/" + name in v, name


def _plan(cfg):
    from midge import listeners
    return listeners, listeners.listener_plan(cfg)


def test_feature_counters_only_when_configured():
    # an unconfigured feature costs no $SYS topic (each is a retained message)
    b = make_broker()
    listeners, plan = _plan(b.cfg)
    listeners.register_counters(b.cfg, plan, b)
    v = _snap(b)
    for name in listeners.ACCESS_COUNTERS + listeners.TLS_COUNTERS:
        assert "$SYS/broker/counters/" + name not in v, name
    # a listener refusing anonymous clients, a TLS listener: theirs join, at 0
    b = make_broker(allow_anonymous=False, tls_cert_file="c", tls_key_file="k",
                    listeners=[{"host": "127.0.0.1", "port": 8883, "tls": True, "allow_anonymous": None}])
    listeners, plan = _plan(b.cfg)
    listeners.register_counters(b.cfg, plan, b)
    v = _snap(b)
    for name in listeners.ACCESS_COUNTERS + listeners.TLS_COUNTERS:
        assert v["$SYS/broker/counters/" + name] == "0", name
    # a password file alone turns on the access counters, not the TLS ones
    b = make_broker(password_file="p")
    listeners, plan = _plan(b.cfg)
    listeners.register_counters(b.cfg, plan, b)
    v = _snap(b)
    assert v["$SYS/broker/counters/auth_failures"] == "0"
    assert "$SYS/broker/counters/tls_refused" not in v
    # a counter start-up did not register appears on its first use
    b = make_broker()
    b.count("acl_denied")
    assert _snap(b)["$SYS/broker/counters/acl_denied"] == "1"


def test_payloads_are_decimal_integers_except_version():
    v = _snap(make_broker())
    assert v["$SYS/broker/version"] == "midge " + VERSION
    for t in v:
        if t != "$SYS/broker/version":
            assert _is_int(v[t]), (t, v[t])


def test_values_follow_broker_state():
    clock = Clock()
    b = make_broker(clock, max_queued_messages=1)
    a = join(b, "a", clean=False)
    join(b, "b")
    sub(b, a, "t", 1)
    sub(b, a, "u/#", 0, pid=2)
    pub(b, "keep", b"1234", 0, retain=True)
    b.msgs_in = 7
    b.bytes_in = 100
    b.bytes_out = 200
    b.detach(a, True)
    pub(b, "t", b"1", 1)
    pub(b, "t", b"2", 1)   # drops the oldest: queue_dropped 1
    clock.advance(12345)
    v = _snap(b)
    assert v["$SYS/broker/uptime"] == "12"
    assert v["$SYS/broker/clients/connected"] == "1"
    assert v["$SYS/broker/clients/total"] == "2"
    assert v["$SYS/broker/messages/received"] == "7"
    assert v["$SYS/broker/bytes/received"] == "100"
    assert v["$SYS/broker/bytes/sent"] == "200"
    assert v["$SYS/broker/retained/count"] == "1"
    assert v["$SYS/broker/subscriptions/count"] == "2"
    assert v["$SYS/broker/counters/queue_dropped"] == "1"
    assert v["$SYS/broker/counters/malformed_packets"] == "0"


def test_sys_is_not_held_but_a_new_subscription_gets_it():
    b = make_broker(max_retained_messages=0, max_retained_bytes=0)
    sys_topics.publish_all(b)
    n = len(_snap(b))
    assert b.retained.total == 0 and b.retained.count == 0 and b.retained.bytes == 0
    assert b.counters["retained_refused"] == 0
    # a new subscription gets every value of the moment, as retained messages
    b.msgs_in = 1234
    c = join(b, "mon")
    sub(b, c, "$SYS/#", 1)
    got = publishes(c.take())
    assert len(got) == n
    topics = [p["topic"] for p in got]
    assert len(set(topics)) == n and all(t.startswith("$SYS/broker/") for t in topics)
    for p in got:
        assert p["retain"] and p["qos"] == 0
    assert [p["payload"] for p in got if p["topic"] == "$SYS/broker/messages/received"] == [b"1234"]
    # a narrower filter: only its topics; '#' and '+/...' match none [MQTT-4.7.2-1]
    sub(b, c, "$SYS/broker/counters/+", 0, pid=2)
    got = publishes(c.take())
    assert got and all(p["topic"].startswith("$SYS/broker/counters/") for p in got)
    for filt in ("#", "+/broker/uptime"):
        sub(b, c, filt, 0, pid=3)
        assert publishes(c.take()) == []
    sub(b, c, "$SYS/broker/uptime", 0, pid=4)
    assert [p["topic"] for p in publishes(c.take())] == ["$SYS/broker/uptime"]
    sub(b, c, "$SYS/broker/+/connected", 0, pid=5)
    assert [p["topic"] for p in publishes(c.take())] == ["$SYS/broker/clients/connected"]
    for filt in ("$SYS/broker", "$SYS/broker/uptime/x", "$SYS/+"):
        sub(b, c, filt, 0, pid=6)
        assert publishes(c.take()) == [], filt
    # $SYS off (sys_interval_s 0): nothing
    off = make_broker(sys_interval_s=0)
    d = join(off, "d")
    sub(off, d, "$SYS/#", 0)
    assert publishes(d.take()) == []


def test_publish_all_reaches_subscribers_once():
    b = make_broker()
    c = join(b, "mon")
    sub(b, c, "$SYS/broker/counters/+", 1)
    assert len(publishes(c.take())) == len(COUNTERS)  # the values of now, at SUBSCRIBE
    sys_topics.publish_all(b)
    got = publishes(c.take())
    names = [p["topic"] for p in got]
    assert len(names) == len(COUNTERS)
    for p in got:
        assert p["qos"] == 0 and p["payload"] == b"0"   # published at QoS 0
    other = join(b, "other")
    sub(b, other, "#", 0)
    sys_topics.publish_all(b)
    assert other.take() == []           # [MQTT-4.7.2-1]
