# midge.codec against the MQTT 3.1.1 spec. Packets are built with the
# independent tools/mqttspec.py and encoder output is parsed by it: never
# midge.codec against itself.
import mqttspec as m
from midge import codec
from midge.protocol import ProtocolError

BIG = 268435460  # max_packet_size upper bound: no size cap in the way


def split_frame(buf, pos, max_packet_size):
    """codec.frame_end unpacked: (first_byte, body_start, body_end), or
    None when more bytes are needed (what Connection._handle does with it)."""
    v = codec.frame_end(buf, pos, max_packet_size)
    if v < 0:
        return None
    return buf[pos], pos + (v & 7), v >> 3


def _err(fn, *args):
    try:
        fn(*args)
    except ProtocolError as e:
        return e
    return None


def _body(frame):
    """(flags, start, end) of a whole frame, found with mqttspec."""
    n, nlen = m.decode_remaining_length(frame, 1)
    return frame[0] & 0x0F, 1 + nlen, 1 + nlen + n


def _dec(fn, frame):
    flags, start, end = _body(frame)
    return fn(flags, frame, start, end)


# --- split_frame --------------------------------------------------------------

def test_split_frame_complete_packet():
    p = m.publish("a/b", b"hello")
    assert split_frame(p, 0, BIG) == (0x30, 2, len(p))
    assert split_frame(bytearray(p), 0, BIG) == (0x30, 2, len(p))
    assert split_frame(m.pingreq(), 0, BIG) == (0xC0, 2, 2)


def test_frame_end_packs_end_and_header_size():
    p = m.publish("t", b"x" * 200)  # two length bytes
    v = codec.frame_end(p, 0, BIG)
    assert v >> 3 == len(p) and v & 7 == 3
    assert codec.frame_end(p[:-1], 0, BIG) == -1
    assert codec.frame_end(b"\x00" + m.pingreq(), 1, BIG) == (3 << 3) | 2


def test_split_frame_at_offset_and_back_to_back():
    a = m.pingreq()
    b = m.publish("t", b"x" * 300, qos=1, pid=7)  # two length bytes
    buf = a + b + a
    f1 = split_frame(buf, 0, BIG)
    assert f1 == (0xC0, 2, 2)
    f2 = split_frame(buf, f1[2], BIG)
    assert f2[0] == 0x32
    assert f2[1] == 2 + 3  # first byte + 2 length bytes after offset 2
    assert f2[2] == len(a) + len(b)
    f3 = split_frame(buf, f2[2], BIG)
    assert f3 == (0xC0, len(buf), len(buf))  # empty body


def test_split_frame_every_partial_prefix_needs_more():
    p = m.publish("topic/x", b"y" * 200)  # two-byte remaining length
    for n in range(len(p)):
        assert split_frame(p[:n], 0, BIG) is None, n
    assert split_frame(p, 0, BIG) is not None
    # partial after a complete packet, at an offset
    buf = m.pingreq() + p[:5]
    assert split_frame(buf, 2, BIG) is None


def test_split_frame_four_length_bytes_allowed():
    # 268435455 = 0xFF 0xFF 0xFF 0x7F, the largest length [MQTT-2.2.3]:
    # legal, so just "need more bytes"
    assert split_frame(b"\x30\xff\xff\xff\x7f", 0, BIG) is None
    # 2097152 = 0x80 0x80 0x80 0x01
    assert split_frame(b"\x30\x80\x80\x80\x01", 0, BIG) is None


def test_split_frame_fifth_length_byte_is_malformed():
    e = _err(codec.frame_end, b"\x30\xff\xff\xff\xff\x01", 0, BIG)
    assert e is not None and e.counter == "malformed_packets"
    # known to be malformed as soon as the 4th byte has its continuation bit
    assert _err(codec.frame_end, b"\x30\x80\x80\x80\x80", 0, BIG) is not None


def test_split_frame_oversize_rejected_from_header():
    # exactly max_packet_size (header included) passes
    p = m.publish("t", b"z" * 100)
    assert split_frame(p, 0, len(p)) == (0x30, 2, len(p))
    e = _err(codec.frame_end, p, 0, len(p) - 1)
    assert e is not None and e.counter == "oversize_packets"
    # only the header has arrived: rejected before the body is buffered
    e = _err(codec.frame_end, b"\x30\x88\x27", 0, 4096)  # 5000 bytes
    assert e is not None and e.counter == "oversize_packets"
    e = _err(codec.frame_end, b"\x30\xff\xff\xff\x7f", 0, 4096)
    assert e is not None and e.counter == "oversize_packets"


