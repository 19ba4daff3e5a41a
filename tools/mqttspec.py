# An independent MQTT 3.1.1 packet encoder/decoder for tests and host tools.
#
# Written from the OASIS MQTT Version 3.1.1 specification (section numbers
# cited below), NOT from midge.codec: a codec bug must never agree with
# itself. It never imports midge.
#
# Runs on CPython 3.11 and the MicroPython unix port: only struct and bytes,
# no typing/dataclasses/enum, no f-strings, int.from_bytes(b, "big")
# positional.
#
# Builders return bytes ready to send. They deliberately do NOT validate
# their arguments (a test may want a wildcard in a PUBLISH topic, packet id
# 0, QoS 3 ...): strings may be passed as str (UTF-8 encoded here) or as
# bytes (sent exactly as given, e.g. invalid UTF-8).
#
# parse(buf) -> (packet dict, bytes consumed) or (None, 0) when buf does not
# hold a complete packet yet. A packet that breaks the spec raises
# MalformedError (a ValueError), so tests also check what the server sends.
import struct

# Control packet types, section 2.2.1 table 2.1.
CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
PUBREC = 5
PUBREL = 6
PUBCOMP = 7
SUBSCRIBE = 8
SUBACK = 9
UNSUBSCRIBE = 10
UNSUBACK = 11
PINGREQ = 12
PINGRESP = 13
DISCONNECT = 14

TYPE_NAMES = {
    CONNECT: "connect", CONNACK: "connack", PUBLISH: "publish",
    PUBACK: "puback", PUBREC: "pubrec", PUBREL: "pubrel",
    PUBCOMP: "pubcomp", SUBSCRIBE: "subscribe", SUBACK: "suback",
    UNSUBSCRIBE: "unsubscribe", UNSUBACK: "unsuback", PINGREQ: "pingreq",
    PINGRESP: "pingresp", DISCONNECT: "disconnect",
}

# Fixed header flags that the spec requires, section 2.2.2 table 2.2.
# PUBLISH (3) carries DUP/QoS/RETAIN instead and is not listed.
REQUIRED_FLAGS = {
    CONNECT: 0, CONNACK: 0, PUBACK: 0, PUBREC: 0, PUBREL: 2, PUBCOMP: 0,
    SUBSCRIBE: 2, SUBACK: 0, UNSUBSCRIBE: 2, UNSUBACK: 0, PINGREQ: 0,
    PINGRESP: 0, DISCONNECT: 0,
}

# CONNACK return codes, section 3.2.2.3 table 3.1.
RC_ACCEPTED = 0
RC_BAD_PROTOCOL = 1
RC_ID_REJECTED = 2
RC_UNAVAILABLE = 3
RC_BAD_CREDENTIALS = 4
RC_NOT_AUTHORIZED = 5

SUBACK_FAILURE = 0x80  # section 3.9.3

MAX_REMAINING_LENGTH = 268435455  # section 2.2.3: 0xFF 0xFF 0xFF 0x7F


class MalformedError(ValueError):
    pass


# --- primitives -------------------------------------------------------------

def encode_remaining_length(n):
    """Section 2.2.3: 7 bits per byte, least significant group first, top
    bit set while more bytes follow; 1..4 bytes."""
    if n < 0 or n > MAX_REMAINING_LENGTH:
        raise ValueError("remaining length out of range: %d" % n)
    out = bytearray()
    while True:
        digit = n % 128
        n = n // 128
        if n > 0:
            digit = digit | 0x80
        out.append(digit)
        if n == 0:
            break
    return bytes(out)


def decode_remaining_length(buf, offset=1):
    """Decode the remaining length starting at buf[offset].
    Returns (value, number of length bytes), or (None, 0) when more bytes
    are needed. More than four bytes raises MalformedError."""
    multiplier = 1
    value = 0
    i = 0
    while True:
        if i >= 4:
            raise MalformedError("remaining length longer than 4 bytes")
        if offset + i >= len(buf):
            return None, 0
        b = buf[offset + i]
        value += (b & 0x7F) * multiplier
        multiplier *= 128
        i += 1
        if not (b & 0x80):
            return value, i


