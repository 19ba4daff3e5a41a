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
        pid, requests = codec.decode_subscribe(flags, buf, start, end)
        broker.subscribe(s, pid, requests)
    elif ptype == UNSUBSCRIBE:
        pid, filters = codec.decode_unsubscribe(flags, buf, start, end)
        broker.unsubscribe(s, pid, filters)
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
    p = codec.decode_publish(flags, buf, start, end)
    topic = p.topic
    qos = p.qos
    pid = p.pid
    msg = Message(topic, p.payload, qos, p.retain, p.topic_bytes)
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

