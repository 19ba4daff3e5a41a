# Interop: the mosquitto command line clients (Debian package
# mosquitto-clients: mosquitto_pub, mosquitto_sub, libmosquitto) against the
# broker started by conftest.py (MicroPython with a heap cap).
#
# mosquitto_sub always runs with -d, so the test can wait for its SUBACK
# ("Subscribed (mid: 1): <granted>") before publishing and can read every
# PUBLISH's dup/qos/retain flags from the debug lines (interop_util.MosqSub).
# Every run has -W (timeout) and a process timeout, so a broken broker fails
# a test instead of hanging. A missing mosquitto_pub/sub skips, or fails
# under CI=true.

import pytest

from interop_util import SIGINT, SIGKILL, mosq, mosquitto_pub  # noqa: F401

FLAGS = "%r|%q|%t|%p"  # mosquitto_sub -F: retain|qos|topic|payload


@pytest.mark.parametrize("sub_qos", [0, 1, 2])
def test_pub_sub_each_qos(broker, mosq, sub_qos):
    port = broker.port
    sub = mosq.sub(port, "mq/#", qos=sub_qos, count=3, wait_s=10)
    # [MQTT-3.9.3] granted QoS as requested.
    assert sub.wait_subscribed() == [sub_qos]
    for pub_qos in (0, 1, 2):
        mosquitto_pub(port, "mq/%d" % pub_qos, "hello at qos %d" % pub_qos, qos=pub_qos)
    rc, lines = sub.finish()
    assert rc == 0
    # (Sorted: libmosquitto hands a QoS 2 message over at PUBREL.)
    assert sorted(lines) == [b"mq/%d hello at qos %d" % (q, q) for q in (0, 1, 2)]
    # [MQTT-3.8.4-6] delivered at min(published, granted); not a redelivery,
    # not retained.
    assert sorted(sub.publishes) == [(0, min(q, sub_qos), 0, "mq/%d" % q) for q in (0, 1, 2)]


def test_retained_late_subscriber_then_cleared_with_r_n(broker, mosq):
    port = broker.port
    mosquitto_pub(port, "mr/a", "first", qos=1, retain=True)
    mosquitto_pub(port, "mr/a", "kept value", qos=1, retain=True)
    mosquitto_pub(port, "mr/b", "other", qos=0, retain=True)
    late = mosq.sub(port, "mr/a", qos=1, count=1, wait_s=5, fmt=FLAGS)
    rc, lines = late.finish()
    assert rc == 0
    # [MQTT-3.3.1-8] RETAIN 1 for a new subscription; the latest value only.
    assert lines == [b"1|1|mr/a|kept value"]

    mosquitto_pub(port, "mr/a", null=True, retain=True, qos=1)  # -r -n clears
    after = mosq.sub(port, "mr/#", qos=1, count=2, wait_s=5, fmt=FLAGS)
    after.wait_subscribed()
    mosquitto_pub(port, "mr/marker", "end", qos=1)
    rc, lines = after.finish()
    assert rc == 0
    # Only mr/b is still retained; mr/a is gone ([MQTT-3.3.1-10/11]).
    assert lines == [b"1|0|mr/b|other", b"0|1|mr/marker|end"]


def test_empty_retained_forwarded_live(broker, mosq):
    port = broker.port
    mosquitto_pub(port, "me/a", "v", qos=1, retain=True)
    live = mosq.sub(port, "me/a", qos=1, count=2, wait_s=5, fmt="%r|%q|%t|%l")
    live.wait_subscribed()
    mosquitto_pub(port, "me/a", null=True, retain=True, qos=1)
    rc, lines = live.finish()
    assert rc == 0
    # The retained value on subscribe, then the clearing message live with
    # RETAIN 0 and a zero-length payload (3.3.1.3, contract).
    assert lines == [b"1|1|me/a|1", b"0|1|me/a|0"]


@pytest.mark.parametrize("version", ["mqttv311", "mqttv31"])
def test_protocol_versions_and_client_ids(broker, mosq, version):
    port = broker.port
    # MQTT 3.1 ids are limited to 23 characters: use exactly 23.
    sub_id = ("sub-" + version + "-" + "x" * 23)[:23]
    sub = mosq.sub(port, "mv/#", qos=2, count=3, wait_s=10, fmt=FLAGS,
                   args=["-V", version, "-i", sub_id, "-u", "user", "-P", "pw"])
    assert sub.wait_subscribed() == [2]
    for q in (0, 1, 2):
        mosquitto_pub(port, "mv/%d" % q, "%s q%d" % (version, q), qos=q,
                      args=["-V", version, "-i", "pub-%s-%d" % (version, q)])
    rc, lines = sub.finish()
    assert rc == 0
    assert sorted(lines) == [b"0|%d|mv/%d|%s q%d" % (q, q, version.encode(), q) for q in (0, 1, 2)]
    assert b"Client %s received CONNACK (0)" % sub_id.encode() in sub.lines


