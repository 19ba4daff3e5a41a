"""MQTT 3.1.1 packets for the benchmark load generator: pre-encoding and
fast stream counting (CPython only; independent of midge's codec).

The hot path of the generator is counting PUBLISH packets in 64 KB recv()
chunks. `count_packets` walks the length prefixes, but a run of packets
with identical fixed headers (the usual case: every delivery of a scenario
has the same topic length and payload size) is checked and skipped in C:
for a packet of length L at `pos`, the strided slices buf[pos::L],
buf[pos+1::L], ... hold the fixed-header bytes of the following packets if
and only if those packets all have length L, so comparing the leading run
of each slice to the first header byte counts the whole run with no Python
work per packet.
"""
from sim.mqtt import varint  # one remaining-length encoder for the host tools

PUBLISH = 3
PUBACK = 4
PUBREC = 5
PUBREL = 6
PUBCOMP = 7
SUBACK = 9
PINGRESP = 13

PINGREQ_PKT = b"\xc0\x00"
DISCONNECT_PKT = b"\xe0\x00"

# After a failed fast-path attempt, walk this many packets one by one before
# trying again (a mixed stream must not cost one strided slice per packet).
_SLOW_STRETCH = 32


def _str(s):
    if isinstance(s, str):
        s = s.encode()
    return len(s).to_bytes(2, "big") + s


def _packet(first, body):
    return bytes([first]) + varint(len(body)) + body


def connect(client_id, keepalive=60, clean=True):
    flags = 0x02 if clean else 0
    body = _str("MQTT") + bytes([4, flags]) + keepalive.to_bytes(2, "big") + _str(client_id)
    return _packet(0x10, body)


def subscribe(pid, filters):
    """filters: [(filter, qos)]"""
    body = pid.to_bytes(2, "big")
    for f, qos in filters:
        body += _str(f) + bytes([qos])
    return _packet(0x82, body)


def publish(topic, payload, qos=0, pid=0, retain=False, dup=False):
    first = 0x30 | (qos << 1) | (1 if retain else 0) | (8 if dup else 0)
    body = _str(topic)
    if qos:
        body += pid.to_bytes(2, "big")
    return _packet(first, body + payload)


def _ack(first, pid):
    return bytes([first, 2]) + pid.to_bytes(2, "big")


def puback(pid):
    return _ack(0x40, pid)


def pubrec(pid):
    return _ack(0x50, pid)


def pubrel(pid):
    return _ack(0x62, pid)


def pubcomp(pid):
    return _ack(0x70, pid)


def publish_table(topic, payload, qos, count=65535):
    """[None, PUBLISH with pid 1, ..., pid count]: QoS 1/2 packets pre-encoded
    once so the hot loop only indexes a list."""
    head = publish(topic, payload, qos, 1)
    # the packet id sits right after the topic; everything else is constant
    cut = len(head) - len(payload) - 2
    pre, post = head[:cut], head[cut + 2:]
    return [None] + [pre + i.to_bytes(2, "big") + post for i in range(1, count + 1)]


def header(buf, pos, end):
    """(first byte, header length, remaining length) of the packet at pos,
    or None if the fixed header is not complete before `end`."""
    if pos >= end:
        return None
    i = pos + 1
    mult = 1
    rl = 0
    while True:
        if i >= end:
            return None
        b = buf[i]
        i += 1
        rl += (b & 127) * mult
        if b < 128:
            return buf[pos], i - pos, rl
        mult <<= 7
        if mult > 2097152:
            raise ValueError("malformed remaining length at offset %d" % pos)


def _run_length(buf, pos, hlen, plen, n):
    """How many of the n packets from pos have the same fixed header as the
    one at pos (and so, by induction, the same length plen)."""
    stop = pos + n * plen
    k = n
    for j in range(hlen):
        col = buf[pos + j:stop:plen]
        lead = len(col) - len(col.lstrip(col[:1]))
        if lead < k:
            k = lead
            if k < 2:
                return k
    return k


def count_packets(buf, pos=0, end=None):
    """Count complete packets in buf[pos:end].

    Returns (publishes, others, used): `used` is the offset just past the
    last complete packet (the caller keeps buf[used:] for the next chunk).
    Raises ValueError on a malformed length."""
    if end is None:
        end = len(buf)
    pubs = 0
    others = 0
    slow = 0
    while pos < end:
        h = header(buf, pos, end)
        if h is None:
            break
        b0, hlen, rl = h
        plen = hlen + rl
        if pos + plen > end:
            break
        n = 1
        if slow:
            slow -= 1
        else:
            left = (end - pos) // plen
            if left > 1:
                n = _run_length(buf, pos, hlen, plen, left)
                if n < 2:
                    n = 1
                    slow = _SLOW_STRETCH
        if b0 >> 4 == PUBLISH:
            pubs += n
        else:
            others += n
        pos += n * plen
    return pubs, others, pos


