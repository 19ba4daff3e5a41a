# MQTT 5.0 properties (section 2.2.2): decoding with validation, and the
# small encoders wire5.py builds packets with. No state of its own.
#
# A property section is a variable byte integer length, then properties,
# each an identifier (a variable byte integer; every defined one fits one
# byte) and a value of the identifier's type. decode() checks, without
# allocating for what it skips:
#   - the identifier is defined and allowed in this packet type, and the
#     value has its type's length          -> malformed (0x81) [MQTT-2.2.2-2]
#   - no property but User Property (and Subscription Identifier in an
#     outgoing PUBLISH) appears twice       -> protocol error (0x82)
#   - strings are well-formed UTF-8 without U+0000 [MQTT-1.5.4-1..2]
#   - the values the specification bounds (a byte property of 0 or 1, a
#     Receive Maximum or Topic Alias of 0, ...)  -> protocol error (0x82)
# and stores what the broker acts on into a Props object. The properties a
# broker forwards unchanged with an application message (Payload Format
# Indicator, Content Type, Response Topic, Correlation Data, User
# Properties [MQTT-3.3.2-15..20]) are kept as their own bytes, in order,
# duplicates included (`fwd`): one bytes object per message that has any,
# none for one that has none.
from .compat import const
from .protocol import ProtocolError, RC_MALFORMED, RC_PROTOCOL_ERROR
from . import codec

PAYLOAD_FORMAT = const(0x01)
MESSAGE_EXPIRY = const(0x02)
CONTENT_TYPE = const(0x03)
RESPONSE_TOPIC = const(0x08)
CORRELATION_DATA = const(0x09)
SUBSCRIPTION_ID = const(0x0B)
SESSION_EXPIRY = const(0x11)
ASSIGNED_CLIENT_ID = const(0x12)
SERVER_KEEP_ALIVE = const(0x13)
AUTH_METHOD = const(0x15)
AUTH_DATA = const(0x16)
REQUEST_PROBLEM_INFO = const(0x17)
WILL_DELAY = const(0x18)
REQUEST_RESPONSE_INFO = const(0x19)
RESPONSE_INFO = const(0x1A)
SERVER_REFERENCE = const(0x1C)
REASON_STRING = const(0x1F)
RECEIVE_MAXIMUM = const(0x21)
TOPIC_ALIAS_MAXIMUM = const(0x22)
TOPIC_ALIAS = const(0x23)
MAXIMUM_QOS = const(0x24)
RETAIN_AVAILABLE = const(0x25)
USER_PROPERTY = const(0x26)
MAXIMUM_PACKET_SIZE = const(0x27)
WILDCARD_SUB_AVAILABLE = const(0x28)
SUB_ID_AVAILABLE = const(0x29)
SHARED_SUB_AVAILABLE = const(0x2A)

# Where a property may appear: bit n is packet type n (1 CONNECT .. 15
# AUTH); bit 0 stands for the will properties of a CONNECT.
WILL = const(0)

# Value types, one letter per identifier 0x00..0x2A ('-': not defined):
# b byte, h two-byte integer, i four-byte integer, v variable byte
# integer, s UTF-8 string, d binary data, p UTF-8 string pair.
_TYPES = b"-bis----sd-v-----ish-sdbibs-s--s-hhhbbpibbb"

# The packet types each identifier is allowed in, two bytes per identifier
# (big-endian bit masks as above), 0x00..0x2A.
_P = 1 << 3                               # PUBLISH
_W = 1 << WILL
_ACKS = (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7)
_ALL = 0xFFFE | _W
_WHERE = (
    0, _P | _W, _P | _W, _P | _W, 0, 0, 0, 0, _P | _W, _P | _W, 0,
    _P | (1 << 8),                        # 0x0B subscription identifier: PUBLISH, SUBSCRIBE
    0, 0, 0, 0, 0,
    (1 << 1) | (1 << 2) | (1 << 14),      # 0x11 session expiry: CONNECT, CONNACK, DISCONNECT
    1 << 2, 1 << 2,                       # 0x12 assigned client id, 0x13 server keep alive
    0,
    (1 << 1) | (1 << 2) | (1 << 15),      # 0x15 authentication method
    (1 << 1) | (1 << 2) | (1 << 15),      # 0x16 authentication data
    1 << 1,                               # 0x17 request problem information
    _W,                                   # 0x18 will delay interval
    1 << 1,                               # 0x19 request response information
    1 << 2,                               # 0x1A response information
    0,
    (1 << 2) | (1 << 14),                 # 0x1C server reference
    0, 0,
    (1 << 2) | _ACKS | (1 << 9) | (1 << 11) | (1 << 14) | (1 << 15),  # 0x1F reason string
    0,
    (1 << 1) | (1 << 2),                  # 0x21 receive maximum
    (1 << 1) | (1 << 2),                  # 0x22 topic alias maximum
    _P,                                   # 0x23 topic alias
    1 << 2, 1 << 2,                       # 0x24 maximum QoS, 0x25 retain available
    _ALL,                                 # 0x26 user property
    (1 << 1) | (1 << 2),                  # 0x27 maximum packet size
    1 << 2, 1 << 2, 1 << 2,               # 0x28..0x2A availability flags
)

