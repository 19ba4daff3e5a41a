# Pure MQTT 3.1.1 encoding and decoding over bytes. No I/O, no state.
#
# Decoders take the receive buffer and the [start, end) span of one packet's
# variable header + payload (as found by frame_end) and either return the
# decoded fields or raise ProtocolError; they never read outside the span.
# Encoders return bytes ready for the socket.
from .compat import const
from .protocol import (
    ProtocolError, RC_MALFORMED, RC_PROTOCOL_ERROR, RC_PACKET_TOO_LARGE,
    RC_TOPIC_FILTER_INVALID, LEVEL_31, LEVEL_311, LEVEL_5,
)

_MAX_RL_BYTES = const(4)  # remaining length is at most 4 bytes [MQTT-2.2.3]


def frame_end(buf, pos, max_packet_size):
    """Find the packet starting at buf[pos], without allocating (the read
    loop calls this once per packet).

    Returns -1 when more bytes are needed, else one small int packing where
    the packet ends and where its body starts: (end << 3) | (start - pos)
    (the fixed header is 2..5 bytes). Raises ProtocolError for a remaining
    length longer than 4 bytes and, as soon as the length is known, for a
    packet larger than max_packet_size (header included), so an oversize
    packet is never buffered."""
    end = len(buf)
    i = pos + 1
    length = 0
    shift = 0
    while True:
        if i >= end:
            return -1
        b = buf[i]
        length |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            break
        shift += 7
        if i - pos > _MAX_RL_BYTES:
            raise ProtocolError("remaining length longer than 4 bytes")
    if i + length - pos > max_packet_size:
        raise ProtocolError("packet of %d bytes over max_packet_size" % (i + length - pos),
                            RC_PACKET_TOO_LARGE, "oversize_packets")
    if i + length > end:
        return -1
    return ((i + length) << 3) | (i - pos)


def encode_length(n):
    """Remaining-length field for n bytes [MQTT-2.2.3]."""
    if n < 128:
        return bytes((n,))
    out = bytearray()
    put_varint(out, n)
    return bytes(out)


def put_varint(out, n):
    """Append a variable byte integer [MQTT-1.5.5] (a remaining length,
    an MQTT 5 property length or value) to the bytearray `out`."""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return


# --- strings -----------------------------------------------------------------

def _utf8_strict(b, i=0, n=-1, nul_ok=True):
    """Raise unless b[i:n] is well-formed UTF-8 without surrogates or
    overlong forms [MQTT-1.5.3-1] (and, unless nul_ok, without U+0000
    [MQTT-1.5.3-2]). MicroPython's decoder accepts both, so check here.
    Allocates nothing."""
    if n < 0:
        n = len(b)
    while i < n:
        c = b[i]
        if c < 0x80:
            if not c and not nul_ok:
                raise ProtocolError("U+0000 in a UTF-8 string")
            i += 1
            continue
        if 0xC2 <= c <= 0xDF:
            need, lo, hi = 1, 0x80, 0xBF
        elif c == 0xE0:
            need, lo, hi = 2, 0xA0, 0xBF
        elif c == 0xED:
            need, lo, hi = 2, 0x80, 0x9F  # excludes U+D800..U+DFFF
        elif 0xE1 <= c <= 0xEF:
            need, lo, hi = 2, 0x80, 0xBF
        elif c == 0xF0:
            need, lo, hi = 3, 0x90, 0xBF
        elif 0xF1 <= c <= 0xF3:
            need, lo, hi = 3, 0x80, 0xBF
        elif c == 0xF4:
            need, lo, hi = 3, 0x80, 0x8F
        else:
            raise ProtocolError("invalid UTF-8")
        if i + need >= n:
            raise ProtocolError("truncated UTF-8")
        c2 = b[i + 1]
        if c2 < lo or c2 > hi:
            raise ProtocolError("invalid UTF-8")
        for k in range(i + 2, i + 1 + need):
            if b[k] & 0xC0 != 0x80:
                raise ProtocolError("invalid UTF-8")
        i += 1 + need


