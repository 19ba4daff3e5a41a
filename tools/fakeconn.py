# Helpers shared by the broker-core unit tests (tests/test_broker.py, ...
# test_handlers.py, test_sys_topics.py) and tools/wear.py. Not a test module.
#
# FakeConn implements the connection interface documented at the top of
# lib/midge/broker.py (send / room / close / session / keepalive_ms /
# last_rx_ms) plus the two flags handlers.py sets (closing, graceful). What
# the broker sends is parsed with the independent tools/mqttspec.py, so a
# codec bug cannot agree with itself.
#
# Clock is an injected, settable ticks_ms replacement; advance() goes
# through compat.ticks_add so a clock started just below the interpreter's
# ticks period wraps like a real one (MicroPython).
import mqttspec as m
from midge import log
from midge.broker import Broker
from midge.codec import Connect  # a plain field holder; no decoding involved
from midge.compat import ticks_add
from midge.config import load_config
from midge.message import Message
from midge.protocol import ProtocolError, AWAIT_CONNECT
from midge.wire311 import WIRE311

log.set_level("off")  # keep test output quiet (test_log restores its own level)


class Clock:
    def __init__(self, start=1000000):
        self.now = start

    def __call__(self):
        return self.now

    def advance(self, ms):
        self.now = ticks_add(self.now, ms)


def wrap_start(before_ms):
    """A clock start `before_ms` ticks before the interpreter's ticks wrap
    (MicroPython: ticks_add(0, -n) is PERIOD - n). On CPython compat ticks
    never wrap, so this is just a negative start: still a valid test of
    ticks arithmetic, without the wrap."""
    return ticks_add(0, -before_ms)


class FakeConn:
    """cap None: room() is always large. cap N: room() is N minus the bytes
    sent and not yet taken by take() (as if take() drained the socket)."""

    _out = ()  # Connection's output list: empty, so the QoS 0 fast path calls send()

    def __init__(self, cap=None):
        self.out = b""
        self.cap = cap
        self.session = None
        self.state = AWAIT_CONNECT
        self.wire = WIRE311   # the broker core writes through it (set by handlers at CONNECT)
        self.keepalive_ms = 0
        self.last_rx_ms = 0
        self.closed = 0       # number of close() calls
        self.closing = False  # set by handlers (DISCONNECT, refused CONNECT)
        self.graceful = False

    def send(self, data):
        self.out += bytes(data)

    def room(self):
        if self.cap is None:
            return 1 << 30
        return self.cap - len(self.out)

    def close(self):
        self.closed += 1

    @property
    def _out_bytes(self):
        """Bytes queued and not drained, as Connection keeps them: room()
        is max_outbound minus this (the QoS 0 fast path reads it instead
        of calling room())."""
        return self.broker.max_outbound - self.room()

    def take(self):
        """Every packet sent since the last take(), parsed by mqttspec."""
        pkts, rest = m.parse_all(self.out)
        assert rest == b"", "partial packet left: %r" % rest
        self.out = b""
        return pkts


def make_broker(clock=None, **overrides):
    if clock is None:
        clock = Clock()
    return Broker(load_config(overrides), clock)


def mkconnect(client_id, clean=True, keepalive_s=0, will=None):
    """A decoded CONNECT. will: (topic, payload, qos, retain) or None."""
    c = Connect()
    c.level = 4
    c.level_ok = True
    c.client_id = client_id
    c.clean = clean
    c.keepalive_s = keepalive_s
    if will is not None:
        c.will_topic, c.will_payload, c.will_qos, c.will_retain = will
    return c


def connect(broker, client_id, clean=True, keepalive_s=0, will=None, cap=None):
    """Connect a new FakeConn; returns (conn, accepted, connack dict)."""
    conn = FakeConn(cap)
    ok = broker.connect(conn, mkconnect(client_id, clean, keepalive_s, will))
    pkts = conn.take()
    assert len(pkts) >= 1 and pkts[0]["type"] == "connack"
    ack = pkts[0]
    # anything after the CONNACK (resent messages) stays readable
    rest = b""
    for p in pkts[1:]:
        rest += p["raw"]
    conn.out = rest
    return conn, ok, ack


def join(broker, client_id, clean=True, keepalive_s=0, will=None, cap=None):
    """Connect and insist on CONNACK 0; returns the conn."""
    conn, ok, ack = connect(broker, client_id, clean, keepalive_s, will, cap)
    assert ok and ack["rc"] == 0, "connect refused: %r" % ack
    return conn


def sub(broker, conn, filt, qos=0, pid=1):
    """SUBSCRIBE one filter; returns the SUBACK code. Retained messages
    sent after the SUBACK stay in conn.out for the caller."""
    broker.subscribe(conn.session, pid, [(filt, qos)])
    pkts = conn.take()
    assert pkts[0]["type"] == "suback" and pkts[0]["pid"] == pid
    rest = b""
    for p in pkts[1:]:
        rest += p["raw"]
    conn.out = rest
    return pkts[0]["codes"][0]


def pub(broker, topic, payload=b"x", qos=0, retain=False):
    broker.publish(Message(topic, payload, qos, retain))


def publishes(pkts):
    return [p for p in pkts if p["type"] == "publish"]


def payloads(pkts):
    return [p["payload"] for p in pkts if p["type"] == "publish"]


def frames(data):
    """Split a byte string of packets with mqttspec (not midge.codec):
    [(first_byte, body_start, body_end)]."""
    out = []
    pos = 0
    while pos < len(data):
        n, nlen = m.decode_remaining_length(data, pos + 1)
        assert n is not None
        start = pos + 1 + nlen
        out.append((data[pos], start, start + n))
        pos = start + n
    return out


def raises_protocol(fn, *args):
    """The ProtocolError fn(*args) raised, or None."""
    try:
        fn(*args)
    except ProtocolError as e:
        return e
    return None


def fails_once(real, exc=MemoryError):
    """real, wrapped to raise exc on its first call only (a MemoryError
    that strikes once, for the paths that must survive it)."""
    state = {"fail": 1}

    def flaky(*args):
        if state["fail"]:
            state["fail"] -= 1
            raise exc()
        return real(*args)
    return flaky
