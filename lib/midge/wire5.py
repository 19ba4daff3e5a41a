# The MQTT 5.0 wire: the same decisions as wire311.py, in MQTT 5 bytes,
# plus what MQTT 5 negotiates per connection. One object per MQTT 5
# connection (made at CONNECT), holding:
#   - the client's limits from its CONNECT: Maximum Packet Size (never send
#     it a larger packet: the message is dropped for it, counted as
#     oversize_dropped [MQTT-3.1.2-24]), Topic Alias Maximum (aliases we may
#     use), Receive Maximum (Broker.connect makes it the session's window);
#   - topic aliases both ways: inbound at most max_topic_aliases (the
#     broker's Topic Alias Maximum; a dict alias -> topic bytes, made on
#     first use), outbound at most the client's maximum (topic bytes ->
#     alias, at most max_topic_aliases too; once that many topics have one,
#     other topics go in full).
# Heap: an idle MQTT 5 client pays for this object (its attributes) and
# nothing more until it uses aliases.
from . import codec
from . import props as P
from .protocol import (
    LEVEL_5, ProtocolError, RC_PROTOCOL_ERROR, RC_TOPIC_ALIAS_INVALID,
)

_pp = P.Props()  # the properties of the PUBLISH being decoded (one at a time)
_ap = P.Props()  # of an acknowledgement, SUBSCRIBE, UNSUBSCRIBE or DISCONNECT


