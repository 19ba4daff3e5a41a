"""The flash store through the real server: state survives a restart.

The broker runs under the MicroPython unix port with a 400k heap cap (like
the other socket suites) and `store_dir` in its config. Each restart test
runs twice: the broker is ended with SIGTERM (a service stop: a clean stop on
CPython, a crash on the MicroPython unix port, which has no signal module)
and with SIGKILL (a crash or power cut: nothing buffered is written). It is
then started again on the same port and store, and raw clients
(tools/rawclient.py) and paho-mqtt persistent clients reconnect and
must get exactly what they were owed: QoS 2 exactly once, QoS 1 at least
once (a repeat only with DUP=1), in order per topic.

The damage tests do not assume a file layout (one log file, or a snapshot
plus journal files): they tear the file that the last commit wrote, and
corrupt the header of every store file that starts with the magic "MIDG".

Contract (README.md "Persistence", docs/STORE.md): records behind a
PUBACK/PUBREC/SUBACK/UNSUBACK are written and synced before that
acknowledgement leaves; other records (QoS 0 retained updates, a client's
PUBACK/PUBCOMP) may wait up to store_sync_ms. Tests that need such a record
on disk wait longer than store_sync_ms (SYNC_WAIT) before the stop.
"""
import binascii
import os
import struct
import subprocess
import threading
import time

import pytest

import brokerproc
import mqttspec as m
from interop_util import marker_sync, paho_pool, MARKER  # noqa: F401 (fixture)
from rawclient import sys_values

MODES = ["sigterm", "sigkill"]
SYNC_MS = 200               # store_sync_ms of the tests that wait for lazy records
SYNC_WAIT = 0.6             # > SYNC_MS + one 250 ms housekeeping tick
MAGIC = b"MIDG"


def _store_cfg(tmp_path, **extra):
    cfg = {"store_dir": str(tmp_path / "store")}
    cfg.update(extra)
    return cfg


def _store_files(b):
    """name -> (size, bytes) of every file in the store directory."""
    d = b.config["store_dir"]
    out = {}
    for name in sorted(os.listdir(d)):
        path = os.path.join(d, name)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                data = f.read()
            out[name] = (len(data), data)
    return out


def _restart(b, mode):
    """End the broker the given way and start it again on the same store."""
    status = b.sigkill() if mode == "sigkill" else b.sigterm()
    if mode == "sigterm" and brokerproc.interpreter() == "cpython":
        assert status == 0, "clean stop on SIGTERM exited with status %s:\n%s" % (status, b.log_tail())
    b.restart()
    log = b.log()
    for bad in ("damaged", "not applied", "Traceback"):
        # a kill ends the process between writes: the file is whole
        assert bad not in log, "%r in the log after a %s restart:\n%s" % (bad, mode, b.log_tail())
    return b


def _pubs(pkts):
    return [(p["topic"], p["payload"], p["qos"], p["dup"]) for p in pkts]


def _by_topic(received):
    """topic -> [(payload, qos, dup)] in arrival order."""
    out = {}
    for topic, payload, qos, dup in received:
        out.setdefault(topic, []).append((payload, qos, dup))
    return out


def _check_owed(received, expected):
    """received: [(topic, payload, qos, dup)]; expected: topic -> ([payloads
    in order], qos). QoS 2: exactly once; QoS 1: at least once, a repeat
    only with DUP=1; first deliveries in publish order per topic."""
    got = _by_topic(received)
    assert sorted(got) == sorted(expected), "topics received %r, expected %r" % (
        sorted(got), sorted(expected))
    for topic in expected:
        payloads, qos = expected[topic]
        seq = got[topic]
        assert all(q == qos for _, q, _ in seq), "%s delivered at QoS %r, expected %d" % (
            topic, [q for _, q, _ in seq], qos)
        firsts = []
        for payload, _, dup in seq:
            if payload in firsts:
                assert qos == 1, "QoS 2 message %r on %s delivered twice: %r" % (payload, topic, seq)
                assert dup, "QoS 1 repeat of %r on %s without DUP=1" % (payload, topic)
            else:
                firsts.append(payload)
        assert firsts == payloads, "%s: got %r, expected %r (in this order)" % (topic, firsts, payloads)


