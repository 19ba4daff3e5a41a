"""The benchmark load generator's packet encoding and stream counting
(tools/benchmarks/mqtt.py), checked against the spec-written tools/mqttspec.py."""
import random

import pytest

from benchmarks import mqtt as bm
import mqttspec

PAYLOAD = bytes(range(64))


def test_encoding_matches_spec_encoder():
    assert bm.connect("c1", keepalive=60, clean=True) == mqttspec.connect("c1", clean=True, keepalive=60)
    assert bm.connect("c2", keepalive=0, clean=False) == mqttspec.connect("c2", clean=False, keepalive=0)
    assert bm.subscribe(7, [("bench/#", 1), ("a/b", 2)]) == mqttspec.subscribe(7, [("bench/#", 1), ("a/b", 2)])
    for qos in (0, 1, 2):
        pid = None if qos == 0 else 513
        assert bm.publish("bench/00", PAYLOAD, qos, 513) == mqttspec.publish("bench/00", PAYLOAD, qos, pid=pid)
    assert bm.publish("t", b"x", retain=True) == mqttspec.publish("t", b"x", retain=True)
    assert bm.puback(258) == mqttspec.puback(258)
    assert bm.pubrec(1) == mqttspec.pubrec(1)
    assert bm.pubrel(65535) == mqttspec.pubrel(65535)
    assert bm.pubcomp(9) == mqttspec.pubcomp(9)
    assert bm.PINGREQ_PKT == mqttspec.pingreq()
    assert bm.DISCONNECT_PKT == mqttspec.disconnect()


def test_varint_lengths():
    for n in (0, 1, 127, 128, 16383, 16384, 2097151, 2097152, 268435455):
        assert bm.varint(n) == mqttspec.encode_remaining_length(n)
    with pytest.raises(ValueError):
        bm.varint(268435456)


def test_publish_table_packet_ids():
    table = bm.publish_table("bench/w", PAYLOAD, 1, count=300)
    assert table[0] is None and len(table) == 301
    for pid in (1, 255, 256, 300):
        assert table[pid] == mqttspec.publish("bench/w", PAYLOAD, 1, pid=pid)
        pkt, _ = mqttspec.parse(table[pid])
        assert pkt["pid"] == pid
        assert bm.publish_pid(table[pid], 2) == pid


def test_header():
    p = bm.publish("t", b"y" * 200)  # two-byte remaining length
    assert bm.header(p, 0, len(p)) == (0x30, 3, len(p) - 3)
    assert bm.header(p, 0, 2) is None  # length field cut
    assert bm.header(b"\x30\xff\xff\xff\x7f", 0, 5) == (0x30, 5, 268435455)
    with pytest.raises(ValueError):
        bm.header(b"\x30\xff\xff\xff\xff\x01", 0, 6)


def _reference_count(buf):
    pubs = others = 0
    pos = 0
    while True:
        pkt, used = mqttspec.parse(buf[pos:])
        if pkt is None:
            return pubs, others, pos
        if pkt["type"] == "publish":
            pubs += 1
        else:
            others += 1
        pos += used


def test_count_identical_run_and_tail():
    p = bm.publish("bench/00", PAYLOAD)
    stream = p * 1000 + p[:10]
    assert bm.count_packets(stream) == (1000, 0, 1000 * len(p))


def test_count_run_broken_by_other_packets():
    p = bm.publish("bench/00", PAYLOAD)
    q = bm.publish("bench/123", PAYLOAD)  # another length
    stream = p * 500 + b"\xd0\x00" + p * 10 + q * 3 + bm.puback(5) + p * 7 + b"\x90\x03\x00\x01\x00"
    assert bm.count_packets(stream) == (520, 3, len(stream))


def test_count_same_length_different_first_byte():
    # a retained copy has the same length but another first byte: still counted
    p = bm.publish("bench/00", PAYLOAD)
    r = bm.publish("bench/01", PAYLOAD, retain=True)
    stream = p * 50 + r + p * 50
    assert bm.count_packets(stream) == (101, 0, len(stream))


def test_count_long_packets_multibyte_length():
    p = bm.publish("bench/big", b"z" * 300)
    stream = p * 40 + bm.pubrec(3) * 5 + p * 2
    assert bm.count_packets(stream) == (42, 5, len(stream))


def test_count_random_streams_match_reference_in_random_chunks():
    rnd = random.Random(1234)
    kinds = [bm.publish("bench/00", PAYLOAD), bm.publish("bench/7", PAYLOAD),
             bm.publish("x", b"q" * rnd.randrange(100, 400)), bm.puback(1), b"\xd0\x00",
             bm.publish("bench/00", PAYLOAD, 1, 77), bm.pubrel(9)]
    for _ in range(20):
        parts = []
        for _ in range(rnd.randrange(1, 60)):
            parts.append(rnd.choice(kinds) * rnd.randrange(1, 80))
        stream = b"".join(parts)
        want = _reference_count(stream)
        assert bm.count_packets(stream) == want
        c = bm.Counter()
        pos = 0
        while pos < len(stream):
            n = rnd.randrange(1, 5000)
            c.feed(stream[pos:pos + n])
            pos += n
        assert (c.publishes, c.others, c.tail) == (want[0], want[1], b"")
        assert c.bytes == len(stream)


def test_count_bytearray_and_offset():
    p = bm.publish("bench/00", PAYLOAD)
    buf = bytearray(b"\xd0\x00" + p * 20)
    assert bm.count_packets(buf, 2) == (20, 0, len(buf))
    assert bm.count_packets(buf, 0, len(buf) - 1) == (19, 1, len(buf) - len(p))


def test_iter_packets_and_pids():
    stream = bm.publish("a/b", b"1", 2, 400) + bm.pubrel(401) + bm.publish("a", b"", 1, 5) + b"\x40"
    pkts, used = bm.iter_packets(stream)
    assert [b0 >> 4 for b0, _, _ in pkts] == [3, 6, 3]
    assert used == len(stream) - 1
    b0, body, end = pkts[0]
    assert bm.publish_pid(stream, body) == 400
    assert bm.publish_topic(stream, body) == b"a/b"
    _, body, _ = pkts[2]
    assert bm.publish_pid(stream, body) == 5
