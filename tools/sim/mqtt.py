# MQTT encode/decode for the simulated clients: protocol level 4 (3.1.1) and
# 5. Only what the fleet sends is encoded; every packet a broker may send is
# decoded. MQTT 5 packets carry no properties except the Session Expiry
# Interval of a persistent session. Pure functions over bytes, no I/O.
import struct

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14

V311 = 4
V5 = 5


class MalformedError(ValueError):
    pass


def varint(n):
    """MQTT's variable-length Remaining Length [MQTT-2.2.3]."""
    if n < 0 or n > 268435455:
        raise ValueError("remaining length out of range: %d" % n)
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _str(s):
    b = s.encode() if isinstance(s, str) else bytes(s)
    return struct.pack(">H", len(b)) + b


def _packet(first, body):
    return bytes([first]) + varint(len(body)) + body


def connect(client_id, version=V311, clean=True, keepalive_s=60, will=None):
    """will: None or (topic, payload bytes, qos, retain). A persistent MQTT 5
    session (clean=False) asks for the longest session expiry."""
    flags = 0x02 if clean else 0
    if will is not None:
        topic, payload, qos, retain = will
        flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
    body = _str("MQTT") + bytes([version, flags]) + struct.pack(">H", keepalive_s)
    if version == V5:
        props = b"" if clean else b"\x11" + struct.pack(">I", 0xFFFFFFFF)
        body += varint(len(props)) + props
    body += _str(client_id)
    if will is not None:
        if version == V5:
            body += b"\x00"  # no will properties
        body += _str(topic) + _str(payload)
    return _packet(0x10, body)


def publish(topic, payload, qos=0, retain=False, pid=None, dup=False, version=V311):
    first = 0x30 | (qos << 1) | (1 if retain else 0) | (0x08 if dup else 0)
    body = _str(topic)
    if qos:
        body += struct.pack(">H", pid)
    if version == V5:
        body += b"\x00"
    return _packet(first, body + payload)


def publish_size(topic_bytes, payload_bytes, qos, version=V311):
    """Whole packet size in bytes, fixed header included (the unit of
    max_packet_size)."""
    rem = 2 + topic_bytes + (2 if qos else 0) + (1 if version == V5 else 0) + payload_bytes
    return 1 + len(varint(rem)) + rem


def ack(ptype, pid):
    """PUBACK, PUBREC, PUBREL or PUBCOMP (success: the short form, valid
    in both versions)."""
    return _packet((ptype << 4) | (0x02 if ptype == PUBREL else 0), struct.pack(">H", pid))


def subscribe(pid, filters, version=V311):
    """filters: [(filter, qos)]."""
    body = struct.pack(">H", pid)
    if version == V5:
        body += b"\x00"
    for f, q in filters:
        body += _str(f) + bytes([q])
    return _packet(0x82, body)


def unsubscribe(pid, filters, version=V311):
    body = struct.pack(">H", pid)
    if version == V5:
        body += b"\x00"
    for f in filters:
        body += _str(f)
    return _packet(0xA2, body)


PINGREQ_BYTES = b"\xc0\x00"
DISCONNECT_BYTES = b"\xe0\x00"


# --- decoding ------------------------------------------------------------------

def split(buf):
    """Complete packets at the start of buf -> ([(ptype, flags, body)], bytes
    used). An incomplete packet stays for the next call."""
    out = []
    pos = 0
    n = len(buf)
    while pos < n:
        mult = 1
        length = 0
        i = pos + 1
        while True:
            if i >= n:
                return out, pos
            b = buf[i]
            length += (b & 0x7F) * mult
            mult <<= 7
            i += 1
            if not b & 0x80:
                break
            if mult > 1 << 21:
                raise MalformedError("remaining length over 4 bytes")
        if i + length > n:
            return out, pos
        out.append((buf[pos] >> 4, buf[pos] & 0x0F, bytes(buf[i:i + length])))
        pos = i + length
    return out, pos


def _skip_props(body, pos):
    mult = 1
    length = 0
    while True:
        b = body[pos]
        pos += 1
        length += (b & 0x7F) * mult
        mult <<= 7
        if not b & 0x80:
            return pos + length


def parse_connack(body):
    """(session_present, return code / reason code). A 3.1.1-style 2-byte
    CONNACK is accepted for an MQTT 5 client too (a broker refusing level 5)."""
    if len(body) < 2:
        raise MalformedError("short CONNACK")
    return bool(body[0] & 1), body[1]


def parse_publish(flags, body, version=V311):
    """dict(topic, qos, retain, dup, pid, payload)."""
    qos = (flags >> 1) & 3
    if qos == 3:
        raise MalformedError("PUBLISH QoS 3")
    tlen = struct.unpack(">H", body[:2])[0]
    topic = body[2:2 + tlen].decode("utf-8", "replace")
    pos = 2 + tlen
    pid = None
    if qos:
        pid = struct.unpack(">H", body[pos:pos + 2])[0]
        pos += 2
    if version == V5:
        pos = _skip_props(body, pos)
    return {"topic": topic, "qos": qos, "retain": bool(flags & 1), "dup": bool(flags & 8),
            "pid": pid, "payload": body[pos:]}


def parse_pid(body):
    """Packet id of PUBACK/PUBREC/PUBREL/PUBCOMP/UNSUBACK, and the MQTT 5
    reason code (0 when absent)."""
    pid = struct.unpack(">H", body[:2])[0]
    return pid, (body[2] if len(body) > 2 else 0)


def parse_suback(body, version=V311):
    """(pid, [granted QoS or failure code])."""
    pid = struct.unpack(">H", body[:2])[0]
    pos = 2
    if version == V5:
        pos = _skip_props(body, pos)
    return pid, list(body[pos:])