# --- retained messages ----------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_retained_messages_survive_restarts(broker_factory, tmp_path, mode):
    b = broker_factory(_store_cfg(tmp_path, store_sync_ms=SYNC_MS))
    p = b.client("rpub")
    p.publish("r/q1", b"one", qos=1, retain=True)
    p.publish("r/q2", b"two", qos=2, retain=True)
    p.publish("r/replaced", b"old", qos=1, retain=True)
    p.publish("r/replaced", b"new", qos=1, retain=True)
    p.publish("r/cleared", b"x", qos=1, retain=True)
    p.publish("r/cleared", b"", qos=1, retain=True)   # empty payload clears [MQTT-3.3.1-10]
    p.publish("r/bin", bytes(range(256)), qos=1, retain=True)
    p.publish("$dev/state", b"dollar", qos=1, retain=True)  # '$' topic, not $SYS
    p.publish("r/live", b"not retained", qos=1)
    expected = {
        "r/q1": (b"one", 1), "r/q2": (b"two", 2),
        "r/replaced": (b"new", 1), "r/bin": (bytes(range(256)), 1),
    }
    # QoS 1/2 updates are on disk once acknowledged: stop at once.
    _restart(b, mode)
    _check_retained(b, "rcheck0", expected, "restart 1 (%s)" % mode)
    # A QoS 0 update backs no acknowledgement: it may wait store_sync_ms.
    p = b.client("rpub")
    p.publish("r/q0", b"zero", qos=0, retain=True)
    time.sleep(SYNC_WAIT)
    expected["r/q0"] = (b"zero", 0)
    # The next restart replays the appended log, the one after it the
    # snapshot that the first one compacted it into.
    for n in (2, 3):
        _restart(b, mode)
        _check_retained(b, "rcheck%d" % n, expected, "restart %d (%s)" % (n, mode))


def _check_retained(b, cid, expected, what):
    c = b.client(cid)
    assert c.subscribe([("r/#", 2), ("$dev/#", 1)]) == [2, 1]
    got = c.publishes(0.5)
    assert all(g["retain"] == 1 for g in got), _pubs(got)
    found = {}
    for g in got:
        found[g["topic"]] = (g["payload"], g["qos"])
    dollar = found.pop("$dev/state", None)
    assert found == expected, "%s: retained %r" % (what, found)
    assert dollar == (b"dollar", 1), "%s: $dev/state retained %r" % (what, dollar)
    c.disconnect()


# --- persistent sessions and their queues ---------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_raw_persistent_session_gets_queued_messages_after_restart(broker_factory, tmp_path, mode):
    b = broker_factory(_store_cfg(tmp_path, store_sync_ms=SYNC_MS))
    s = b.client("rs", clean=False)
    assert s.subscribe([("s/one", 1), ("s/two", 2), ("s/all/#", 2), ("s/gone", 1)]) == [1, 2, 2, 1]
    s.unsubscribe("s/gone")
    s.disconnect()
    p = b.client("spub")
    for i in range(6):
        p.publish("s/one", b"a%d" % i, qos=1)
        p.publish("s/two", b"b%d" % i, qos=2)
        p.publish("s/all/x", b"c%d" % i, qos=1)
        p.publish("s/all/y", b"d%d" % i, qos=2)
        p.publish("s/gone", b"unsubscribed", qos=1)
        p.publish("s/one", b"qos0 is not queued", qos=0)
    _restart(b, mode)
    s = b.client("rs", clean=False)
    assert s.connack["session_present"] == 1, "persistent session lost in the restart"
    got = s.publishes(0.5)
    _check_owed(_pubs(got), {
        "s/one": ([b"a%d" % i for i in range(6)], 1),
        "s/two": ([b"b%d" % i for i in range(6)], 2),
        "s/all/x": ([b"c%d" % i for i in range(6)], 1),
        "s/all/y": ([b"d%d" % i for i in range(6)], 2),
    })
    # Queued, never sent before: no DUP.
    assert all(g["dup"] == 0 for g in got), _pubs(got)
    # The subscriptions themselves survived: live routing after the restart.
    p = b.client("spub")
    p.publish("s/two", b"live", qos=2)
    p.publish("s/gone", b"still unsubscribed", qos=1)
    s.expect_publish("s/two", b"live", qos=2, dup=0)
    s.no_packet(0.3)
    # Everything was acknowledged (lazy records: wait store_sync_ms): a
    # further restart owes the session nothing.
    s.disconnect()
    time.sleep(SYNC_WAIT)
    _restart(b, mode)
    s = b.client("rs", clean=False)
    assert s.connack["session_present"] == 1
    s.no_packet(0.5)