def decode_utf8(b):
    """Bytes of an MQTT UTF-8 string -> str. Raises ProtocolError for
    ill-formed UTF-8 and for U+0000 [MQTT-1.5.3-2]."""
    try:
        s = str(b, "utf-8")
    except UnicodeError:
        raise ProtocolError("invalid UTF-8")
    if len(s) != len(b):  # not pure ASCII: MicroPython needs the strict check
        _utf8_strict(b)
    if "\x00" in s:
        raise ProtocolError("U+0000 in a UTF-8 string")
    return s


def _field_end(buf, pos, end):
    """End of the two-byte length + data field at pos [MQTT-1.5.3],
    checked to lie inside the packet; allocates nothing."""
    if pos + 2 > end:
        raise ProtocolError("truncated length field")
    k = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
    if k > end:
        raise ProtocolError("string runs past the packet")
    return k


field_end = _field_end


def check_utf8(buf, a, b):
    """Raise unless buf[a:b] is a well-formed MQTT UTF-8 string (no
    U+0000); allocates nothing."""
    _utf8_strict(buf, a, b, False)


def check_controls(b):
    """Raise unless the (well-formed UTF-8) bytes b are free of control
    characters U+0001..U+001F and U+007F..U+009F. The specification allows
    a receiver to close the connection for them [MQTT-1.5.4-1 note]; a hub
    does, for topics, filters, client ids, user names and will topics,
    where they are never meant and could confuse a display or a log. C-level
    scans first: min() and `in` over bytes allocate nothing."""
    if b and (min(b) < 0x20 or 0x7F in b):
        raise ProtocolError("control character in a string")
    if 0xC2 in b:  # U+0080..U+009F are C2 80..C2 9F
        for i in range(len(b) - 1):
            if b[i] == 0xC2 and b[i + 1] < 0xA0:
                raise ProtocolError("control character in a string")


def _read_bytes(buf, pos, end):
    """Two-byte length + data [MQTT-1.5.3]. Returns (bytes, next_pos)."""
    k = _field_end(buf, pos, end)
    return bytes(buf[pos + 2:k]), k


def _read_str(buf, pos, end):
    b, pos = _read_bytes(buf, pos, end)
    return decode_utf8(b), pos


def _read_name(buf, pos, end):
    """A string that names something (client id, user name, will topic):
    _read_str without control characters."""
    b, pos = _read_bytes(buf, pos, end)
    s = decode_utf8(b)
    check_controls(b)
    return s, pos


def _skip_str(buf, pos, end):
    """Validate the MQTT UTF-8 string at pos without allocating; returns
    the position after it."""
    k = _field_end(buf, pos, end)
    _utf8_strict(buf, pos + 2, k, False)
    return k


def str_len(buf, pos):
    """Byte length of the string at pos of a body already validated by
    check_subscribe / check_unsubscribe (its bytes follow at pos + 2)."""
    return (buf[pos] << 8) | buf[pos + 1]


def str_at(buf, pos, n):
    """The validated string of n bytes at buf[pos:pos + n] as str."""
    return str(bytes(buf[pos:pos + n]), "utf-8")


def _read_pid(buf, pos, end):
    if pos + 2 > end:
        raise ProtocolError("truncated packet identifier")
    pid = (buf[pos] << 8) | buf[pos + 1]
    if pid == 0:
        raise ProtocolError("packet identifier 0", RC_PROTOCOL_ERROR)  # [MQTT-2.3.1-1]
    return pid


read_pid = _read_pid


# --- CONNECT -------------------------------------------------------------------

