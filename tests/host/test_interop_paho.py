# Interop: paho-mqtt 2.1 (CallbackAPIVersion.VERSION2, MQTT 3.1.1 unless a
# test says otherwise) against the broker started by conftest.py (MicroPython
# with a heap cap). Each test gets its own broker.
#
# Spec references are to MQTT 3.1.1 (OASIS); "contract" means
# README.md. A missing paho-mqtt skips these tests, or fails them
# under CI=true (interop_util.need).
import time

import pytest

from interop_util import Msg, marker_sync, paho_pool, require_paho  # noqa: F401


def qos_of(pub_qos, sub_qos):
    # [MQTT-3.8.4-6] delivered QoS = min(published QoS, granted QoS).
    return min(pub_qos, sub_qos)


# --- CONNECT --------------------------------------------------------------------

def test_connect_clean_session_and_disconnect(broker, paho_pool):
    c = paho_pool(broker.port, client_id="paho-basic")
    session_present, rc = c.connect()
    assert rc == "Success"
    # [MQTT-3.2.2-1] clean session 1 -> session present 0.
    assert session_present is False
    c.disconnect()
    # A clean DISCONNECT: the broker closes, paho reports reason 0.
    assert c.disconnects and not c.disconnects[-1].is_failure


def test_empty_client_ids_get_distinct_assigned_ids(broker, paho_pool):
    # [MQTT-3.1.3-6] zero-length id with clean session 1: the server assigns
    # a unique id. Two such clients must not take each other over.
    a = paho_pool.connected(broker.port, client_id="")
    b = paho_pool.connected(broker.port, client_id="")
    a.subscribe("anon/t", 1)
    b.subscribe("anon/t", 1)
    pub = paho_pool.connected(broker.port, client_id="anon-pub")
    pub.publish("anon/t", b"both", qos=1)
    for c in (a, b):
        assert c.wait_messages(1) == [Msg("anon/t", b"both", 1, False, False)]
        assert not c.lost


def test_mqtt31_client_interoperates_with_311(broker, paho_pool):
    mqtt = require_paho()
    # MQTT 3.1: protocol name "MQIsdp", level 3 (contract: accepted).
    old = paho_pool(broker.port, client_id="paho-v31", protocol=mqtt.MQTTv31)
    old.connect()
    new = paho_pool.connected(broker.port, client_id="paho-v311")
    assert old.subscribe("mix/#", 2) == [2]
    assert new.subscribe("mix/#", 2) == [2]
    old.publish("mix/from31", b"hello from 3.1", qos=2)
    new.publish("mix/from311", b"hello from 3.1.1", qos=1)
    want = [Msg("mix/from31", b"hello from 3.1", 2, False, False),
            Msg("mix/from311", b"hello from 3.1.1", 1, False, False)]
    for c in (old, new):
        got = c.wait_messages(2)
        assert sorted(got) == sorted(want)


def test_username_password_accepted_when_anonymous_allowed(broker, paho_pool):
    c = paho_pool(broker.port, client_id="paho-user", username="alice", password="secret")
    session_present, rc = c.connect()
    assert rc == "Success"


def test_anonymous_refused_rc5(broker_factory, paho_pool):
    b = broker_factory({"allow_anonymous": False})
    c = paho_pool(b.port, client_id="paho-anon")
    session_present, rc = c.connect(expect_success=False)
    # Contract: allow_anonymous false -> CONNACK rc 5 (paho: "Not authorized").
    assert rc.is_failure
    assert rc == "Not authorized"
    assert session_present is False
    # [MQTT-3.2.2-5] the server closes the connection after a refusing CONNACK.
    c.wait_lost()


# --- PUBLISH / SUBSCRIBE at each QoS --------------------------------------------------

def _payloads():
    return [
        ("text", b"hello"),
        ("binary", bytes(range(256))),
        ("empty", b""),
        ("large", bytes((i * 7 + 3) % 256 for i in range(3000))),
        ("caf\u00e9/\u00fc", "\u00fcn\u00efc\u00f6de \u2713".encode("utf-8")),
    ]