@pytest.mark.parametrize("mode", MODES)
def test_unacknowledged_inflight_resent_with_dup_after_restart(broker_factory, tmp_path, mode):
    b = broker_factory(_store_cfg(tmp_path, store_sync_ms=SYNC_MS))
    s = b.client("inf", clean=False)
    assert s.subscribe([("i/#", 2)]) == [2]
    p = b.client("ipub")
    p.publish("i/a", b"p1", qos=1)
    a = s.expect_publish("i/a", b"p1", qos=1, dup=0, ack=False)
    p.publish("i/b", b"p2", qos=2)
    bb = s.expect_publish("i/b", b"p2", qos=2, dup=0, ack=False)
    p.publish("i/c", b"p3", qos=2)
    c = s.expect_publish("i/c", b"p3", qos=2, dup=0, ack=False)
    s.send(m.pubrec(c["pid"]))          # PUBREC, then no PUBCOMP
    s.expect("pubrel", pid=c["pid"])
    time.sleep(SYNC_WAIT)               # the PUBREC's record backs no ack: let it reach the store
    p.publish("i/d", b"p4", qos=1)
    d = s.expect_publish("i/d", b"p4", qos=1, dup=0, ack=False)
    _restart(b, mode)
    s = b.client("inf", clean=False)
    assert s.connack["session_present"] == 1
    # [MQTT-4.4.0-1] the original order and packet ids; [MQTT-3.3.1-1] DUP=1;
    # the PUBREL again for the one awaiting PUBCOMP.
    s.expect("publish", topic="i/a", payload=b"p1", qos=1, dup=1, pid=a["pid"])
    s.expect("publish", topic="i/b", payload=b"p2", qos=2, dup=1, pid=bb["pid"])
    s.expect("pubrel", pid=c["pid"])
    s.expect("publish", topic="i/d", payload=b"p4", qos=1, dup=1, pid=d["pid"])
    s.no_packet(0.3)
    s.send(m.puback(a["pid"]))
    s.send(m.pubrec(bb["pid"]))
    s.expect("pubrel", pid=bb["pid"])
    s.send(m.pubcomp(bb["pid"]))
    s.send(m.pubcomp(c["pid"]))
    s.send(m.puback(d["pid"]))
    assert s.is_open()
    s.disconnect()
    time.sleep(SYNC_WAIT)
    _restart(b, mode)
    s = b.client("inf", clean=False)
    s.no_packet(0.5)


@pytest.mark.parametrize("mode", MODES)
def test_qos2_completed_before_crash_not_delivered_again(broker_factory, tmp_path, mode):
    """Exactly once outbound: a subscriber that received PUBREL has delivered
    the message and forgotten its packet id (MQTT 3.1.1 4.3.3, method B).
    If the broker comes back still awaiting PUBREC for it, it resends the
    PUBLISH and the client delivers it a second time. So the state change
    behind the PUBREL (record COMP) must be durable before the PUBREL leaves,
    like PUBREC for an inbound QoS 2 message. Default store_sync_ms (1000):
    the stop comes 0.2 s after the flow completed."""
    b = broker_factory(_store_cfg(tmp_path, store_sync_ms=1000))
    s = b.client("s2", clean=False)
    assert s.subscribe([("x/#", 2)]) == [2]
    p = b.client("x2pub")
    p.publish("x/a", b"once", qos=2)
    s.expect_publish("x/a", b"once", qos=2)   # PUBREC, PUBREL, PUBCOMP: delivered
    assert s.is_open()
    time.sleep(0.2)
    _restart(b, mode)
    s = b.client("s2", clean=False)
    assert s.connack["session_present"] == 1
    again = [pkt for pkt in s.drain(0.5) if pkt["type"] == "publish"]
    assert again == [], ("QoS 2 message delivered again after the restart (exactly once broken): %r"
                         % _pubs(again))


