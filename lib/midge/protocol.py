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
LEVEL_5 = const(5)    # "MQTT"

# Connection states (Connection.state), the protocol phase of one client
# connection. The connection starts in AWAIT_CONNECT; the broker moves it.
AWAIT_CONNECT = const(0)  # no CONNECT handled yet
ACTIVE = const(1)         # CONNECT accepted: conn.session is its session
REFUSED = const(2)        # CONNECT refused: the CONNACK is flushed, then the socket closed
DETACHED = const(3)       # was ACTIVE; detached from its session (DISCONNECT, takeover,
                          # keepalive, error, EOF): nothing more is handled

SUBACK_FAILURE = const(0x80)

# Reason codes: the core's one vocabulary for what it decided (MQTT 5.0
# section 2.4, a superset of 3.1.1's return codes). Each connection's wire
# encoder writes them in its protocol's terms: wire311 maps a CONNACK reason
# to a 3.1.1 return code and any SUBACK failure to 0x80, and drops the rest
# (3.1.1 acknowledgements carry no reason; a server-sent DISCONNECT is a
# plain close). Only the codes used in more than one module are names here
# (each public name costs a global on a device); the others are written as
# numbers where they are used, with a comment. The table:
#   0x00 success / granted QoS 0 / normal disconnection   0x01, 0x02 granted QoS 1, 2
#   0x04 disconnect with will message   0x10 no matching subscribers
#   0x11 no subscription existed   0x18 continue authentication   0x19 re-authenticate
#   0x80 unspecified error   0x81 malformed packet   0x82 protocol error
#   0x83 implementation specific error   0x84 unsupported protocol version
#   0x85 client identifier not valid   0x86 bad user name or password
#   0x87 not authorized   0x88 server unavailable   0x89 server busy   0x8A banned
#   0x8B server shutting down   0x8C bad authentication method   0x8D keep alive timeout
#   0x8E session taken over   0x8F topic filter invalid   0x90 topic name invalid
#   0x91 packet identifier in use   0x92 packet identifier not found
#   0x93 receive maximum exceeded   0x94 topic alias invalid   0x95 packet too large
#   0x96 message rate too high   0x97 quota exceeded   0x98 administrative action
#   0x99 payload format invalid   0x9A retain not supported   0x9B QoS not supported
#   0x9C use another server   0x9D server moved   0x9E shared subscriptions not supported
#   0x9F connection rate exceeded   0xA0 maximum connect time
#   0xA1 subscription identifiers not supported   0xA2 wildcard subscriptions not supported
RC_MALFORMED = const(0x81)
RC_PROTOCOL_ERROR = const(0x82)
RC_UNSUPPORTED_PROTOCOL = const(0x84)
RC_CLIENT_ID_NOT_VALID = const(0x85)
RC_BAD_CREDENTIALS = const(0x86)
RC_NOT_AUTHORIZED = const(0x87)
RC_SERVER_UNAVAILABLE = const(0x88)
RC_BANNED = const(0x8A)
RC_BAD_AUTH_METHOD = const(0x8C)
RC_KEEPALIVE_TIMEOUT = const(0x8D)
RC_SESSION_TAKEN_OVER = const(0x8E)
RC_TOPIC_FILTER_INVALID = const(0x8F)
RC_TOPIC_NAME_INVALID = const(0x90)
RC_RECEIVE_MAXIMUM_EXCEEDED = const(0x93)
RC_TOPIC_ALIAS_INVALID = const(0x94)
RC_PACKET_TOO_LARGE = const(0x95)
RC_QUOTA_EXCEEDED = const(0x97)


class ProtocolError(Exception):
    """Input that breaks the protocol. The connection that sent it is
    closed (never the broker); `reason` is an MQTT 5 reason code and
    `counter` the $SYS counter that the close increments."""

    def __init__(self, message, reason=RC_MALFORMED, counter="malformed_packets"):
        super().__init__(message)
        self.reason = reason
        self.counter = counter