@pytest.mark.parametrize("sub_qos", [0, 1, 2])
def test_publish_subscribe_each_qos(broker, paho_pool, sub_qos):
    sub = paho_pool.connected(broker.port, client_id="qsub%d" % sub_qos)
    pub = paho_pool.connected(broker.port, client_id="qpub%d" % sub_qos)
    # [MQTT-3.9.3-x] SUBACK grants the requested QoS (the broker supports 2).
    assert sub.subscribe("q/#", sub_qos) == [sub_qos]
    for pub_qos in (0, 1, 2):
        sub.clear()
        sent = []
        for name, payload in _payloads():
            topic = "q/%d/%s" % (pub_qos, name)
            pub.publish(topic, payload, qos=pub_qos)
            sent.append(Msg(topic, payload, qos_of(pub_qos, sub_qos), False, False))
        got = sub.wait_messages(len(sent), timeout=5)
        # Exactly the messages sent, once each, payload bytes intact, in the
        # order published by this one publisher.
        assert got == sent, "pub_qos=%d" % pub_qos
    assert not sub.lost and not pub.lost


def send_paced(pub, sub, topic, payloads, qos, window=25):
    """Publish in windows of `window` messages, waiting for the subscriber
    to receive each window: with default caps (inflight 10 + queue 32) a
    live subscriber then never loses a message to the documented
    drop-oldest queue cap, however slow the test's paho thread is."""
    base = len(sub.messages)
    for start in range(0, len(payloads), window):
        chunk = payloads[start:start + window]
        infos = [pub.publish(topic, p, qos=qos, wait=False) for p in chunk]
        for info in infos:
            pub.wait_published(info, timeout=10)
        sub.wait_messages(base + start + len(chunk), timeout=10)


def test_qos2_exactly_once_no_duplicates(broker, paho_pool):
    sub = paho_pool.connected(broker.port, client_id="q2-sub")
    pub = paho_pool.connected(broker.port, client_id="q2-pub")
    assert sub.subscribe("ex/once", 2) == [2]
    n = 300
    sent = [b"m%04d" % i for i in range(n)]
    send_paced(pub, sub, "ex/once", sent, qos=2)
    got = marker_sync(sub, pub, "ex/once")
    assert [m.payload for m in got] == sent
    assert all(m.qos == 2 and not m.dup and not m.retain for m in got)


# --- retained ----------------------------------------------------------------------------

def test_retained_late_subscriber_and_clear(broker, paho_pool):
    pub = paho_pool.connected(broker.port, client_id="ret-pub")
    live = paho_pool.connected(broker.port, client_id="ret-live")
    live.subscribe("ret/#", 1)
    pub.publish("ret/a", b"kept-1", qos=1, retain=True)
    pub.publish("ret/a", b"kept-2", qos=1, retain=True)  # replaces kept-1
    # [MQTT-3.3.1-9] an established subscription gets RETAIN 0.
    assert live.wait_messages(2) == [Msg("ret/a", b"kept-1", 1, False, False),
                                     Msg("ret/a", b"kept-2", 1, False, False)]

    late = paho_pool.connected(broker.port, client_id="ret-late")
    late.subscribe("ret/a", 1)
    # [MQTT-3.3.1-6/8] the last retained message, with RETAIN 1, to a new subscription.
    assert late.wait_messages(1) == [Msg("ret/a", b"kept-2", 1, True, False)]

    # [MQTT-3.3.1-10/11] empty retained payload clears the topic; it is still
    # forwarded to current subscribers (3.3.1.3, contract).
    pub.publish("ret/a", b"", qos=1, retain=True)
    live.wait_for_message(lambda m: m.payload == b"" and m.topic == "ret/a", what="empty retained")

    later = paho_pool.connected(broker.port, client_id="ret-later")
    later.subscribe("ret/#", 1)
    assert marker_sync(later, pub, "ret/zz-marker") == []


