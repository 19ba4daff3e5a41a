# One application message, stored once and shared by reference by every
# queue, inflight window and the retained store. Immutable once built.
from . import codec


class Message:
    def __init__(self, topic, payload, qos, retain):
        self.topic = topic                # str, validated
        self.topic_bytes = topic.encode() # encoded once, reused by every send
        self.payload = payload            # bytes
        self.qos = qos                    # QoS it was published with
        self.retain = retain              # retain flag as published
        self._frame0 = None               # cached QoS 0, retain 0 frame

    def size(self):
        """Bytes this message counts against byte caps."""
        return len(self.topic_bytes) + len(self.payload)

    def frame_qos0(self):
        """Whole QoS 0 PUBLISH for live forwarding (retain 0
        [MQTT-3.3.1-9]); built once, shared by every QoS 0 subscriber."""
        f = self._frame0
        if f is None:
            f = codec.publish_head(self.topic_bytes, len(self.payload), 0, False, False) + self.payload
            self._frame0 = f
        return f

    def head(self, qos, retain, dup):
        """Fixed header and topic for a send at this QoS and flags."""
        return codec.publish_head(self.topic_bytes, len(self.payload), qos, retain, dup)
