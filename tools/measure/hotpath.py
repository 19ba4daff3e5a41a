# The broker's hot paths in one process, without sockets: real Connection
# objects on a real Broker, fed whole read chunks through Connection._received
# as a socket read would, writing into fake sockets that take everything. What
# it runs is deterministic, so under callgrind the instructions per message
# are a figure that does not depend on a noisy machine
# (tools/measure/hotpath_ir.sh); on its own it prints a rate (noisy, like
# any timing).
#
#   micropython tools/measure/hotpath.py SCENARIO [ROUNDS] [--split]
#
# SCENARIO (64-byte payloads, as tools/bench.py):
#   fanout   1 publisher -> 8 subscribers on bench/#, QoS 0, 4 KB chunks of PUBLISH
#   fanin    8 publishers -> 1 subscriber, QoS 0, 4 KB chunks
#   qos1     QoS 1 publisher, window 10 -> 1 QoS 1 subscriber acknowledging
#   qos2     QoS 2 publisher, window 10 -> 1 QoS 2 subscriber (PUBREC, PUBREL, PUBCOMP)
# ROUNDS: chunks per publisher (fanout, fanin) or windows of 10 (qos1, qos2).
# --split: every packet of qos1 / qos2 is its own read chunk (as the
#          benchmark's clients mostly deliver them), not one chunk per window.
# Prints: SCENARIO MESSAGES RATE, where MESSAGES counts deliveries (fanout)
# or messages (the others), and RATE is per second.
import sys
import time

import mqttspec as m
from midge import log, connection
from midge.broker import Broker
from midge.config import load_config

log.set_level("off")
if not hasattr(time, "ticks_us"):  # CPython (for cProfile's call counts)
    time.ticks_us = lambda: int(time.perf_counter() * 1e6)
    time.ticks_diff = lambda a, b: a - b

PAYLOAD = b"x" * 64
WINDOW = 10


class _Sock:
    """MicroPython's side of a socket: takes everything (compat.write_some)."""

    def write(self, buf, off, n):
        return n

    def close(self):
        pass


class _Transport:
    def get_write_buffer_size(self):
        return 0


class _Writer:
    """A stream that takes everything at once, on either interpreter."""
    transport = _Transport()  # CPython: compat.unsent asks it

    def __init__(self):
        self.s = _Sock()
        self.out_buf = b""

    def write(self, b):
        pass

    def get_extra_info(self, name):
        return ("127.0.0.1", 1)


# the configuration of tools/bench.py's midge (caps out of the way)
_CFG = {"max_clients": 2000, "max_inflight": WINDOW, "max_outbound_bytes": 1048576,
        "max_queued_bytes": 16777216, "max_queued_bytes_total": 67108864, "max_queued_messages": 100000,
        "max_queued_total": 1000000, "max_retained_bytes": 16777216, "max_retained_messages": 100000,
        "max_sessions": 4000, "max_subscriptions": 16, "max_subscriptions_total": 100000}


def feed(conn, data):
    """data arrives on conn's socket, in reads of at most one shared buffer."""
    pos = 0
    while pos < len(data):
        space = conn._read_space()
        k = min(len(data) - pos, len(space))
        space[:k] = data[pos:pos + k]
        conn._received(k)
        pos += k


def client(broker, cid, filt=None, qos=0):
    c = connection.Connection(broker, None, _Writer())
    feed(c, m.connect(cid, keepalive=0))
    if filt is not None:
        feed(c, m.subscribe(1, [(filt, qos)]))
    return c


def qos0(npub, nsub, rounds):
    """npub publishers -> nsub subscribers; returns the deliveries."""
    b = Broker(load_config(_CFG))
    subs = [client(b, "s%d" % i, "bench/#") for i in range(nsub)]
    pubs = [client(b, "p%d" % i) for i in range(npub)]
    chunks = []
    for i in range(npub):
        one = m.publish("bench/%02d" % i, PAYLOAD)
        chunks.append(one * (4096 // len(one)))
    for i in range(npub):
        feed(pubs[i], chunks[i])  # the route cache learns the topics
    for r in range(rounds):
        for i in range(npub):
            feed(pubs[i], chunks[i])
    for c in subs + pubs:
        c._closed()
    return rounds * sum(len(ch) // len(m.publish("bench/00", PAYLOAD)) for ch in chunks) * nsub


def windowed(qos, rounds, split):
    """One publisher, one subscriber at QoS `qos`, windows of WINDOW
    messages; returns the messages. Every packet is prepared before the
    run: only the broker's work is in it."""
    b = Broker(load_config(_CFG))
    sub = client(b, "wsub", "bench/w", qos)
    pub = client(b, "wpub")
    head = bytearray(m.publish("bench/w", PAYLOAD, qos=qos, pid=1))
    at = len(head) - len(PAYLOAD) - 2  # where the packet id is

    def publishes(pids):
        out = bytearray()
        for p in pids:
            head[at] = p >> 8
            head[at + 1] = p & 0xFF
            out += head
        return bytes(out)

    def acks(first, pids):
        return b"".join(bytes((first, 2, p >> 8, p & 0xFF)) for p in pids)

    plan = []
    for r in range(rounds):
        # both sides number from 1, one window at a time (the broker's
        # packet ids for the subscriber are sequential: Session.next_pid)
        pids = [(r * WINDOW + i) % 65535 + 1 for i in range(WINDOW)]
        if qos == 1:
            plan.append(((pub, publishes(pids)), (sub, acks(0x40, pids))))
        else:
            plan.append(((pub, publishes(pids)), (pub, acks(0x62, pids)),
                         (sub, acks(0x50, pids)), (sub, acks(0x70, pids))))
    for step in plan:
        for conn, data in step:
            if split:
                k = 0
                while k < len(data):
                    n = 2 + data[k + 1]  # (every packet here is under 128 bytes)
                    feed(conn, data[k:k + n])
                    k += n
            else:
                feed(conn, data)
    if sub.session.inflight or b.msgs_out < rounds * WINDOW:
        raise SystemExit("hotpath: the subscriber did not get every message")
    sub._closed()
    pub._closed()
    return rounds * WINDOW


def main(argv):
    if len(argv) < 2:
        raise SystemExit("usage: hotpath.py fanout|fanin|qos1|qos2 [ROUNDS] [--split]")
    split = "--split" in argv
    args = [a for a in argv[1:] if a != "--split"]
    name = args[0]
    rounds = int(args[1]) if len(args) > 1 else 100
    t0 = time.ticks_us()
    if name == "fanout":
        n = qos0(1, 8, rounds)
    elif name == "fanin":
        n = qos0(8, 1, rounds)
    elif name == "qos1":
        n = windowed(1, rounds, split)
    elif name == "qos2":
        n = windowed(2, rounds, split)
    else:
        raise SystemExit("hotpath: unknown scenario %s" % name)
    dt = time.ticks_diff(time.ticks_us(), t0)
    print("%s %d %d" % (name, n, n * 1000000 // max(dt, 1)))


main(sys.argv)