class Wire5:
    level = LEVEL_5
    v5 = True
    ack_reason = 0        # reason code of the last acknowledgement decoded
    aliases_in = None     # alias -> topic bytes
    aliases_out = None    # topic bytes -> alias
    assigned_id = None    # the client id the broker assigned, for CONNACK
    granted_expiry_s = -1  # session expiry the broker granted, when it differs from the request
    server_keepalive_s = -1  # keep alive the broker imposed (max_keepalive_s), for CONNACK
    problem = True        # Request Problem Information: reason strings on acknowledgements too
    response = False      # Request Response Information: Response Information in CONNACK

    def __init__(self, cfg, c):
        p = c.props
        if not p.request_problem:
            self.problem = False  # only CONNACK and DISCONNECT may carry one [MQTT-3.1.2-29]
        if p.request_response:
            self.response = True
        self.max_packet_size = p.max_packet  # 0: the client states no limit
        # aliases we send: within the client's maximum AND max_topic_aliases
        # (each keeps its topic alive in aliases_out: the broker's own cap
        # bounds that heap, whatever maximum a client states)
        self.alias_out_max = min(p.alias_max, cfg["max_topic_aliases"])
        self.receive_max = p.receive_max
        self.alias_in_max = cfg["max_topic_aliases"]
        self.server_receive_max = cfg["max_inflight_in"]
        self.server_max_packet = cfg["max_packet_size"]

    # --- decoding ---

    def decode_publish(self, flags, buf, start, end):
        """codec.decode_publish with the MQTT 5 rules: properties, topic
        aliases [MQTT-3.3.2-7..12], no Subscription Identifier from a
        client [MQTT-3.3.4-6], Payload Format Indicator 1 means UTF-8
        [MQTT-3.3.2-4]. The Publish carries fwd and expiry_s too."""
        p = codec.decode_publish(flags, buf, start, end, _pp)
        pp = _pp
        if pp.sub_id:
            raise ProtocolError("subscription identifier from a client", RC_PROTOCOL_ERROR)
        alias = pp.alias
        if alias:
            if alias > self.alias_in_max:
                raise ProtocolError("topic alias over the maximum", RC_TOPIC_ALIAS_INVALID)
            a = self.aliases_in
            if p.topic_bytes:
                if a is None:
                    a = self.aliases_in = {}
                a[alias] = p.topic_bytes
            else:
                tb = a.get(alias) if a is not None else None
                if tb is None:
                    raise ProtocolError("unknown topic alias", RC_PROTOCOL_ERROR)
                p.topic_bytes = tb
                p.topic = str(tb, "utf-8")
        elif not p.topic_bytes:
            raise ProtocolError("empty topic without a topic alias", RC_PROTOCOL_ERROR)
        if pp.payload_utf8:
            codec.check_payload_utf8(p.payload)
        p.fwd = pp.fwd
        p.expiry_s = pp.expiry_s
        return p

    def decode_ack(self, ptype, flags, buf, start, end):
        """PUBACK / PUBREC / PUBREL / PUBCOMP: packet id, then an optional
        reason code and properties [MQTT-3.4.2-1]. Returns the packet id;
        the reason is left in ack_reason."""
        if flags != (2 if ptype == 6 else 0):
            raise ProtocolError("wrong fixed-header flags")  # [MQTT-3.6.1-1]
        if end - start < 2:
            raise ProtocolError("acknowledgement shorter than 2 bytes")
        pid = codec.read_pid(buf, start, end)
        reason = 0
        if end - start > 2:
            reason = buf[start + 2]
            if end - start > 3:
                P.decode(buf, start + 3, end, ptype, _ap)
        self.ack_reason = reason
        return pid

    def sub_props(self):
        return _ap

    def decode_disconnect(self, flags, buf, start, end):
        """Returns (reason code, session expiry interval or -1)."""
        if flags:
            raise ProtocolError("DISCONNECT flags not 0")
        reason = 0
        expiry = -1
        if end > start:
            reason = buf[start]
            if end - start > 1:
                P.decode(buf, start + 1, end, 14, _ap)
                expiry = _ap.session_expiry_s
        return reason, expiry

    # --- encoding ---

    def connack(self, present, reason, broker=None, session=None):
        """CONNACK with the broker's capabilities when accepted
        [MQTT-3.2.2]: what differs from the protocol defaults is stated."""
        out = bytearray()
        if not reason and broker is not None:
            cfg = broker.cfg
            if self.granted_expiry_s >= 0:
                P.put_u32(out, P.SESSION_EXPIRY, self.granted_expiry_s)
            if self.assigned_id is not None:
                P.put_str(out, P.ASSIGNED_CLIENT_ID, self.assigned_id.encode())
            if self.server_keepalive_s >= 0:
                P.put_u16(out, P.SERVER_KEEP_ALIVE, self.server_keepalive_s)
            if self.server_receive_max < 65535:
                P.put_u16(out, P.RECEIVE_MAXIMUM, self.server_receive_max)
            P.put_u32(out, P.MAXIMUM_PACKET_SIZE, self.server_max_packet)
            if self.alias_in_max:
                P.put_u16(out, P.TOPIC_ALIAS_MAXIMUM, min(self.alias_in_max, 65535))
            info = cfg["response_information"]
            if self.response and info:
                P.put_str(out, P.RESPONSE_INFO, info.encode())
            # retain, wildcard, subscription identifiers and shared
            # subscriptions available, maximum QoS 2: the defaults, not stated
        else:
            self._reason_string(out, reason, None, 5)
        body = bytearray((1 if present and not reason else 0, reason))
        P.put_varint(body, len(out))
        body.extend(out)
        return _packet(0x20, body)

    def ack(self, first, pid, reason=0):
        if not reason:
            return bytes((first, 2, pid >> 8, pid & 0xFF))  # reason 0, no properties [MQTT-3.4.2-1]
        pr = bytearray()
        if self.problem:
            self._reason_string(pr, reason, None, 4)
        if not pr:
            return bytes((first, 3, pid >> 8, pid & 0xFF, reason))
        body = bytearray((pid >> 8, pid & 0xFF, reason))
        P.put_varint(body, len(pr))
        body.extend(pr)
        return _packet(first, body)

    def suback(self, pid, codes):
        return _packet(0x90, self._ack_props(pid, codes) + bytes(codes))

    def unsuback(self, pid, codes):
        return _packet(0xB0, self._ack_props(pid, codes) + bytes(codes))

    def pingresp(self):
        return b"\xd0\x00"

    def disconnect(self, reason, text=None):
        """A server DISCONNECT; `text` (what went wrong), or the reason's
        own, goes in a Reason String when the packet stays within the
        client's Maximum Packet Size."""
        pr = bytearray()
        self._reason_string(pr, reason, text, 3)
        if not pr:
            return bytes((0xE0, 1, reason))
        body = bytearray((reason,))
        P.put_varint(body, len(pr))
        body.extend(pr)
        return _packet(0xE0, body)

    def _ack_props(self, pid, codes):
        """Packet id and properties of a SUBACK or UNSUBACK: a Reason String
        for the first refused filter, if the client wants them."""
        pr = bytearray()
        if self.problem:
            for c in codes:
                if c >= 0x80:
                    self._reason_string(pr, c, None, 4 + len(codes))
                    break
        body = bytearray((pid >> 8, pid & 0xFF))
        P.put_varint(body, len(pr))
        body.extend(pr)
        return body

    def _reason_string(self, out, reason, text, rest):
        """Append a Reason String for `reason` (text, or _TEXTS's) to the
        properties `out` of a packet whose other bytes number about
        `rest`, unless it would take the packet past the client's Maximum
        Packet Size [MQTT-3.1.2-25] (then nothing: it is optional)."""
        if text is None:
            text = _TEXTS.get(reason)
            if text is None:
                return
        b = text.encode()
        limit = self.max_packet_size
        if limit and rest + len(out) + 3 + len(b) + 9 > limit:  # (9: fixed header and lengths, at most)
            return
        P.put_str(out, P.REASON_STRING, b)

    def publish_head(self, msg, qos, retain, dup, pid, sub_ids=None, now_ms=0):
        """Head of a PUBLISH of msg for this client: its forwarded
        properties, the remaining Message Expiry Interval [MQTT-3.3.2-6],
        the subscription identifiers, a topic alias where one saves bytes
        (topics over 4 bytes: the alias costs 3 on every message, and the
        topic is saved on every message after the first).
        None when the packet would exceed the client's Maximum Packet Size
        [MQTT-3.1.2-25]: the caller drops the message for this client."""
        pr = bytearray()
        exp = msg.expires_ms
        if exp:
            left = (exp - now_ms + 999) // 1000
            P.put_u32(pr, P.MESSAGE_EXPIRY, left if left > 0 else 0)
        if msg.props is not None:
            pr.extend(msg.props)
        if sub_ids:
            for i in sub_ids:
                pr.append(P.SUBSCRIPTION_ID)
                P.put_varint(pr, i)
        tb = msg.topic_bytes
        n = len(msg.payload)
        body = 2 + len(tb) + (2 if qos else 0) + P.varint_len(len(pr)) + len(pr) + n
        limit = self.max_packet_size
        if limit and 1 + P.varint_len(body) + body > limit:
            return None
        if self.alias_out_max and len(tb) > 4:  # (an alias costs 3 bytes per message)
            a = self.aliases_out
            alias = a.get(tb) if a is not None else None
            if alias is not None:
                tb = b""  # the client knows it [MQTT-3.3.2-12]
                P.put_u16(pr, P.TOPIC_ALIAS, alias)
            elif a is None or len(a) < self.alias_out_max:
                if a is None:
                    a = self.aliases_out = {}
                alias = len(a) + 1
                a[tb] = alias
                P.put_u16(pr, P.TOPIC_ALIAS, alias)
        h = bytearray((0x30 | (qos << 1) | (1 if retain else 0) | (0x08 if dup else 0),))
        body = 2 + len(tb) + (2 if qos else 0) + P.varint_len(len(pr)) + len(pr) + n
        P.put_varint(h, body)
        h.append(len(tb) >> 8)
        h.append(len(tb) & 0xFF)
        h.extend(tb)
        if qos:
            h.append(pid >> 8)
            h.append(pid & 0xFF)
        P.put_varint(h, len(pr))
        h.extend(pr)
        return h

    def publish_head0(self, msg, now_ms=0):
        return self.publish_head(msg, 0, False, False, 0, None, now_ms)


# Reason Strings for the reason codes the broker sends (MQTT 5 table 2-6's
# names); what went wrong in detail, where the broker knows it, comes with
# the packet instead (a protocol error's text on DISCONNECT).
_TEXTS = {
    0x80: "refused",
    0x81: "malformed packet",
    0x82: "protocol error",
    0x84: "unsupported protocol version",
    0x85: "client identifier not valid",
    0x86: "bad user name or password",
    0x87: "not authorized",
    0x88: "server unavailable",
    0x89: "server busy",
    0x8A: "banned",
    0x8C: "bad authentication method",
    0x8D: "keep alive timeout",
    0x8E: "session taken over",
    0x8F: "topic filter invalid",
    0x90: "topic name invalid",
    0x92: "packet identifier not found",
    0x93: "receive maximum exceeded",
    0x94: "topic alias invalid",
    0x95: "packet too large",
    0x97: "quota exceeded",
    0x99: "payload format invalid",
}


def _packet(first, body):
    h = bytearray((first,))
    P.put_varint(h, len(body))
    h.extend(body)
    return bytes(h)
