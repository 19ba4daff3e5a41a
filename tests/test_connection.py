# midge.connection.Connection and midge.server.Server: in-memory fake
# streams for the precise cases, real asyncio streams on 127.0.0.1 for the
# listener. Each test runs its own event loop with asyncio.run.
import asyncio
import sys

import mqttspec as m
from fakeconn import FakeConn, fails_once, mkconnect, publishes, payloads
from midge import log
from midge.broker import Broker
from midge.compat import ticks_ms, ticks_add
from midge.config import load_config
from midge.connection import Connection
from midge.message import Message
from midge.server import Server

log.set_level("off")
_MICROPYTHON = sys.implementation.name == "micropython"


def run(coro):
    if _MICROPYTHON:
        # MicroPython keeps one global task queue across asyncio.run calls:
        # start each test from an empty one.
        asyncio.new_event_loop()
    return asyncio.run(coro)


class FakeReader:
    """Returns queued chunks (at most n bytes at a time); then EOF, or
    waits for push() when eof is False."""

    def __init__(self, chunks, eof=True):
        self.chunks = list(chunks)
        self.eof = eof
        self.more = None

    def push(self, data):
        self.chunks.append(data)
        if self.more is not None:
            self.more.set()

    def finish(self):
        self.eof = True
        if self.more is not None:
            self.more.set()

    async def read(self, n):
        while not self.chunks:
            if self.eof:
                return b""
            if self.more is None:
                self.more = asyncio.Event()
            self.more.clear()
            await self.more.wait()
        c = self.chunks.pop(0)
        if len(c) > n:
            self.chunks.insert(0, c[n:])
            c = c[:n]
        await asyncio.sleep(0)  # a real read yields to the loop
        return c


    async def readinto(self, buf):
        # the reader interface Connection.run awaits (MicroPython Stream.readinto)
        data = await self.read(len(buf))
        n = len(data)
        buf[0:n] = data
        return n


class FakeWriter:
    def __init__(self, block=False, drain_s=0, peer=("127.0.0.1", 40000)):
        self.data = b""
        self.closed = False
        self.block = block      # drain() never finishes (a stalled client)
        self.drain_s = drain_s  # drain() takes this long (a slow but live one)
        self.release = None
        self.peer = peer

    def write(self, b):
        self.data += bytes(b)

    async def drain(self):
        if self.block:
            if self.release is None:
                self.release = asyncio.Event()
            await self.release.wait()
        elif self.drain_s:
            await asyncio.sleep(self.drain_s)
        else:
            await asyncio.sleep(0)

    def close(self):
        self.closed = True

    async def wait_closed(self):
        pass

    def get_extra_info(self, name):
        if name == "peername":
            return self.peer
        return None

    def packets(self):
        pkts, rest = m.parse_all(self.data)
        assert rest == b""
        return pkts


def new_broker(**overrides):
    return Broker(load_config(overrides))


async def until(cond, timeout_ms=3000):
    """Poll cond() until true; False after timeout_ms."""
    t0 = ticks_ms()
    while not cond():
        if ticks_ms() - t0 > timeout_ms:
            return False
        await asyncio.sleep(0.005)
    return True


def watcher(broker, filt):
    """A FakeConn subscriber on the same broker."""
    w = FakeConn()
    assert broker.connect(w, mkconnect("watch-" + filt))
    broker.subscribe(w.session, 1, [(filt, 0)])
    w.take()
    return w


# --- in-memory streams ----------------------------------------------------------

def test_connect_ping_disconnect_one_chunk():
    b = new_broker()
    data = m.connect("c1") + m.pingreq() + m.disconnect() + m.pingreq()
    w = FakeWriter()

    async def main():
        await Connection(b, FakeReader([data]), w).run()
    run(main())
    kinds = [p["type"] for p in w.packets()]
    assert kinds == ["connack", "pingresp"]  # nothing after DISCONNECT
    assert w.closed
    assert b.online == 0 and len(b.sessions) == 0
    assert b.bytes_in == len(data)


def test_bytes_out_counted():
    b = new_broker()
    data = m.connect("c1") + m.pingreq() + m.disconnect()
    w = FakeWriter()

    async def main():
        await Connection(b, FakeReader([data]), w).run()
    run(main())
    assert len(w.data) == 6
    assert b.bytes_out == len(w.data)  # $SYS/broker/bytes/sent


def test_packets_split_byte_by_byte():
    b = new_broker()
    data = (m.connect("c1") + m.subscribe(1, [("t", 1)]) + m.publish("t", b"x" * 300, qos=1, pid=2)
            + m.disconnect())
    chunks = [data[i:i + 1] for i in range(len(data))]
    w = FakeWriter()

    async def main():
        await Connection(b, FakeReader(chunks), w).run()
    run(main())
    pk = w.packets()
    kinds = [p["type"] for p in pk]
    assert kinds[0] == "connack" and kinds[1] == "suback"
    assert "puback" in kinds
    got = publishes(pk)
    assert len(got) == 1 and got[0]["payload"] == b"x" * 300
    assert b.counters["malformed_packets"] == 0