# Forwarded with an application message as they were received.
_FORWARD = (1 << PAYLOAD_FORMAT) | (1 << CONTENT_TYPE) | (1 << RESPONSE_TOPIC) | \
    (1 << CORRELATION_DATA) | (1 << USER_PROPERTY)


class Props:
    """What decode() found, for the properties the broker acts on. One
    object per use, reset by decode(); absent values are the defaults."""

    def reset(self):
        self.fwd = None            # forwarded properties, their bytes in order, or None
        self.payload_utf8 = False  # Payload Format Indicator 1
        self.expiry_s = -1         # Message Expiry Interval, -1: none
        self.alias = 0             # Topic Alias, 0: none
        self.sub_id = 0            # Subscription Identifier (SUBSCRIBE), 0: none
        self.session_expiry_s = -1  # Session Expiry Interval, -1: absent
        self.receive_max = 65535
        self.alias_max = 0         # Topic Alias Maximum
        self.max_packet = 0        # Maximum Packet Size, 0: no limit stated
        self.will_delay_s = 0
        self.request_response = False
        self.request_problem = True
        self.auth_method = None
        self.reason = None         # Reason String (received, only logged)
        return self


def varint(buf, pos, end):
    """A variable byte integer at pos [MQTT-1.5.5]: (value, next pos).
    Malformed if longer than 4 bytes or past end."""
    value = 0
    shift = 0
    while True:
        if pos >= end:
            raise ProtocolError("truncated variable byte integer", RC_MALFORMED)
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift > 21:
            raise ProtocolError("variable byte integer over 4 bytes", RC_MALFORMED)


def _int(buf, pos, n):
    v = 0
    for i in range(pos, pos + n):
        v = (v << 8) | buf[i]
    return v


def decode(buf, pos, end, where, out):
    """Decode the property section at buf[pos:end] of a packet of type
    `where` (1..15, or WILL) into `out` (a Props, reset here). Returns the
    position after the section. Raises ProtocolError as described at the
    top of this module."""
    n, pos = varint(buf, pos, end)
    stop = pos + n
    if stop > end:
        raise ProtocolError("properties run past the packet", RC_MALFORMED)
    out.reset()
    seen = 0        # bit per identifier seen (user properties excepted)
    fwd_start = -1  # start of a run of forwarded properties not yet copied
    fwd = None
    bit = 1 << where
    while pos < stop:
        pid = buf[pos]
        if pid > 0x2A or pid & 0x80 or not _WHERE[pid] & bit:
            raise ProtocolError("property 0x%02x not allowed here" % pid, RC_MALFORMED)
        t = _TYPES[pid]
        v = pos + 1
        if t == 0x62:      # b
            k = v + 1
        elif t == 0x68:    # h
            k = v + 2
        elif t == 0x69:    # i
            k = v + 4
        elif t == 0x76:    # v
            value, k = varint(buf, v, stop)
        elif t == 0x70:    # p: two strings
            k = codec.field_end(buf, v, stop)
            codec.check_utf8(buf, v + 2, k)
            k2 = codec.field_end(buf, k, stop)
            codec.check_utf8(buf, k + 2, k2)
            k = k2
        else:              # s, d
            k = codec.field_end(buf, v, stop)
            if t == 0x73:
                codec.check_utf8(buf, v + 2, k)
        if k > stop:
            raise ProtocolError("property value runs past the properties", RC_MALFORMED)
        if pid != USER_PROPERTY:
            m = 1 << pid
            if seen & m:
                raise ProtocolError("property 0x%02x twice" % pid, RC_PROTOCOL_ERROR)
            seen |= m
        if (1 << pid) & _FORWARD:
            if fwd_start < 0:
                fwd_start = pos
        else:
            if fwd_start >= 0:
                fwd = _append(fwd, buf, fwd_start, pos)
                fwd_start = -1
            _store(out, pid, buf, v, k, value if t == 0x76 else 0)
        if pid == PAYLOAD_FORMAT:
            f = buf[v]
            if f > 1:
                raise ProtocolError("payload format indicator not 0 or 1", RC_PROTOCOL_ERROR)
            out.payload_utf8 = f == 1
        pos = k
    if pos != stop:
        raise ProtocolError("properties length mismatch", RC_MALFORMED)
    if fwd_start >= 0:
        fwd = _append(fwd, buf, fwd_start, stop)
    out.fwd = fwd
    return stop


