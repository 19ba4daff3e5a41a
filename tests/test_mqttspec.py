# Self-checks of the test-side MQTT 3.1.1 codec (tools/mqttspec.py) against
# byte strings taken from the OASIS MQTT 3.1.1 specification. Shared test:
# runs under pytest on CPython and under the MicroPython runner.
import mqttspec as m


def _raises(fn, *args):
    try:
        fn(*args)
    except m.MalformedError:
        return True
    return False


def test_remaining_length_table():
    # Section 2.2.3, table 2.4: the boundaries of 1..4 length bytes.
    table = [
        (0, b"\x00"), (127, b"\x7f"),
        (128, b"\x80\x01"), (16383, b"\xff\x7f"),
        (16384, b"\x80\x80\x01"), (2097151, b"\xff\xff\x7f"),
        (2097152, b"\x80\x80\x80\x01"), (268435455, b"\xff\xff\xff\x7f"),
        (64, b"\x40"), (321, b"\xc1\x02"),
    ]
    for value, enc in table:
        assert m.encode_remaining_length(value) == enc
        assert m.decode_remaining_length(b"\x30" + enc, 1) == (value, len(enc))


def test_remaining_length_limits():
    for bad in (-1, 268435456):
        try:
            m.encode_remaining_length(bad)
            assert False, "accepted %d" % bad
        except ValueError:
            pass
    # Incomplete length field: wait for more bytes.
    assert m.decode_remaining_length(b"\x30\x80", 1) == (None, 0)
    assert m.decode_remaining_length(b"\x30", 1) == (None, 0)
    # A fifth length byte is malformed.
    assert _raises(m.decode_remaining_length, b"\x30\xff\xff\xff\xff\x7f", 1)


def test_connack_example():
    # Section 3.2: CONNACK is 0x20 0x02, flags, return code.
    pkt, used = m.parse(b"\x20\x02\x00\x00")
    assert used == 4
    assert pkt["type"] == "connack"
    assert pkt["session_present"] == 0 and pkt["rc"] == 0
    assert m.connack(1, 0) == b"\x20\x02\x01\x00"
    pkt, used = m.parse(m.connack(0, 5))
    assert pkt["rc"] == 5 and pkt["session_present"] == 0
    # [MQTT-3.2.2-4]: non-zero return code with session present is wrong.
    assert _raises(m.parse, b"\x20\x02\x01\x02")
    # Reserved bits of the acknowledge flags.
    assert _raises(m.parse, b"\x20\x02\x02\x00")
    assert _raises(m.parse, b"\x20\x03\x00\x00\x00")


def test_connect_variable_header_example():
    # Section 3.1.2.10, figure 3.6: "MQTT", level 4, flags 0xCE, keepalive 10.
    pkt = m.connect("c", clean=True, keepalive=10, will_topic="w", will_payload=b"x",
                    will_qos=1, username="u", password=b"p")
    assert pkt[0] == 0x10
    n, nlen = m.decode_remaining_length(pkt, 1)
    assert n == len(pkt) - 1 - nlen
    var = pkt[1 + nlen:1 + nlen + 10]
    assert var == b"\x00\x04MQTT\x04\xce\x00\x0a"
    got, used = m.parse(pkt)
    assert used == len(pkt)
    assert got["type"] == "connect" and got["client_id"] == "c"
    assert got["will_topic"] == "w" and got["will_payload"] == b"x" and got["will_qos"] == 1
    assert got["username"] == "u" and got["password"] == b"p"
    assert got["keepalive"] == 10 and got["clean"] == 1


def test_connect_overrides():
    pkt = m.connect("id", protocol_name="MQIsdp", protocol_level=3, clean=False, keepalive=0)
    got, _ = m.parse(pkt)
    assert got["protocol_name"] == "MQIsdp" and got["protocol_level"] == 3
    assert got["clean"] == 0 and got["connect_flags"] == 0
    pkt = m.connect("id", flags=0x03)
    got, _ = m.parse(pkt)
    assert got["connect_flags"] == 3
    # Will retain and QoS 2 bits.
    got, _ = m.parse(m.connect("id", will_topic="t", will_qos=2, will_retain=True))
    assert got["connect_flags"] == 0x02 | 0x04 | 0x10 | 0x20


def test_publish_example():
    # Section 3.3.2.3, figure 3.11: topic "a/b", packet identifier 10.
    pkt = m.publish("a/b", b"", qos=1, pid=10)
    assert pkt == b"\x32\x07\x00\x03a/b\x00\x0a"


def test_publish_round_trip():
    pattern = bytes(range(256)) * 80
    for qos in (0, 1, 2):
        for retain in (False, True):
            for size in (0, 1, 127, 200, 20000):
                payload = pattern[:size]
                dup = qos > 0 and retain
                pid = 65535 if qos else None
                raw = m.publish("x/\u00e9/y", payload, qos=qos, retain=retain, dup=dup, pid=pid)
                got, used = m.parse(raw + b"\xd0")
                assert used == len(raw)
                assert got["type"] == "publish"
                assert got["topic"] == "x/\u00e9/y"
                assert got["payload"] == payload
                assert got["qos"] == qos
                assert got["retain"] == (1 if retain else 0)
                assert got["dup"] == (1 if dup else 0)
                assert got["pid"] == pid
                assert got["raw"] == raw


