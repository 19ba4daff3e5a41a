# A blocking raw-packet MQTT client for CPython socket tests and the fuzzer,
# built on the independent codec tools/mqttspec.py (never on midge).
#
# It sends exactly the bytes a test gives it and parses what the server
# sends back strictly (a packet that breaks the spec raises
# mqttspec.MalformedError in the test). Packets read but not yet consumed
# wait in `self.pending`, in arrival order.
import errno
import socket
import time

import mqttspec as m


class Closed(Exception):
    """The server closed the connection while a packet was awaited."""


_RESET_ERRNOS = (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED, errno.ESHUTDOWN)


class RawClient:
    def __init__(self, host="127.0.0.1", port=1883, timeout=5.0, rcvbuf=None):
        self.host = host
        self.port = port
        self.buf = b""
        self.pending = []
        self.eof = False
        self.next_pid = 1
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            # Must be set before connect() to shrink the advertised window.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # --- sending -------------------------------------------------------------

    def send(self, data):
        """Send raw bytes. Returns False if the server already closed."""
        try:
            self.sock.sendall(data)
            return True
        except OSError as e:
            if e.errno in _RESET_ERRNOS:
                return False
            raise

    def pid(self):
        """Next packet identifier (1..65535, never 0)."""
        p = self.next_pid
        self.next_pid = p % 65535 + 1
        return p

    # --- receiving -------------------------------------------------------------

    def _read_some(self, timeout):
        """Read once from the socket into self.buf. Returns False on
        timeout; sets self.eof on close/reset."""
        if self.eof:
            return False
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return False
        except OSError as e:
            if e.errno in _RESET_ERRNOS:
                self.eof = True
                return False
            raise
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _parse_buffered(self):
        while True:
            pkt, used = m.parse(self.buf)
            if pkt is None:
                return
            self.buf = self.buf[used:]
            self.pending.append(pkt)

    def recv(self, timeout=2.0):
        """Next packet (dict), or None on timeout. Raises Closed if the
        connection is closed and no packet is left."""
        deadline = time.monotonic() + timeout
        while True:
            self._parse_buffered()
            if self.pending:
                return self.pending.pop(0)
            if self.eof:
                raise Closed("connection closed by server (buffered %r)" % self.buf)
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._read_some(left)

    def expect(self, ptype, timeout=2.0, **fields):
        """The NEXT packet must be of type `ptype` ("publish", "suback", ...)
        and have the given field values. Returns it."""
        pkt = self.recv(timeout)
        assert pkt is not None, "timed out after %.1fs waiting for %s" % (timeout, ptype)
        assert pkt["type"] == ptype, "expected %s, got %r" % (ptype, _short(pkt))
        for k in fields:
            assert pkt[k] == fields[k], "%s: %s=%r, expected %r (%r)" % (
                ptype, k, pkt[k], fields[k], _short(pkt))
        return pkt

    def wait_for(self, ptype, timeout=2.0, pred=None):
        """First packet of type `ptype` (and matching pred) within timeout;
        other packets stay pending in order. Returns None on timeout."""
        deadline = time.monotonic() + timeout
        scanned = 0
        while True:
            self._parse_buffered()
            for i in range(scanned, len(self.pending)):
                p = self.pending[i]
                if p["type"] == ptype and (pred is None or pred(p)):
                    return self.pending.pop(i)
            scanned = len(self.pending)
            if self.eof:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._read_some(left)

    def drain(self, timeout=0.2):
        """All packets arriving within `timeout` (plus those pending)."""
        out = []
        while True:
            try:
                p = self.recv(timeout)
            except Closed:
                return out
            if p is None:
                return out
            out.append(p)

    def no_packet(self, timeout=0.3):
        """Assert nothing arrives within timeout."""
        p = self.recv(timeout)
        assert p is None, "unexpected packet %r" % _short(p)

    def closed(self, timeout=2.0):
        """True once the server has closed the connection (recv gives b''
        or ECONNRESET) within timeout. Packets arriving meanwhile are kept
        in self.pending (tests can assert they are empty)."""
        deadline = time.monotonic() + timeout
        first = True
        while not self.eof:
            left = deadline - time.monotonic()
            if left <= 0 and not first:
                self._parse_buffered_quiet()
                return False
            first = False
            self._read_some(max(left, 0.01))
        self._parse_buffered_quiet()
        return True

    def _parse_buffered_quiet(self):
        try:
            self._parse_buffered()
        except m.MalformedError:
            pass

    def is_open(self, timeout=0.5):
        """True if a PINGREQ is still answered with PINGRESP."""
        if self.eof or not self.send(m.pingreq()):
            return False
        try:
            return self.wait_for("pingresp", timeout) is not None
        except Closed:
            return False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def abort(self):
        """Close abruptly with a TCP RST (no DISCONNECT)."""
        try:
            import struct
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close()

    # --- protocol helpers ---------------------------------------------------------

    def handshake(self, client_id="", timeout=2.0, **kw):
        """Send CONNECT and return the CONNACK dict."""
        self.send(m.connect(client_id, **kw))
        return self.expect("connack", timeout)

    def subscribe(self, filters, pid=None, timeout=2.0):
        """filters: list of (filter, qos) or a single filter string (QoS 0).
        Returns the SUBACK return codes; PUBLISHes stay pending."""
        if isinstance(filters, str):
            filters = [(filters, 0)]
        if pid is None:
            pid = self.pid()
        self.send(m.subscribe(pid, filters))
        ack = self.wait_for("suback", timeout)
        assert ack is not None, "no SUBACK for %r" % (filters,)
        assert ack["pid"] == pid, "SUBACK pid %d, sent %d [MQTT-3.8.4-2]" % (ack["pid"], pid)
        assert len(ack["codes"]) == len(filters), "SUBACK codes %r for %r [MQTT-3.9.3-1]" % (
            ack["codes"], filters)
        return ack["codes"]

    def unsubscribe(self, filters, pid=None, timeout=2.0):
        if isinstance(filters, str):
            filters = [filters]
        if pid is None:
            pid = self.pid()
        self.send(m.unsubscribe(pid, filters))
        ack = self.wait_for("unsuback", timeout)
        assert ack is not None, "no UNSUBACK"
        assert ack["pid"] == pid
        return ack

    def publish(self, topic, payload=b"", qos=0, retain=False, pid=None, timeout=2.0):
        """Publish and complete the QoS flow (PUBACK, or PUBREC/PUBREL/
        PUBCOMP). Returns the packet id used (None for QoS 0)."""
        if qos and pid is None:
            pid = self.pid()
        self.send(m.publish(topic, payload, qos=qos, retain=retain, pid=pid))
        if qos == 1:
            ack = self.wait_for("puback", timeout, lambda p: p["pid"] == pid)
            assert ack is not None, "no PUBACK for pid %d" % pid
        elif qos == 2:
            ack = self.wait_for("pubrec", timeout, lambda p: p["pid"] == pid)
            assert ack is not None, "no PUBREC for pid %d" % pid
            self.send(m.pubrel(pid))
            ack = self.wait_for("pubcomp", timeout, lambda p: p["pid"] == pid)
            assert ack is not None, "no PUBCOMP for pid %d" % pid
        return pid

    def expect_publish(self, topic=None, payload=None, timeout=2.0, ack=True, **fields):
        """Next PUBLISH (skipping nothing but keeping other packets pending),
        checked against topic/payload/fields; acknowledged if ack (PUBACK,
        or PUBREC then PUBREL/PUBCOMP)."""
        pkt = self.wait_for("publish", timeout)
        assert pkt is not None, "no PUBLISH within %.1fs (wanted %r)" % (timeout, topic)
        if topic is not None:
            assert pkt["topic"] == topic, "topic %r, expected %r" % (pkt["topic"], topic)
        if payload is not None:
            assert pkt["payload"] == m.to_bytes(payload), "payload %r, expected %r" % (
                pkt["payload"], payload)
        for k in fields:
            assert pkt[k] == fields[k], "publish %s=%r, expected %r (%r)" % (
                k, pkt[k], fields[k], _short(pkt))
        if ack:
            self.ack(pkt)
        return pkt

    def ack(self, pkt, timeout=2.0):
        """Acknowledge an inbound PUBLISH as the spec requires."""
        if pkt["qos"] == 1:
            self.send(m.puback(pkt["pid"]))
        elif pkt["qos"] == 2:
            self.send(m.pubrec(pkt["pid"]))
            rel = self.wait_for("pubrel", timeout, lambda p: p["pid"] == pkt["pid"])
            assert rel is not None, "no PUBREL for pid %d" % pkt["pid"]
            self.send(m.pubcomp(pkt["pid"]))

    def publishes(self, timeout=0.3, ack=True):
        """All PUBLISH packets arriving within timeout (acknowledged)."""
        out = []
        while True:
            p = self.wait_for("publish", timeout)
            if p is None:
                return out
            if ack:
                self.ack(p)
            out.append(p)

    def disconnect(self):
        self.send(m.disconnect())
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _short(pkt):
    if pkt is None:
        return None
    d = dict(pkt)
    d.pop("raw", None)
    if "payload" in d and len(d["payload"]) > 40:
        d["payload"] = d["payload"][:40] + b"..."
    return d


