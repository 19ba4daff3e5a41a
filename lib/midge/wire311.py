# The MQTT 3.1 / 3.1.1 wire: decisions of the core in, bytes out.
#
# The core (broker.py, delivery.py) never writes a packet itself: it decides
# (accept with session present, acknowledge packet id P with reason R, send
# message M at QoS q, grant these subscriptions, refuse with reason R) and
# asks the connection's wire for the bytes: `conn.wire.<decision>(...)`.
# Every method returns the packet as one bytes-like object, or None where
# the protocol has nothing to say (3.1.1 has no server DISCONNECT).
#
# Reasons are the MQTT 5 reason codes of protocol.py; this wire maps them to
# what 3.1.1 can say. One instance is shared by every 3.1.1 connection (it
# holds no per-connection state: an idle 3.1.1 client pays nothing for it);
# 3.1 ("MQIsdp") differs only in its CONNACK. The MQTT 5 wire (wire5.py)
# keeps per-connection state and is one object per connection.
from . import codec
from .compat import const
from .protocol import (
    LEVEL_31, LEVEL_311, SUBACK_FAILURE,
    RC_UNSUPPORTED_PROTOCOL, RC_CLIENT_ID_NOT_VALID, RC_BAD_CREDENTIALS, RC_NOT_AUTHORIZED,
    RC_BAD_AUTH_METHOD, RC_BANNED,
)

# MQTT 3.1.1 CONNACK return codes (table 3.1)
_ACCEPTED = const(0)
_BAD_PROTOCOL = const(1)
_ID_REJECTED = const(2)
_UNAVAILABLE = const(3)
_BAD_CREDENTIALS = const(4)
_NOT_AUTHORIZED = const(5)

# first bytes of the four acknowledgements (PUBREL's flags are 0010 [MQTT-3.6.1-1])
PUBACK = 0x40
PUBREC = 0x50
PUBREL = 0x62
PUBCOMP = 0x70

_PINGRESP = b"\xd0\x00"


def connack_code(reason):
    """The 3.1.1 CONNACK return code (table 3.1) for a reason code."""
    if reason == 0:
        return _ACCEPTED
    if reason == RC_UNSUPPORTED_PROTOCOL:
        return _BAD_PROTOCOL
    if reason == RC_CLIENT_ID_NOT_VALID:
        return _ID_REJECTED
    if reason == RC_BAD_CREDENTIALS:
        return _BAD_CREDENTIALS
    if reason == RC_NOT_AUTHORIZED or reason == RC_BAD_AUTH_METHOD or reason == RC_BANNED:
        return _NOT_AUTHORIZED
    return _UNAVAILABLE  # server unavailable, busy, quota exceeded, ...


def _publish_head(msg, qos, retain, dup, pid, extra=None, now_ms=0):
    """Wire311.publish_head. extra (MQTT 5 per-delivery properties) and
    now_ms (for the expiry left) have no place in 3.1.1."""
    return codec.publish_head(msg.topic_bytes, len(msg.payload), qos, retain, dup, pid)


class Wire311:
    level = LEVEL_311
    v5 = False            # no properties, no reason codes on acknowledgements
    max_packet_size = 0   # the client states no limit (only MQTT 5 clients do)

    # --- decoding (the same decoded objects for every protocol level) ---

    ack_reason = 0  # 3.1.1 acknowledgements carry no reason

    # The per-message methods are the codec's functions themselves, not
    # methods that call them: a Python call per message costs more than a
    # small packet's decoding (docs/DESIGN.md, "Hot paths").

    # decode_publish(flags, buf, start, end) -> codec.Publish
    decode_publish = staticmethod(codec.decode_publish)

    # decode_ack(ptype, flags, buf, start, end) -> packet id: PUBACK /
    # PUBREC / PUBREL / PUBCOMP are exactly a packet id
    decode_ack = staticmethod(codec.decode_ack)

    def sub_props(self):
        return None  # SUBSCRIBE / UNSUBSCRIBE have no properties

    def decode_disconnect(self, flags, buf, start, end):
        """(reason, session expiry -1): 3.1.1 DISCONNECT is empty."""
        codec.check_empty(flags, start, end)
        return 0, -1

    # --- encoding ---

    def connack(self, present, reason, broker=None, session=None):
        """Accepted (reason 0) with session present, or refused: then
        session present is 0 [MQTT-3.2.2-4]."""
        return bytes((0x20, 2, 1 if present and not reason else 0, connack_code(reason)))

    def ack(self, first, pid, reason=0):
        """PUBACK / PUBREC / PUBREL / PUBCOMP (first byte from this
        module); 3.1.1 carries no reason [MQTT-3.4.2]."""
        return bytes((first, 2, pid >> 8, pid & 0xFF))

    def suback(self, pid, codes):
        """codes: one per filter, granted QoS or a reason >= 0x80; every
        failure is 0x80 in 3.1.1 [MQTT-3.9.3]. Rewrites `codes` in place."""
        for i in range(len(codes)):
            if codes[i] >= 0x80:
                codes[i] = SUBACK_FAILURE
        return bytes((0x90,)) + codec.encode_length(2 + len(codes)) + bytes((pid >> 8, pid & 0xFF)) + bytes(codes)

    def unsuback(self, pid, codes=None):
        """3.1.1 UNSUBACK carries no per-filter codes [MQTT-3.11.3]."""
        return bytes((0xB0, 2, pid >> 8, pid & 0xFF))

    def pingresp(self):
        return _PINGRESP

    def disconnect(self, reason, text=None):
        """A 3.1.1 server closes without a packet."""
        return None

    # publish_head(msg, qos, retain, dup, pid, extra=None, now_ms=0): head
    # of a PUBLISH of msg (the payload follows as its own part)
    publish_head = staticmethod(_publish_head)

    def publish_head0(self, msg, now_ms=0):
        """Head of msg's live QoS 0 delivery, cached on the message."""
        return msg.head0()


class Wire31(Wire311):
    level = LEVEL_31

    def connack(self, present, reason, broker=None, session=None):
        """MQTT 3.1 has no session present flag: the first byte is
        reserved (0)."""
        return bytes((0x20, 2, 0, connack_code(reason)))


WIRE311 = Wire311()
WIRE31 = Wire31()