def test_malformed_packet_closes_and_publishes_will():
    b = new_broker()
    wt = watcher(b, "will/#")
    data = m.connect("c1", will_topic="will/c1", will_payload=b"lost") + m.publish("t", b"x", dup=True)
    w = FakeWriter()

    async def main():
        await Connection(b, FakeReader([data], eof=False), w).run()
    run(main())
    assert [p["type"] for p in w.packets()] == ["connack"]  # no reply to the bad packet
    assert w.closed
    assert b.counters["malformed_packets"] == 1
    assert payloads(wt.take()) == [b"lost"]
    assert "c1" not in b.sessions


def test_protocol_errors_counted_per_kind():
    cases = [
        (m.connect("c") + m.connect("c"), "malformed_packets"),
        (m.connect("c") + m.packet(0xF0, b""), "malformed_packets"),
        (m.connect("c") + m.publish("a/+", b"x"), "malformed_packets"),
        (m.connect("c") + b"\x30\xff\xff\xff\xff\x01", "malformed_packets"),
        (m.publish("t", b"x"), "malformed_packets"),      # before CONNECT
    ]
    for data, counter in cases:
        b = new_broker()
        w = FakeWriter()

        async def main():
            await Connection(b, FakeReader([data], eof=False), w).run()
        run(main())
        assert w.closed
        assert b.counters[counter] == 1, data
        for p in w.packets():
            assert p["type"] == "connack"


def test_oversize_packet_closes():
    b = new_broker(max_packet_size=64)
    w = FakeWriter()
    big = m.publish("t", b"y" * 100)
    # only the header of the big packet arrives: the length alone decides
    data = m.connect("c1") + big[:4]

    async def main():
        await Connection(b, FakeReader([data], eof=False), w).run()
    run(main())
    assert w.closed
    assert b.counters["oversize_packets"] == 1
    assert b.counters["malformed_packets"] == 0


def test_eof_without_disconnect_publishes_will():
    b = new_broker()
    wt = watcher(b, "will")
    w = FakeWriter()

    async def main():
        await Connection(b, FakeReader([m.connect("c1", will_topic="will", will_payload=b"eof")]), w).run()
    run(main())
    assert w.closed
    assert payloads(wt.take()) == [b"eof"]
    assert b.online == 1  # just the watcher


def test_disconnect_suppresses_will():
    b = new_broker()
    wt = watcher(b, "will")
    w = FakeWriter()
    data = m.connect("c1", will_topic="will", will_payload=b"no") + m.disconnect()

    async def main():
        await Connection(b, FakeReader([data], eof=False), w).run()
    run(main())
    assert w.closed
    assert wt.take() == []


def test_refused_connect_flushes_connack_then_closes():
    for data, rc in ((m.connect("x", protocol_level=6), 1), (m.connect("", clean=False), 2)):
        b = new_broker()
        w = FakeWriter()

        async def main():
            await Connection(b, FakeReader([data + m.pingreq()], eof=False), w).run()
        run(main())
        pk = w.packets()
        assert len(pk) == 1 and pk[0]["type"] == "connack" and pk[0]["rc"] == rc
        assert w.closed and b.online == 0


def test_internal_error_costs_one_connection():
    b = new_broker()
    w = FakeWriter()

    def broken(msg, exempt=False):
        raise ZeroDivisionError("bug")
    b.publish = broken  # a bug inside the broker while handling a PUBLISH
    data = m.connect("c1") + m.publish("t", b"x")

    async def main():
        await Connection(b, FakeReader([data], eof=False), w).run()
    import midge.connection as mc
    saved_pe = mc.print_exception
    mc.print_exception = lambda e: None  # keep the expected traceback quiet
    try:
        run(main())
    finally:
        mc.print_exception = saved_pe
    assert w.closed
    assert b.counters["internal_errors"] == 1
    assert b.counters["malformed_packets"] == 0
    assert b.online == 0 and len(b.sessions) == 0


def test_packet_larger_than_read_chunk():
    b = new_broker(max_packet_size=20000)
    big = b"B" * 9000
    data = m.connect("c1") + m.subscribe(1, [("big", 0)]) + m.publish("big", big) + m.disconnect()
    w = FakeWriter()

    async def main():
        await Connection(b, FakeReader([data]), w).run()
    run(main())
    assert payloads(w.packets()) == [big]
    assert b.bytes_in == len(data)


def test_shared_read_buffer_with_interleaved_partial_packets():
    # connections share one read buffer on MicroPython: a partial packet
    # kept by one connection must survive another connection's reads
    b = new_broker()
    pa = m.publish("a", b"A" * 50)
    pb = m.publish("b", b"Z" * 50)
    ra = FakeReader([m.connect("ca") + m.subscribe(1, [("#", 0)])], eof=False)
    rb = FakeReader([m.connect("cb")], eof=False)
    wa = FakeWriter()
    wb = FakeWriter()

    async def main():
        ca = Connection(b, ra, wa)
        cb = Connection(b, rb, wb)
        ta = asyncio.create_task(ca.run())
        tb = asyncio.create_task(cb.run())
        assert await until(lambda: ca.session is not None and cb.session is not None
                           and "#" in ca.session.subs)
        ra.push(pa[:20])
        await asyncio.sleep(0.01)
        rb.push(pb + pb[:30])
        await asyncio.sleep(0.01)
        ra.push(pa[20:])
        await asyncio.sleep(0.01)
        rb.push(pb[30:])
        assert await until(lambda: len(publishes(wa.packets())) == 3)
        ra.push(m.disconnect())
        rb.push(m.disconnect())
        await ta
        await tb
    run(main())
    got = payloads(wa.packets())
    got.sort()
    assert got == [b"A" * 50, b"Z" * 50, b"Z" * 50]
    assert b.counters["malformed_packets"] == 0