def test_encode_length_spec_table():
    # MQTT 3.1.1 table 2.4
    table = [(0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (16383, b"\xff\x7f"),
             (16384, b"\x80\x80\x01"), (2097151, b"\xff\xff\x7f"),
             (2097152, b"\x80\x80\x80\x01"), (268435455, b"\xff\xff\xff\x7f"), (321, b"\xc1\x02")]
    for n, enc in table:
        assert codec.encode_length(n) == enc, n
        assert codec.encode_length(n) == m.encode_remaining_length(n)


# --- UTF-8 strings [MQTT-1.5.3] ------------------------------------------------------

def test_decode_utf8_valid():
    assert codec.decode_utf8(b"") == ""
    assert codec.decode_utf8(b"a/b") == "a/b"
    assert codec.decode_utf8(b"\xc3\xa9") == "\u00e9"
    assert codec.decode_utf8(b"\xe2\x82\xac") == "\u20ac"
    assert codec.decode_utf8(b"\xf0\x9d\x84\x9e") == "\U0001d11e"
    assert codec.decode_utf8(b"\xed\x9f\xbf") == "\ud7ff"        # just below surrogates
    assert codec.decode_utf8(b"\xee\x80\x80") == "\ue000"        # just above
    assert codec.decode_utf8(b"\xf4\x8f\xbf\xbf") == "\U0010ffff"  # the last code point
    # U+FEFF must not be skipped or stripped [MQTT-1.5.3-3]
    assert codec.decode_utf8(b"\xef\xbb\xbfA") == "\ufeffA"


def test_decode_utf8_rejects_ill_formed():
    bad = [
        b"\xff", b"\xfe", b"\x80", b"a\xbf",       # invalid bytes, lone continuation
        b"\xc0\x80", b"\xc1\xbf",                  # overlong 2-byte (incl. overlong NUL)
        b"\xe0\x80\xaf", b"\xe0\x9f\xbf",          # overlong 3-byte
        b"\xf0\x80\x80\xaf", b"\xf0\x8f\xbf\xbf",  # overlong 4-byte
        b"\xed\xa0\x80", b"\xed\xbf\xbf",          # surrogates U+D800, U+DFFF [MQTT-1.5.3-1]
        b"\xed\xa0\xbd\xed\xb8\x80",               # CESU-8 surrogate pair
        b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80",  # above U+10FFFF
        b"\xe2\x82", b"abc\xc3", b"\xf0\x9d\x84",  # truncated sequences
        b"\xc3\x28", b"\xe2\x28\xa1",              # bad continuation
    ]
    for b in bad:
        assert _err(codec.decode_utf8, b) is not None, b


def test_decode_utf8_rejects_nul():
    # U+0000 [MQTT-1.5.3-2]
    assert _err(codec.decode_utf8, b"\x00") is not None
    assert _err(codec.decode_utf8, b"a\x00b") is not None
    assert _err(codec.decode_utf8, b"\xc3\xa9\x00") is not None


# --- CONNECT -----------------------------------------------------------------------------

def test_decode_connect_minimal():
    c = _dec(codec.decode_connect, m.connect("cid-1", clean=True, keepalive=30))
    assert c.level == 4 and c.level_ok
    assert c.client_id == "cid-1"
    assert c.clean is True
    assert c.keepalive_s == 30
    assert c.will_topic is None and c.username is None and c.password is None


def test_decode_connect_all_fields():
    f = m.connect("dev", clean=False, keepalive=65535, will_topic="w/t", will_payload=b"\x00\xffbye",
                  will_qos=2, will_retain=True, username="u\u00e9", password=b"\x00pw")
    c = _dec(codec.decode_connect, f)
    assert c.clean is False
    assert c.keepalive_s == 65535
    assert c.will_topic == "w/t" and c.will_payload == b"\x00\xffbye"
    assert c.will_qos == 2 and c.will_retain is True
    assert c.username == "u\u00e9" and c.password == b"\x00pw"


def test_decode_connect_spec_example_header():
    # section 3.1.2.10 figure 3.6 style: name, level 4, flags, keepalive 10
    body = b"\x00\x04MQTT\x04\x02\x00\x0a" + b"\x00\x01x"
    frame = m.packet(0x10, body)
    c = _dec(codec.decode_connect, frame)
    assert c.keepalive_s == 10 and c.clean and c.client_id == "x"


def test_decode_connect_mqisdp_level3():
    c = _dec(codec.decode_connect, m.connect("old", protocol_name="MQIsdp", protocol_level=3))
    assert c.level_ok and c.level == 3 and c.client_id == "old"


def test_decode_connect_unsupported_level():
    # valid name, unknown level: decoded with level_ok False (caller sends CONNACK 1)
    for name, level in (("MQTT", 6), ("MQTT", 3), ("MQIsdp", 4), ("MQTT", 0)):
        c = _dec(codec.decode_connect, m.connect("x", protocol_name=name, protocol_level=level))
        assert not c.level_ok, (name, level)
        assert c.level == level


def test_decode_connect_wrong_protocol_name():
    for name in ("MQTX", "mqtt", "", "MQIsdp2"):
        assert _err(_dec, codec.decode_connect, m.connect("x", protocol_name=name)) is not None, name


def test_decode_connect_malformed_flags():
    # fixed header flags must be 0 [MQTT-2.2.2-2]
    f = m.connect("x")
    assert _err(_dec, codec.decode_connect, bytes([0x11]) + f[1:]) is not None
    # reserved connect flag bit 0 [MQTT-3.1.2-3]
    assert _err(_dec, codec.decode_connect, m.connect("x", flags=0x03)) is not None
    # will QoS 3 [MQTT-3.1.2-14]
    assert _err(_dec, codec.decode_connect,
                m.connect("x", will_topic="w", will_payload=b"p", will_qos=3)) is not None
    # will QoS / retain without the will flag [MQTT-3.1.2-11], [MQTT-3.1.2-13]
    assert _err(_dec, codec.decode_connect, m.connect("x", flags=0x02 | 0x08)) is not None
    assert _err(_dec, codec.decode_connect, m.connect("x", flags=0x02 | 0x20)) is not None
    # password without user name [MQTT-3.1.2-22]
    assert _err(_dec, codec.decode_connect, m.connect("x", password=b"pw")) is not None


def test_decode_connect_bad_strings():
    assert _err(_dec, codec.decode_connect, m.connect(b"a\xffb")) is not None
    assert _err(_dec, codec.decode_connect, m.connect(b"a\x00b")) is not None
    assert _err(_dec, codec.decode_connect, m.connect(b"\xed\xa0\x80")) is not None
    assert _err(_dec, codec.decode_connect,
                m.connect("x", will_topic=b"\xc0\xaf", will_payload=b"p")) is not None
    assert _err(_dec, codec.decode_connect, m.connect("x", username=b"\xc0\x80")) is not None
    # will payload and password are binary: any bytes
    c = _dec(codec.decode_connect, m.connect("x", will_topic="w", will_payload=b"\xff\x00",
                                             username="u", password=b"\xff\x00"))
    assert c.will_payload == b"\xff\x00" and c.password == b"\xff\x00"


def test_decode_connect_every_truncation_is_an_error():
    f = m.connect("client", will_topic="w/t", will_payload=b"will", will_qos=1,
                  username="user", password=b"pass")
    flags, start, end = _body(f)
    for cut in range(start, end):
        e = _err(codec.decode_connect, flags, f, start, cut)
        assert e is not None, cut
    # and extra bytes after the payload
    assert _err(_dec, codec.decode_connect, m.connect("x", extra=b"\x00")) is not None


def test_decode_connect_stays_inside_span():
    # the span ends before bytes that would make a valid packet
    f = m.connect("abcdef")
    flags, start, end = _body(f)
    assert _err(codec.decode_connect, flags, f + b"\x00\x00", start, end - 2) is not None


# --- PUBLISH -------------------------------------------------------------------------------

def _pub(p):
    return (p.topic, p.qos, p.retain, p.dup, p.pid, p.payload)


def test_decode_publish_qos0():
    r = _pub(_dec(codec.decode_publish, m.publish("a/b", b"payload")))
    assert r == ("a/b", 0, False, False, 0, b"payload")


def test_decode_publish_qos_retain_dup_pid():
    r = _pub(_dec(codec.decode_publish, m.publish("t", b"\x00\x01", qos=1, retain=True, pid=0x1234)))
    assert r == ("t", 1, True, False, 0x1234, b"\x00\x01")
    r = _pub(_dec(codec.decode_publish, m.publish("t/\u00e9", b"", qos=2, dup=True, pid=65535)))
    assert r == ("t/\u00e9", 2, False, True, 65535, b"")
    assert isinstance(r[5], bytes)


def test_decode_publish_payload_is_opaque():
    # payload bytes are not UTF-8 checked
    r = _pub(_dec(codec.decode_publish, m.publish("t", b"\xff\xfe\x00\xed\xa0\x80")))
    assert r[5] == b"\xff\xfe\x00\xed\xa0\x80"


def test_decode_publish_malformed():
    # QoS 3 [MQTT-3.3.1-4]
    assert _err(_dec, codec.decode_publish, m.publish("t", b"x", qos=3, pid=1)) is not None
    # DUP on QoS 0 [MQTT-3.3.1-2]
    assert _err(_dec, codec.decode_publish, m.publish("t", b"x", qos=0, dup=True)) is not None
    # packet identifier 0 [MQTT-2.3.1-1]
    assert _err(_dec, codec.decode_publish, m.publish("t", b"x", qos=1, pid=0)) is not None
    assert _err(_dec, codec.decode_publish, m.publish("t", b"x", qos=2, pid=0)) is not None
    # topic: invalid UTF-8, surrogate, overlong, U+0000
    for t in (b"\xff", b"\xed\xb0\x80", b"\xc0\xaf", b"a\x00"):
        assert _err(_dec, codec.decode_publish, m.publish(t, b"x")) is not None, t
    # truncated: topic length past the end, missing packet identifier
    assert _err(_dec, codec.decode_publish, m.packet(0x30, b"\x00\x05ab")) is not None
    assert _err(_dec, codec.decode_publish, m.packet(0x30, b"\x00")) is not None
    assert _err(_dec, codec.decode_publish, m.packet(0x30, b"")) is not None
    assert _err(_dec, codec.decode_publish, m.packet(0x32, b"\x00\x01t\x01")) is not None
    assert _err(_dec, codec.decode_publish, m.packet(0x34, b"\x00\x01t")) is not None


# --- acknowledgements ------------------------------------------------------------------------

def test_decode_ack_acks():
    assert _dec(lambda f, b, s, e: codec.decode_ack(4, f, b, s, e), m.puback(1)) == 1
    assert _dec(lambda f, b, s, e: codec.decode_ack(5, f, b, s, e), m.pubrec(0xABCD)) == 0xABCD
    assert _dec(lambda f, b, s, e: codec.decode_ack(6, f, b, s, e), m.pubrel(65535)) == 65535
    assert _dec(lambda f, b, s, e: codec.decode_ack(7, f, b, s, e), m.pubcomp(9)) == 9


def test_decode_ack_malformed():
    def dec(frame, want):
        flags, start, end = _body(frame)
        return _err(codec.decode_ack, 6 if want == 2 else 4, flags, frame, start, end)
    # PUBREL flags must be 0010 [MQTT-3.6.1-1]
    assert dec(m.packet(0x60, b"\x00\x01"), 2) is not None
    assert dec(m.packet(0x61, b"\x00\x01"), 2) is not None
    # PUBACK/PUBREC/PUBCOMP flags must be 0 [MQTT-2.2.2-2]
    assert dec(m.packet(0x42, b"\x00\x01"), 0) is not None
    assert dec(m.packet(0x58, b"\x00\x01"), 0) is not None
    assert dec(m.packet(0x71, b"\x00\x01"), 0) is not None
    # packet identifier 0 [MQTT-2.3.1-1]
    assert dec(m.puback(0), 0) is not None
    assert dec(m.pubrel(0), 2) is not None
    # wrong length: truncated or extra bytes
    assert dec(m.packet(0x40, b"\x00"), 0) is not None
    assert dec(m.packet(0x40, b""), 0) is not None
    assert dec(m.packet(0x40, b"\x00\x01\x00"), 0) is not None


# --- SUBSCRIBE / UNSUBSCRIBE --------------------------------------------------------------------

def _subscribe_body(flags, buf, start, end):
    """Decode a SUBSCRIBE as the handler does: check_subscribe validates the
    whole body, then str_len / str_at read each filter."""
    pid, pos = codec.check_subscribe(flags, buf, start, end)
    assert pos == start + 2
    out = []
    while pos < end:
        n = codec.str_len(buf, pos)
        out.append((codec.str_at(buf, pos + 2, n), buf[pos + 2 + n]))
        pos += 3 + n
    return pid, out


def _unsubscribe_body(flags, buf, start, end):
    pid, pos = codec.check_unsubscribe(flags, buf, start, end)
    assert pos == start + 2
    out = []
    while pos < end:
        n = codec.str_len(buf, pos)
        out.append(codec.str_at(buf, pos + 2, n))
        pos += 2 + n
    return pid, out


def test_decode_subscribe():
    pid, subs = _dec(_subscribe_body, m.subscribe(10, [("a/+", 0), ("b/#", 1), ("\u00e9", 2)]))
    assert pid == 10
    assert subs == [("a/+", 0), ("b/#", 1), ("\u00e9", 2)]


def test_check_subscribe_malformed():
    # flags must be 0010 [MQTT-3.8.1-1]
    assert _err(_dec, codec.check_subscribe, m.subscribe(1, [("a", 0)], first_byte=0x80)) is not None
    assert _err(_dec, codec.check_subscribe, m.subscribe(1, [("a", 0)], first_byte=0x83)) is not None
    # no filters [MQTT-3.8.3-3]
    assert _err(_dec, codec.check_subscribe, m.subscribe(1, [])) is not None
    # QoS 3 and reserved bits in the requested QoS byte [MQTT-3.8.3-4]
    assert _err(_dec, codec.check_subscribe, m.subscribe(1, [("a", 3)])) is not None
    assert _err(_dec, codec.check_subscribe, m.subscribe(1, [("a", 0x04)])) is not None
    assert _err(_dec, codec.check_subscribe, m.subscribe(1, [("a", 0x81)])) is not None
    # packet identifier 0
    assert _err(_dec, codec.check_subscribe, m.subscribe(0, [("a", 0)])) is not None
    # filter without its QoS byte, truncated filter, truncated pid
    assert _err(_dec, codec.check_subscribe, m.packet(0x82, b"\x00\x01\x00\x01a")) is not None
    assert _err(_dec, codec.check_subscribe, m.packet(0x82, b"\x00\x01\x00\x05a\x00")) is not None
    assert _err(_dec, codec.check_subscribe, m.packet(0x82, b"\x00")) is not None
    # invalid UTF-8 / U+0000 in the filter, also after valid ones (the whole
    # packet is checked before anything is applied)
    assert _err(_dec, codec.check_subscribe, m.subscribe(1, [(b"\xff", 0)])) is not None
    assert _err(_dec, codec.check_subscribe, m.subscribe(1, [(b"a\x00", 0)])) is not None
    assert _err(_dec, codec.check_subscribe, m.subscribe(1, [("ok", 0), (b"\xed\xa0\x80", 0)])) is not None
    assert _err(_dec, codec.check_subscribe, m.subscribe(1, [("ok", 0), (b"\xc0\x80", 0)])) is not None


def test_decode_unsubscribe():
    pid, filters = _dec(_unsubscribe_body, m.unsubscribe(300, ["a/#", "b"]))
    assert pid == 300 and filters == ["a/#", "b"]


def test_check_unsubscribe_malformed():
    assert _err(_dec, codec.check_unsubscribe, m.unsubscribe(1, ["a"], first_byte=0xA0)) is not None
    assert _err(_dec, codec.check_unsubscribe, m.unsubscribe(1, [])) is not None  # [MQTT-3.10.3-2]
    assert _err(_dec, codec.check_unsubscribe, m.unsubscribe(0, ["a"])) is not None
    assert _err(_dec, codec.check_unsubscribe, m.packet(0xA2, b"\x00\x01\x00\x03ab")) is not None
    assert _err(_dec, codec.check_unsubscribe, m.unsubscribe(1, [b"\xed\xa0\x80"])) is not None
    assert _err(_dec, codec.check_unsubscribe, m.unsubscribe(1, ["a", b"\x00"])) is not None


def test_check_empty():
    codec.check_empty(0, 2, 2)  # no exception
    assert _err(codec.check_empty, 1, 2, 2) is not None
    assert _err(codec.check_empty, 0, 2, 3) is not None


# --- encoders, checked against spec bytes and the independent parser ------------------------

def test_encode_connack():
    assert codec.connack(False, 0) == b"\x20\x02\x00\x00"
    assert codec.connack(True, 0) == b"\x20\x02\x01\x00"
    for rc in range(6):
        assert codec.connack(False, rc) == m.connack(0, rc)
        pkt, used = m.parse(codec.connack(False, rc))
        assert pkt["rc"] == rc and used == 4


def test_encode_acks():
    for pid in (1, 255, 256, 0x1234, 65535):
        assert codec.puback(pid) == m.puback(pid)
        assert codec.pubrec(pid) == m.pubrec(pid)
        assert codec.pubrel(pid) == m.pubrel(pid)
        assert codec.pubcomp(pid) == m.pubcomp(pid)
        assert codec.unsuback(pid) == m.unsuback(pid)
    assert codec.pubrel(1) == b"\x62\x02\x00\x01"  # flags 0010 [MQTT-3.6.1-1]
    pkt, _ = m.parse(codec.pubrel(7))
    assert pkt["type"] == "pubrel" and pkt["pid"] == 7


def test_encode_suback_and_pingresp():
    assert codec.suback(1, [0, 1, 2, 0x80]) == m.suback(1, [0, 1, 2, 0x80])
    assert codec.suback(0x0102, [1]) == b"\x90\x03\x01\x02\x01"
    many = [i % 3 for i in range(200)]  # two-byte remaining length
    pkt, used = m.parse(codec.suback(5, many))
    assert pkt["codes"] == many and pkt["pid"] == 5
    assert codec.PINGRESP == m.pingresp() == b"\xd0\x00"


def test_encode_publish_head():
    # head + the payload itself is the whole PUBLISH
    cases = [("a/b", b"hi", 0, False, False), ("t", b"", 1, True, False),
             ("x/\u00e9", b"p" * 300, 2, False, True), ("$SYS/x", b"1", 1, True, True),
             ("big", b"q" * 20000, 1, False, False)]  # three length bytes
    for topic, payload, qos, retain, dup in cases:
        head = codec.publish_head(topic.encode(), len(payload), qos, retain, dup, 0x0A0B)
        want = m.publish(topic, payload, qos=qos, retain=retain, dup=dup, pid=0x0A0B if qos else None)
        assert bytes(head) + payload == want, topic
        assert len(head) == len(want) - len(payload)


def test_decoders_on_a_reused_buffer_return_copies():
    # connection.py reads into ONE shared bytearray and hands decoders a
    # memoryview of it: everything decoded must be a copy, never a view
    frame = m.publish("t/x", b"payload", qos=1, pid=2)
    buf = bytearray(frame)
    mv = memoryview(buf)
    assert split_frame(mv, 0, BIG) == (0x32, 2, len(frame))
    p = codec.decode_publish(2, mv, 2, len(frame))
    topic, qos, pid, payload, tb = p.topic, p.qos, p.pid, p.payload, p.topic_bytes
    c = m.connect("cid", will_topic="w", will_payload=b"wp", username="u", password=b"pw")
    cbuf = bytearray(c)
    flags, start, end = _body(c)
    conn = codec.decode_connect(flags, memoryview(cbuf), start, end)
    sbuf = bytearray(m.subscribe(3, [("a/#", 1)]))
    flags, start, end = _body(bytes(sbuf))
    spid, subs = _subscribe_body(flags, memoryview(sbuf), start, end)
    for i in range(len(buf)):
        buf[i] = 0x58
    for i in range(len(cbuf)):
        cbuf[i] = 0x58
    for i in range(len(sbuf)):
        sbuf[i] = 0x58
    assert (topic, qos, pid, payload, tb) == ("t/x", 1, 2, b"payload", b"t/x")
    assert isinstance(payload, bytes) and isinstance(tb, bytes)
    assert conn.client_id == "cid" and conn.will_payload == b"wp" and conn.password == b"pw"
    assert isinstance(conn.will_payload, bytes) and isinstance(conn.password, bytes)
    assert spid == 3 and subs == [("a/#", 1)]
