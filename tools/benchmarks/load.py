"""The benchmark's load generator: CPython raw sockets, one process, one
thread (the broker gets the other core).

- Clients connect and subscribe with blocking sockets (`Client`), then the
  load phase runs on non-blocking sockets under one selector.
- QoS 0 publishers write a pre-encoded, packet-aligned 64 KB batch over and
  over with send() (no per-message Python work); a stop finishes the packet
  in progress, so `bytes written / packet length` is the message count.
- Subscribers recv() 64 KB chunks and count PUBLISH packets with
  bench_mqtt.Counter (length-prefix walking, runs of identical packets
  checked in C).
- QoS 1/2 flows keep a window of unacknowledged PUBLISHes and answer every
  acknowledgement in one sendall() per chunk read; their per-packet path is
  bench_mqtt.iter_packets.
"""
import select
import selectors
import socket
import time

from benchmarks import mqtt as m

HOST = "127.0.0.1"
PAYLOAD = bytes(range(64))  # 64-byte payload of every scenario
RECV = 65536
PUB_SNDBUF = 131072  # publisher SO_SNDBUF: bounds what the kernel queues ahead of the broker


class BrokerClosed(Exception):
    pass


class Client:
    """A blocking MQTT client for the set-up phase (and ping-pong)."""

    def __init__(self, port, client_id, keepalive=60, clean=True, timeout=10.0, sndbuf=None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if sndbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((HOST, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.client_id = client_id
        self.sock.sendall(m.connect(client_id, keepalive, clean))
        b0, pkt = self.recv_packet()
        if b0 >> 4 != 2 or pkt[-1] != 0:
            raise RuntimeError("CONNECT of %s refused: %r" % (client_id, pkt))

    def recv_packet(self, timeout=10.0):
        """(first byte, whole packet bytes) of the next packet."""
        self.sock.settimeout(timeout)
        while True:
            h = m.header(self.buf, 0, len(self.buf))
            if h is not None and h[1] + h[2] <= len(self.buf):
                n = h[1] + h[2]
                pkt, self.buf = self.buf[:n], self.buf[n:]
                return pkt[0], pkt
            data = self.sock.recv(RECV)
            if not data:
                raise BrokerClosed("broker closed the connection of %s" % self.client_id)
            self.buf += data

    def subscribe(self, filt, qos=0, pid=1):
        self.sock.sendall(m.subscribe(pid, [(filt, qos)]))
        while True:
            b0, pkt = self.recv_packet()
            if b0 >> 4 == m.SUBACK:
                if pkt[-1] & 0x80:
                    raise RuntimeError("SUBSCRIBE %r refused (SUBACK 0x80)" % filt)
                return pkt[-1]

    def ping(self):
        """PINGREQ and wait for PINGRESP: everything this client sent
        before has been handled by the broker. Returns packets read meanwhile."""
        self.sock.sendall(m.PINGREQ_PKT)
        seen = []
        while True:
            b0, pkt = self.recv_packet()
            if b0 >> 4 == m.PINGRESP:
                return seen
            seen.append(pkt)

    def close(self, graceful=True):
        try:
            if graceful:
                self.sock.sendall(m.DISCONNECT_PKT)
        except OSError:
            pass
        self.sock.close()


def close_all(clients):
    for c in clients:
        c.close()


# --- QoS 0: fan-in and fan-out ------------------------------------------------------------

class _Pub:
    __slots__ = ("sock", "mv", "blen", "plen", "off", "total", "stop_at")

    def __init__(self, sock, packet, batch_bytes):
        self.sock = sock
        k = max(1, batch_bytes // len(packet))
        self.mv = memoryview(packet * k)
        self.blen = len(packet) * k
        self.plen = len(packet)
        self.off = 0
        self.total = 0
        self.stop_at = None  # offset in the batch to stop at (after the deadline)


class _Sub:
    __slots__ = ("sock", "counter", "eof")

    def __init__(self, sock):
        self.sock = sock
        self.counter = m.Counter()
        self.eof = False


def qos0_load(port, n_pubs, n_subs, duration, warmup=0.5, payload=PAYLOAD, sub_filter="bench/#",
              topic_fmt="bench/%02d", drain_idle=1.0, drain_max=10.0, batch_bytes=65536,
              sndbuf=PUB_SNDBUF, tag="q0", clients=None):
    """n_pubs publishers blast QoS 0 PUBLISHes for `duration` seconds, n_subs
    subscribers on sub_filter count what arrives.

    delivered_per_s counts the PUBLISHes that arrive between `warmup` and
    the end of sending: the broker's sustained rate under load, whatever the
    kernel buffers in between (publisher send buffers are capped at `sndbuf`
    to keep that backlog small). After the publishers stop the subscribers
    read until everything arrived, or nothing came for drain_idle seconds,
    or drain_max passed: drop_pct is 100 x (sent x subscribers - received) /
    (sent x subscribers), counting what was still unread at drain_max."""
    subs = []
    pubs = []
    made = []
    try:
        for i in range(n_subs):
            c = Client(port, "%s-sub-%d" % (tag, i))
            made.append(c)
            c.subscribe(sub_filter, 0)
            subs.append(_Sub(c.sock))
        for i in range(n_pubs):
            c = Client(port, "%s-pub-%d" % (tag, i), sndbuf=sndbuf)
            made.append(c)
            pubs.append(_Pub(c.sock, m.publish(topic_fmt % i, payload), batch_bytes))
        return _qos0_run(pubs, subs, duration, warmup, drain_idle, drain_max)
    finally:
        if clients is None:
            close_all(made)
        else:
            clients.extend(made)


def _qos0_run(pubs, subs, duration, warmup, drain_idle, drain_max):
    sel = selectors.DefaultSelector()
    for p in pubs:
        p.sock.setblocking(False)
        sel.register(p.sock, selectors.EVENT_WRITE, p)
    for s in subs:
        s.sock.setblocking(False)
        sel.register(s.sock, selectors.EVENT_READ, s)
    clock = time.perf_counter
    nsubs = len(subs)
    received = 0
    pub_errors = 0
    writing = len(pubs)
    t0 = clock()
    deadline = t0 + duration
    t_warm = t0 + warmup
    in_window = 0
    t_send_end = None
    first_rx = None
    last_rx = t0
    last_activity = t0
    expected = None
    while True:
        now = clock()
        if t_send_end is None and now >= deadline:
            t_send_end = now
            for p in pubs:
                if p.stop_at is None:
                    rem = (-p.total) % p.plen
                    p.stop_at = p.off + rem
                    if rem == 0:
                        sel.unregister(p.sock)
                        writing -= 1
        if t_send_end is not None and writing == 0:
            if expected is None:
                expected = sum(p.total // p.plen for p in pubs) * nsubs
            if received >= expected or now - last_activity > drain_idle \
                    or now - t_send_end > drain_max or all(s.eof for s in subs):
                break
        for key, _ in sel.select(0.05):
            st = key.data
            if type(st) is _Pub:
                end = st.blen if st.stop_at is None else st.stop_at
                try:
                    n = st.sock.send(st.mv[st.off:end])
                except BlockingIOError:
                    continue
                except OSError:
                    pub_errors += 1
                    sel.unregister(st.sock)
                    writing -= 1
                    st.stop_at = st.off
                    st.total -= st.total % st.plen  # a cut packet was not published
                    continue
                st.total += n
                st.off += n
                if st.stop_at is not None and st.off >= st.stop_at:
                    sel.unregister(st.sock)
                    writing -= 1
                elif st.off >= st.blen:
                    st.off = 0
            else:
                try:
                    data = st.sock.recv(RECV)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    st.eof = True
                    sel.unregister(st.sock)
                    continue
                got = st.counter.feed(data)
                if got:
                    received += got
                    now = clock()
                    if t_send_end is None and now >= t_warm:
                        in_window += got
                    last_rx = now
                    last_activity = now
                    if first_rx is None:
                        first_rx = now
    sel.close()
    for s in pubs + subs:
        s.sock.setblocking(True)
    sent = sum(p.total // p.plen for p in pubs)
    t_end = t_send_end or clock()
    send_s = t_end - t0
    window_s = t_end - t_warm
    expected = sent * nsubs
    return {
        "sent": sent,
        "sent_per_s": sent / send_s if send_s > 0 else None,
        "received": received,
        "expected": expected,
        "delivered_per_s": in_window / window_s if window_s > 0 else None,
        "delivered_incl_drain_per_s": received / (last_rx - t0) if received else 0.0,
        "drop_pct": 100.0 * (expected - received) / expected if expected else None,
        "send_s": send_s,
        "drain_s": max(0.0, last_rx - t_end),
        "first_delivery_ms": (first_rx - t0) * 1000 if first_rx else None,
        "subscribers_closed": sum(1 for s in subs if s.eof),
        "publishers_failed": pub_errors,
    }


# --- QoS 1 / QoS 2 with an inflight window ---------------------------------------------------

def windowed_load(port, qos, window, duration, payload=PAYLOAD, topic="bench/w",
                  drain_idle=2.0, tag="w", clients=None):
    """One QoS `qos` publisher keeps at most `window` PUBLISHes unacknowledged
    (QoS 1: until PUBACK; QoS 2: until PUBCOMP, answering PUBREC with PUBREL),
    one subscriber at the same QoS acknowledges everything (PUBACK, or PUBREC
    then PUBCOMP on PUBREL). Runs for `duration` s, then lets the window drain."""
    made = []
    try:
        sub = Client(port, "%s-sub" % tag)
        made.append(sub)
        granted = sub.subscribe(topic, qos)
        pub = Client(port, "%s-pub" % tag)
        made.append(pub)
        res = _windowed_run(pub, sub, qos, window, duration, payload, topic, drain_idle)
        res["granted_qos"] = granted
        return res
    finally:
        if clients is None:
            close_all(made)
        else:
            clients.extend(made)


def _windowed_run(pub, sub, qos, window, duration, payload, topic, drain_idle):
    table = m.publish_table(topic, payload, qos)
    ack_first = 0x40 if qos == 1 else 0x50
    ep = select.epoll()
    pfd = pub.sock.fileno()
    sfd = sub.sock.fileno()
    ep.register(pfd, select.EPOLLIN)
    ep.register(sfd, select.EPOLLIN)
    precv = pub.sock.recv
    srecv = sub.sock.recv
    psend = pub.sock.sendall
    ssend = sub.sock.sendall
    clock = time.perf_counter
    ptail = pub.buf
    stail = sub.buf
    next_pid = 1
    inflight = 0
    sent = 0
    completed = 0     # publisher side: PUBACK (QoS 1) / PUBCOMP (QoS 2)
    received = 0      # subscriber side: PUBLISH packets
    dups = 0
    closed = None
    t0 = clock()
    deadline = t0 + duration
    stopping = False
    t_stop = None
    last_activity = t0
    last_rx = t0
    psend(b"".join(table[1:window + 1]))
    next_pid = window + 1
    inflight = sent = window
    while not closed:
        now = clock()
        if not stopping and now >= deadline:
            stopping = True
            t_stop = now
        if stopping and ((inflight == 0 and received >= sent) or now - last_activity > drain_idle):
            break
        for fd, _ in ep.poll(0.05):
            if fd == pfd:
                try:
                    data = precv(RECV)
                except OSError:
                    data = b""
                if not data:
                    closed = "publisher"
                    break
                if ptail:
                    data = ptail + data
                freed, out, used = m.publisher_acks(data)
                ptail = data[used:]
                if freed:
                    completed += freed
                    inflight -= freed
                    if not stopping:
                        # the next PUBLISHes ride in the same write as any PUBRELs
                        end = next_pid + freed
                        if end <= 65536:
                            more = b"".join(table[next_pid:end])
                            next_pid = end if end < 65536 else 1
                        else:
                            more = b"".join(table[next_pid:]) + b"".join(table[1:end - 65535])
                            next_pid = end - 65535
                        out += more
                        inflight += freed
                        sent += freed
                if out:
                    psend(out)
            else:
                try:
                    data = srecv(RECV)
                except OSError:
                    data = b""
                if not data:
                    closed = "subscriber"
                    break
                if stail:
                    data = stail + data
                got, dup, out, used = m.ack_publishes(data, ack_first)
                stail = data[used:]
                if got:
                    received += got
                    dups += dup
                    last_rx = clock()
                if out:
                    ssend(out)
            last_activity = clock()
    ep.close()
    run_s = (t_stop or clock()) - t0
    rx_s = last_rx - t0
    return {
        "sent": sent,
        "completed": completed,
        "received": received,
        "duplicates": dups,
        "msgs_per_s": received / rx_s if received and rx_s > 0 else 0.0,
        "completed_per_s": completed / rx_s if completed and rx_s > 0 else 0.0,
        "run_s": run_s,
        "lost": sent - received,
        "closed": closed,
    }


# --- ping-pong -------------------------------------------------------------------------------

def pingpong(port, rounds, warmup=200, payload=PAYLOAD, clients=None):
    """Client A publishes on ping/x (QoS 0); client B, subscribed to ping/x,
    publishes the echo on pong/x, to which A is subscribed. One round trip
    at a time; returns the list of round-trip times in microseconds."""
    made = []
    try:
        a = Client(port, "pp-a")
        made.append(a)
        a.subscribe("pong/x", 0)
        b = Client(port, "pp-b")
        made.append(b)
        b.subscribe("ping/x", 0)
        ping = m.publish("ping/x", payload)
        pong = m.publish("pong/x", payload)
        clock = time.perf_counter_ns
        out = []
        for i in range(warmup + rounds):
            t = clock()
            a.sock.sendall(ping)
            b0, _ = b.recv_packet()
            if b0 >> 4 != m.PUBLISH:
                raise RuntimeError("ping-pong: unexpected packet 0x%02x" % b0)
            b.sock.sendall(pong)
            b0, _ = a.recv_packet()
            if b0 >> 4 != m.PUBLISH:
                raise RuntimeError("ping-pong: unexpected packet 0x%02x" % b0)
            if i >= warmup:
                out.append((clock() - t) / 1000.0)
        return out
    finally:
        if clients is None:
            close_all(made)
        else:
            clients.extend(made)


# --- publisher ceiling: write to a socket that discards -----------------------------------------

def write_ceiling(port, n_conns, duration, payload=PAYLOAD, batch_bytes=65536, sndbuf=PUB_SNDBUF):
    """Messages/s the generator's QoS 0 publisher loop writes into a peer that
    discards (benchmarks/null.py --mode discard): the publisher side's ceiling."""
    pubs = []
    for i in range(n_conns):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        s.connect((HOST, port))
        pubs.append(_Pub(s, m.publish("bench/%02d" % i, payload), batch_bytes))
    try:
        res = _qos0_run(pubs, [], duration, 0.0, 0.0, 0.0)
    finally:
        for p in pubs:
            p.sock.close()
    return res["sent_per_s"]


# --- $SYS --------------------------------------------------------------------------------

class SysWatcher(Client):
    """Subscribed to $SYS topics; latest() waits for fresh values."""

    def __init__(self, port, filters, client_id="bench-sys"):
        super().__init__(port, client_id)
        self.values = {}
        for i, f in enumerate(filters):
            self.subscribe(f, 0, pid=i + 1)

    def read_for(self, seconds):
        """Read PUBLISHes for `seconds`; returns {topic: payload str} of the last values."""
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return self.values
            try:
                b0, pkt = self.recv_packet(timeout=left)
            except socket.timeout:
                return self.values
            if b0 >> 4 == m.PUBLISH:
                h = m.header(pkt, 0, len(pkt))
                body = h[1]
                tl = (pkt[body] << 8) | pkt[body + 1]
                topic = pkt[body + 2:body + 2 + tl].decode()
                qos = (b0 >> 1) & 3
                start = body + 2 + tl + (2 if qos else 0)
                self.values[topic] = pkt[start:].decode("utf-8", "replace")

    def fresh(self, topic, updates=2, timeout=10.0):
        """The value of `topic` after `updates` new publications of it."""
        end = time.monotonic() + timeout
        seen = 0
        value = None
        while seen < updates:
            left = end - time.monotonic()
            if left <= 0:
                raise RuntimeError("no fresh %s within %.0f s" % (topic, timeout))
            b0, pkt = self.recv_packet(timeout=left)
            if b0 >> 4 != m.PUBLISH:
                continue
            h = m.header(pkt, 0, len(pkt))
            body = h[1]
            tl = (pkt[body] << 8) | pkt[body + 1]
            t = pkt[body + 2:body + 2 + tl].decode()
            v = pkt[body + 2 + tl:].decode("utf-8", "replace")
            self.values[t] = v
            if t == topic:
                if b0 & 1 and seen == 0 and value is None:
                    # the retained copy sent at SUBSCRIBE may be old: not fresh
                    value = v
                    continue
                seen += 1
                value = v
        return value