def test_mqtt31_publisher_to_311_subscriber(broker, mosq):
    port = broker.port
    sub = mosq.sub(port, "mx/t", qos=1, count=1, wait_s=5, args=["-V", "mqttv311"])
    sub.wait_subscribed()
    mosquitto_pub(port, "mx/t", "from 3.1", qos=1, args=["-V", "mqttv31"])
    rc, lines = sub.finish()
    assert rc == 0 and lines == [b"mx/t from 3.1"]


def test_line_mode_many_lines_in_order(broker_factory, mosq):
    # -l publishes each stdin line as fast as it reads them: the subscriber's
    # window (max_inflight 10) drains slower, so most of the burst waits in
    # its session queue. Size the queue and heap for the whole burst (the
    # default queue cap of 32 drops the oldest by design).
    n = 1000
    b = broker_factory({"max_queued_messages": n + 100, "max_queued_bytes": 1 << 20,
                        "max_queued_total": n + 100, "max_queued_bytes_total": 1 << 20},
                       heapsize="2m")
    sub = mosq.sub(b.port, "ml/lines", qos=1, count=n, wait_s=20)
    sub.wait_subscribed()
    text = "".join("line %04d of many\n" % i for i in range(n)).encode()
    mosquitto_pub(b.port, "ml/lines", qos=1, args=["-l"], stdin=text, timeout=20)
    rc, lines = sub.finish(timeout=25)
    assert rc == 0
    assert lines == [b"ml/lines line %04d of many" % i for i in range(n)]
    assert all(p[1] == 1 and p[0] == 0 for p in sub.publishes)


def test_line_mode_qos2_default_config(broker, mosq):
    # Fewer lines than inflight + queue (10 + 32): nothing may be dropped
    # with the default caps and heap, and QoS 2 delivers each exactly once.
    n = 40
    sub = mosq.sub(broker.port, "ml/q2", qos=2, count=n + 1, wait_s=10)
    sub.wait_subscribed()
    text = "".join("q2 line %02d\n" % i for i in range(n)).encode()
    mosquitto_pub(broker.port, "ml/q2", qos=2, args=["-l"], stdin=text)
    mosquitto_pub(broker.port, "ml/q2", "end", qos=2)
    rc, lines = sub.finish()
    assert rc == 0
    assert lines == [b"ml/q2 q2 line %02d" % i for i in range(n)] + [b"ml/q2 end"]


def test_binary_payload_from_file(broker, mosq, tmp_path):
    payload = bytes((i * 37 + 11) % 256 for i in range(3000)) + b"\x00\n\r\xff"
    f = tmp_path / "payload.bin"
    f.write_bytes(payload)
    sub = mosq.sub(broker.port, "mf/bin", qos=1, count=1, wait_s=5, fmt="%l|%x")
    sub.wait_subscribed()
    mosquitto_pub(broker.port, "mf/bin", qos=1, args=["-f", str(f)])
    rc, lines = sub.finish()
    assert rc == 0
    assert lines == [b"%d|%s" % (len(payload), payload.hex().encode())]


def test_wildcard_subscriptions(broker, mosq):
    port = broker.port
    sub = mosq.sub(port, ["mw/+/temp", "mw/kitchen/#"], qos=1, count=4, wait_s=5)
    assert sub.wait_subscribed() == [1, 1]
    for t in ("mw/hall/temp", "mw/kitchen/temp", "mw/kitchen/hum", "mw/hall/hum",
              "mw/kitchen", "mw/hall/temp/x"):
        mosquitto_pub(port, t, "v", qos=1)
    rc, lines = sub.finish()
    assert rc == 0
    # mw/kitchen/temp matches both filters but arrives once (contract);
    # "mw/kitchen/#" matches "mw/kitchen" itself (4.7.1.2).
    assert lines == [b"mw/hall/temp v", b"mw/kitchen/temp v", b"mw/kitchen/hum v", b"mw/kitchen v"]


def _will_args(client_id, topic, payload, qos, retain):
    args = ["-i", client_id, "--will-topic", topic, "--will-payload", payload,
            "--will-qos", str(qos)]
    if retain:
        args.append("--will-retain")
    return args


def test_will_published_when_client_killed(broker, mosq):
    port = broker.port
    watcher = mosq.sub(port, "mwill/#", qos=2, count=1, wait_s=10, fmt=FLAGS)
    watcher.wait_subscribed()
    dev = mosq.sub(port, "mwill/cmd", qos=1, wait_s=30,
                   args=_will_args("mwill-dev", "mwill/dev", "dev offline", 1, True))
    dev.wait_subscribed()
    dev.signal(SIGKILL)  # no DISCONNECT: the kernel closes the socket
    rc, lines = watcher.finish()
    assert rc == 0
    # Will QoS 1 kept; RETAIN 0 on the live delivery ([MQTT-3.3.1-9]).
    assert lines == [b"0|1|mwill/dev|dev offline"]
    late = mosq.sub(port, "mwill/dev", qos=2, count=1, wait_s=5, fmt=FLAGS)
    rc, lines = late.finish()
    assert rc == 0
    # --will-retain: stored, sent with RETAIN 1 to a later subscriber.
    assert lines == [b"1|1|mwill/dev|dev offline"]