def test_retained_qos_downgrade_wildcard_and_resubscribe(broker, paho_pool):
    pub = paho_pool.connected(broker.port, client_id="rq-pub")
    for qos in (0, 1, 2):
        pub.publish("rq/%d" % qos, b"retained at %d" % qos, qos=qos, retain=True)
    pub.publish("rq/other/deep", b"not matched by rq/+", qos=1, retain=True)
    # A QoS 0 publish waits only for the socket write: sync through a QoS 1 one.
    pub.publish("rq/sync", b"", qos=1)

    sub = paho_pool.connected(broker.port, client_id="rq-sub")
    assert sub.subscribe("rq/+", 1) == [1]
    want = sorted(Msg("rq/%d" % q, b"retained at %d" % q, min(q, 1), True, False)
                  for q in (0, 1, 2))
    got = sub.wait_messages(3)
    assert sorted(got) == want
    # Re-subscribing the same filter sends the retained messages again
    # ([MQTT-3.8.4-3], contract).
    sub.clear()
    assert sub.subscribe("rq/+", 2) == [2]
    want2 = sorted(Msg("rq/%d" % q, b"retained at %d" % q, q, True, False) for q in (0, 1, 2))
    got2 = sub.wait_messages(3)
    assert sorted(got2) == want2
    assert sorted(marker_sync(sub, pub, "rq/zz")) == want2


def test_many_retained_messages_to_one_new_subscription(broker, paho_pool):
    # 48 retained topics, ~14 KB in all (inside max_retained_messages 64 and
    # max_retained_bytes 16384): more than max_outbound_bytes (8192) and the
    # inflight window (10), so the broker must feed them as the client
    # drains, yet every one arrives, once, with RETAIN 1.
    pub = paho_pool.connected(broker.port, client_id="mr-pub")
    want = []
    for i in range(48):
        q = i % 3
        topic = "many/%02d" % i
        payload = (b"%02d" % i) * 140
        pub.publish(topic, payload, qos=q, retain=True)
        want.append(Msg(topic, payload, min(q, 1), True, False))
    pub.publish("many/sync", b"", qos=1)  # QoS 0 ones were routed before this
    sub = paho_pool.connected(broker.port, client_id="mr-sub")
    assert sub.subscribe("many/+", 1) == [1]
    got = sub.wait_messages(len(want), timeout=10)
    assert sorted(got) == sorted(want)
    assert marker_sync(sub, pub, "many/zz")[len(want):] == []


# --- will -----------------------------------------------------------------------------

@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
def test_will_published_when_socket_dropped(broker, paho_pool, reset):
    watcher = paho_pool.connected(broker.port, client_id="will-watch")
    watcher.subscribe("will/#", 2)
    dev = paho_pool(broker.port, client_id="will-dev", will=("will/dev", b"offline", 1, True))
    dev.connect()
    time.sleep(0.1)
    assert watcher.messages == []
    # The client vanishes without DISCONNECT ([MQTT-3.1.2-8]: will published).
    dev.kill(reset=reset)
    got = watcher.wait_messages(1, timeout=5)
    # Will QoS 1 kept; live delivery has RETAIN 0 ([MQTT-3.3.1-9]).
    assert got == [Msg("will/dev", b"offline", 1, False, False)]
    # Will retain=1 -> stored as retained for later subscribers.
    late = paho_pool.connected(broker.port, client_id="will-late")
    late.subscribe("will/dev", 2)
    assert late.wait_messages(1) == [Msg("will/dev", b"offline", 1, True, False)]
    assert marker_sync(watcher, late, "will/zz") == got