@pytest.mark.parametrize("mode", MODES)
def test_inbound_qos2_packet_id_reused_after_restart_is_delivered(broker_factory, tmp_path, mode):
    """Exactly once inbound: a persistent publisher completed a QoS 2 flow
    (PUBREL answered with PUBCOMP), so its packet id is free again. After a
    restart a new message with that id is a new message and must be
    delivered; the broker must not still hold the id as awaiting PUBREL
    (record IN2_DEL lost because it backs no acknowledgement -- but it
    backs the PUBCOMP). Default store_sync_ms (1000)."""
    b = broker_factory(_store_cfg(tmp_path, store_sync_ms=1000))
    s = b.client("in2sub", clean=False)
    assert s.subscribe([("in2/#", 2)]) == [2]
    s.disconnect()
    p = b.client("in2pub", clean=False)
    p.publish("in2/t", b"first", qos=2, pid=1)
    time.sleep(0.2)
    _restart(b, mode)
    p = b.client("in2pub", clean=False)
    assert p.connack["session_present"] == 1
    p.publish("in2/t", b"second", qos=2, pid=1)   # a NEW message that reuses packet id 1
    s = b.client("in2sub", clean=False)
    got = s.publishes(0.5)
    assert [g["payload"] for g in got] == [b"first", b"second"], (
        "persistent subscriber got %r: a new QoS 2 message reusing a completed packet id after "
        "the restart was acknowledged but not delivered" % _pubs(got))


# --- paho-mqtt persistent client ---------------------------------------------------------------

def _paho_reconnect(pc, timeout=5.0):
    """Reconnect a PahoClient with the SAME paho Client object (as a device
    whose broker went away): paho keeps its session state (inbound QoS 2
    packet ids, outbound inflight) when clean_session is False."""
    pc._stop = threading.Event()
    with pc.cond:
        pc.lost = False
        del pc.connacks[:]
    return pc.connect(timeout)


def _paho_received(pc):
    with pc.cond:
        return [(x.topic, x.payload, x.qos, x.dup) for x in pc.messages
                if not x.payload.startswith(MARKER)]


@pytest.mark.parametrize("mode", MODES)
def test_paho_persistent_client_gets_queued_messages_after_restart(broker_factory, paho_pool,
                                                                  tmp_path, mode):
    b = broker_factory(_store_cfg(tmp_path))
    pc = paho_pool(b.port, client_id="paho-pers", clean_session=False)
    sp, _ = pc.connect()
    assert sp is False
    assert pc.subscribe([("pq/1", 1), ("pq/2", 2), ("pq/mark", 2)]) == [1, 2, 2]
    pc.disconnect()
    p = b.client("pqpub")
    for i in range(5):
        p.publish("pq/1", b"one-%d" % i, qos=1)
        p.publish("pq/2", b"two-%d" % i, qos=2)
    _restart(b, mode)
    sp, _ = _paho_reconnect(pc)
    assert sp is True, "paho: session present 0 after the restart (persistent session lost)"
    pub = paho_pool.connected(b.port, client_id="pq-marker")
    marker_sync(pc, pub, "pq/mark")
    # A live message after the restart: the subscription survived.
    pub.publish("pq/2", b"live", qos=2)
    marker_sync(pc, pub, "pq/mark")
    _check_owed(_paho_received(pc), {
        "pq/1": ([b"one-%d" % i for i in range(5)], 1),
        "pq/2": ([b"two-%d" % i for i in range(5)] + [b"live"], 2),
    })