def connect(host, port, **kw):
    """A RawClient with an open TCP connection (nothing sent yet)."""
    return RawClient(host, port, **kw)


def connected(host, port, client_id="", **kw):
    """A RawClient that completed CONNECT/CONNACK with rc 0."""
    c = RawClient(host, port)
    ack = c.handshake(client_id, **kw)
    assert ack["rc"] == 0, "CONNACK rc %d for %r" % (ack["rc"], client_id)
    return c


def sys_values(client, timeout=2.5, until=None):
    """Collect $SYS PUBLISH payloads on `client` (already subscribed) into a
    dict topic -> str for `timeout` seconds, or until until(values) holds."""
    values = {}
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return values
        p = client.wait_for("publish", left)
        if p is None:
            return values
        client.ack(p)
        values[p["topic"]] = p["payload"].decode()
        if until is not None and until(values):
            return values


def wait_sys_value(client, topic, expected, timeout=3.5):
    """Wait until `client` (subscribed to the $SYS topic) receives `topic`
    with payload str(expected). Returns the last payload seen for topic
    (so `assert wait_sys_value(...) == "1"` shows the real value)."""
    want = str(expected)
    vals = sys_values(client, timeout, lambda v: v.get(topic) == want)
    return vals.get(topic)


def counter_monitor(broker, client_id="counter-monitor"):
    """A client subscribed to $SYS/broker/counters/# (broker needs
    sys_interval_s set small, e.g. 1)."""
    mon = broker.client(client_id)
    codes = mon.subscribe([("$SYS/broker/counters/#", 0)])
    assert codes == [0]
    return mon


def wait_counter(mon, name, expected, timeout=3.5):
    return wait_sys_value(mon, "$SYS/broker/counters/" + name, expected, timeout)
