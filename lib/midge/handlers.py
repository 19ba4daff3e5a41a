# One function per packet type: decode, check against the configuration,
# call the broker, queue replies on the connection. No I/O of its own.
#
# Contract: handle(broker, conn, first_byte, buf, start, end) either returns
# normally or raises ProtocolError; the connection layer turns that into a
# close and a counter. After a refused CONNECT it sets conn.closing so the
# connection flushes the CONNACK and closes.
from . import codec, topics
from .message import Message
from .protocol import (
    ProtocolError, RC_PROTOCOL_ERROR, CONNACK_BAD_PROTOCOL,
    CONNECT, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBSCRIBE, UNSUBSCRIBE,
    PINGREQ, DISCONNECT,
)


def handle(broker, conn, first, buf, start, end):
    ptype = first >> 4
    flags = first & 0x0F
    s = conn.session
    if s is None:
        if ptype != CONNECT:
            raise ProtocolError("packet type %d before CONNECT" % ptype, RC_PROTOCOL_ERROR)  # [MQTT-3.1.0-1]
        _connect(broker, conn, flags, buf, start, end)
        return
    if ptype == PUBLISH:
        _publish(broker, conn, s, flags, buf, start, end)
    elif ptype == PUBACK:
        broker.puback(s, codec.decode_pid_only(flags, 0, buf, start, end))
    elif ptype == PUBREC:
        broker.pubrec(s, codec.decode_pid_only(flags, 0, buf, start, end))
    elif ptype == PUBREL:
        pid = codec.decode_pid_only(flags, 0x02, buf, start, end)
        if pid in s.in_qos2:
            s.drop_in_qos2(pid)
            st = broker.store_for(s)
            if st is not None:
                st.in2_del(s, pid)
        conn.send(codec.pubcomp(pid))  # [MQTT-4.3.3-2]
    elif ptype == PUBCOMP:
        broker.pubcomp(s, codec.decode_pid_only(flags, 0, buf, start, end))
    elif ptype == SUBSCRIBE:
        _subscribe(broker, s, flags, buf, start, end)
    elif ptype == UNSUBSCRIBE:
        _unsubscribe(broker, conn, s, flags, buf, start, end)
    elif ptype == PINGREQ:
        codec.check_empty(flags, start, end)
        conn.send(codec.PINGRESP)  # [MQTT-3.12.4-1]
    elif ptype == DISCONNECT:
        codec.check_empty(flags, start, end)
        conn.graceful = True   # no will [MQTT-3.14.4-3]
        conn.closing = True
    elif ptype == CONNECT:
        raise ProtocolError("second CONNECT", RC_PROTOCOL_ERROR)  # [MQTT-3.1.0-2]
    else:
        # CONNACK, SUBACK, UNSUBACK, PINGRESP are server-to-client only;
        # 0 and 15 are reserved [MQTT-2.2.1]
        raise ProtocolError("packet type %d not allowed from a client" % ptype, RC_PROTOCOL_ERROR)


def _connect(broker, conn, flags, buf, start, end):
    c = codec.decode_connect(flags, buf, start, end)
    if not c.level_ok:
        conn.send(codec.connack(False, CONNACK_BAD_PROTOCOL))  # [MQTT-3.1.2-2]
        conn.closing = True
        return
    if not broker.connect(conn, c):
        conn.closing = True  # CONNACK with an error, then close [MQTT-3.2.2-5]


def _publish(broker, conn, s, flags, buf, start, end):
    try:
        p = codec.decode_publish(flags, buf, start, end)
        msg = Message(p.topic, p.payload, p.qos, p.retain, p.topic_bytes)
    except MemoryError:
        # no block for the payload: queued messages (a subscriber's, not
        # this publisher's) may be holding the heap; make room, once (the
        # decoding changed nothing)
        if not broker.make_room():
            raise
        p = codec.decode_publish(flags, buf, start, end)
        msg = Message(p.topic, p.payload, p.qos, p.retain, p.topic_bytes)
    topic = p.topic
    qos = p.qos
    pid = p.pid
    if broker.subs.route(msg.topic_bytes) is None:  # a cached topic passed before
        broker.check_name(topic, len(msg.topic_bytes))
    broker.msgs_in += 1
    if qos == 2:
        if pid in s.in_qos2:
            # a resent PUBLISH before PUBREL: acknowledge, do not deliver
            # again (exactly once) [MQTT-4.3.3-2]
            conn.send(codec.pubrec(pid))
            return
        if len(s.in_qos2) >= broker.cfg["max_inflight_in"]:
            raise ProtocolError("too many QoS 2 messages awaiting PUBREL", 0x93, "inflight_in_exceeded")
        s.add_in_qos2(pid)
        st = broker.store_for(s)
        if st is not None:
            st.in2_add(s, pid)
    if topics.is_sys_reserved(topic):
        broker.count("sys_publish_dropped")
    else:
        broker.publish(msg, False, True)
    if qos == 1:
        conn.send(codec.puback(pid))  # [MQTT-4.3.2-2]
    elif qos == 2:
        conn.send(codec.pubrec(pid))  # [MQTT-4.3.3-2]



def _subscribe(broker, s, flags, buf, start, end):
    """The whole packet is validated first (a malformed one changes
    nothing). Only the first max_filters_per_packet filters are decoded;
    the rest are refused unread. A filter longer than max_topic_length is
    refused without being decoded (None)."""
    pid = codec.check_subscribe(flags, buf, start, end)
    cap = broker.cfg["max_filters_per_packet"]
    max_len = broker.max_topic_length
    requests = []
    extra = 0
    pos = start + 2
    while pos < end:
        a = pos + 2
        n = codec.str_len(buf, pos)
        pos = a + n + 1
        if len(requests) >= cap:
            extra += 1
        else:
            requests.append((codec.str_at(buf, a, n) if n <= max_len else None, buf[a + n]))
    broker.subscribe(s, pid, requests, extra)


def _unsubscribe(broker, conn, s, flags, buf, start, end):
    """Validated first, then one filter decoded at a time."""
    pid = codec.check_unsubscribe(flags, buf, start, end)
    pos = start + 2
    while pos < end:
        a = pos + 2
        n = codec.str_len(buf, pos)
        pos = a + n
        broker.unsubscribe_filter(s, codec.str_at(buf, a, n))
    conn.send(codec.unsuback(pid))  # [MQTT-3.10.4-4]
