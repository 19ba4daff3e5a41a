# Keepalive (MQTT 3.1.1 section 3.1.2.10 [MQTT-3.1.2-24]; README.md
# "Keepalive": silent for 1.5 x keepalive -> disconnected, will published,
# counter keepalive_timeouts).
import time

import mqttspec as m
from rawclient import counter_monitor, wait_counter


def test_silent_client_disconnected_after_one_and_a_half_keepalive(broker_factory):
    b = broker_factory({"sys_interval_s": 1})
    mon = counter_monitor(b)
    w = b.client("w")
    w.subscribe([("ka/will", 1)])
    silent = b.client("silent", keepalive=1, will_topic="ka/will", will_payload=b"dead", will_qos=1)
    forever = b.client("forever", keepalive=0)   # 0: no keepalive at all
    t0 = time.monotonic()
    # Not before 1.5 s (allow scheduling slack: still open at 1.2 s) ...
    time.sleep(1.2)
    assert not silent.closed(0.0), "closed after %.2fs" % (time.monotonic() - t0)
    # ... but soon after.
    assert silent.closed(2.0), "still open %.2fs after CONNECT" % (time.monotonic() - t0)
    elapsed = time.monotonic() - t0
    assert 1.4 <= elapsed <= 3.2, elapsed
    w.expect_publish("ka/will", b"dead", qos=1)
    assert forever.is_open()
    assert wait_counter(mon, "keepalive_timeouts", 1) == "1"


def test_pingreq_keeps_connection_alive(broker):
    c = broker.client("pinger", keepalive=1)
    for _ in range(4):   # 2 s > 1.5 x keepalive
        time.sleep(0.5)
        c.send(m.pingreq())
        c.expect("pingresp", 1.0)
    assert c.is_open()


def test_any_packet_resets_keepalive(broker):
    s = broker.client("s")
    s.subscribe([("ka/pub", 0)])
    c = broker.client("talker", keepalive=1)
    for i in range(4):
        time.sleep(0.5)
        c.send(m.publish("ka/pub", b"%d" % i))
    assert c.is_open()
    assert len(s.publishes(0.3)) == 4


def test_receiving_only_does_not_keep_alive(broker):
    # Keepalive counts packets FROM the client: a client that only receives
    # is still disconnected.
    c = broker.client("listener", keepalive=1)
    c.subscribe([("ka/in", 0)])
    p = broker.client("p")
    t0 = time.monotonic()
    closed = False
    while time.monotonic() - t0 < 3.5:
        p.send(m.publish("ka/in", b"x"))
        if c.closed(0.25):
            closed = True
            break
    assert closed
    assert p.is_open()


def test_keepalive_applies_to_persistent_session_and_session_kept(broker):
    c = broker.client("kp", keepalive=1, clean=False)
    c.subscribe([("kp", 1)])
    assert c.closed(3.2)
    c = broker.client("kp", clean=False)
    assert c.connack["session_present"] == 1