@pytest.mark.parametrize("mode", MODES)
def test_paho_online_client_exactly_once_across_crash(broker_factory, paho_pool, tmp_path, mode):
    """A paho persistent subscriber that is connected when the broker goes
    down, then reconnects (same paho Client, so its QoS 2 state is kept):
    QoS 2 exactly once, QoS 1 at least once over the whole run. Default
    store_sync_ms: the stop comes 0.2 s after the last delivery."""
    b = broker_factory(_store_cfg(tmp_path))
    pc = paho_pool(b.port, client_id="paho-online", clean_session=False)
    pc.connect()
    assert pc.subscribe([("po/1", 1), ("po/2", 2), ("po/mark", 2)]) == [1, 2, 2]
    p = b.client("popub")
    for i in range(4):
        p.publish("po/1", b"one-%d" % i, qos=1)
        p.publish("po/2", b"two-%d" % i, qos=2)
    pc.wait_messages(8)
    time.sleep(0.2)
    _restart(b, mode)
    pc.wait_lost()
    sp, _ = _paho_reconnect(pc)
    assert sp is True
    pub = paho_pool.connected(b.port, client_id="po-marker")
    for i in range(4, 6):
        pub.publish("po/1", b"one-%d" % i, qos=1)
        pub.publish("po/2", b"two-%d" % i, qos=2)
    marker_sync(pc, pub, "po/mark")
    _check_owed(_paho_received(pc), {
        "po/1": ([b"one-%d" % i for i in range(6)], 1),
        "po/2": ([b"two-%d" % i for i in range(6)], 2),
    })


# --- wills ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_will_of_client_connected_at_stop_published_after_restart(broker_factory, tmp_path, mode):
    b = broker_factory(_store_cfg(tmp_path, store_sync_ms=SYNC_MS))
    w = b.client("watch", clean=False)
    assert w.subscribe([("will/#", 1)]) == [1]
    w.disconnect()
    # Said goodbye with DISCONNECT: its will is discarded [MQTT-3.14.4-3].
    bye = b.client("bye", clean=False, will_topic="will/bye", will_payload=b"must not appear",
                   will_qos=1)
    bye.disconnect()
    dev = b.client("dev", clean=False, will_topic="will/dev", will_payload=b"dev offline",
                   will_qos=1, will_retain=True)
    assert dev.subscribe([("dev/cmd", 1)]) == [1]
    time.sleep(SYNC_WAIT)
    # dev is still connected when the broker goes down.
    _restart(b, mode)
    w = b.client("watch", clean=False)
    got = w.publishes(0.5)
    assert _pubs(got) == [("will/dev", b"dev offline", 1, 0)]
    late = b.client("late")
    late.subscribe([("will/#", 1)])
    assert [(g["topic"], g["payload"], g["retain"]) for g in late.publishes(0.4)] == [
        ("will/dev", b"dev offline", 1)]
    # Published once: another restart does not publish it again.
    w.disconnect()
    time.sleep(SYNC_WAIT)
    _restart(b, mode)
    w = b.client("watch", clean=False)
    w.no_packet(0.5)
    # The session of dev is still there (clean 0), with its subscription.
    dev = b.client("dev", clean=False)
    assert dev.connack["session_present"] == 1
    b.client("cmd").publish("dev/cmd", b"reboot", qos=1)
    dev.expect_publish("dev/cmd", b"reboot", qos=1)


def test_will_published_once_when_broker_crashes_again_right_after_restart(broker_factory, tmp_path):
    b = broker_factory(_store_cfg(tmp_path))
    w = b.client("watch", clean=False)
    assert w.subscribe([("will/#", 1)]) == [1]
    w.disconnect()
    dev = b.client("dev", clean=False, will_topic="will/dev", will_payload=b"gone", will_qos=1)
    assert dev.subscribe([("dev/cmd", 1)]) == [1]
    b.sigkill()
    b.restart()      # publishes the will (the WILL record is compacted away) ...
    b.sigkill()      # ... and crashes again at once
    b.restart()
    w = b.client("watch", clean=False)
    assert _pubs(w.publishes(0.5)) == [("will/dev", b"gone", 1, 0)]