def test_backpressure_delays_next_read():
    b = new_broker(backpressure_ms=60)
    b.flow.pressured[object()] = b.uptime_ms  # another connected session over half its queue
    w = FakeWriter()
    data = [m.connect("c1"), m.pingreq(), m.disconnect()]

    async def main():
        t0 = ticks_ms()
        await Connection(b, FakeReader(data), w).run()
        return ticks_ms() - t0
    elapsed = run(main())
    assert [p["type"] for p in w.packets()] == ["connack", "pingresp"]
    assert elapsed >= 110  # two pauses of up to 60 ms before the 2nd and 3rd reads

    b = new_broker(backpressure_ms=0)
    b.flow.pressured[object()] = b.uptime_ms
    w = FakeWriter()

    async def fast():
        t0 = ticks_ms()
        await Connection(b, FakeReader(data), w).run()
        return ticks_ms() - t0
    assert run(fast()) < 100


def test_peer_text():
    b = new_broker()
    assert Connection(b, FakeReader([]), FakeWriter()).peer == "127.0.0.1:40000"
    # the unix port's raw sockaddr: family, port (big-endian), IPv4 address
    raw = bytearray(b"\x02\x00\x07\x5b\x0a\x00\x00\x05" + bytes(8))
    assert Connection(b, FakeReader([]), FakeWriter(peer=raw)).peer == "10.0.0.5:1883"
    assert Connection(b, FakeReader([]), FakeWriter(peer=None)).peer == "?"


def test_disconnect_flushes_replies_while_a_drain_is_in_progress():
    # A drain that is merely in progress (30 ms, far below write_timeout_ms)
    # is not a stuck writer: replies queued before DISCONNECT must still go out.
    b = new_broker()
    w = FakeWriter(drain_s=0.03)
    r = FakeReader([m.connect("c1")], eof=False)

    async def main():
        c = Connection(b, r, w)
        t = asyncio.create_task(c.run())
        assert await until(lambda: c.drain_started_ms >= 0)  # CONNACK draining
        r.push(m.publish("t", b"x", qos=1, pid=3) + m.disconnect())
        await t
    run(main())
    assert [p["type"] for p in w.packets()] == ["connack", "puback"]


def test_room_tracks_outbound_bytes():
    b = new_broker(max_outbound_bytes=300)
    c = Connection(b, FakeReader([]), FakeWriter())
    assert c.room() == 300
    c.send(b"x" * 100)
    c.send(b"y" * 250)
    assert c.room() == -50


def test_live_messages_written_and_pumped():
    b = new_broker(max_inflight=1)
    r = FakeReader([m.connect("sub") + m.subscribe(1, [("t", 1)])], eof=False)
    w = FakeWriter()

    async def main():
        c = Connection(b, r, w)
        task = asyncio.create_task(c.run())
        assert await until(lambda: c.session is not None and "t" in c.session.subs)
        for i in range(3):
            b.publish(Message("t", b"%d" % i, 1, False))
        assert await until(lambda: len(publishes(w.packets())) == 1)
        got = publishes(w.packets())
        r.push(m.puback(got[0]["pid"]))
        assert await until(lambda: len(publishes(w.packets())) == 2)
        got = publishes(w.packets())
        r.push(m.puback(got[1]["pid"]))
        assert await until(lambda: len(publishes(w.packets())) == 3)
        r.push(m.disconnect())
        await task
    run(main())
    assert payloads(w.packets()) == [b"0", b"1", b"2"]
    assert b.bytes_out == len(w.data)


def test_takeover_closes_old_connection():
    b = new_broker()
    wt = watcher(b, "will")
    w1 = FakeWriter()
    w2 = FakeWriter()

    async def main():
        c1 = Connection(b, FakeReader([m.connect("dup", clean=False, will_topic="will",
                                                 will_payload=b"old")], eof=False), w1)
        t1 = asyncio.create_task(c1.run())
        assert await until(lambda: c1.session is not None)
        r2 = FakeReader([m.connect("dup", clean=False)], eof=False)
        c2 = Connection(b, r2, w2)
        t2 = asyncio.create_task(c2.run())
        assert await until(lambda: w1.closed)
        await t1
        assert c2.session is not None and b.sessions["dup"].conn is c2
        r2.push(m.disconnect())
        await t2
    run(main())
    assert [p["session_present"] for p in w2.packets()] == [1]
    # a persistent session resumed by a persistent one: no will (the
    # client is back); test_broker covers the clean combinations
    assert payloads(wt.take()) == []