def test_will_qos2_not_retained(broker, paho_pool):
    watcher = paho_pool.connected(broker.port, client_id="w2-watch")
    watcher.subscribe("will2/#", 2)
    dev = paho_pool(broker.port, client_id="w2-dev", will=("will2/dev", b"gone \x00\xff", 2, False))
    dev.connect()
    dev.kill()
    got = watcher.wait_messages(1, timeout=5)
    assert got == [Msg("will2/dev", b"gone \x00\xff", 2, False, False)]
    # Exactly once, and not retained: a new subscriber gets nothing.
    late = paho_pool.connected(broker.port, client_id="w2-late")
    late.subscribe("will2/#", 2)
    assert marker_sync(late, watcher, "will2/zz") == []
    assert marker_sync(watcher, late, "will2/zz") == got


def test_no_will_after_clean_disconnect(broker, paho_pool):
    watcher = paho_pool.connected(broker.port, client_id="nw-watch")
    watcher.subscribe("nowill/#", 1)
    dev = paho_pool(broker.port, client_id="nw-dev", will=("nowill/dev", b"should not appear", 1, True))
    dev.connect()
    # [MQTT-3.1.2-10] a DISCONNECT removes the will without publishing it.
    dev.disconnect()
    time.sleep(0.2)
    assert marker_sync(watcher, watcher, "nowill/zz") == []
    late = paho_pool.connected(broker.port, client_id="nw-late")
    late.subscribe("nowill/dev", 1)
    assert marker_sync(late, watcher, "nowill/dev") == []


def test_will_on_keepalive_timeout(broker, paho_pool):
    watcher = paho_pool.connected(broker.port, client_id="ka-watch")
    watcher.subscribe("kawill/#", 1)
    dev = paho_pool(broker.port, client_id="ka-dev", keepalive=1,
                    will=("kawill/dev", b"silent", 1, False))
    dev.connect()
    t0 = time.monotonic()
    dev.freeze()  # socket open, nothing sent any more
    # Contract: silent for 1.5 x keepalive -> disconnected, will published
    # ([MQTT-3.1.2-24]). (The generous timeout lets the same test pass on
    # mosquitto 2.0, which checks keepalives only every few seconds.)
    got = watcher.wait_messages(1, timeout=8)
    assert got == [Msg("kawill/dev", b"silent", 1, False, False)]
    # Not before 1.5 x keepalive since the last packet (CONNECT).
    assert time.monotonic() - t0 >= 1.4


def test_takeover_closes_old_connection_and_publishes_its_will(broker, paho_pool):
    watcher = paho_pool.connected(broker.port, client_id="to-watch")
    watcher.subscribe("takeover/#", 1)
    old = paho_pool(broker.port, client_id="to-dev", will=("takeover/dev", b"old gone", 1, False))
    old.connect()
    old.subscribe("takeover/cmd", 1)
    new = paho_pool.connected(broker.port, client_id="to-dev")
    # [MQTT-3.1.4-2] the existing connection with that client id is closed.
    old.wait_lost(timeout=5)
    # Contract: the old connection's will IS published (it sent no DISCONNECT).
    assert watcher.wait_messages(1) == [Msg("takeover/dev", b"old gone", 1, False, False)]
    new.subscribe("takeover/cmd", 1)
    watcher.publish("takeover/cmd", b"to new", qos=1)
    assert new.wait_messages(1) == [Msg("takeover/cmd", b"to new", 1, False, False)]
    assert not new.lost


# --- persistent sessions -------------------------------------------------------------------