def test_will_discarded_by_disconnect_not_published_after_crash(broker_factory, tmp_path):
    """[MQTT-3.14.4-3]: after DISCONNECT the will is discarded, never
    published. The record of that (WILL_DEL) backs no acknowledgement, so
    it may wait store_sync_ms; a crash inside that window must still not
    publish the will. Default store_sync_ms (1000)."""
    b = broker_factory(_store_cfg(tmp_path))
    w = b.client("watch", clean=False)
    assert w.subscribe([("will/#", 1)]) == [1]
    w.disconnect()
    dev = b.client("dev", clean=False, will_topic="will/dev", will_payload=b"must not appear",
                   will_qos=1)
    assert dev.subscribe([("dev/cmd", 1)]) == [1]   # the WILL record is now on disk
    dev.disconnect()
    time.sleep(0.2)
    b.sigkill()
    b.restart()
    w = b.client("watch", clean=False)
    got = w.publishes(0.5)
    assert got == [], "will published after the client's DISCONNECT: %r" % _pubs(got)


# --- $SYS figures --------------------------------------------------------------------------------

STORE_SYS = ["bytes_written", "commits", "compactions", "damaged_records", "errors"]


def _store_sys(b, until=None, timeout=3.5):
    c = b.client("sysmon-%d" % time.monotonic_ns())
    assert c.subscribe([("$SYS/broker/store/#", 0), ("$SYS/broker/counters/store_evicted", 0)]) == [0, 0]
    vals = sys_values(c, timeout, until)
    c.disconnect()
    return vals


def test_sys_store_figures(broker_factory, tmp_path):
    b = broker_factory(_store_cfg(tmp_path, sys_interval_s=1))
    p = b.client("syspub")
    p.publish("sys/r", b"x" * 100, qos=1, retain=True)
    b.sigkill()
    b.restart()
    p = b.client("syspub")
    p.publish("sys/r", b"y" * 100, qos=1, retain=True)

    def ready(v):
        return all("$SYS/broker/store/" + k in v for k in STORE_SYS) and \
            int(v.get("$SYS/broker/store/commits", "0")) >= 1 and \
            "$SYS/broker/counters/store_evicted" in v
    vals = _store_sys(b, ready)
    missing = [k for k in STORE_SYS if "$SYS/broker/store/" + k not in vals]
    assert not missing, "missing $SYS/broker/store/ figures %r (got %r)" % (missing, vals)
    for k in STORE_SYS:
        assert vals["$SYS/broker/store/" + k].isdigit(), (k, vals)
    fig = dict((k, int(vals["$SYS/broker/store/" + k])) for k in STORE_SYS)
    assert fig["bytes_written"] > 200, fig
    assert fig["commits"] >= 1, fig
    assert fig["compactions"] >= 1, fig     # every load is followed by a compaction
    assert fig["damaged_records"] == 0, fig
    assert fig["errors"] == 0, fig
    assert vals.get("$SYS/broker/counters/store_evicted") == "0", vals


# --- damage ----------------------------------------------------------------------------------------