class Connect:
    """A decoded CONNECT. `level_ok` is False when the protocol name was
    valid but the level is not one we speak: the caller answers CONNACK 1
    [MQTT-3.1.2-2] and the other fields are then unset. MQTT 5: `clean` is
    Clean Start, `props` and `will_props` the decoded properties
    (props.Props); both None for 3.1 / 3.1.1."""
    props = None
    will_props = None

    def __init__(self):
        self.level = 0
        self.level_ok = False
        self.clean = True
        self.keepalive_s = 0
        self.client_id = ""
        self.will_topic = None
        self.will_payload = None
        self.will_qos = 0
        self.will_retain = False
        self.username = None
        self.password = None


def decode_connect(flags, buf, pos, end):
    if flags:
        raise ProtocolError("CONNECT fixed-header flags not 0")  # [MQTT-2.2.2-2]
    c = Connect()
    name, pos = _read_bytes(buf, pos, end)
    if pos + 4 > end:
        raise ProtocolError("truncated CONNECT")
    level = buf[pos]
    if name == b"MQTT":
        c.level_ok = level == LEVEL_311 or level == LEVEL_5
    elif name == b"MQIsdp":
        c.level_ok = level == LEVEL_31
    else:
        raise ProtocolError("unknown protocol name", RC_PROTOCOL_ERROR)  # [MQTT-3.1.2-1]
    c.level = level
    if not c.level_ok:
        return c
    cf = buf[pos + 1]
    c.keepalive_s = (buf[pos + 2] << 8) | buf[pos + 3]
    pos += 4
    if level == LEVEL_5:
        from . import props  # (imported here: a 3.1.1-only broker never loads it)
        c.props = props.Props()
        pos = props.decode(buf, pos, end, 1, c.props)
    if cf & 0x01:
        raise ProtocolError("CONNECT reserved flag set")  # [MQTT-3.1.2-3]
    c.clean = bool(cf & 0x02)
    will = cf & 0x04
    will_qos = (cf >> 3) & 3
    will_retain = bool(cf & 0x20)
    has_password = cf & 0x40
    has_user = cf & 0x80
    if will:
        if will_qos == 3:
            raise ProtocolError("will QoS 3")  # [MQTT-3.1.2-14]
    elif will_qos or will_retain:
        raise ProtocolError("will QoS/retain without will flag")  # [MQTT-3.1.2-11], [MQTT-3.1.2-13]
    if has_password and not has_user:
        raise ProtocolError("password flag without user name flag")  # [MQTT-3.1.2-22]
    c.client_id, pos = _read_name(buf, pos, end)  # [MQTT-3.1.3-4]
    if will:
        if level == LEVEL_5:
            c.will_props = props.Props()
            pos = props.decode(buf, pos, end, props.WILL, c.will_props)
        c.will_topic, pos = _read_name(buf, pos, end)
        c.will_payload, pos = _read_bytes(buf, pos, end)
        c.will_qos = will_qos
        c.will_retain = will_retain
        wp = c.will_props
        if wp is not None and wp.payload_utf8:
            check_payload_utf8(c.will_payload)
    if has_user:
        c.username, pos = _read_name(buf, pos, end)
    if has_password:
        c.password, pos = _read_bytes(buf, pos, end)
    if pos != end:
        raise ProtocolError("bytes after the CONNECT payload")
    return c


# --- PUBLISH -----------------------------------------------------------------------

class Publish:
    """The fields of the PUBLISH decode_publish() decoded last. One object
    reused for every packet: decoding allocates only the topic and the
    payload (a tuple of six would be a multi-block allocation per message,
    and those are slow on MicroPython: see DESIGN.md, Speed)."""
    topic = ""          # str, valid UTF-8 without U+0000
    topic_bytes = b""   # the same topic as received
    qos = 0
    retain = False
    dup = False
    pid = 0             # 0 for QoS 0
    payload = b""


_publish = Publish()


def check_payload_utf8(b):
    """A payload sent with Payload Format Indicator 1 must be UTF-8
    [MQTT-3.3.2-4]: 0x99 otherwise."""
    try:
        _utf8_strict(b)
    except ProtocolError:
        raise ProtocolError("payload is not UTF-8 as its format indicator says", 0x99)


