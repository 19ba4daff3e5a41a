# One simulated MQTT client over a raw asyncio socket (MQTT 3.1.1 or 5):
# CONNECT/CONNACK, QoS 0/1/2 in both directions, keepalive pings, and the
# ways a device misbehaves on purpose: close without DISCONNECT (abort()),
# stop reading and writing (stall()), stop reading (pause_reading()), read
# slowly (read_rate_msgs_s with a small receive buffer so that TCP pushes
# back on the broker).
#
# Contract with the recorder: a sensor reading is recorded when it first goes
# on the wire and accepted at PUBACK (QoS 1) / PUBREC (QoS 2) / the write
# (QoS 0); a subscriber records a copy when it hands it to the application
# (a QoS 2 PUBLISH resent before PUBREL is acknowledged, not handed over
# again: the client keeps its QoS 2 packet ids across reconnects of a
# persistent session). Unacknowledged QoS 1/2 messages are resent after a
# reconnect: with DUP and the same packet id when the session is present,
# as new publishes otherwise; a QoS 2 message that got PUBREC is only
# released (PUBREL) when the session is present.
import asyncio
import socket

from . import mqtt, payload

MAX_OUT = 10          # our own inflight window (receive maximum of the broker side)
CONNECT_TIMEOUT_S = 5.0
SUB_TIMEOUT_S = 5.0


