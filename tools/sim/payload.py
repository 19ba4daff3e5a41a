# The header at the start of every payload the simulator publishes, so that a
# receiver can tell exactly which message it got:
#
#   2 bytes  magic: b"MD" a sensor reading, b"MW" a will
#   2 bytes  publisher index (position of the client in the fleet), big endian
#   4 bytes  sequence number (readings: 1, 2, ... per publisher; wills: the
#            connection number whose end fired it)
#   8 bytes  send time, microseconds since the start of the run
#
# The rest of the payload is filler up to the scenario's payload_bytes.
import struct

HEADER_BYTES = 16
_FMT = ">2sHIQ"
KINDS = {b"MD": "data", b"MW": "will"}
_MAGIC = {"data": b"MD", "will": b"MW"}


def encode(kind, pub_index, seq, t_s, size=HEADER_BYTES):
    """Payload of `size` bytes (>= HEADER_BYTES); t_s in seconds."""
    head = struct.pack(_FMT, _MAGIC[kind], pub_index, seq, max(0, int(t_s * 1e6)))
    return head + b"." * max(0, size - HEADER_BYTES)


def decode(payload):
    """(kind, pub_index, seq, t_s) or None for a payload that is not ours
    ($SYS values, anything else)."""
    if len(payload) < HEADER_BYTES:
        return None
    magic, pub, seq, t_us = struct.unpack(_FMT, bytes(payload[:HEADER_BYTES]))
    kind = KINDS.get(magic)
    if kind is None:
        return None
    return kind, pub, seq, t_us / 1e6