def iter_packets(buf, pos=0, end=None):
    """[(first byte, body start, end)] of the complete packets in buf[pos:end],
    and the offset past the last one. The per-packet path (QoS 1/2 flows)."""
    if end is None:
        end = len(buf)
    out = []
    while pos < end:
        h = header(buf, pos, end)
        if h is None:
            break
        b0, hlen, rl = h
        stop = pos + hlen + rl
        if stop > end:
            break
        out.append((b0, pos + hlen, stop))
        pos = stop
    return out, pos


def publish_pid(buf, body):
    """Packet id of a QoS 1/2 PUBLISH whose body starts at `body`."""
    tl = (buf[body] << 8) | buf[body + 1]
    p = body + 2 + tl
    return (buf[p] << 8) | buf[p + 1]


def publish_topic(buf, body):
    tl = (buf[body] << 8) | buf[body + 1]
    return bytes(buf[body + 2:body + 2 + tl])


class Counter:
    """Counts PUBLISH packets of one socket's byte stream chunk by chunk."""

    __slots__ = ("tail", "publishes", "others", "bytes")

    def __init__(self):
        self.tail = b""
        self.publishes = 0
        self.others = 0
        self.bytes = 0

    def feed(self, data):
        """Returns the number of PUBLISH packets completed by this chunk."""
        self.bytes += len(data)
        if self.tail:
            data = self.tail + data
        p, o, used = count_packets(data)
        self.publishes += p
        self.others += o
        self.tail = data[used:] if used < len(data) else b""
        return p


def ack_publishes(buf, ack_first, pos=0, end=None):
    """Acknowledge every complete packet in buf[pos:end] the way a QoS 1/2
    subscriber does: a PUBLISH gets a 4-byte ack `ack_first, 2, pid` (PUBACK
    0x40 or PUBREC 0x50), a PUBREL gets PUBCOMP, anything else nothing.

    Returns (publishes, dups, acks bytes, used). A run of PUBLISHes with
    identical fixed headers and topic length has its packet ids at a fixed
    stride, so their acks are assembled with strided slice assignments (C
    speed, no Python work per packet)."""
    if end is None:
        end = len(buf)
    pubs = 0
    dups = 0
    out = []
    head = bytes([ack_first, 2])
    while pos < end:
        h = header(buf, pos, end)
        if h is None:
            break
        b0, hlen, rl = h
        plen = hlen + rl
        if pos + plen > end:
            break
        kind = b0 >> 4
        if kind == PUBLISH:
            body = pos + hlen
            pid_off = hlen + 2 + ((buf[body] << 8) | buf[body + 1])
            left = (end - pos) // plen
            n = _run_length(buf, pos, hlen, plen, left) if left > 1 else 1
            if n >= 2:
                # same header => same length; the topic length must match too
                stop = pos + n * plen
                for j in (hlen, hlen + 1):
                    col = buf[pos + j:stop:plen]
                    lead = len(col) - len(col.lstrip(col[:1]))
                    if lead < n:
                        n = lead
            if n >= 2:
                stop = pos + n * plen
                acks = bytearray(4 * n)
                acks[0::4] = bytes([ack_first]) * n
                acks[1::4] = b"\x02" * n
                acks[2::4] = buf[pos + pid_off:stop:plen]
                acks[3::4] = buf[pos + pid_off + 1:stop:plen]
                out.append(bytes(acks))
            else:
                n = 1
                out.append(head + bytes(buf[pos + pid_off:pos + pid_off + 2]))
            pubs += n
            if b0 & 8:
                dups += n
            pos += n * plen
            continue
        if kind == PUBREL:
            out.append(b"\x70\x02" + bytes(buf[pos + hlen:pos + hlen + 2]))
        pos += plen
    return pubs, dups, b"".join(out), pos


def publisher_acks(buf, pos=0, end=None):
    """What a QoS 1/2 publisher does with the broker's acknowledgements in
    buf[pos:end]: PUBACK and PUBCOMP complete a message, PUBREC is answered
    with PUBREL. Returns (completed, pubrels bytes, used); runs of identical
    4-byte acknowledgements are handled with slices."""
    if end is None:
        end = len(buf)
    done = 0
    out = []
    while pos < end:
        h = header(buf, pos, end)
        if h is None:
            break
        b0, hlen, rl = h
        plen = hlen + rl
        if pos + plen > end:
            break
        left = (end - pos) // plen
        n = _run_length(buf, pos, hlen, plen, left) if left > 1 else 1
        if n < 1:
            n = 1
        kind = b0 >> 4
        if kind == PUBACK or kind == PUBCOMP:
            done += n
        elif kind == PUBREC and plen == 4:
            rel = bytearray(buf[pos:pos + 4 * n])
            rel[0::4] = b"\x62" * n
            out.append(bytes(rel))
        pos += n * plen
    return done, b"".join(out), pos
