# An independent MQTT 5.0 packet encoder/decoder for tests and host tools.
#
# Written from the OASIS MQTT Version 5.0 specification (section numbers
# below), NOT from midge.codec / midge.props / midge.wire5: a codec bug
# must never agree with itself. It never imports midge. It shares only the
# version-neutral primitives of mqttspec.py (remaining length, strings).
#
# Runs on CPython 3.11 and the MicroPython unix port.
#
# Builders return bytes and do not validate their arguments (a test may
# want a duplicate property or a reserved bit). Properties are a list of
# (identifier, value) in the order they are written; the identifier's type
# (section 2.2.2.2 table 2-4) decides the encoding: a user property's value
# is a (name, value) pair.
#
# parse(buf) -> (packet dict, bytes consumed) or (None, 0); the dict has
# "props": [(identifier, value), ...] in order. What breaks the
# specification in a server's packet raises mqttspec.MalformedError.
import mqttspec as m
from mqttspec import MalformedError

# Property identifiers, section 2.2.2.2.
PAYLOAD_FORMAT = 0x01
MESSAGE_EXPIRY = 0x02
CONTENT_TYPE = 0x03
RESPONSE_TOPIC = 0x08
CORRELATION_DATA = 0x09
SUBSCRIPTION_ID = 0x0B
SESSION_EXPIRY = 0x11
ASSIGNED_CLIENT_ID = 0x12
SERVER_KEEP_ALIVE = 0x13
AUTH_METHOD = 0x15
AUTH_DATA = 0x16
REQUEST_PROBLEM_INFO = 0x17
WILL_DELAY = 0x18
REQUEST_RESPONSE_INFO = 0x19
RESPONSE_INFO = 0x1A
SERVER_REFERENCE = 0x1C
REASON_STRING = 0x1F
RECEIVE_MAXIMUM = 0x21
TOPIC_ALIAS_MAXIMUM = 0x22
TOPIC_ALIAS = 0x23
MAXIMUM_QOS = 0x24
RETAIN_AVAILABLE = 0x25
USER_PROPERTY = 0x26
MAXIMUM_PACKET_SIZE = 0x27
WILDCARD_SUB_AVAILABLE = 0x28
SUB_ID_AVAILABLE = 0x29
SHARED_SUB_AVAILABLE = 0x2A

# identifier -> type: "byte", "u16", "u32", "varint", "str", "bin", "pair"
TYPES = {
    0x01: "byte", 0x02: "u32", 0x03: "str", 0x08: "str", 0x09: "bin", 0x0B: "varint",
    0x11: "u32", 0x12: "str", 0x13: "u16", 0x15: "str", 0x16: "bin", 0x17: "byte",
    0x18: "u32", 0x19: "byte", 0x1A: "str", 0x1C: "str", 0x1F: "str", 0x21: "u16",
    0x22: "u16", 0x23: "u16", 0x24: "byte", 0x25: "byte", 0x26: "pair", 0x27: "u32",
    0x28: "byte", 0x29: "byte", 0x2A: "byte",
}

# Properties a server may send in each packet (table 2-4), for checking
# what midge sends.
SERVER_ALLOWED = {
    "connack": (0x11, 0x12, 0x13, 0x15, 0x16, 0x1A, 0x1C, 0x1F, 0x21, 0x22, 0x24, 0x25, 0x26,
                0x27, 0x28, 0x29, 0x2A),
    "publish": (0x01, 0x02, 0x03, 0x08, 0x09, 0x0B, 0x23, 0x26),
    "puback": (0x1F, 0x26), "pubrec": (0x1F, 0x26), "pubrel": (0x1F, 0x26), "pubcomp": (0x1F, 0x26),
    "suback": (0x1F, 0x26), "unsuback": (0x1F, 0x26),
    "disconnect": (0x11, 0x1C, 0x1F, 0x26), "auth": (0x15, 0x16, 0x1F, 0x26),
}

AUTH = 15


def varint(n):
    """Variable byte integer, section 1.5.5."""
    return m.encode_remaining_length(n)


def read_varint(b, pos):
    value = 0
    mult = 1
    for i in range(4):
        if pos >= len(b):
            raise MalformedError("variable byte integer past end")
        c = b[pos]
        pos += 1
        value += (c & 0x7F) * mult
        if not c & 0x80:
            return value, pos
        mult *= 128
    raise MalformedError("variable byte integer over 4 bytes")