class Client:
    def __init__(self, rec, host, port, cid, index, version=mqtt.V311, clean=True,
                 keepalive_s=30, will=None, read_rate_msgs_s=0.0, on_publish=None, small_rcvbuf=False):
        """will: None or (topic, qos, retain). on_publish(pkt, decoded
        payload header or None) sees every PUBLISH handed over ($SYS values,
        the retained probe)."""
        self.rec, self.host, self.port, self.cid, self.index = rec, host, port, cid, index
        self.version, self.clean, self.keepalive_s, self.will = version, clean, keepalive_s, will
        self.read_rate = read_rate_msgs_s
        self.small_rcvbuf = small_rcvbuf or bool(read_rate_msgs_s)
        self.on_publish = on_publish
        self.connected = False
        self.conn_no = 0
        self.period = None
        self.ending = None            # why we end the connection ourselves
        self.killed = False           # set by the run while the broker is being killed
        self.lost = asyncio.Event()   # the current connection ended
        self.unstalled = asyncio.Event()
        self.unstalled.set()
        self.reading = asyncio.Event()
        self.reading.set()
        self.window = asyncio.Event()
        self.out = {}                 # pid -> {key, topic, payload, qos, retain, rel}
        self.in_qos2 = set()
        self.sub_waiters = {}
        self.next_pid = 0
        self.reader = self.writer = None
        self.tasks = []

    # --- connection ------------------------------------------------------------------

    async def connect(self):
        """Open and CONNECT. Returns (True, session_present) or (False, why)."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        limit = 2 ** 16
        if self.small_rcvbuf:
            # a slow reader: a small window so that the broker's writes back up
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            limit = 1024
        try:
            await asyncio.wait_for(loop.sock_connect(sock, (self.host, self.port)), CONNECT_TIMEOUT_S)
        except (OSError, asyncio.TimeoutError):
            sock.close()
            return False, "no connection"
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader, self.writer = await asyncio.open_connection(sock=sock, limit=limit)
        self.conn_no += 1
        will = None
        if self.will:
            topic, qos, retain = self.will
            will = (topic, payload.encode("will", self.index, self.conn_no, self.rec.now()), qos, retain)
        self.buf = bytearray()
        self.pending = []
        self.ending = None
        try:
            self.writer.write(mqtt.connect(self.cid, self.version, self.clean, self.keepalive_s, will))
            ack = await asyncio.wait_for(self._first_packet(), CONNECT_TIMEOUT_S)
        except (OSError, EOFError, asyncio.TimeoutError, mqtt.MalformedError):
            ack = None
        if ack is None or ack[0] != mqtt.CONNACK:
            self.rec.refused_connect(-1)  # closed at once: max_clients
            self._close_socket()
            return False, "closed before CONNACK"
        present, rc = mqtt.parse_connack(ack[2])
        if rc != 0:
            self.rec.refused_connect(rc)
            self._close_socket()
            return False, "CONNACK code %d" % rc
        self.connected = True
        self.lost.clear()
        self.period = self.rec.period_start(self.cid, self.rec.now(), present)
        if not present or self.clean:
            self.in_qos2 = set()
        self.tasks = [asyncio.create_task(self._read_loop())]
        if self.keepalive_s:
            self.tasks.append(asyncio.create_task(self._ping_loop()))
        await self._resend(present and not self.clean)
        return True, present

    async def _first_packet(self):
        while True:
            pkts, used = mqtt.split(self.buf)
            if pkts:
                del self.buf[:used]
                self.pending = pkts[1:]
                return pkts[0]
            data = await self.reader.read(4096)
            if not data:
                raise EOFError
            self.buf += data

    async def _resend(self, session_present):
        old = sorted(self.out.items())
        self.out = {}
        for pid, e in old:
            if session_present:
                self.out[pid] = e
                if e["rel"]:
                    await self.send(mqtt.ack(mqtt.PUBREL, pid))
                else:
                    await self.send(mqtt.publish(e["topic"], e["payload"], e["qos"], e["retain"], pid,
                                                 True, self.version))
            elif not e["rel"]:
                pid = self._pid()
                self.out[pid] = e
                await self.send(mqtt.publish(e["topic"], e["payload"], e["qos"], e["retain"], pid,
                                             False, self.version))
        self.window.set()

    def _pid(self):
        while True:
            self.next_pid = self.next_pid % 65535 + 1
            if self.next_pid not in self.out:
                return self.next_pid

    def _close_socket(self):
        if self.writer is not None:
            try:
                self.writer.transport.abort()
            except Exception:
                pass

    def _ended(self, why):
        """The connection is over (we closed it, or it was lost)."""
        if not self.connected:
            return
        self.connected = False
        why = self.ending or ("kill" if self.killed else "lost")
        now = self.rec.now()
        self.period["t_end"] = now
        self.period["end"] = why
        if self.will and why != "graceful":
            topic, qos, retain = self.will
            if why == "abort":
                accepted = True
            elif why == "kill" and not self.clean:
                accepted = "restart"
            else:
                accepted = False
            self.rec.will(self.key_of("will", self.index, self.conn_no), self.cid, self.conn_no,
                          topic, qos, retain, now, accepted)
        for t in self.tasks:
            if t is not asyncio.current_task():
                t.cancel()
        self._close_socket()
        for f in self.sub_waiters.values():
            if not f.done():
                f.set_result(None)
        self.sub_waiters = {}
        self.window.set()
        self.lost.set()

    async def disconnect(self):
        """DISCONNECT and close (no will)."""
        if not self.connected:
            return
        self.ending = "graceful"
        try:
            self.writer.write(mqtt.DISCONNECT_BYTES)
            await asyncio.wait_for(self.writer.drain(), 1.0)
        except (OSError, asyncio.TimeoutError):
            pass
        self._ended("graceful")

    def abort(self):
        """Close the socket without DISCONNECT: the broker publishes the will."""
        if self.connected:
            self.ending = "abort"
            self._ended("abort")

    # --- faults -------------------------------------------------------------------------

    async def stall(self, for_s):
        """Stop reading and writing for for_s seconds (the connection stays)."""
        self.unstalled.clear()
        try:
            await asyncio.sleep(for_s)
        finally:
            self.unstalled.set()

    async def pause_reading(self, for_s):
        self.reading.clear()
        try:
            await asyncio.sleep(for_s)
        finally:
            self.reading.set()

    # --- I/O --------------------------------------------------------------------------------

    async def send(self, data):
        """Write one packet; False when not connected."""
        await self.unstalled.wait()
        if not self.connected:
            return False
        try:
            self.writer.write(data)
            await self.writer.drain()
            return True
        except (OSError, RuntimeError):
            self._ended("lost")
            return False

    async def _ping_loop(self):
        while self.connected:
            await asyncio.sleep(self.keepalive_s / 2.0)
            await self.send(mqtt.PINGREQ_BYTES)

    async def _read_loop(self):
        try:
            while self.connected:
                while self.pending:
                    await self.unstalled.wait()
                    await self.reading.wait()
                    if not self.connected:
                        return
                    ptype, flags, body = self.pending.pop(0)
                    slow = self._handle(ptype, flags, body)
                    if slow and self.read_rate:
                        await asyncio.sleep(1.0 / self.read_rate)
                await self.unstalled.wait()
                await self.reading.wait()
                data = await self.reader.read(512 if self.small_rcvbuf else 65536)
                if not data:
                    break
                self.buf += data
                pkts, used = mqtt.split(self.buf)
                del self.buf[:used]
                self.pending.extend(pkts)
        except (OSError, mqtt.MalformedError, RuntimeError):
            pass
        self._ended("lost")

    def _write(self, data):
        if self.connected:
            try:
                self.writer.write(data)
            except (OSError, RuntimeError):
                pass

    def _handle(self, ptype, flags, body):
        """One packet from the broker. True for a PUBLISH handed over."""
        now = self.rec.now()
        if ptype == mqtt.PUBLISH:
            p = mqtt.parse_publish(flags, body, self.version)
            deliver = True
            if p["qos"] == 1:
                self._write(mqtt.ack(mqtt.PUBACK, p["pid"]))
            elif p["qos"] == 2:
                deliver = p["pid"] not in self.in_qos2
                self.in_qos2.add(p["pid"])
                self._write(mqtt.ack(mqtt.PUBREC, p["pid"]))
            if deliver:
                d = payload.decode(p["payload"])
                if self.on_publish is not None:
                    self.on_publish(p, d)
                if d is not None:
                    kind, pub, seq, _t = d
                    self.rec.receipt(self.cid, self.key_of(kind, pub, seq), now, p["qos"],
                                     p["retain"], p["dup"])
            return deliver
        if ptype == mqtt.PUBREL:
            pid, _ = mqtt.parse_pid(body)
            self.in_qos2.discard(pid)
            self._write(mqtt.ack(mqtt.PUBCOMP, pid))
        elif ptype in (mqtt.PUBACK, mqtt.PUBCOMP):
            pid, _ = mqtt.parse_pid(body)
            e = self.out.pop(pid, None)
            if e is not None:
                self.rec.accepted(e["key"], now)
            self.window.set()
        elif ptype == mqtt.PUBREC:
            pid, _ = mqtt.parse_pid(body)
            e = self.out.get(pid)
            if e is not None:
                self.rec.accepted(e["key"], now)
                e["rel"] = True
            self._write(mqtt.ack(mqtt.PUBREL, pid))
        elif ptype == mqtt.SUBACK:
            pid, codes = mqtt.parse_suback(body, self.version)
            f = self.sub_waiters.pop(pid, None)
            if f is not None and not f.done():
                f.set_result(codes)
        elif ptype == mqtt.UNSUBACK:
            pid, _ = mqtt.parse_pid(body)
            f = self.sub_waiters.pop(pid, None)
            if f is not None and not f.done():
                f.set_result([])
        elif ptype == mqtt.DISCONNECT:
            self.ending = "server_disconnect"
        return False

    # the fleet maps publisher indexes back to client ids
    key_of = staticmethod(lambda kind, pub, seq: "%s:%d:%d" % (kind, pub, seq))

    # --- application calls -----------------------------------------------------------------

    async def publish(self, key, seq, topic, body, qos, retain):
        """Publish one reading. False when not connected (not sent)."""
        while qos and len(self.out) >= MAX_OUT and self.connected:
            self.window.clear()
            await self.window.wait()
        if not self.connected:
            return False
        pid = None
        if qos:
            pid = self._pid()
            self.out[pid] = {"key": key, "topic": topic, "payload": body, "qos": qos,
                             "retain": retain, "rel": False}
        self.rec.sent(key, self.cid, "data", seq, topic, qos, retain, self.rec.now())
        ok = await self.send(mqtt.publish(topic, body, qos, retain, pid, False, self.version))
        if ok and not qos:
            self.rec.accepted(key, self.rec.now())
        return ok

    async def subscribe(self, filters):
        """filters: [(filter, qos)] -> SUBACK codes, or None (no SUBACK)."""
        return await self._request(mqtt.subscribe, filters)

    async def unsubscribe(self, filters):
        return await self._request(mqtt.unsubscribe, filters)

    async def _request(self, encode, filters):
        if not self.connected:
            return None
        pid = self._pid()
        fut = asyncio.get_running_loop().create_future()
        self.sub_waiters[pid] = fut
        if not await self.send(encode(pid, filters, self.version)):
            return None
        try:
            return await asyncio.wait_for(fut, SUB_TIMEOUT_S)
        except asyncio.TimeoutError:
            return None
