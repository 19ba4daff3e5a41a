# Malformed input and protocol violations (README.md "Protocol errors"):
# each closes only the offending connection, without a reply, counted in
# malformed_packets, the will is published; another connected client keeps
# working and the broker process stays alive (the fixture fails the test at
# teardown if the broker died).
import time

import pytest

import mqttspec as m
from mqttspec import packet, u16, utf8
from rawclient import counter_monitor, wait_counter

# Sent after a successful CONNECT. (id, bytes, spec rule)
AFTER_CONNECT = [
    ("remaining_length_5_bytes", b"\x30\xff\xff\xff\xff\x7f", "2.2.3 at most 4 bytes"),
    ("subscribe_flags_0000", packet(0x80, u16(1) + utf8("a") + b"\x00"), "MQTT-3.8.1-1"),
    ("subscribe_flags_0011", packet(0x83, u16(1) + utf8("a") + b"\x00"), "MQTT-3.8.1-1"),
    ("unsubscribe_flags_0000", packet(0xA0, u16(1) + utf8("a")), "MQTT-3.10.1-1"),
    ("pubrel_flags_0000", packet(0x60, u16(1)), "MQTT-3.6.1-1"),
    ("puback_flags_0001", packet(0x41, u16(1)), "MQTT-2.2.2-2"),
    ("pingreq_flags_0001", packet(0xC1), "MQTT-2.2.2-2"),
    ("disconnect_flags_0010", packet(0xE2), "MQTT-2.2.2-2"),
    ("second_connect", m.connect("victim"), "MQTT-3.1.0-2"),
    ("connack_from_client", m.connack(0, 0), "server-only packet type"),
    ("suback_from_client", m.suback(1, [0]), "server-only packet type"),
    ("unsuback_from_client", m.unsuback(1), "server-only packet type"),
    ("pingresp_from_client", m.pingresp(), "server-only packet type"),
    ("reserved_type_0", b"\x00\x00", "2.2.1 reserved"),
    ("reserved_type_15", b"\xf0\x00", "2.2.1 reserved"),
    ("publish_topic_invalid_utf8", m.publish(b"a/\xff", b"x"), "MQTT-1.5.3-1"),
    ("publish_topic_overlong_utf8", m.publish(b"a/\xc0\xaf", b"x"), "MQTT-1.5.3-1"),
    ("publish_topic_nul", m.publish(b"a\x00b", b"x"), "MQTT-1.5.3-2"),
    ("publish_topic_surrogate", m.publish(b"a/\xed\xa0\x80", b"x"), "MQTT-1.5.3-1"),
    ("subscribe_filter_invalid_utf8", m.subscribe(1, [(b"\xfe", 0)]), "MQTT-1.5.3-1"),
    ("subscribe_filter_nul", m.subscribe(1, [(b"a/\x00", 0)]), "MQTT-1.5.3-2"),
    ("subscribe_filter_surrogate", m.subscribe(1, [(b"\xed\xbf\xbf/#", 0)]), "MQTT-1.5.3-1"),
    ("unsubscribe_filter_surrogate", m.unsubscribe(1, [b"\xed\xa0\x80"]), "MQTT-1.5.3-1"),
    ("publish_qos1_pid0", m.publish("t", b"x", qos=1, pid=0), "MQTT-2.3.1-1"),
    ("publish_qos2_pid0", m.publish("t", b"x", qos=2, pid=0), "MQTT-2.3.1-1"),
    ("subscribe_pid0", m.subscribe(0, [("a", 0)]), "MQTT-2.3.1-1"),
    ("unsubscribe_pid0", m.unsubscribe(0, ["a"]), "MQTT-2.3.1-1"),
    ("publish_wildcard_plus", m.publish("a/+", b"x"), "MQTT-3.3.2-2"),
    ("publish_wildcard_hash", m.publish("a/#", b"x", qos=1, pid=1), "MQTT-3.3.2-2"),
    ("publish_empty_topic", m.publish("", b"x"), "MQTT-4.7.3-1"),
    ("subscribe_no_filters", packet(0x82, u16(1)), "MQTT-3.8.3-3"),
    ("unsubscribe_no_filters", packet(0xA2, u16(1)), "MQTT-3.10.3-2"),
    ("publish_qos3", packet(0x36, utf8("t") + u16(1) + b"x"), "MQTT-3.3.1-4"),
    ("subscribe_requested_qos3", m.subscribe(1, [("a", 3)]), "MQTT-3-8.3-4"),
    ("subscribe_qos_reserved_bits", m.subscribe(1, [("a", 0x04)]), "MQTT-3-8.3-4"),
    ("publish_dup_on_qos0", packet(0x38, utf8("t") + b"x"), "MQTT-3.3.1-2"),
    ("publish_topic_past_end", packet(0x30, b"\x00\x10ab"), "1.5.3 length past packet"),
    ("publish_qos1_without_pid", packet(0x32, utf8("t")), "3.3.2.2 pid missing"),
    ("publish_qos1_half_pid", packet(0x32, utf8("t") + b"\x01"), "3.3.2.2 pid truncated"),
    ("subscribe_filter_truncated", packet(0x82, u16(1) + b"\x00\x05ab"), "1.5.3"),
    ("subscribe_filter_without_qos", packet(0x82, u16(1) + utf8("a")), "3.8.3"),
    ("puback_too_long", packet(0x40, u16(1) + b"\x00"), "3.4.1 remaining length 2"),
    ("puback_too_short", packet(0x40, b"\x01"), "3.4.1 remaining length 2"),
    ("pingreq_with_body", packet(0xC0, b"\x00"), "3.12 no variable header"),
    ("disconnect_with_body", packet(0xE0, b"\x00"), "3.14 no variable header"),
    ("oversize_header_only", b"\x30" + m.encode_remaining_length(268435455), "max_packet_size"),
]

