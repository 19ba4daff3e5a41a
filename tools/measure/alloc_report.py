# Heap bytes allocated per routed QoS 0 message, measured under the
# MicroPython unix port (64-bit: about half on a 32-bit board).
#
#   MICROPYPATH=.frozen:lib:tools .venv/bin/micropython -X heapsize=64M tools/measure/alloc_report.py [N [cached|full]]
#
# One subscriber ("#", QoS 0) and one publisher run as real
# midge.connection.Connection objects on in-memory streams. The publisher's
# stream hands over N QoS 0 PUBLISHes of 64-byte payloads on 8 topics in 4 KB
# chunks, as a socket would. With the garbage collector off, gc.mem_alloc()
# before and after gives every byte the read loop, the handlers, the routing
# and the writes allocated, divided by N. A second figure uses 64 distinct
# topics per 64 messages, so that no route is ever cached (the full path).
#
# The NUMBER of allocations is counted from outside, with valgrind's
# callgrind counting calls to MicroPython's gc_alloc over two runs of
# different N (tools/measure/alloc_count.sh).
#
# It only uses Connection(broker, reader, writer).run(), the broker and the
# spec encoder in tools/mqttspec.py, so it runs unchanged against earlier
# versions of lib/ (the before/after figures in BENCHMARKS.md).
import asyncio
import gc
import sys

import mqttspec as m
from midge.broker import Broker
from midge.config import load_config
from midge.connection import Connection


class Reader:
    """Hands out one prepared byte stream, at most len(buf) bytes per read
    as a socket would, with no allocation of its own per message (views of
    the stream, not copies); waits while nothing is pushed."""

    def __init__(self):
        self.data = memoryview(b"")
        self.pos = 0
        self.more = asyncio.Event()

    def push(self, data):
        self.data = memoryview(bytes(self.data[self.pos:]) + data)
        self.pos = 0
        self.more.set()

    async def readinto(self, buf):
        while self.pos >= len(self.data):
            self.more.clear()
            await self.more.wait()
        k = min(len(buf), len(self.data) - self.pos)
        buf[:k] = self.data[self.pos:self.pos + k]
        self.pos += k
        return k

    async def read(self, n):  # CPython path of earlier versions
        b = bytearray(n)
        k = await self.readinto(b)
        return bytes(b[:k])


class Sink:
    """A writer that takes everything at once and keeps a byte count."""

    def __init__(self):
        self.n = 0
        self.out_buf = b""

    def write(self, data):
        self.n += len(data)

    async def drain(self):
        pass

    def close(self):
        pass

    async def wait_closed(self):
        pass

    def get_extra_info(self, name):
        return None


def stream_of(n, distinct, payload):
    """n QoS 0 PUBLISHes in one bytes object, built without allocating per
    message (so that counting allocations over n counts the broker's):
    8 topics repeated, or topics t/00000 .. t/<n-1> written into a copy of
    one template packet."""
    if not distinct:
        unit = b"".join(m.publish("sensor/%d" % i, payload) for i in range(8))
        return unit * (n // 8)
    tpl = m.publish("t/00000", payload)
    out = bytearray(tpl * n)
    size = len(tpl)
    first = tpl.index(b"00000")
    for i in range(n):
        at = i * size + first + 4
        v = i
        for _ in range(5):
            out[at] = 48 + v % 10
            v //= 10
            at -= 1
    return bytes(out)


async def settle():
    for _ in range(20):
        await asyncio.sleep(0)


async def measure(n, distinct):
    b = Broker(load_config({"max_outbound_bytes": 1 << 20, "sys_interval_s": 0}))
    sub_r = Reader()
    sub_r.push(m.connect("sub") + m.subscribe(1, [("#", 0)]))
    asyncio.create_task(Connection(b, sub_r, Sink()).run())
    payload = b"p" * 64
    body = stream_of(n, distinct, payload)
    pub_r = Reader()
    # CONNECT and one message per topic first (fills the route cache)
    pub_r.push(m.connect("pub") + b"".join(m.publish("sensor/%d" % i, payload) for i in range(8)))
    asyncio.create_task(Connection(b, pub_r, Sink()).run())
    await settle()
    start = b.msgs_out
    gc.collect()
    gc.disable()
    a0 = gc.mem_alloc()
    pub_r.push(body)
    while b.msgs_out - start < n:
        await asyncio.sleep(0)
    a1 = gc.mem_alloc()
    gc.enable()
    return (a1 - a0) / n, b.msgs_out - start


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    n -= n % 8
    mode = sys.argv[2] if len(sys.argv) > 2 else "both"  # cached | full | both
    from midge import log
    log.set_level("off")
    if mode in ("cached", "both"):
        per, got = asyncio.run(measure(n, False))
        print("QoS 0, 8 topics (routes cached):   %7.1f bytes allocated per routed message (%d routed)" % (per, got))
        asyncio.new_event_loop()
    if mode in ("full", "both"):
        per, got = asyncio.run(measure(n, True))
        print("QoS 0, every topic new (full path): %7.1f bytes allocated per routed message (%d routed)" % (per, got))


main()
