# One function per packet type: decode, check against the configuration,
# call the broker, queue replies on the connection. No I/O of its own.
#
# Contract: handle(broker, conn, first_byte, buf, start, end) either returns
# normally or raises ProtocolError; the connection layer turns that into a
# close and a counter. After a refused CONNECT it sets conn.closing so the
# connection flushes the CONNACK and closes.
from . import codec
from .compat import const
from .message import Message, expiry_at
from .protocol import (
    ProtocolError, RC_PROTOCOL_ERROR, RC_UNSUPPORTED_PROTOCOL, LEVEL_31, REFUSED,
)
from .wire311 import WIRE311, WIRE31

# Packet types and connection states (protocol.py) as private constants:
# the compiler inlines them, where an imported name is a global lookup per
# packet (tests/test_connection.py checks they agree with protocol.py).
_AWAIT_CONNECT = const(0)
_ACTIVE = const(1)
_CONNECT = const(1)
_PUBLISH = const(3)
_PUBACK = const(4)
_PUBREC = const(5)
_PUBREL = const(6)
_PUBCOMP = const(7)
_SUBSCRIBE = const(8)
_UNSUBSCRIBE = const(10)
_PINGREQ = const(12)
_DISCONNECT = const(14)
_AUTH = const(15)


def handle(broker, conn, first, buf, start, end):
    ptype = first >> 4
    flags = first & 0x0F
    if conn.state != _ACTIVE:
        if conn.state != _AWAIT_CONNECT:
            raise ProtocolError("packet after the connection ended", RC_PROTOCOL_ERROR)
        if ptype != _CONNECT:
            raise ProtocolError("packet type %d before CONNECT" % ptype, RC_PROTOCOL_ERROR)  # [MQTT-3.1.0-1]
        _connect(broker, conn, flags, buf, start, end)
        return
    s = conn.session
    flow = broker.flow
    if ptype == _PUBLISH:
        _publish(broker, conn, s, flags, buf, start, end)
    elif ptype == _PUBACK:
        flow.puback(s, conn.wire.decode_ack(_PUBACK, flags, buf, start, end))
    elif ptype == _PUBREC:
        flow.pubrec(s, conn.wire.decode_ack(_PUBREC, flags, buf, start, end))
    elif ptype == _PUBREL:
        flow.pubrel(conn, s, conn.wire.decode_ack(_PUBREL, flags, buf, start, end))
    elif ptype == _PUBCOMP:
        flow.pubcomp(s, conn.wire.decode_ack(_PUBCOMP, flags, buf, start, end))
    elif ptype == _SUBSCRIBE:
        _subscribe(broker, conn, s, flags, buf, start, end)
    elif ptype == _UNSUBSCRIBE:
        _unsubscribe(broker, s, flags, buf, start, end)
    elif ptype == _PINGREQ:
        codec.check_empty(flags, start, end)
        conn.send(conn.wire.pingresp())  # [MQTT-3.12.4-1]
    elif ptype == _DISCONNECT:
        reason, expiry = conn.wire.decode_disconnect(flags, buf, start, end)
        if expiry >= 0:
            broker.set_expiry(s, expiry)  # MQTT 5 [MQTT-3.14.2-2]
        conn.graceful = reason != 0x04  # no will [MQTT-3.14.4-3], unless MQTT 5 asks for it
        conn.closing = True
    elif ptype == _AUTH and conn.wire.v5:
        # no enhanced authentication: CONNECT had no Authentication Method
        raise ProtocolError("AUTH without an authentication method", RC_PROTOCOL_ERROR)  # [MQTT-4.12.0-1]
    elif ptype == _CONNECT:
        raise ProtocolError("second CONNECT", RC_PROTOCOL_ERROR)  # [MQTT-3.1.0-2]
    else:
        # CONNACK, SUBACK, UNSUBACK, PINGRESP are server-to-client only;
        # 0 and 15 are reserved [MQTT-2.2.1]
        raise ProtocolError("packet type %d not allowed from a client" % ptype, RC_PROTOCOL_ERROR)


def _connect(broker, conn, flags, buf, start, end):
    c = codec.decode_connect(flags, buf, start, end)
    if not c.level_ok:
        conn.send(WIRE311.connack(False, RC_UNSUPPORTED_PROTOCOL))  # [MQTT-3.1.2-2]
        conn.state = REFUSED
        conn.closing = True
        return
    if c.props is not None:
        # MQTT 5 code is loaded by the first MQTT 5 client (codec loads
        # props.py for its CONNECT): a 3.1.1-only hub never pays its heap
        from .wire5 import Wire5
        conn.wire = Wire5(broker.cfg, c)
    elif c.level == LEVEL_31:
        conn.wire = WIRE31
    # (3.1.1 is the class default: assigning it would cost every 3.1.1
    # connection an instance attribute)
    if not broker.connect(conn, c):
        conn.closing = True  # CONNACK with an error, then close [MQTT-3.2.2-5]


def _publish(broker, conn, s, flags, buf, start, end):
    try:
        p = conn.wire.decode_publish(flags, buf, start, end)
        msg = Message(p.topic, p.payload, p.qos, p.retain, p.topic_bytes)
    except MemoryError:
        # no block for the payload: queued messages (a subscriber's, not
        # this publisher's) may be holding the heap; make room, once (the
        # decoding changed nothing)
        if not broker.flow.make_room():
            raise
        p = conn.wire.decode_publish(flags, buf, start, end)
        msg = Message(p.topic, p.payload, p.qos, p.retain, p.topic_bytes)
    if conn.wire.v5:
        if p.fwd is not None:
            msg.props = p.fwd
        if p.expiry_s >= 0:
            msg.expires_ms = expiry_at(broker.uptime_ms, p.expiry_s)
    if broker.routes.get(msg.topic_bytes) is None:  # a cached topic passed before
        broker.check_name(p.topic, len(msg.topic_bytes))
    broker.flow.receive(conn, s, msg, p.pid)


def _subscribe(broker, conn, s, flags, buf, start, end):
    """The whole packet is validated first (a malformed one changes
    nothing). Only the first max_filters_per_packet filters are decoded;
    the rest are refused unread. A filter longer than max_topic_length is
    refused without being decoded (None)."""
    props = conn.wire.sub_props()
    pid, pos = codec.check_subscribe(flags, buf, start, end, props)
    cap = broker.cfg["max_filters_per_packet"]
    max_len = broker.max_topic_length
    requests = []
    extra = 0
    while pos < end:
        a = pos + 2
        n = codec.str_len(buf, pos)
        pos = a + n + 1
        if len(requests) >= cap:
            extra += 1
        else:
            requests.append((codec.str_at(buf, a, n) if n <= max_len else None, buf[a + n]))
    broker.subscribe(s, pid, requests, extra, props.sub_id if props is not None else 0)


def _unsubscribe(broker, s, flags, buf, start, end):
    """Validated first, then one filter decoded at a time; one code per
    filter (the MQTT 5 UNSUBACK carries them)."""
    conn = s.conn
    pid, pos = codec.check_unsubscribe(flags, buf, start, end, conn.wire.sub_props())
    codes = bytearray()
    while pos < end:
        a = pos + 2
        n = codec.str_len(buf, pos)
        pos = a + n
        codes.append(0 if broker.unsubscribe_filter(s, codec.str_at(buf, a, n)) else 0x11)
    conn.send(conn.wire.unsuback(pid, codes))  # [MQTT-3.10.4-4]