def test_keepalive_timeout_closes_connection():
    b = new_broker(sys_interval_s=0)
    wt = watcher(b, "will")
    w = FakeWriter()

    async def main():
        c = Connection(b, FakeReader([m.connect("k", keepalive=1, will_topic="will",
                                                will_payload=b"ka")], eof=False), w)
        t = asyncio.create_task(c.run())
        assert await until(lambda: c.session is not None)
        b.tick()
        assert not c.closing
        c.last_rx_ms = ticks_add(ticks_ms(), -1600)
        b.tick()
        await t
    run(main())
    assert w.closed
    assert b.counters["keepalive_timeouts"] == 1
    assert payloads(wt.take()) == [b"ka"]


def test_slow_writer_drops_qos0_and_write_timeout_closes():
    b = new_broker(max_outbound_bytes=256, sys_interval_s=0)
    srv = Server(b.cfg, b)
    w = FakeWriter(block=True)
    r = FakeReader([m.connect("slow") + m.subscribe(1, [("t", 0)])], eof=False)

    async def main():
        c = Connection(b, r, w)
        srv.conns.append(c)
        t = asyncio.create_task(c.run())
        assert await until(lambda: c.session is not None and "t" in c.session.subs)
        for i in range(6):
            b.publish(Message("t", b"z" * 100, 0, False))
        # 9 bytes (CONNACK, SUBACK) + 3 x 105 pass 256: the rest is dropped
        assert b.counters["slow_dropped"] == 3
        assert await until(lambda: c.drain_started_ms >= 0)
        srv.tick()
        assert not c.closing  # not stalled long enough yet
        c.drain_started_ms = ticks_add(ticks_ms(), -20000)
        srv.tick()
        assert c.closing
        await t
    run(main())
    assert b.counters["slow_disconnects"] == 1
    assert w.closed
    assert b.online == 0


def test_connect_timeout_closes_silent_socket():
    b = new_broker(connect_timeout_ms=100, sys_interval_s=0)
    srv = Server(b.cfg, b)
    w = FakeWriter()

    async def main():
        c = Connection(b, FakeReader([], eof=False), w)
        srv.conns.append(c)
        t = asyncio.create_task(c.run())
        await asyncio.sleep(0)
        srv.tick()
        assert not c.closing
        c.opened_ms = ticks_add(ticks_ms(), -101)
        srv.tick()
        assert c.closing
        await t
    run(main())
    assert w.closed and w.data == b""
    assert b.counters["connect_timeouts"] == 1


# --- real sockets on 127.0.0.1 --------------------------------------------------------

_used_ports = []


async def free_port():
    """A port that start_server can bind right now."""
    import random
    for _ in range(50):
        port = 20000 + random.getrandbits(15)
        if port in _used_ports:
            continue
        try:
            s = await asyncio.start_server(lambda r, w: None, "127.0.0.1", port)
        except OSError:
            continue
        s.close()
        await s.wait_closed()
        _used_ports.append(port)
        return port
    raise OSError("no free port")


class Client:
    """A raw MQTT client on real asyncio streams (packets from mqttspec)."""

    def __init__(self, reader, writer):
        self.r = reader
        self.w = writer
        self.buf = b""

    async def send(self, data):
        self.w.write(data)
        await self.w.drain()

    async def recv(self, timeout=5):
        """Next packet, or None at EOF."""
        while True:
            pkt, used = m.parse(self.buf)
            if pkt is not None:
                self.buf = self.buf[used:]
                return pkt
            try:
                data = await asyncio.wait_for(self.r.read(4096), timeout)
            except OSError:
                return None
            if not data:
                return None
            self.buf += data

    async def close(self):
        try:
            self.w.close()
            await self.w.wait_closed()
        except Exception:
            pass


async def open_client(port):
    for _ in range(100):
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            return Client(r, w)
        except OSError:
            await asyncio.sleep(0.02)
    raise OSError("cannot connect to port %d" % port)


async def start_server(**overrides):
    port = await free_port()
    overrides["port"] = port
    overrides["host"] = "127.0.0.1"
    srv = Server(load_config(overrides))
    task = asyncio.create_task(srv.run())
    # let run() bind and listen (MicroPython's open_connection reports a
    # refused connect only at the first write, so do not race it)
    await asyncio.sleep(0.1)
    return srv, task, port


async def stop_server(srv, task):
    srv.stopping = True
    await task


def test_server_pub_sub_over_loopback():
    result = {}

    async def main():
        srv, task, port = await start_server(sys_interval_s=0)
        sub = await open_client(port)
        await sub.send(m.connect("sub"))
        ack = await sub.recv()
        await sub.send(m.subscribe(1, [("room/+", 1)]))
        suback = await sub.recv()
        pub = await open_client(port)
        await pub.send(m.connect("pub") + m.publish("room/1", b"hello", qos=1, pid=5))
        pk1 = await pub.recv()
        pk2 = await pub.recv()
        msg = await sub.recv()
        await sub.send(m.puback(msg["pid"]))
        await pub.send(m.disconnect())
        eof = await pub.recv()
        await sub.send(m.disconnect())
        await sub.recv()
        await sub.close()
        await pub.close()
        await until(lambda: len(srv.conns) == 0)
        result["conns"] = len(srv.conns)
        result["broker"] = srv.broker
        await stop_server(srv, task)
        result["pk"] = (ack, suback, pk1, pk2, msg, eof)
    run(main())
    ack, suback, pk1, pk2, msg, eof = result["pk"]
    assert ack["type"] == "connack" and ack["rc"] == 0
    assert suback["type"] == "suback" and suback["codes"] == [1]
    assert pk1["type"] == "connack" and pk2["type"] == "puback" and pk2["pid"] == 5
    assert msg["type"] == "publish" and msg["topic"] == "room/1" and msg["payload"] == b"hello"
    assert msg["qos"] == 1 and msg["retain"] == 0
    assert eof is None  # the server closed after DISCONNECT
    assert result["conns"] == 0
    b = result["broker"]
    assert b.online == 0 and b.msgs_in == 1 and b.msgs_out == 1