@pytest.mark.parametrize("offline_by", ["disconnect", "kill"])
def test_persistent_session_resume_queued_in_order(broker, paho_pool, offline_by):
    port = broker.port
    sub = paho_pool(port, client_id="persist-sub", clean_session=False)
    session_present, _ = sub.connect()
    assert session_present is False  # no session existed
    assert sub.subscribe("p/#", 2) == [2]
    if offline_by == "disconnect":
        sub.disconnect()
    else:
        sub.kill()
        time.sleep(0.3)  # let the broker notice the closed socket

    pub = paho_pool.connected(port, client_id="persist-pub")
    expected = []
    for i in range(12):
        qos = 1 if i % 2 == 0 else 2
        payload = b"offline-%02d-q%d" % (i, qos)
        pub.publish("p/seq", payload, qos=qos)
        expected.append((payload, qos))
        # Contract: QoS 0 messages are not queued for offline sessions.
        pub.publish("p/seq", b"qos0-%02d" % i, qos=0)
    pub.publish("p/sync", b"", qos=1)  # (QoS 0 sends above are written by now)

    again = paho_pool(port, client_id="persist-sub", clean_session=False)
    session_present, _ = again.connect()
    # [MQTT-3.2.2-2] the stored session is resumed.
    assert session_present is True
    got = marker_sync(again, pub, "p/live")  # the subscription survived, no re-SUBSCRIBE
    seq = [m for m in got if m.topic == "p/seq"]
    # Queued QoS 1/2 messages arrive, each exactly once, QoS kept, no QoS 0.
    assert sorted((m.payload, m.qos) for m in seq) == sorted(expected)
    # In order: paho hands QoS 1 messages over at PUBLISH but QoS 2 ones at
    # PUBREL, so the wire order is visible per QoS only.
    for q in (1, 2):
        assert [m.payload for m in seq if m.qos == q] == [p for p, pq in expected if pq == q]
    if offline_by == "disconnect":
        # Never sent before, so not a redelivery.
        assert not any(m.dup for m in seq)
    assert all(not m.retain for m in seq)


def test_persistent_session_resends_unacked_with_dup(broker, paho_pool):
    port = broker.port
    sub = paho_pool(port, client_id="redo-sub", clean_session=False)
    sub.connect()
    assert sub.subscribe("rd/#", 2) == [2]
    sub.freeze()  # stops reading: PUBLISHes pile up unacknowledged
    pub = paho_pool.connected(port, client_id="redo-pub")
    first = [(b"inflight-%d" % i, 1 + i % 2) for i in range(8)]  # <= max_inflight 10
    for p, q in first:
        pub.publish("rd/seq", p, qos=q)
    time.sleep(0.3)  # the broker has written them to the (unread) socket
    sub.kill()
    time.sleep(0.3)
    later = [(b"queued-%d" % i, 1 + i % 2) for i in range(4)]
    for p, q in later:
        pub.publish("rd/seq", p, qos=q)

    again = paho_pool(port, client_id="redo-sub", clean_session=False)
    session_present, _ = again.connect()
    assert session_present is True
    got = marker_sync(again, pub, "rd/live")
    # Each message once (QoS 2: the client never saw the first copy), QoS kept.
    assert sorted((m.payload, m.qos) for m in got) == sorted(first + later)
    for q in (1, 2):  # wire order per QoS (paho hands QoS 2 over at PUBREL)
        assert [m.payload for m in got if m.qos == q] == \
            [p for p, pq in first + later if pq == q]
    # Contract / [MQTT-4.4.0-1]: the unacknowledged ones are resent with DUP 1.
    dup = dict((m.payload, m.dup) for m in got)
    assert [dup[p] for p, q in first] == [True] * len(first)
    assert [dup[p] for p, q in later] == [False] * len(later)


def test_clean_session_discards_stored_session(broker, paho_pool):
    port = broker.port
    s = paho_pool(port, client_id="cs-sub", clean_session=False)
    s.connect()
    s.subscribe("cs/#", 1)
    s.disconnect()
    pub = paho_pool.connected(port, client_id="cs-pub")
    pub.publish("cs/x", b"queued", qos=1)

    # [MQTT-3.1.2-6] clean session 1 discards the previous session.
    c = paho_pool(port, client_id="cs-sub", clean_session=True)
    session_present, _ = c.connect()
    assert session_present is False
    c.subscribe("cs/marker", 1)
    pub.publish("cs/x", b"after clean", qos=1)
    assert marker_sync(c, pub, "cs/marker") == []
    c.disconnect()

    # A clean-session session is not kept after it ends.
    d = paho_pool(port, client_id="cs-sub", clean_session=False)
    session_present, _ = d.connect()
    assert session_present is False