# Sent as the first packet of a connection. (id, bytes, spec rule)
BEFORE_CONNECT = [
    ("publish_before_connect", m.publish("t", b"x"), "MQTT-3.1.0-1"),
    ("pingreq_before_connect", m.pingreq(), "MQTT-3.1.0-1"),
    ("subscribe_before_connect", m.subscribe(1, [("a", 0)]), "MQTT-3.1.0-1"),
    ("disconnect_before_connect", m.disconnect(), "MQTT-3.1.0-1"),
    ("connack_before_connect", m.connack(0, 0), "MQTT-3.1.0-1"),
    ("reserved_type_0_first", b"\x00\x00", "2.2.1"),
    ("remaining_length_5_bytes_first", b"\x10\x80\x80\x80\x80\x01", "2.2.3"),
    ("connect_flags_nonzero", packet(0x11, m.connect("x")[2:]), "MQTT-2.2.2-2"),
    ("connect_reserved_flag", m.connect("x", flags=0x03), "MQTT-3.1.2-3"),
    ("connect_will_qos_without_will", m.connect("x", flags=0x0A), "MQTT-3.1.2-13"),
    ("connect_will_retain_without_will", m.connect("x", flags=0x22), "MQTT-3.1.2-15"),
    ("connect_will_qos3", m.connect("x", will_topic="w", will_qos=3), "MQTT-3.1.2-14"),
    ("connect_password_without_username", m.connect("x", password=b"p"), "MQTT-3.1.2-22"),
    ("connect_client_id_invalid_utf8", m.connect(b"\xffx"), "MQTT-1.5.3-1"),
    ("connect_client_id_nul", m.connect(b"a\x00b"), "MQTT-1.5.3-2"),
    ("connect_client_id_surrogate", m.connect(b"\xed\xa0\x80"), "MQTT-1.5.3-1"),
    ("connect_will_topic_surrogate", m.connect("x", will_topic=b"\xed\xb0\x80"), "MQTT-1.5.3-1"),
    ("connect_will_topic_wildcard", m.connect("x", will_topic="w/#"), "MQTT-3.3.2-2 (will topic is a topic name)"),
    ("connect_username_invalid_utf8", m.connect("x", username=b"\xc0\x80"), "MQTT-1.5.3-1"),
    ("connect_client_id_past_end",
     packet(0x10, utf8("MQTT") + b"\x04\x02\x00\x3c" + b"\x00\x10ab"), "1.5.3"),
    ("connect_username_flag_no_username",
     packet(0x10, utf8("MQTT") + b"\x04\x82\x00\x3c" + utf8("x")), "3.1.3.4"),
    ("connect_will_flag_no_will_topic",
     packet(0x10, utf8("MQTT") + b"\x04\x06\x00\x3c" + utf8("x")), "3.1.3.2"),
    ("connect_variable_header_truncated", packet(0x10, utf8("MQTT") + b"\x04"), "3.1.2"),
]