def test_server_max_clients_refuses_extra_socket():
    result = {}

    async def main():
        srv, task, port = await start_server(max_clients=1, sys_interval_s=0)
        first = await open_client(port)
        await first.send(m.connect("first"))
        result["first"] = await first.recv()
        second = await open_client(port)
        await second.send(m.connect("second"))
        result["second"] = await second.recv()
        result["refused"] = srv.broker.counters["clients_refused"]
        await second.close()
        # the first client is unaffected
        await first.send(m.pingreq())
        result["ping"] = await first.recv()
        await first.close()
        await until(lambda: len(srv.conns) == 0)
        await stop_server(srv, task)
    run(main())
    assert result["first"]["type"] == "connack" and result["first"]["rc"] == 0
    assert result["second"] is None  # closed without a CONNACK
    assert result["refused"] == 1
    assert result["ping"]["type"] == "pingresp"


def test_server_connect_timeout_real_socket():
    result = {}

    async def main():
        srv, task, port = await start_server(connect_timeout_ms=100, sys_interval_s=0)
        silent = await open_client(port)
        t0 = ticks_ms()
        result["eof"] = await silent.recv(timeout=5)
        result["ms"] = ticks_ms() - t0
        result["count"] = srv.broker.counters["connect_timeouts"]
        await silent.close()
        await stop_server(srv, task)
    run(main())
    assert result["eof"] is None
    assert result["count"] == 1
    assert result["ms"] < 4000


def test_server_malformed_client_does_not_hurt_others():
    result = {}

    async def main():
        srv, task, port = await start_server(sys_interval_s=0)
        good = await open_client(port)
        await good.send(m.connect("good") + m.subscribe(1, [("will", 0)]))
        await good.recv()
        await good.recv()
        bad = await open_client(port)
        await bad.send(m.connect("bad", will_topic="will", will_payload=b"bad-will"))
        await bad.recv()
        await bad.send(m.publish(b"\xc0\x80", b"x"))  # overlong UTF-8 topic
        result["bad"] = await bad.recv()
        result["will"] = await good.recv()
        await good.send(m.pingreq())
        result["ping"] = await good.recv()
        result["malformed"] = srv.broker.counters["malformed_packets"]
        await bad.close()
        await good.close()
        await until(lambda: len(srv.conns) == 0)
        await stop_server(srv, task)
    run(main())
    assert result["bad"] is None
    assert result["will"]["type"] == "publish" and result["will"]["payload"] == b"bad-will"
    assert result["ping"]["type"] == "pingresp"
    assert result["malformed"] == 1


def test_server_ticks_publish_sys_and_call_on_tick():
    result = {"ticks": 0}

    def on_tick():
        result["ticks"] += 1

    async def main():
        port = await free_port()
        srv = Server(load_config({"port": port, "sys_interval_s": 1}), on_tick=on_tick)
        task = asyncio.create_task(srv.run())
        await asyncio.sleep(0.4)   # at least one 250 ms tick
        c = await open_client(port)
        await c.send(m.connect("mon") + m.subscribe(1, [("$SYS/broker/version", 0)]))
        result["pk"] = [await c.recv(), await c.recv(), await c.recv()]
        await c.send(m.disconnect())
        await c.recv()
        await c.close()
        await until(lambda: len(srv.conns) == 0)
        srv.stopping = True
        await task
    run(main())
    assert result["ticks"] >= 1
    ack, suback, ver = result["pk"]
    assert ack["rc"] == 0 and suback["codes"] == [0]
    assert ver["type"] == "publish" and ver["retain"] == 1 and ver["payload"][:6] == b"midge "


def test_forwarded_views_survive_a_slow_subscriber_drain():
    # The QoS 0 fast path queues views of the shared read buffer; a
    # subscriber whose drain is still running keeps its output across
    # later reads, so the flush must have copied it by then.
    b = new_broker(max_outbound_bytes=100000)
    ws = FakeWriter(block=True)
    rs = FakeReader([m.connect("sub") + m.subscribe(1, [("t/#", 0)])], eof=False)
    rp = FakeReader([m.connect("pub")], eof=False)
    wp = FakeWriter()

    async def main():
        cs = Connection(b, rs, ws)
        cp = Connection(b, rp, wp)
        ts = asyncio.create_task(cs.run())
        tp = asyncio.create_task(cp.run())
        assert await until(lambda: cs._drainer is not None and cp.session is not None)
        for i in range(4):  # the 2nd and later take the fast path
            rp.push(m.publish("t/1", b"%d" % i * 20))
            await asyncio.sleep(0.01)
        rp.push(m.publish("t/2", b"X" * 200) + m.publish("t/3", b"Y" * 200))  # overwrite the buffer
        await asyncio.sleep(0.01)
        ws.block = False
        ws.release.set()
        assert await until(lambda: len(publishes(ws.packets())) == 6)
        rp.push(m.disconnect())
        rs.push(m.disconnect())
        await tp
        await ts
    run(main())
    assert payloads(ws.packets()) == [b"%d" % i * 20 for i in range(4)] + [b"X" * 200, b"Y" * 200]