def test_offline_sessions_fill_queues_within_default_heap(broker_factory, paho_pool):
    # Every cap at its built-in default (config.py's, the device-sized ones:
    # without this the command line's host profile, made for a PC, lifts
    # the caps far past a 400k heap) and the default heap: 15 offline persistent
    # sessions (+ the publisher = max_sessions 16) each get their own stream
    # of large QoS 1 messages, more than max_queued_bytes holds, 290 KB in
    # all. The caps together (per session and max_queued_*_total) must fit
    # the heap: the broker survives without an internal error, the
    # publisher is never cut off, and each session gets the newest of its
    # messages, in order, once (drop-oldest), at least the last one (every
    # session has a message queued before the totals fill up).
    from midge.config import DEFAULTS
    broker = broker_factory({k: v for k, v in DEFAULTS.items() if k.startswith("max_")})
    port, k, size = broker.port, 15, 3900
    for i in range(k):
        s = paho_pool(port, client_id="fill%02d" % i, clean_session=False)
        s.connect()
        s.subscribe("fill/%d" % i, 1)
        s.disconnect()
    pub = paho_pool.connected(port, client_id="fill-pub")
    letters = [b"A", b"B", b"C", b"D", b"E"]
    for c in letters:
        for i in range(k):
            pub.publish("fill/%d" % i, c * size, qos=1)
    for i in range(k):
        s = paho_pool(port, client_id="fill%02d" % i, clean_session=False)
        session_present, _ = s.connect()
        assert session_present is True
        got = marker_sync(s, pub, "fill/%d" % i)
        kept = [m.payload[:1] for m in got]
        assert all(len(m.payload) == size for m in got)
        assert 1 <= len(kept) <= 4 and kept == letters[-len(kept):], (i, kept)
        s.disconnect()
    assert not pub.lost


# --- topics: wildcards, $SYS, overlaps, unsubscribe ------------------------------------------

def test_wildcards_plus_and_hash(broker, paho_pool):
    port = broker.port
    filters = ["w/+/temp", "w/#", "+/+/+", "w/+", "+", "#", "w/kitchen/temp"]
    subs = {}
    for i, f in enumerate(filters):
        subs[f] = paho_pool.connected(port, client_id="wc%d" % i)
        assert subs[f].subscribe(f, 1) == [1]
    topics = ["w/kitchen/temp", "w/hall/temp", "w/kitchen/hum", "w", "w/a/b/c",
              "x/y/z", "w/", "/w/x", "other"]
    # Written out by hand from spec 4.7.1 (not computed), including the
    # non-obvious cases: "w/#" matches "w" itself, "w/+" matches "w/" but not
    # "w", a leading "/" makes an empty first level.
    expected = {
        "w/+/temp": ["w/kitchen/temp", "w/hall/temp"],
        "w/#": ["w/kitchen/temp", "w/hall/temp", "w/kitchen/hum", "w", "w/a/b/c", "w/"],
        "+/+/+": ["w/kitchen/temp", "w/hall/temp", "w/kitchen/hum", "x/y/z", "/w/x"],
        "w/+": ["w/"],
        "+": ["w", "other"],
        "#": topics,
        "w/kitchen/temp": ["w/kitchen/temp"],
    }
    pub = paho_pool.connected(port, client_id="wc-pub")
    for t in topics:
        pub.publish(t, ("to " + t).encode(), qos=1)
    for f in filters:
        got = subs[f].wait_messages(len(expected[f]), timeout=5)
    time.sleep(0.3)  # anything extra would have arrived by now
    for f in filters:
        got = subs[f].messages
        assert [m.topic for m in got] == expected[f], f
        assert all(m.payload == ("to " + m.topic).encode() for m in got)