def test_publish_rejects():
    assert _raises(m.parse, m.packet(0x36, m.utf8("t") + m.u16(1)))      # QoS 3
    assert _raises(m.parse, m.packet(0x38, m.utf8("t")))                 # DUP on QoS 0
    assert _raises(m.parse, m.publish("t", qos=1, pid=0))                # pid 0
    assert _raises(m.parse, m.packet(0x30, m.utf8(b"\xed\xa0\x80")))     # surrogate
    assert _raises(m.parse, m.packet(0x30, b"\x00\x09ab"))               # topic too long


def test_acks():
    assert m.puback(7) == b"\x40\x02\x00\x07"
    assert m.pubrec(7) == b"\x50\x02\x00\x07"
    assert m.pubrel(7) == b"\x62\x02\x00\x07"
    assert m.pubcomp(0x1234) == b"\x70\x02\x12\x34"
    assert m.unsuback(9) == b"\xb0\x02\x00\x09"
    for raw, name in ((m.puback(1), "puback"), (m.pubrec(2), "pubrec"),
                      (m.pubrel(3), "pubrel"), (m.pubcomp(4), "pubcomp"),
                      (m.unsuback(5), "unsuback")):
        got, used = m.parse(raw)
        assert got["type"] == name and used == 4
    # [MQTT-3.6.1-1]: PUBREL fixed header flags must be 0010.
    assert _raises(m.parse, b"\x60\x02\x00\x01")
    assert _raises(m.parse, b"\x40\x03\x00\x01\x00")


def test_subscribe_unsubscribe():
    raw = m.subscribe(10, [("a/b", 0), ("c/+", 1), ("#", 2)])
    assert raw[0] == 0x82
    got, used = m.parse(raw)
    assert used == len(raw)
    assert got["pid"] == 10
    assert got["filters"] == [("a/b", 0), ("c/+", 1), ("#", 2)]
    raw = m.unsubscribe(11, ["a/b", "c/+"])
    assert raw[0] == 0xA2
    got, _ = m.parse(raw)
    assert got["type"] == "unsubscribe" and got["filters"] == ["a/b", "c/+"]
    # [MQTT-3.8.3-3]: a SUBSCRIBE without filters is a protocol violation.
    assert _raises(m.parse, m.subscribe(1, []))
    assert _raises(m.parse, m.packet(0x80, m.u16(1) + m.utf8("a") + b"\x00"))


def test_suback():
    raw = m.suback(10, [0, 1, 2, 0x80])
    assert raw == b"\x90\x06\x00\x0a\x00\x01\x02\x80"
    got, _ = m.parse(raw)
    assert got["type"] == "suback" and got["pid"] == 10 and got["codes"] == [0, 1, 2, 0x80]
    assert _raises(m.parse, m.suback(10, [3]))


def test_ping_disconnect():
    assert m.pingreq() == b"\xc0\x00"
    assert m.pingresp() == b"\xd0\x00"
    assert m.disconnect() == b"\xe0\x00"
    assert m.parse(b"\xd0\x00")[0]["type"] == "pingresp"
    assert m.parse(b"\xe0\x00")[0]["type"] == "disconnect"
    assert _raises(m.parse, b"\xd0\x01\x00")


def test_reserved_types():
    assert _raises(m.parse, b"\x00\x00")
    assert _raises(m.parse, b"\xf0\x00")


def test_incomplete_and_many():
    raw = m.publish("t", b"hello", qos=1, pid=3)
    for cut in range(len(raw)):
        assert m.parse(raw[:cut]) == (None, 0)
    both = raw + m.pingresp() + raw[:3]
    pkts, rest = m.parse_all(both)
    assert [p["type"] for p in pkts] == ["publish", "pingresp"]
    assert rest == raw[:3]
    # A bytearray works too.
    got, used = m.parse(bytearray(raw))
    assert got["payload"] == b"hello" and used == len(raw)


def test_raw_packet_builder():
    assert m.packet(0x30, b"") == b"\x30\x00"
    assert m.packet(0xF0) == b"\xf0\x00"
    big = m.packet(0x30, b"x" * 200)
    assert big[:3] == b"\x30\xc8\x01" and len(big) == 203


def test_valid_utf8():
    ok = ["", "a/b", "\u00e9", "\u20ac", "\U0001d11e", "\ufeff", "\uffff"]
    for s in ok:
        assert m.valid_utf8(s.encode("utf-8")), s
    bad = [
        b"\x00", b"a\x00b",          # U+0000 [MQTT-1.5.3-2]
        b"\xed\xa0\x80",            # U+D800 surrogate [MQTT-1.5.3-1]
        b"\xed\xbf\xbf",            # U+DFFF
        b"\xc0\xaf", b"\xe0\x80\xaf", b"\xf0\x80\x80\xaf",  # overlong
        b"\xf4\x90\x80\x80",        # above U+10FFFF
        b"\xff", b"\x80", b"\xe2\x82",  # invalid / stray / truncated
    ]
    for b in bad:
        assert not m.valid_utf8(b), b
