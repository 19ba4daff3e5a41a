# Heap bytes allocated per routed QoS 0 message, measured under the
# MicroPython unix port (64-bit: about half on a 32-bit board).
#
#   MICROPYPATH=.frozen:lib:tests .venv/bin/micropython tools/alloc_report.py [N]
#
# One subscriber ("#", QoS 0) and one publisher run as real
# midge.connection.Connection objects on in-memory streams. The publisher's
# stream hands over N QoS 0 PUBLISHes of 64-byte payloads on 8 topics in 4 KB
# chunks, as a socket would. With the garbage collector off, gc.mem_alloc()
# before and after gives every byte the read loop, the handlers, the routing
# and the writes allocated, divided by N. A second figure uses 64 distinct
# topics per 64 messages, so that no route is ever cached (the full path).
#
# It only uses Connection(broker, reader, writer).run(), the broker and the
# spec encoder in tests/mqttspec.py, so it runs unchanged against earlier
# versions of lib/ (the before/after figures in BENCHMARKS.md).
import asyncio
import gc
import sys

import mqttspec as m
from midge.broker import Broker
from midge.config import load_config
from midge.connection import Connection


class Reader:
    """Returns pushed chunks in order; waits while there is none."""

    def __init__(self):
        self.chunks = []
        self.i = 0
        self.more = asyncio.Event()

    def push(self, chunks):
        self.chunks.extend(chunks)
        self.more.set()

    async def readinto(self, buf):
        while self.i >= len(self.chunks):
            self.more.clear()
            await self.more.wait()
        c = self.chunks[self.i]
        if len(c) > len(buf):  # a socket returns at most len(buf)
            self.chunks[self.i] = c[len(buf):]
            c = c[:len(buf)]
        else:
            self.i += 1
        buf[:len(c)] = c
        return len(c)

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


def chunks_of(data, size=4096):
    return [data[i:i + size] for i in range(0, len(data), size)]


async def settle():
    for _ in range(20):
        await asyncio.sleep(0)


async def measure(n, distinct):
    b = Broker(load_config({"max_outbound_bytes": 1 << 20, "sys_interval_s": 0}))
    sub_r = Reader()
    sub_r.push([m.connect("sub") + m.subscribe(1, [("#", 0)])])
    asyncio.create_task(Connection(b, sub_r, Sink()).run())
    payload = b"p" * 64
    if distinct:
        pkts = [m.publish("t/%d" % i, payload) for i in range(n)]
    else:
        pkts = [m.publish("sensor/%d" % (i % 8), payload) for i in range(n)]
    body = chunks_of(b"".join(pkts))
    pub_r = Reader()
    # CONNECT and one message per topic first (fills the route cache)
    pub_r.push([m.connect("pub") + b"".join(m.publish("sensor/%d" % i, payload) for i in range(8))])
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
    from midge import log
    log.set_level("off")
    per, got = asyncio.run(measure(n, False))
    print("QoS 0, 8 topics (routes cached):   %7.1f bytes allocated per routed message (%d routed)" % (per, got))
    asyncio.new_event_loop()
    per, got = asyncio.run(measure(n, True))
    print("QoS 0, every topic new (full path): %7.1f bytes allocated per routed message (%d routed)" % (per, got))


main()
