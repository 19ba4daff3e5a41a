# One application message, stored once and shared by reference by every
# queue, inflight window and the retained store. Immutable once built.
from . import codec


def expiry_at(now_ms, seconds):
    """Message.expires_ms for an MQTT 5 Message Expiry Interval of
    `seconds` counted from broker time now_ms (never 0, which means
    "does not expire")."""
    t = now_ms + seconds * 1000
    return t if t else 1


class Message:
    # Set by the store when the message body is written to the log (class
    # defaults cost no per-instance heap until then).
    mid = 0         # message id in the store
    store_gen = 0   # log generation holding its R_MSG record (0: none)

    retain = False  # retain flag as published (class default: most are not)
    _head0 = None   # cached head of its QoS 0, retain 0 PUBLISH, once built
    # MQTT 5 (class defaults: a message without them pays nothing)
    props = None    # the properties forwarded unchanged [MQTT-3.3.2-15..20]: their
                    # encoded bytes in the order received (props.decode `fwd`)
    expires_ms = 0  # Broker.uptime_ms after which it is not delivered [MQTT-3.3.2-5]; 0: never
    expiry_s = -1   # a will's Message Expiry Interval, applied when it is published
    delay_s = 0     # a will's Will Delay Interval [MQTT-3.1.3-9]

    def __init__(self, topic, payload, qos, retain, topic_bytes=None):
        self.topic = topic                # str, validated
        # encoded once, reused by every send (the decoder passes the bytes it read)
        self.topic_bytes = topic.encode() if topic_bytes is None else topic_bytes
        self.payload = payload            # bytes
        self.qos = qos                    # QoS it was published with
        if retain:
            self.retain = True

    def size(self):
        """Bytes this message counts against byte caps."""
        p = self.props
        return len(self.topic_bytes) + len(self.payload) + (len(p) if p is not None else 0)

    def head0(self):
        """Head of the QoS 0 PUBLISH for live forwarding (retain 0
        [MQTT-3.3.1-9]); built once, shared by every QoS 0 subscriber. The
        payload follows as the second part."""
        h = self._head0
        if h is None:
            h = self._head0 = bytes(codec.publish_head(self.topic_bytes, len(self.payload), 0, False, False, 0))
        return h