def prop(pid, value):
    """One property: identifier and value by its type."""
    t = TYPES[pid]
    out = bytes((pid,))
    if t == "byte":
        return out + bytes((value,))
    if t == "u16":
        return out + m.u16(value)
    if t == "u32":
        return out + bytes(((value >> 24) & 0xFF, (value >> 16) & 0xFF, (value >> 8) & 0xFF, value & 0xFF))
    if t == "varint":
        return out + varint(value)
    if t == "str":
        return out + m.utf8(value)
    if t == "bin":
        return out + m.binary(value)
    return out + m.utf8(value[0]) + m.utf8(value[1])


def props(plist=None, raw=None):
    """A property section: length then properties (raw: the properties'
    bytes exactly as given, for malformed ones)."""
    body = raw if raw is not None else b"".join(prop(p, v) for p, v in (plist or ()))
    return varint(len(body)) + body


def connect(client_id="", clean_start=True, keepalive=60, plist=None, will=None, username=None,
            password=None, protocol_level=5, raw_props=None):
    """CONNECT, section 3.1. will: (topic, payload, qos, retain, will plist)."""
    flags = 0
    if clean_start:
        flags |= 0x02
    if will is not None:
        flags |= 0x04 | (will[2] << 3) | (0x20 if will[3] else 0)
    if username is not None:
        flags |= 0x80
    if password is not None:
        flags |= 0x40
    body = m.utf8("MQTT") + bytes((protocol_level, flags)) + m.u16(keepalive)
    body += props(plist, raw_props)
    body += m.utf8(client_id)
    if will is not None:
        body += props(will[4] if len(will) > 4 else None)
        body += m.utf8(will[0]) + m.binary(will[1])
    if username is not None:
        body += m.utf8(username)
    if password is not None:
        body += m.binary(password)
    return m.packet(0x10, body)


def publish(topic, payload=b"", qos=0, retain=False, dup=False, pid=None, plist=None, raw_props=None):
    """PUBLISH, section 3.3."""
    body = m.utf8(topic)
    if qos:
        body += m.u16(pid if pid is not None else 1)
    body += props(plist, raw_props) + bytes(payload)
    return m.packet(m.publish_first_byte(qos, retain, dup), body)


def ack(first, pid, reason=None, plist=None):
    """PUBACK 0x40 / PUBREC 0x50 / PUBREL 0x62 / PUBCOMP 0x70, section
    3.4-3.7: reason and properties omitted when None."""
    body = m.u16(pid)
    if reason is not None:
        body += bytes((reason,))
        if plist is not None:
            body += props(plist)
    return m.packet(first, body)


def puback(pid, reason=None, plist=None):
    return ack(0x40, pid, reason, plist)


def pubrec(pid, reason=None, plist=None):
    return ack(0x50, pid, reason, plist)


def pubrel(pid, reason=None, plist=None):
    return ack(0x62, pid, reason, plist)


def pubcomp(pid, reason=None, plist=None):
    return ack(0x70, pid, reason, plist)


def subscribe(pid, filters, plist=None):
    """SUBSCRIBE, section 3.8: filters [(filter, options byte)]."""
    body = m.u16(pid) + props(plist)
    for f, o in filters:
        body += m.utf8(f) + bytes((o,))
    return m.packet(0x82, body)


def options(qos=0, no_local=False, retain_as_published=False, retain_handling=0):
    """A subscription options byte, section 3.8.3.1."""
    return qos | (4 if no_local else 0) | (8 if retain_as_published else 0) | (retain_handling << 4)


def unsubscribe(pid, filters, plist=None):
    body = m.u16(pid) + props(plist)
    for f in filters:
        body += m.utf8(f)
    return m.packet(0xA2, body)


def disconnect(reason=None, plist=None):
    """DISCONNECT, section 3.14: empty when reason is None."""
    if reason is None:
        return b"\xe0\x00"
    body = bytes((reason,))
    if plist is not None:
        body += props(plist)
    return m.packet(0xE0, body)


def auth(reason=0x18, plist=None):
    return m.packet(0xF0, bytes((reason,)) + props(plist))


# --- parser ----------------------------------------------------------------------