def u16(n):
    return struct.pack(">H", n & 0xFFFF)


def to_bytes(s):
    if isinstance(s, str):
        return s.encode("utf-8")
    return bytes(s)


def utf8(s):
    """Section 1.5.3: two-byte big-endian length, then the bytes. A str is
    UTF-8 encoded; bytes are used as they are (tests send invalid UTF-8)."""
    b = to_bytes(s)
    return u16(len(b)) + b


def binary(b):
    """Length-prefixed binary data (will message, password)."""
    b = to_bytes(b)
    return u16(len(b)) + b


def valid_utf8(b):
    """Strict check of section 1.5.3: well-formed UTF-8 per RFC 3629 (no
    overlong forms, nothing above U+10FFFF), no surrogates U+D800..U+DFFF
    [MQTT-1.5.3-1] and no U+0000 [MQTT-1.5.3-2]. Implemented by hand
    because MicroPython's decoder accepts surrogates and overlong forms."""
    i = 0
    n = len(b)
    while i < n:
        c = b[i]
        if c == 0:
            return False
        if c < 0x80:
            i += 1
            continue
        if 0xC2 <= c <= 0xDF:
            need = 1
            cp = c & 0x1F
        elif 0xE0 <= c <= 0xEF:
            need = 2
            cp = c & 0x0F
        elif 0xF0 <= c <= 0xF4:
            need = 3
            cp = c & 0x07
        else:
            return False  # 0x80..0xC1 (continuation / overlong lead), 0xF5..
        if i + need >= n:
            return False  # truncated sequence
        for k in range(1, need + 1):
            cc = b[i + k]
            if cc & 0xC0 != 0x80:
                return False
            cp = (cp << 6) | (cc & 0x3F)
        if need == 2 and cp < 0x800:
            return False  # overlong
        if need == 3 and (cp < 0x10000 or cp > 0x10FFFF):
            return False
        if 0xD800 <= cp <= 0xDFFF:
            return False
        i += need + 1
    return True


def packet(first_byte, body=b""):
    """Raw builder: fixed header byte, remaining length, body. Use it to
    craft any malformed frame."""
    body = to_bytes(body)
    return bytes([first_byte & 0xFF]) + encode_remaining_length(len(body)) + body


# --- client -> server builders ------------------------------------------------

def connect(client_id="", clean=True, keepalive=60, will_topic=None,
            will_payload=b"", will_qos=0, will_retain=False, username=None,
            password=None, protocol_name="MQTT", protocol_level=4,
            flags=None, extra=b""):
    """CONNECT, section 3.1. `will_topic` not None sets the Will Flag.
    `flags` overrides the whole connect flags byte (the payload is still
    built from the other arguments), `extra` is appended to the payload."""
    f = 0
    if clean:
        f |= 0x02
    payload = utf8(client_id)
    if will_topic is not None:
        f |= 0x04 | ((will_qos & 3) << 3)
        if will_retain:
            f |= 0x20
        payload += utf8(will_topic) + binary(will_payload)
    if username is not None:
        f |= 0x80
        payload += utf8(username)
    if password is not None:
        f |= 0x40
        payload += binary(password)
    if flags is not None:
        f = flags
    var = utf8(protocol_name) + bytes([protocol_level & 0xFF, f & 0xFF]) + u16(keepalive)
    return packet(0x10, var + payload + to_bytes(extra))


def publish_first_byte(qos=0, retain=False, dup=False):
    """Section 3.3.1: DUP bit 3, QoS bits 2-1, RETAIN bit 0."""
    b = 0x30 | ((qos & 3) << 1)
    if dup:
        b |= 0x08
    if retain:
        b |= 0x01
    return b


def publish(topic, payload=b"", qos=0, retain=False, dup=False, pid=None):
    """PUBLISH, section 3.3. The packet identifier is present only when
    qos > 0, unless `pid` is given explicitly (then it is always written)."""
    var = utf8(topic)
    if pid is None and qos > 0:
        pid = 1
    if pid is not None:
        var += u16(pid)
    return packet(publish_first_byte(qos, retain, dup), var + to_bytes(payload))