def test_sys_topics_not_matched_by_leading_wildcards(broker_factory, paho_pool):
    b = broker_factory({"sys_interval_s": 1})
    all_ = paho_pool.connected(b.port, client_id="sys-all")
    all_.subscribe("#", 0)
    plus = paho_pool.connected(b.port, client_id="sys-plus")
    plus.subscribe("+/broker/#", 0)
    sys_ = paho_pool.connected(b.port, client_id="sys-sys")
    sys_.subscribe("$SYS/#", 0)
    # $SYS is published every sys_interval_s as retained messages (contract).
    sys_.wait_for_message(lambda m: m.topic == "$SYS/broker/version", timeout=4,
                          what="$SYS/broker/version")
    sys_.wait_for_message(lambda m: m.topic == "$SYS/broker/uptime" and not m.retain,
                          timeout=4, what="a live $SYS/broker/uptime")
    # [MQTT-4.7.2-1] filters starting with a wildcard never match "$" topics.
    assert [m.topic for m in all_.messages if m.topic.startswith("$")] == []
    assert plus.messages == []
    # A client's PUBLISH to $SYS is acknowledged and dropped (contract).
    pub = paho_pool.connected(b.port, client_id="sys-pub")
    pub.publish("$SYS/broker/fake", b"spoof", qos=1)
    pub.publish("normal", b"n", qos=1)
    all_.wait_for_message(lambda m: m.topic == "normal")
    assert not any(m.topic == "$SYS/broker/fake" for m in sys_.messages)


def test_overlapping_subscriptions_one_delivery_at_max_qos(broker, paho_pool):
    sub = paho_pool.connected(broker.port, client_id="ov-sub")
    assert sub.subscribe([("ov/#", 0), ("ov/+", 1), ("ov/x", 2)]) == [0, 1, 2]
    pub = paho_pool.connected(broker.port, client_id="ov-pub")
    pub.publish("ov/x", b"x", qos=2)
    pub.publish("ov/y", b"y", qos=2)
    pub.publish("ov/y/z", b"z", qos=2)
    # Contract: one delivery per message per client, at the highest granted QoS.
    # (Sorted: paho hands QoS 2 messages to the application only at PUBREL.)
    assert sorted(marker_sync(sub, pub, "ov/x")) == [
        Msg("ov/x", b"x", 2, False, False),
        Msg("ov/y", b"y", 1, False, False),
        Msg("ov/y/z", b"z", 0, False, False),
    ]


def test_unsubscribe(broker, paho_pool):
    sub = paho_pool.connected(broker.port, client_id="un-sub")
    sub.subscribe([("u/a", 1), ("u/b", 1), ("u/c/#", 1)])
    pub = paho_pool.connected(broker.port, client_id="un-pub")
    sub.unsubscribe("u/a")
    # [MQTT-3.10.4-5] UNSUBACK even for a filter that was never subscribed.
    sub.unsubscribe("u/never")
    pub.publish("u/a", b"gone", qos=1)
    pub.publish("u/c/1", b"still", qos=1)
    assert marker_sync(sub, pub, "u/b") == [Msg("u/c/1", b"still", 1, False, False)]
    sub.clear()
    sub.unsubscribe(["u/b", "u/c/#"])
    pub.publish("u/b", b"gone too", qos=1)
    pub.publish("u/c/1", b"gone too", qos=1)
    sub.subscribe("u/marker", 0)
    assert marker_sync(sub, pub, "u/marker") == []


# --- load -----------------------------------------------------------------------------------