def _bystander(broker):
    by = broker.client("bystander")
    assert by.subscribe([("by/#", 1), ("will/victim", 1)]) == [1, 1]
    return by


def _bystander_still_works(broker, by):
    by.publish("by/check", b"ok", qos=1)
    by.expect_publish("by/check", b"ok", qos=1)
    assert broker.alive(), broker.log_tail()
    # New connections are still accepted.
    n = broker.client("newcomer")
    assert n.is_open()
    n.disconnect()


@pytest.mark.parametrize("data,rule", [(c[1], c[2]) for c in AFTER_CONNECT],
                         ids=[c[0] for c in AFTER_CONNECT])
def test_after_connect_closes_only_that_connection(broker, data, rule):
    by = _bystander(broker)
    v = broker.client("victim", will_topic="will/victim", will_payload=b"w", will_qos=1)
    v.send(data)
    assert v.closed(2.0), "connection not closed (%s)" % rule
    # Closed without a reply (3.1.1 cannot say why).
    assert v.pending == [], "reply %r (%s)" % (v.pending, rule)
    by.expect_publish("will/victim", b"w", qos=1)
    _bystander_still_works(broker, by)


@pytest.mark.parametrize("data,rule", [(c[1], c[2]) for c in BEFORE_CONNECT],
                         ids=[c[0] for c in BEFORE_CONNECT])
def test_before_connect_closes_only_that_connection(broker, data, rule):
    by = _bystander(broker)
    v = broker.raw()
    v.send(data)
    assert v.closed(2.0), "connection not closed (%s)" % rule
    assert v.pending == [], "reply %r (%s)" % (v.pending, rule)
    by.no_packet(0.1)  # no will for a connection that never connected
    _bystander_still_works(broker, by)


def test_truncated_packet_then_close(broker):
    by = _bystander(broker)
    v = broker.client("victim", will_topic="will/victim", will_payload=b"w", will_qos=1)
    full = m.publish("by/never", b"x" * 100, qos=1, pid=5)
    v.send(full[:20])
    time.sleep(0.1)
    v.close()
    by.expect_publish("will/victim", b"w", qos=1)
    by.no_packet(0.2)  # the partial PUBLISH was not delivered
    _bystander_still_works(broker, by)


def test_truncated_connect_then_close(broker):
    by = _bystander(broker)
    v = broker.raw()
    v.send(m.connect("partial")[:7])
    v.close()
    v = broker.raw()
    v.send(b"\x10")  # only the first byte
    v.abort()
    _bystander_still_works(broker, by)


def test_garbage_stream(broker):
    by = _bystander(broker)
    for blob in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", bytes(range(256)), b"\xff" * 64,
                 b"\x10\x7f" + b"\x00" * 20):
        v = broker.raw()
        v.send(blob)
        v.closed(0.3)  # may close or wait for more bytes; must not crash
        v.abort()
    _bystander_still_works(broker, by)


def test_malformed_after_valid_traffic(broker):
    by = _bystander(broker)
    v = broker.client("victim", will_topic="will/victim", will_payload=b"w")
    v.subscribe([("by/#", 0)])
    # A valid PUBLISH and a malformed one in the same segment: the first is
    # processed, then the connection is closed.
    v.send(m.publish("by/first", b"1", qos=0) + packet(0x38, utf8("t") + b"x"))
    by.expect_publish("by/first", b"1")
    assert v.closed(2.0)
    by.expect_publish("will/victim", b"w")
    _bystander_still_works(broker, by)


def test_malformed_counter(broker_factory):
    b = broker_factory({"sys_interval_s": 1})
    mon = counter_monitor(b)
    for data in (b"\x00\x00", m.publish("a/+", b"x"), m.subscribe(0, [("a", 0)])):
        v = b.client("victim")
        v.send(data)
        assert v.closed(2.0)
    v = b.raw()
    v.send(m.pingreq())  # before CONNECT
    assert v.closed(2.0)
    assert wait_counter(mon, "malformed_packets", 4) == "4"
    assert mon.is_open()
