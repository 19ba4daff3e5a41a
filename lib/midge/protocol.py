# MQTT wire constants shared by the codec, the handlers and the tests.
#
# Packet types are the high nibble of the first byte [MQTT-2.2.1].
from .compat import const

CONNECT = const(1)
CONNACK = const(2)
PUBLISH = const(3)
PUBACK = const(4)
PUBREC = const(5)
PUBREL = const(6)
PUBCOMP = const(7)
SUBSCRIBE = const(8)
SUBACK = const(9)
UNSUBSCRIBE = const(10)
UNSUBACK = const(11)
PINGREQ = const(12)
PINGRESP = const(13)
DISCONNECT = const(14)

# Protocol levels accepted in CONNECT [MQTT-3.1.2-2].
LEVEL_31 = const(3)   # "MQIsdp"
LEVEL_311 = const(4)  # "MQTT"

# CONNACK return codes, MQTT 3.1.1 table 3.1.
CONNACK_ACCEPTED = const(0)
CONNACK_BAD_PROTOCOL = const(1)
CONNACK_ID_REJECTED = const(2)
CONNACK_UNAVAILABLE = const(3)
CONNACK_BAD_CREDENTIALS = const(4)
CONNACK_NOT_AUTHORIZED = const(5)

SUBACK_FAILURE = const(0x80)

# MQTT 5 reason codes carried by ProtocolError so that the connection layer
# can answer an MQTT 5 client properly; a 3.1.1 client is just disconnected.
RC_MALFORMED = const(0x81)
RC_PROTOCOL_ERROR = const(0x82)
RC_TOPIC_NAME_INVALID = const(0x90)
RC_PACKET_TOO_LARGE = const(0x95)
RC_KEEPALIVE_TIMEOUT = const(0x8D)
RC_SESSION_TAKEN_OVER = const(0x8E)


class ProtocolError(Exception):
    """Input that breaks the protocol. The connection that sent it is
    closed (never the broker); `reason` is an MQTT 5 reason code and
    `counter` the $SYS counter that the close increments."""

    def __init__(self, message, reason=RC_MALFORMED, counter="malformed_packets"):
        super().__init__(message)
        self.reason = reason
        self.counter = counter