def puback(pid):
    return packet(0x40, u16(pid))   # section 3.4


def pubrec(pid):
    return packet(0x50, u16(pid))   # section 3.5


def pubrel(pid):
    return packet(0x62, u16(pid))   # section 3.6: flags MUST be 0010 [MQTT-3.6.1-1]


def pubcomp(pid):
    return packet(0x70, u16(pid))   # section 3.7


def subscribe(pid, filters, first_byte=0x82):
    """SUBSCRIBE, section 3.8: filters is a list of (filter, requested QoS);
    the QoS byte is written as given (tests send 3 or reserved bits)."""
    body = u16(pid)
    for flt, qos in filters:
        body += utf8(flt) + bytes([qos & 0xFF])
    return packet(first_byte, body)


def unsubscribe(pid, filters, first_byte=0xA2):
    """UNSUBSCRIBE, section 3.10: filters is a list of filter strings."""
    body = u16(pid)
    for flt in filters:
        body += utf8(flt)
    return packet(first_byte, body)


def pingreq():
    return b"\xc0\x00"   # section 3.12


def disconnect():
    return b"\xe0\x00"   # section 3.14


# --- server -> client builders (for self-checks and "client sends a server
# packet" tests) ---------------------------------------------------------------

def connack(session_present=0, rc=0):
    return packet(0x20, bytes([1 if session_present else 0, rc & 0xFF]))


def suback(pid, codes):
    return packet(0x90, u16(pid) + bytes(codes))


def unsuback(pid):
    return packet(0xB0, u16(pid))


def pingresp():
    return b"\xd0\x00"


# --- parser ---------------------------------------------------------------------

def _str(body, pos):
    """Read a length-prefixed UTF-8 string at pos -> (str, new pos)."""
    if pos + 2 > len(body):
        raise MalformedError("string length past end of packet")
    n = (body[pos] << 8) | body[pos + 1]
    pos += 2
    if pos + n > len(body):
        raise MalformedError("string past end of packet")
    raw = bytes(body[pos:pos + n])
    if not valid_utf8(raw):
        raise MalformedError("invalid UTF-8 string: %r" % raw)
    return raw.decode("utf-8"), pos + n


def _bin(body, pos):
    if pos + 2 > len(body):
        raise MalformedError("binary length past end of packet")
    n = (body[pos] << 8) | body[pos + 1]
    pos += 2
    if pos + n > len(body):
        raise MalformedError("binary data past end of packet")
    return bytes(body[pos:pos + n]), pos + n


def _pid(body, pos):
    if pos + 2 > len(body):
        raise MalformedError("packet identifier past end of packet")
    pid = (body[pos] << 8) | body[pos + 1]
    if pid == 0:
        raise MalformedError("packet identifier 0 [MQTT-2.3.1-1]")
    return pid, pos + 2


def parse(buf, decoder=None):
    """Decode the first packet in buf (with decoder(ptype, flags, body),
    this module's decode by default; mqtt5spec passes its own).
    Returns (dict, consumed) or (None, 0) if buf holds no complete packet."""
    if len(buf) < 2:
        return None, 0
    length, nlen = decode_remaining_length(buf, 1)
    if length is None:
        return None, 0
    start = 1 + nlen
    end = start + length
    if len(buf) < end:
        return None, 0
    first = buf[0]
    ptype = first >> 4
    flags = first & 0x0F
    body = bytes(buf[start:end])
    pkt = (decoder or decode)(ptype, flags, body)
    pkt["raw"] = bytes(buf[:end])
    return pkt, end


def parse_all(buf, decoder=None):
    """Decode every complete packet in buf -> (list of dicts, leftover)."""
    out = []
    while True:
        pkt, used = parse(buf, decoder)
        if pkt is None:
            return out, buf
        out.append(pkt)
        buf = buf[used:]