def test_torn_tail_is_discarded_and_counted(broker_factory, tmp_path):
    b = broker_factory(_store_cfg(tmp_path, sys_interval_s=1, store_sync_ms=SYNC_MS))
    s = b.client("ts", clean=False)
    assert s.subscribe([("t/#", 1)]) == [1]
    s.disconnect()
    p = b.client("tpub")
    p.publish("t/keep", b"kept", qos=1, retain=True)
    p.publish("t/q", b"queued", qos=1)
    b.sigterm()
    b.restart()                   # the load compacts the store
    time.sleep(SYNC_WAIT)         # nothing left in the buffer
    before = _store_files(b)
    p = b.client("tpub")
    # No subscriber matches u/#: this commits exactly one RETAIN record.
    p.publish("u/last", b"torn away", qos=1, retain=True)
    b.sigkill()
    after = _store_files(b)
    changed = [n for n in after if before.get(n) != after[n]]
    assert len(changed) == 1, "the last commit should change one store file: before %r after %r" % (
        dict((n, before[n][0]) for n in before), dict((n, after[n][0]) for n in after))
    name = changed[0]
    size = after[name][0]
    assert b"torn away" in after[name][1][before.get(name, (0, b""))[0]:], (
        "the last update is not in %s" % name)
    os.truncate(os.path.join(b.config["store_dir"], name), size - 3)   # a torn last write
    b.restart()
    log = b.log()
    assert "damaged" in log, "damage not logged:\n%s" % b.log_tail()
    assert "Traceback" not in log, b.log_tail()

    def seen(v):
        return "$SYS/broker/store/damaged_records" in v
    vals = _store_sys(b, seen)
    assert vals.get("$SYS/broker/store/damaged_records") == "1", vals
    # The state before the tail is there.
    c = b.client("tcheck")
    c.subscribe([("t/#", 1), ("u/#", 1)])
    assert [(g["topic"], g["payload"], g["retain"]) for g in c.publishes(0.4)] == [
        ("t/keep", b"kept", 1)]
    s = b.client("ts", clean=False)
    assert s.connack["session_present"] == 1
    assert [(g["topic"], g["payload"]) for g in s.publishes(0.4)] == [
        ("t/keep", b"kept"), ("t/q", b"queued")]
    # The store was rewritten clean: the next start finds no damage.
    s.disconnect()
    time.sleep(SYNC_WAIT)
    b.sigterm()
    b.restart()
    assert "damaged" not in b.log(), b.log_tail()
    vals = _store_sys(b, seen)
    assert vals.get("$SYS/broker/store/damaged_records") == "0", vals


@pytest.mark.parametrize("what", ["magic", "version"])
def test_store_with_wrong_magic_or_version_stops_startup(broker_factory, tmp_path, what):
    b = broker_factory(_store_cfg(tmp_path))
    s = b.client("bad", clean=False)
    assert s.subscribe([("b/#", 1)]) == [1]
    b.client("bpub").publish("b/r", b"kept", qos=1, retain=True)
    b.sigterm()
    files = _store_files(b)
    headed = [n for n in files if files[n][1][:4] == MAGIC]
    assert headed, "no store file starts with %r: %r" % (MAGIC, sorted(files))
    store = b.config["store_dir"]
    for name in headed:
        data = bytearray(files[name][1])
        if what == "magic":
            data[0:4] = b"XXXX"
        else:
            data[4] = data[4] + 1      # a version this midge does not read
        # a header that is intact (its CRC matches): a foreign store, not damage
        data[12:16] = struct.pack(">I", binascii.crc32(bytes(data[:12])) & 0xFFFFFFFF)
        with open(os.path.join(store, name), "wb") as f:
            f.write(bytes(data))
    damaged = _store_files(b)
    cmd, env = b.command()
    cmd = [a for a in cmd]
    i = cmd.index("--config")
    del cmd[i:i + 2]
    cmd += ["--store", store]   # the command-line spelling of store_dir
    try:
        res = subprocess.run(cmd, cwd=brokerproc.REPO, env=env, capture_output=True, timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail("broker with a bad store (%s) did not stop start-up" % what)
    out = (res.stdout + res.stderr).decode("utf-8", "replace")
    assert res.returncode == 1, "exit status %s, expected 1:\n%s" % (res.returncode, out)
    err = res.stderr.decode("utf-8", "replace")
    assert any(os.path.join(store, n) in err for n in headed), (
        "the message does not name %s:\n%s" % (" or ".join(os.path.join(store, n) for n in headed), out))
    assert what in err, "the message does not say what is wrong (%s):\n%s" % (what, out)
    assert "Traceback" not in out, out
    assert "listening on" not in out, out
    # The store it could not read is left as it was.
    assert _store_files(b) == damaged