def test_no_will_after_clean_exit(broker, mosq):
    port = broker.port
    watcher = mosq.sub(port, "mnw/#", qos=1, count=1, wait_s=10, fmt=FLAGS)
    watcher.wait_subscribed()
    dev = mosq.sub(port, "mnw/cmd", qos=1, wait_s=30,
                   args=_will_args("mnw-dev", "mnw/dev", "should not appear", 1, True))
    dev.wait_subscribed()
    dev.signal(SIGINT)  # mosquitto_sub sends DISCONNECT and exits
    rc, _ = dev.finish(timeout=5)
    assert b"Client mnw-dev sending DISCONNECT" in dev.lines
    mosquitto_pub(port, "mnw/marker", "end", qos=1)
    rc, lines = watcher.finish()
    assert rc == 0
    # [MQTT-3.1.2-10] the will was discarded: the marker is the first message.
    assert lines == [b"0|1|mnw/marker|end"]


def test_persistent_session_with_c_flag(broker, mosq):
    port = broker.port
    # First run: persistent session, subscribe at QoS 2, exit after SUBACK (-E).
    first = mosq.sub(port, "mp/#", qos=2, wait_s=5, args=["-c", "-i", "mp-sub", "-E"])
    assert first.wait_subscribed() == [2]
    rc, _ = first.finish()
    assert rc == 0
    expected = []
    for i in range(6):
        q = (1, 2)[i % 2]
        mosquitto_pub(port, "mp/seq", "queued %d q%d" % (i, q), qos=q)
        expected.append((q, b"queued %d q%d" % (i, q)))
        # Contract: QoS 0 is not queued for an offline session.
        mosquitto_pub(port, "mp/seq", "qos0 %d" % i, qos=0)
    # Reconnect with the same id (long option spelling this time): the queued
    # messages arrive without a new SUBSCRIBE being needed; then a live one.
    again = mosq.sub(port, "mp/other", qos=2, count=len(expected) + 1, wait_s=10,
                     fmt="%q|%p", args=["--disable-clean-session", "-i", "mp-sub"])
    again.wait_subscribed()
    mosquitto_pub(port, "mp/live", "live", qos=1)
    rc, lines = again.finish()
    assert rc == 0, again.lines
    got = [tuple(l.split(b"|", 1)) for l in lines]
    want = [(b"%d" % q, p) for q, p in expected] + [(b"1", b"live")]
    assert sorted(got) == sorted(want)
    # In order per QoS (libmosquitto hands a QoS 2 message over at PUBREL,
    # so a later QoS 1 message may be printed first); queued before live.
    for q in (b"1", b"2"):
        assert [p for qq, p in got if qq == q] == [p for qq, p in want if qq == q]


def test_clean_session_after_persistent_discards_queue(broker, mosq):
    port = broker.port
    first = mosq.sub(port, "mc/#", qos=1, wait_s=5, args=["-c", "-i", "mc-sub", "-E"])
    first.wait_subscribed()
    assert first.finish()[0] == 0
    mosquitto_pub(port, "mc/x", "queued", qos=1)
    # Same id without -c: clean session discards the stored session
    # ([MQTT-3.1.2-6]); it subscribes only to mc/marker now.
    clean = mosq.sub(port, "mc/marker", qos=1, count=1, wait_s=5, args=["-i", "mc-sub"])
    clean.wait_subscribed()
    mosquitto_pub(port, "mc/x", "live but unsubscribed", qos=1)
    mosquitto_pub(port, "mc/marker", "end", qos=1)
    rc, lines = clean.finish()
    assert rc == 0
    assert lines == [b"mc/marker end"]


def test_repeat_qos2_exactly_once(broker_factory, mosq):
    n = 100
    b = broker_factory({"max_queued_messages": 2 * n})
    sub = mosq.sub(b.port, "mr2/t", qos=2, count=n + 1, wait_s=15)
    sub.wait_subscribed()
    mosquitto_pub(b.port, "mr2/t", "same payload", qos=2, args=["--repeat", str(n)])
    mosquitto_pub(b.port, "mr2/t", "end", qos=2)
    rc, lines = sub.finish()
    assert rc == 0
    # Exactly n copies, then the marker: no QoS 2 duplicates.
    assert lines == [b"mr2/t same payload"] * n + [b"mr2/t end"]
    assert all(p[:3] == (0, 2, 0) for p in sub.publishes)


def test_anonymous_refused(broker_factory, mosq):
    b = broker_factory({"allow_anonymous": False})
    res = mosquitto_pub(b.port, "ma/t", "x", qos=1, check=False)
    # Contract: CONNACK rc 5; libmosquitto reports "not authorised".
    assert res.returncode != 0
    assert b"not authori" in res.stderr.lower(), res.stderr