def test_burst_2000_qos1_complete_and_in_order(broker_factory, paho_pool):
    # Unpaced: the publisher's 2000 PUBLISHes reach the broker far faster
    # than a max_inflight=10 window drains them to the subscriber (one 4 KB
    # read holds ~200 of them, before any backpressure can act), so much of
    # the burst sits in the subscriber's session queue. That needs queue caps
    # (per session and total) above 2000 and a heap to hold it (~330 bytes
    # per queued small message measured on the 64-bit unix port).
    b = broker_factory({"max_queued_messages": 2500, "max_queued_bytes": 1 << 20,
                        "max_queued_total": 2500, "max_queued_bytes_total": 1 << 20},
                       heapsize="4m")
    sub = paho_pool.connected(b.port, client_id="burst-sub")
    assert sub.subscribe("burst/t", 1) == [1]
    pub = paho_pool.connected(b.port, client_id="burst-pub")
    n = 2000
    infos = [pub.publish("burst/t", b"%05d" % i, qos=1, wait=False) for i in range(n)]
    for info in infos:
        pub.wait_published(info, timeout=20)
    got = sub.wait_messages(n, timeout=20)
    assert [m.payload for m in got] == [b"%05d" % i for i in range(n)]
    assert all(m.qos == 1 and not m.dup for m in got)
    assert marker_sync(sub, pub, "burst/t")[n:] == []


def test_stream_2000_qos1_default_caps_and_heap(broker, paho_pool):
    # Default config and heap: the publisher sends windows of 25 messages
    # (under max_queued_messages 32) and waits for them to arrive, so the
    # documented drop-oldest never applies and nothing may be lost.
    sub = paho_pool.connected(broker.port, client_id="stream-sub")
    assert sub.subscribe("stream/t", 1) == [1]
    pub = paho_pool.connected(broker.port, client_id="stream-pub")
    sent = [b"%05d" % i for i in range(2000)]
    send_paced(pub, sub, "stream/t", sent, qos=1)
    got = marker_sync(sub, pub, "stream/t")
    assert [m.payload for m in got] == sent


def test_several_concurrent_clients(broker, paho_pool):
    # Default caps and heap, 6 clients (max_clients is 8). Every client
    # publishes and subscribes to everything; each round every client sends
    # 4 messages at once (24 per subscriber, within inflight 10 + queue 32).
    k, rounds, per = 6, 10, 4
    clients = []
    for i in range(k):
        c = paho_pool.connected(broker.port, client_id="cc%d" % i)
        assert c.subscribe("cc/#", 1) == [1]
        clients.append(c)
    for r in range(rounds):
        infos = []
        for j in range(per):
            for i, c in enumerate(clients):
                seq = r * per + j
                infos.append((c, c.publish("cc/%d" % i, b"%d:%03d" % (i, seq), qos=1, wait=False)))
        for c, info in infos:
            c.wait_published(info, timeout=10)
        for c in clients:
            c.wait_messages(k * per * (r + 1), timeout=10)
    n = rounds * per
    for c in clients:
        got = marker_sync(c, clients[0], "cc/marker")
        assert len(got) == k * n
        for i in range(k):
            # Per-publisher (per-topic) order kept, nothing lost or doubled.
            assert [m.payload for m in got if m.topic == "cc/%d" % i] == \
                [b"%d:%03d" % (i, j) for j in range(n)]
        assert not c.lost


def test_keepalive_pings_keep_connection(broker, paho_pool):
    c = paho_pool(broker.port, client_id="ka", keepalive=1)
    c.connect()
    c.subscribe("ka/t", 1)
    # Well past 1.5 x keepalive: paho's PINGREQs must keep it open.
    time.sleep(2.5)
    assert not c.lost
    c.publish("ka/t", b"alive", qos=1)
    assert c.wait_messages(1) == [Msg("ka/t", b"alive", 1, False, False)]


def test_oversize_publish_closes_only_that_client(broker_factory, paho_pool):
    b = broker_factory({"max_packet_size": 4096})
    watcher = paho_pool.connected(b.port, client_id="big-watch")
    watcher.subscribe("big/#", 1)
    big = paho_pool.connected(b.port, client_id="big-pub")
    big.publish("big/t", b"x" * 5000, qos=1, wait=False)
    # Contract: a packet over max_packet_size closes that connection.
    big.wait_lost(timeout=5)
    other = paho_pool.connected(b.port, client_id="big-other")
    other.publish("big/ok", b"fits", qos=1)
    assert marker_sync(watcher, other, "big/zz") == [Msg("big/ok", b"fits", 1, False, False)]