def _append(fwd, buf, a, b):
    part = bytes(buf[a:b])
    return part if fwd is None else fwd + part


def _store(out, pid, buf, v, k, value):
    if pid == MESSAGE_EXPIRY:
        out.expiry_s = _int(buf, v, 4)
    elif pid == TOPIC_ALIAS:
        out.alias = _int(buf, v, 2)
        if not out.alias:
            raise ProtocolError("topic alias 0", RC_PROTOCOL_ERROR)  # [MQTT-3.3.2-8]
    elif pid == SUBSCRIPTION_ID:
        if not value:
            raise ProtocolError("subscription identifier 0", RC_PROTOCOL_ERROR)  # [MQTT-3.8.2-1]
        out.sub_id = value
    elif pid == SESSION_EXPIRY:
        out.session_expiry_s = _int(buf, v, 4)
    elif pid == RECEIVE_MAXIMUM:
        out.receive_max = _int(buf, v, 2)
        if not out.receive_max:
            raise ProtocolError("receive maximum 0", RC_PROTOCOL_ERROR)  # [MQTT-3.1.2.11.3]
    elif pid == TOPIC_ALIAS_MAXIMUM:
        out.alias_max = _int(buf, v, 2)
    elif pid == MAXIMUM_PACKET_SIZE:
        out.max_packet = _int(buf, v, 4)
        if not out.max_packet:
            raise ProtocolError("maximum packet size 0", RC_PROTOCOL_ERROR)  # [MQTT-3.1.2.11.4]
    elif pid == WILL_DELAY:
        out.will_delay_s = _int(buf, v, 4)
    elif pid == REQUEST_RESPONSE_INFO or pid == REQUEST_PROBLEM_INFO:
        f = buf[v]
        if f > 1:
            raise ProtocolError("request flag not 0 or 1", RC_PROTOCOL_ERROR)  # [MQTT-3.1.2.11.6..7]
        if pid == REQUEST_RESPONSE_INFO:
            out.request_response = f == 1
        else:
            out.request_problem = f == 1
    elif pid == AUTH_METHOD:
        out.auth_method = str(bytes(buf[v + 2:k]), "utf-8")
    elif pid == REASON_STRING:
        out.reason = str(bytes(buf[v + 2:k]), "utf-8")
    # authentication data, user-facing strings of server packets: checked, not kept


# --- encoding -----------------------------------------------------------------

put_varint = codec.put_varint


def varint_len(n):
    return 1 if n < 0x80 else 2 if n < 0x4000 else 3 if n < 0x200000 else 4


def put_byte(out, pid, v):
    out.append(pid)
    out.append(v)


def put_u16(out, pid, v):
    out.append(pid)
    out.append(v >> 8)
    out.append(v & 0xFF)


def put_u32(out, pid, v):
    out.append(pid)
    out.append((v >> 24) & 0xFF)
    out.append((v >> 16) & 0xFF)
    out.append((v >> 8) & 0xFF)
    out.append(v & 0xFF)


def put_str(out, pid, b):
    """A string or binary property; b is bytes."""
    out.append(pid)
    out.append(len(b) >> 8)
    out.append(len(b) & 0xFF)
    out.extend(b)