def decode_publish(flags, buf, pos, end, props=None):
    """Decode a PUBLISH body into the shared Publish object and return it;
    its fields are valid until the next call. MQTT 5: `props` (a
    props.Props) receives its properties, and the topic may be empty (a
    topic alias stands for it: wire5 resolves it)."""
    qos = (flags >> 1) & 3
    if qos == 3:
        raise ProtocolError("PUBLISH QoS 3")  # [MQTT-3.3.1-4]
    dup = flags & 0x08
    if dup and not qos:
        raise ProtocolError("DUP set on QoS 0 PUBLISH")  # [MQTT-3.3.1-2]
    p = _publish
    # _read_bytes and _read_pid inline: this runs for every QoS 1 and 2
    # message, and a call costs more than these lines (DESIGN.md, "Hot paths")
    if pos + 2 > end:
        raise ProtocolError("truncated length field")
    k = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
    if k > end:
        raise ProtocolError("string runs past the packet")
    tb = bytes(buf[pos + 2:k])
    pos = k
    p.topic = decode_utf8(tb)
    check_controls(tb)
    p.topic_bytes = tb
    pid = 0
    if qos:
        if pos + 2 > end:
            raise ProtocolError("truncated packet identifier")
        pid = (buf[pos] << 8) | buf[pos + 1]
        if pid == 0:
            raise ProtocolError("packet identifier 0", RC_PROTOCOL_ERROR)  # [MQTT-2.3.1-1]
        pos += 2
    if props is not None:
        from . import props as pr
        pos = pr.decode(buf, pos, end, 3, props)
    p.qos = qos
    p.retain = bool(flags & 0x01)
    p.dup = bool(dup)
    p.pid = pid
    p.payload = bytes(buf[pos:end])
    return p


# --- acknowledgements, SUBSCRIBE, UNSUBSCRIBE, PINGREQ, DISCONNECT ------------------

def decode_ack(ptype, flags, buf, pos, end):
    """PUBACK, PUBREC, PUBREL, PUBCOMP (packet type `ptype`) of MQTT 3.1
    and 3.1.1: exactly a packet identifier; PUBREL's flags are 0010
    [MQTT-3.6.1-1], the others' 0 [MQTT-2.2.2-2]."""
    if flags != (2 if ptype == 6 else 0):
        raise ProtocolError("wrong fixed-header flags")
    if end - pos != 2:
        raise ProtocolError("acknowledgement length not 2")
    pid = (buf[pos] << 8) | buf[pos + 1]
    if pid == 0:
        raise ProtocolError("packet identifier 0", RC_PROTOCOL_ERROR)  # [MQTT-2.3.1-1]
    return pid


def _skip_filter(buf, pos, end):
    """_skip_str for a topic filter: one of zero length is malformed
    [MQTT-4.7.3-1], as are control characters (check_controls)."""
    k = _skip_str(buf, pos, end)
    if k == pos + 2:
        raise ProtocolError("zero-length topic filter", RC_TOPIC_FILTER_INVALID)
    for i in range(pos + 2, k):  # check_controls, without a copy (SUBSCRIBE is rare)
        c = buf[i]
        if c < 0x20 or c == 0x7F or (c == 0xC2 and buf[i + 1] < 0xA0):
            raise ProtocolError("control character in a topic filter")
    return k