def decode(ptype, flags, body):
    """Decode one packet given its type, fixed-header flags and body."""
    if ptype not in TYPE_NAMES:
        raise MalformedError("reserved packet type %d" % ptype)
    name = TYPE_NAMES[ptype]
    pkt = {"type": name, "flags": flags}
    if ptype != PUBLISH and flags != REQUIRED_FLAGS[ptype]:
        raise MalformedError("%s with fixed header flags %d [MQTT-2.2.2-2]" % (name, flags))
    n = len(body)

    if ptype == CONNACK:
        # Section 3.2: remaining length 2; byte 1 bits 7-1 reserved 0.
        if n != 2:
            raise MalformedError("CONNACK remaining length %d" % n)
        if body[0] & 0xFE:
            raise MalformedError("CONNACK reserved flags set")
        pkt["session_present"] = body[0] & 1
        pkt["rc"] = body[1]
        if pkt["rc"] != 0 and pkt["session_present"]:
            raise MalformedError("CONNACK rc != 0 with session present [MQTT-3.2.2-4]")
        return pkt

    if ptype == PUBLISH:
        qos = (flags >> 1) & 3
        if qos == 3:
            raise MalformedError("PUBLISH QoS 3 [MQTT-3.3.1-4]")
        dup = (flags >> 3) & 1
        if qos == 0 and dup:
            raise MalformedError("PUBLISH QoS 0 with DUP [MQTT-3.3.1-2]")
        topic, pos = _str(body, 0)
        pid = None
        if qos:
            pid, pos = _pid(body, pos)
        pkt["topic"] = topic
        pkt["payload"] = bytes(body[pos:])
        pkt["qos"] = qos
        pkt["retain"] = flags & 1
        pkt["dup"] = dup
        pkt["pid"] = pid
        return pkt

    if ptype in (PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK):
        if n != 2:
            raise MalformedError("%s remaining length %d" % (name, n))
        pkt["pid"], _ = _pid(body, 0)
        return pkt

    if ptype == SUBACK:
        # Section 3.9: pid then one return code per filter: 0,1,2 or 0x80.
        if n < 3:
            raise MalformedError("SUBACK without return codes")
        pkt["pid"], _ = _pid(body, 0)
        codes = list(body[2:])
        for c in codes:
            if c not in (0, 1, 2, 0x80):
                raise MalformedError("SUBACK return code %d [MQTT-3.9.3-2]" % c)
        pkt["codes"] = codes
        return pkt

    if ptype in (PINGREQ, PINGRESP, DISCONNECT):
        if n != 0:
            raise MalformedError("%s remaining length %d" % (name, n))
        return pkt

    if ptype == SUBSCRIBE or ptype == UNSUBSCRIBE:
        pkt["pid"], pos = _pid(body, 0)
        filters = []
        while pos < n:
            flt, pos = _str(body, pos)
            if ptype == SUBSCRIBE:
                if pos >= n:
                    raise MalformedError("SUBSCRIBE filter without QoS")
                filters.append((flt, body[pos]))
                pos += 1
            else:
                filters.append(flt)
        if not filters:
            raise MalformedError("%s without filters" % name)
        pkt["filters"] = filters
        return pkt

    # CONNECT, section 3.1.
    pname, pos = _str(body, 0)
    if pos + 4 > n:
        raise MalformedError("CONNECT variable header truncated")
    level = body[pos]
    f = body[pos + 1]
    keepalive = (body[pos + 2] << 8) | body[pos + 3]
    pos += 4
    client_id, pos = _str(body, pos)
    pkt["protocol_name"] = pname
    pkt["protocol_level"] = level
    pkt["connect_flags"] = f
    pkt["clean"] = (f >> 1) & 1
    pkt["keepalive"] = keepalive
    pkt["client_id"] = client_id
    pkt["will_topic"] = None
    pkt["will_payload"] = None
    pkt["will_qos"] = (f >> 3) & 3
    pkt["will_retain"] = (f >> 5) & 1
    pkt["username"] = None
    pkt["password"] = None
    if f & 0x04:
        pkt["will_topic"], pos = _str(body, pos)
        pkt["will_payload"], pos = _bin(body, pos)
    if f & 0x80:
        pkt["username"], pos = _str(body, pos)
    if f & 0x40:
        pkt["password"], pos = _bin(body, pos)
    if pos != n:
        raise MalformedError("CONNECT has %d trailing bytes" % (n - pos))
    return pkt