def test_one_chunk_of_qos0_publishes_reaches_every_subscriber_in_order():
    # Within one read chunk, every delivery after a subscriber's first is
    # queued by forward_qos0's inline append (send()'s common case): each
    # subscriber still gets every frame, in order, counted once.
    b = new_broker()
    subs = [(FakeReader([m.connect("s%d" % i) + m.subscribe(1, [("t/#", 0)])], eof=False), FakeWriter())
            for i in range(3)]
    rp = FakeReader([m.connect("pub")], eof=False)
    wanted = [b"p%03d" % i for i in range(40)]

    async def main():
        cs = [Connection(b, r, w) for r, w in subs]
        cp = Connection(b, rp, FakeWriter())
        ts = [asyncio.create_task(c.run()) for c in cs]
        tp = asyncio.create_task(cp.run())
        assert await until(lambda: all(c.session is not None for c in cs + [cp]))
        assert await until(lambda: all(len(w.packets()) == 2 for r, w in subs))  # CONNACK, SUBACK
        rp.push(m.publish("t/1", b"warm"))  # routes t/1: the rest take the fast path
        rp.push(b"".join(m.publish("t/1", p) for p in wanted))
        assert await until(lambda: all(len(publishes(w.packets())) == 41 for r, w in subs))
        rp.push(m.disconnect())
        for r, w in subs:
            r.push(m.disconnect())
        await tp
        for t in ts:
            await t
    run(main())
    for r, w in subs:
        assert payloads(w.packets()) == [b"warm"] + wanted
    assert b.msgs_in == 41 and b.msgs_out == 3 * 41