def read_props(body, pos, where):
    n, pos = read_varint(body, pos)
    end = pos + n
    if end > len(body):
        raise MalformedError("properties past end of packet")
    out = []
    while pos < end:
        pid = body[pos]
        pos += 1
        t = TYPES.get(pid)
        if t is None:
            raise MalformedError("unknown property 0x%02x" % pid)
        if where is not None and pid not in SERVER_ALLOWED[where]:
            raise MalformedError("property 0x%02x not allowed in %s" % (pid, where))
        if t == "byte":
            v = body[pos]
            pos += 1
        elif t == "u16":
            v = (body[pos] << 8) | body[pos + 1]
            pos += 2
        elif t == "u32":
            v = int.from_bytes(bytes(body[pos:pos + 4]), "big")
            pos += 4
        elif t == "varint":
            v, pos = read_varint(body, pos)
        elif t == "str":
            v, pos = m._str(body, pos)
        elif t == "bin":
            v, pos = m._bin(body, pos)
        else:
            k, pos = m._str(body, pos)
            v, pos = m._str(body, pos)
            v = (k, v)
        out.append((pid, v))
    if pos != end:
        raise MalformedError("property runs past the property length")
    once = [p for p, v in out if p not in (USER_PROPERTY, SUBSCRIPTION_ID)]
    if len(once) != len(set(once)):
        raise MalformedError("a property twice: %r" % out)
    return out, end


def get(pkt, pid, default=None):
    """The value of the first property pid of a parsed packet."""
    for p, v in pkt["props"]:
        if p == pid:
            return v
    return default


def get_all(pkt, pid):
    return [v for p, v in pkt["props"] if p == pid]


NAMES = dict(m.TYPE_NAMES)
NAMES[AUTH] = "auth"


def parse(buf):
    """Decode the first (server-sent) MQTT 5 packet in buf: (dict,
    consumed) or (None, 0); the framing is mqttspec's."""
    return m.parse(buf, decode)


def parse_all(buf):
    return m.parse_all(buf, decode)


def decode(ptype, flags, body):
    if ptype not in NAMES:
        raise MalformedError("reserved packet type %d" % ptype)
    name = NAMES[ptype]
    pkt = {"type": name, "flags": flags, "props": []}
    n = len(body)
    if ptype == m.CONNACK:
        if n < 2 or body[0] & 0xFE:
            raise MalformedError("CONNACK flags")
        pkt["session_present"] = body[0] & 1
        pkt["rc"] = body[1]
        if pkt["rc"] >= 0x80 and pkt["session_present"]:
            raise MalformedError("session present on a refusal [MQTT-3.2.2-6]")
        pkt["props"], pos = read_props(body, 2, "connack") if n > 2 else ([], 2)
        if pos != n:
            raise MalformedError("bytes after CONNACK properties")
        return pkt
    if ptype == m.PUBLISH:
        qos = (flags >> 1) & 3
        if qos == 3 or (qos == 0 and flags & 8):
            raise MalformedError("PUBLISH flags")
        topic, pos = m._str(body, 0)
        pid = None
        if qos:
            pid, pos = m._pid(body, pos)
        pkt["props"], pos = read_props(body, pos, "publish")
        pkt.update(topic=topic, qos=qos, retain=flags & 1, dup=(flags >> 3) & 1, pid=pid,
                   payload=bytes(body[pos:]))
        return pkt
    if ptype in (m.PUBACK, m.PUBREC, m.PUBREL, m.PUBCOMP):
        if flags != (2 if ptype == m.PUBREL else 0):
            raise MalformedError("%s flags" % name)
        pkt["pid"], pos = m._pid(body, 0)
        pkt["reason"] = body[2] if n > 2 else 0
        if n > 3:
            pkt["props"], pos = read_props(body, 3, name)
            if pos != n:
                raise MalformedError("bytes after %s properties" % name)
        return pkt
    if ptype in (m.SUBACK, m.UNSUBACK):
        pkt["pid"], pos = m._pid(body, 0)
        pkt["props"], pos = read_props(body, pos, name)
        pkt["codes"] = list(body[pos:])
        if not pkt["codes"]:
            raise MalformedError("%s without reason codes" % name)
        return pkt
    if ptype == m.DISCONNECT or ptype == AUTH:
        pkt["reason"] = body[0] if n else 0
        if n > 1:
            pkt["props"], pos = read_props(body, 1, name)
            if pos != n:
                raise MalformedError("bytes after %s properties" % name)
        return pkt
    if ptype == m.PINGRESP:
        if n:
            raise MalformedError("PINGRESP with a body")
        return pkt
    raise MalformedError("%s is not sent by a server" % name)