def check_subscribe(flags, buf, pos, end, props=None):
    """Validate a whole SUBSCRIBE body (a malformed one changes nothing:
    it is refused before any filter is applied). MQTT 5: `props` is the
    props.Props its properties are decoded into (None for 3.1.1, which has
    none). Returns (packet id, position of the first filter); the
    (filter, options byte) pairs follow, read with str_len / str_at."""
    if flags != 0x02:
        raise ProtocolError("SUBSCRIBE flags not 0010")  # [MQTT-3.8.1-1]
    pid = _read_pid(buf, pos, end)
    pos += 2
    v5 = props is not None
    if v5:
        from . import props as p
        pos = p.decode(buf, pos, end, 8, props)
    first = pos
    if pos >= end:
        raise ProtocolError("SUBSCRIBE without filters", RC_PROTOCOL_ERROR)  # [MQTT-3.8.3-3]
    while pos < end:
        pos = _skip_filter(buf, pos, end)
        if pos >= end:
            raise ProtocolError("SUBSCRIBE filter without QoS byte")
        o = buf[pos]
        if o & 0xC0 if v5 else o > 2:
            raise ProtocolError("SUBSCRIBE options byte invalid")  # [MQTT-3.8.3-4], [MQTT-3.8.3-5]
        if o & 3 == 3:
            raise ProtocolError("SUBSCRIBE QoS 3", RC_MALFORMED)
        if v5 and o & 0x30 == 0x30:
            raise ProtocolError("SUBSCRIBE retain handling 3", RC_PROTOCOL_ERROR)
        pos += 1
    return pid, first


def check_unsubscribe(flags, buf, pos, end, props=None):
    """As check_subscribe, for UNSUBSCRIBE (filters without a QoS byte)."""
    if flags != 0x02:
        raise ProtocolError("UNSUBSCRIBE flags not 0010")  # [MQTT-3.10.1-1]
    pid = _read_pid(buf, pos, end)
    pos += 2
    if props is not None:
        from . import props as p
        pos = p.decode(buf, pos, end, 10, props)
    first = pos
    if pos >= end:
        raise ProtocolError("UNSUBSCRIBE without filters", RC_PROTOCOL_ERROR)  # [MQTT-3.10.3-2]
    while pos < end:
        pos = _skip_filter(buf, pos, end)
    return pid, first


def check_empty(flags, pos, end):
    """PINGREQ and DISCONNECT: no flags, no body."""
    if flags or pos != end:
        raise ProtocolError("PINGREQ/DISCONNECT with flags or a body")


# --- encoders -----------------------------------------------------------------------

def connack(session_present, rc):
    return bytes((0x20, 2, 1 if session_present else 0, rc))


def _ack(first, pid):
    return bytes((first, 2, pid >> 8, pid & 0xFF))


def puback(pid):
    return _ack(0x40, pid)


def pubrec(pid):
    return _ack(0x50, pid)


def pubrel(pid):
    return _ack(0x62, pid)  # PUBREL flags are 0010 [MQTT-3.6.1-1]


def pubcomp(pid):
    return _ack(0x70, pid)


def suback(pid, codes):
    return bytes((0x90,)) + encode_length(2 + len(codes)) + bytes((pid >> 8, pid & 0xFF)) + bytes(codes)


def unsuback(pid):
    return _ack(0xB0, pid)


PINGRESP = b"\xd0\x00"


def publish_head(topic_bytes, payload_len, qos, retain, dup, pid):
    """The head of a PUBLISH (fixed header, topic, packet id; pid unused at
    QoS 0) in ONE new bytearray: a delivery is this head and the message's
    own payload object, sent as two parts, so no buffer the size of the
    payload is built per delivery (a fragmented device heap fails those
    first)."""
    n = len(topic_bytes)
    rl = 2 + n + payload_len + (2 if qos else 0)
    k = 1 if rl < 0x80 else 2 if rl < 0x4000 else 3 if rl < 0x200000 else 4
    p = bytearray(1 + k + 2 + n + (2 if qos else 0))
    p[0] = 0x30 | (qos << 1) | (1 if retain else 0) | (0x08 if dup else 0)
    i = 1
    while rl >= 0x80:
        p[i] = (rl & 0x7F) | 0x80
        rl >>= 7
        i += 1
    p[i] = rl
    p[i + 1] = n >> 8
    p[i + 2] = n & 0xFF
    i += 3
    p[i:i + n] = topic_bytes
    if qos:
        p[i + n] = pid >> 8
        p[i + n + 1] = pid & 0xFF
    return p