def test_a_long_drain_copies_each_part_once():
    # While a drain runs, each flush makes the views that arrived since the
    # last one own copies, never everything again.
    b = new_broker(max_outbound_bytes=100000)
    ws = FakeWriter(block=True)
    rs = FakeReader([m.connect("sub") + m.subscribe(1, [("t", 0)])], eof=False)
    rp = FakeReader([m.connect("pub")], eof=False)

    async def main():
        cs = Connection(b, rs, ws)
        cp = Connection(b, rp, FakeWriter())
        ts = asyncio.create_task(cs.run())
        tp = asyncio.create_task(cp.run())
        assert await until(lambda: cs._drainer is not None and cp.session is not None)
        for i in range(5):
            rp.push(m.publish("t", b"%d" % i * 10) * 2)
            await asyncio.sleep(0.01)
            assert cs._owned == len(cs._out)
            assert all(type(x) is not memoryview for x in cs._out)
        ws.block = False
        ws.release.set()
        assert await until(lambda: len(publishes(ws.packets())) == 10)
        assert cs._owned == 0 and len(cs._out) == 0
        rp.push(m.disconnect())
        rs.push(m.disconnect())
        await tp
        await ts
    run(main())
    assert payloads(ws.packets()) == [b"%d" % (i // 2) * 10 for i in range(10)]


# --- hardening: the output cap, MemoryError isolation, admission (issue 8) ---------------

class BrokenWriter(FakeWriter):
    """write() raises `exc` (a MemoryError while joining or writing)."""

    def __init__(self, exc):
        FakeWriter.__init__(self)
        self.exc = exc

    def write(self, b):
        raise self.exc


def test_unread_replies_close_the_connection_at_the_output_cap():
    # a client that sends PINGREQs and never reads: the PINGRESPs pile up
    # behind a stalled drain until max_unsent; then the connection is closed
    # and its output dropped
    b = new_broker(max_outbound_bytes=256, max_packet_size=64, max_reply_bytes=64)
    assert b.max_unsent == 256 + 64 + 64
    w = FakeWriter(block=True)
    r = FakeReader([m.connect("flood")], eof=False)
    reg = []

    async def main():
        c = Connection(b, r, w, reg)
        t = asyncio.create_task(c.run())
        assert await until(lambda: c.session is not None and c.drain_started_ms >= 0)
        for _ in range(50):
            r.push(m.pingreq() * 10)
            await asyncio.sleep(0)
            if c.closing:
                break
        await t
        return c
    c = run(main())
    assert b.counters["output_overflows"] == 1
    assert w.closed and reg == [] and b.online == 0
    assert c._abandon and len(c._out) == 0


def test_small_replies_are_packed_into_one_buffer():
    b = new_broker()
    c = Connection(b, FakeReader([]), FakeWriter())
    c.send(b"\x30\x03\x00\x01t" * 10)   # a delivery: kept as it is
    for pid in range(1, 101):
        c.send(m.puback(pid))
    assert len(c._out) == 2 and c._out_bytes == 50 + 400
    pk, rest = m.parse_all(bytes(c._out[1]))
    assert rest == b"" and [p["pid"] for p in pk] == list(range(1, 101))


def test_memory_error_writing_to_one_connection_closes_only_it():
    b = new_broker(sys_interval_s=0)
    ws = BrokenWriter(MemoryError())
    rs = FakeReader([], eof=False)
    rp = FakeReader([m.connect("pub")], eof=False)
    wp = FakeWriter()

    async def main():
        cs = Connection(b, rs, ws)
        ts = asyncio.create_task(cs.run())
        cp = Connection(b, rp, wp)
        tp = asyncio.create_task(cp.run())
        assert await until(lambda: cp.session is not None)
        # the subscriber's session exists without output yet: attach it by hand
        assert b.connect(cs, mkconnect("sub"))
        b.subscribe(cs.session, 1, [("t", 0)])
        cs._out = ()                      # forget the CONNACK and SUBACK: not what is tested
        cs._out_bytes = 0
        rp.push(m.publish("t", b"x") + m.pingreq())
        await ts
        rp.push(m.pingreq() + m.disconnect())
        await tp
    run(main())
    assert ws.closed and b.counters["memory_errors"] == 1
    assert [p["type"] for p in wp.packets()] == ["connack", "pingresp", "pingresp"]
    assert b.counters["internal_errors"] == 0


def test_socket_closed_when_the_last_flush_fails():
    b = new_broker()
    w = BrokenWriter(OSError(32))
    reg = []

    async def main():
        c = Connection(b, FakeReader([m.connect("x") + m.disconnect()]), w, reg)
        await c.run()
    run(main())
    assert w.closed and reg == []


def test_server_closes_the_oldest_silent_socket_to_admit_a_client():
    result = {}

    async def main():
        srv, task, port = await start_server(max_clients=2, sys_interval_s=0)
        silent1 = await open_client(port)
        await asyncio.sleep(0.05)
        silent2 = await open_client(port)
        await until(lambda: len(srv.conns) == 2)
        good = await open_client(port)
        await good.send(m.connect("good"))
        result["good"] = await good.recv()
        result["silent1"] = await silent1.recv(timeout=2)   # None: closed
        await silent2.send(m.connect("late"))
        result["silent2"] = await silent2.recv(timeout=2)   # still admitted
        result["counters"] = dict(srv.broker.counters)
        for c in (silent1, silent2, good):
            await c.close()
        await until(lambda: len(srv.conns) == 0)
        await stop_server(srv, task)
    run(main())
    assert result["good"]["type"] == "connack" and result["good"]["rc"] == 0
    assert result["silent1"] is None
    assert result["silent2"]["type"] == "connack"
    assert result["counters"]["preconnect_closed"] == 1 and result["counters"]["clients_refused"] == 0


def test_server_heap_low_refuses_new_sessions_not_sockets():
    # a socket is how a client with a session comes back: the reserve is
    # applied at CONNECT, to new sessions only
    result = {}

    async def main():
        srv, task, port = await start_server(sys_interval_s=0)
        c = await open_client(port)
        await c.send(m.connect("kept", clean=False) + m.disconnect())
        await c.recv(timeout=2)
        await c.close()
        srv.broker.heap.reserve = 0   # keep the level set below (no measuring)
        srv.broker.heap.level = 1
        c = await open_client(port)
        await c.send(m.connect("new"))
        result["new"] = await c.recv(timeout=2)
        await c.close()
        c = await open_client(port)
        await c.send(m.connect("kept", clean=False))
        result["kept"] = await c.recv(timeout=2)
        await c.close()
        result["heap_refused"] = srv.broker.counters["heap_refused"]
        await until(lambda: len(srv.conns) == 0)
        await stop_server(srv, task)
    run(main())
    assert result["new"]["rc"] == 3
    assert result["kept"]["rc"] == 0 and result["kept"]["session_present"] == 1
    assert result["heap_refused"] == 1


def test_server_accept_survives_a_memory_error():
    import midge.server as server_mod
    result = {}
    real = server_mod.Connection
    flaky = fails_once(real)

    async def main():
        srv, task, port = await start_server(sys_interval_s=0)
        server_mod.Connection = flaky
        try:
            c = await open_client(port)
            await c.send(m.connect("x"))
            result["first"] = await c.recv(timeout=2)
            await c.close()
            c = await open_client(port)
            await c.send(m.connect("y"))
            result["second"] = await c.recv(timeout=2)
            await c.close()
        finally:
            server_mod.Connection = real
        result["memory_errors"] = srv.broker.counters["memory_errors"]
        await until(lambda: len(srv.conns) == 0)
        await stop_server(srv, task)
    run(main())
    assert result["first"] is None and result["second"]["rc"] == 0
    assert result["memory_errors"] == 1


def test_server_listen_failure_is_a_config_error_naming_the_key():
    from midge.config import ConfigError

    async def main():
        srv = Server(load_config({"host": "192.0.2.1", "port": 1883, "sys_interval_s": 0,
                                       "allow_anonymous": True}))
        try:
            await srv.run()
        except ConfigError as e:
            return str(e)
        return None
    msg = run(main())
    assert msg is not None and "'host'" in msg and "192.0.2.1" in msg, msg


class SizedWriter(FakeWriter):
    """Records the size of every write."""

    def __init__(self):
        FakeWriter.__init__(self, block=True)
        self.sizes = []

    def write(self, b):
        self.sizes.append(len(b))
        FakeWriter.write(self, b)


def test_output_written_in_bounded_pieces_and_views_owned_when_a_drain_starts():
    # no write (and no copy) joins more than 4 KB unless one packet is larger:
    # a fragmented device heap fails large blocks long before it is full
    b = new_broker(max_outbound_bytes=100000)
    w = SizedWriter()
    src = bytearray(m.publish("t", b"a" * 990) * 10)
    mv = memoryview(src)
    step = len(src) // 10
    big = bytes(m.publish("big", b"B" * 6000))

    async def main():
        c = Connection(b, FakeReader([], eof=False), w)
        b.flush_hold = True
        for i in range(10):
            c.send(mv[i * step:(i + 1) * step])   # views, as the QoS 0 fast path queues
        c.send(big)
        b.flush_hold = False
        c.flush()
        for i in range(len(src)):               # the shared buffer is read into again
            src[i] = 0
        assert await until(lambda: w.release is not None)
        w.block = False
        w.release.set()
        assert await until(lambda: c._drainer is None and not c._out)
        c.close()
    run(main())
    assert max(w.sizes) <= len(big) and all(n <= 4096 for n in w.sizes if n != len(big))
    assert len(w.sizes) >= 3
    assert payloads(w.packets()) == [b"a" * 990] * 10 + [b"B" * 6000]


def test_a_subscribe_cut_short_by_memory_error_sends_nothing_of_it():
    # the MemoryError strikes while the second filter is matched against
    # the retained store: no SUBACK was queued, so none of the retained
    # messages the first filter found may go out either
    b = new_broker()
    b.publish(Message("r/1", b"kept", 0, True))
    w = FakeWriter()
    r = FakeReader([m.connect("c") + m.pingreq()], eof=False)
    real = b.retained.match
    calls = []

    def flaky(levels, out):
        calls.append(1)
        if len(calls) == 2:
            raise MemoryError()
        real(levels, out)
    b.retained.match = flaky

    async def main():
        c = Connection(b, r, w)
        t = asyncio.create_task(c.run())
        assert await until(lambda: c.session is not None and len(w.data) >= 6)
        r.push(m.subscribe(7, [("r/#", 0), ("x/#", 0)]))
        await t
    run(main())
    assert [p["type"] for p in w.packets()] == ["connack", "pingresp"]
    assert w.closed and b.counters["memory_errors"] == 1


class FailingReader(FakeReader):
    """A read that fails with MemoryError once `fail` is set."""
    fail = False

    async def readinto(self, buf):
        if self.chunks:
            return await FakeReader.readinto(self, buf)
        while not self.fail:
            await asyncio.sleep(0.005)
        raise MemoryError()


def test_a_memory_error_while_handling_a_memory_error_still_detaches_and_closes():
    # closing after a MemoryError allocates too (a flag set for the first
    # time grows the object): when that fails as well, the session is
    # still detached and the socket still closed
    b = new_broker()
    w = FakeWriter()
    r = FailingReader([m.connect("c")], eof=False)
    reg = []

    async def main():
        c = Connection(b, r, w, reg)
        t = asyncio.create_task(c.run())
        assert await until(lambda: c.session is not None and len(w.data) >= 4)

        def no_heap():
            raise MemoryError()
        c._drop_output = no_heap
        r.fail = True
        await t
    run(main())
    assert w.closed and reg == [] and b.online == 0


def test_inlined_state_constant_agrees_with_protocol():
    # connection.py inlines protocol.ACTIVE, handlers.py the packet types
    # and states, as private consts (no global lookup per packet); they
    # must not drift apart
    import midge.connection as c
    import midge.handlers as h
    from midge import protocol
    assert c.__file__.endswith(".py")  # the tests run the source
    with open(c.__file__) as f:
        assert "_ACTIVE = const(%d)" % protocol.ACTIVE in f.read()
    with open(h.__file__) as f:
        src = f.read()
    for name in ("AWAIT_CONNECT", "ACTIVE", "CONNECT", "PUBLISH", "PUBACK", "PUBREC", "PUBREL", "PUBCOMP",
                 "SUBSCRIBE", "UNSUBSCRIBE", "PINGREQ", "DISCONNECT"):
        assert "_%s = const(%d)" % (name, getattr(protocol, name)) in src, name


def test_inlined_delivery_constants_agree_with_session_and_wire():
    # delivery.py inlines the inflight entry fields and states (session.py)
    # and the acknowledgement first bytes (wire311.py) as private consts
    import midge.delivery as d
    from midge import session, wire311
    assert d.__file__.endswith(".py")  # the tests run the source
    with open(d.__file__) as f:
        src = f.read()
    for mod, names in ((session, ("PID", "MSG", "QOS", "RETAIN", "STATE", "AWAIT_ACK", "AWAIT_COMP")),
                       (wire311, ("PUBACK", "PUBREC", "PUBREL", "PUBCOMP"))):
        for name in names:
            v = getattr(mod, name)
            assert ("_%s = const(%d)" % (name, v) in src or "_%s = const(0x%02x)" % (name, v) in src
                    or "_%s = const(0x%02X)" % (name, v) in src), name
