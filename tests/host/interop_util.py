# Helpers for the interop suites (test_interop_paho.py,
# test_interop_mosquitto_clients.py): real MQTT clients against a broker
# started by the `broker` / `broker_factory` fixtures of conftest.py.
#
# Every wait here has a timeout, so a broken broker fails a test instead of
# hanging the suite. Clients always connect to 127.0.0.1 and the fixture's
# port.
#
# Under env CI=true a missing client (paho-mqtt, mosquitto_pub/sub) is a test
# FAILURE; elsewhere the test is skipped.

import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from collections import namedtuple

import pytest

try:
    import paho.mqtt.client as mqtt
except ImportError:  # pragma: no cover - exercised only where paho is absent
    mqtt = None

HOST = "127.0.0.1"

# One received message, whatever the client. qos/retain/dup are ints/bools as
# the client reported them.
Msg = namedtuple("Msg", "topic payload qos retain dup")


def in_ci():
    return os.environ.get("CI", "").lower() == "true"


def need(ok, what):
    """Skip (or under CI=true fail) the current test when `what` is missing."""
    if ok:
        return
    if in_ci():
        pytest.fail("%s is required when CI=true" % what, pytrace=False)
    pytest.skip("%s not available" % what)


def require_paho():
    need(mqtt is not None, "paho-mqtt (python package)")
    return mqtt


def require_tool(name):
    path = shutil.which(name)
    need(path is not None, name)
    return path


def wait_until(pred, timeout, interval=0.01):
    """Poll pred() until true or timeout; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


# ---------------------------------------------------------------------------
# paho-mqtt
# ---------------------------------------------------------------------------

class PahoClient:
    """A paho-mqtt 2.x client (CallbackAPIVersion.VERSION2, MQTT 3.1.1 by
    default) driven by our own network thread instead of loop_start(), so
    that (a) it never reconnects behind the test's back and (b) the socket can
    be killed abruptly, without DISCONNECT, to trigger a will."""

    def __init__(self, port, client_id="", clean_session=True, protocol=None,
                 keepalive=30, will=None, username=None, password=None, properties=None,
                 clean_start=True):
        require_paho()
        self.port = port
        self.keepalive = keepalive
        self.client_id = client_id
        protocol = mqtt.MQTTv311 if protocol is None else protocol
        kw = {}
        if protocol != mqtt.MQTTv5:  # paho refuses clean_session for MQTT 5
            kw["clean_session"] = clean_session
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=protocol, **kw)
        # Outbound flow control in paho; unlimited local queue.
        self.c.max_inflight_messages_set(20)
        if will is not None:
            # will = (topic, payload, qos, retain)
            self.c.will_set(will[0], will[1], will[2], will[3])
        if username is not None:
            self.c.username_pw_set(username, password)
        self.cond = threading.Condition()
        self.messages = []
        self.received = []      # the paho MQTTMessage objects (MQTT 5: .properties)
        self.connect_properties = properties  # MQTT 5 CONNECT properties (paho Properties)
        self.clean_start = clean_start        # MQTT 5 Clean Start
        self.connack_properties = []
        self.disconnect_properties = []
        self.connacks = []      # (session_present, reason_code)
        self.disconnects = []   # reason_code
        self.subacks = {}       # mid -> [reason codes]
        self.unsubacks = {}     # mid -> [reason codes]
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe
        self.c.on_unsubscribe = self._on_unsubscribe
        self._stop = threading.Event()
        self._thread = None
        self.lost = False

    # --- callbacks (run in the network thread) ---
    def _on_connect(self, client, userdata, flags, reason_code, properties):
        with self.cond:
            self.connacks.append((bool(flags.session_present), reason_code))
            self.connack_properties.append(properties)
            self.cond.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        with self.cond:
            self.disconnects.append(reason_code)
            self.disconnect_properties.append(properties)
            self.cond.notify_all()

    def _on_message(self, client, userdata, m):
        with self.cond:
            self.messages.append(
                Msg(m.topic, bytes(m.payload), m.qos, bool(m.retain), bool(m.dup)))
            self.received.append(m)
            self.cond.notify_all()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self.cond:
            self.subacks[mid] = list(reason_codes)
            self.cond.notify_all()

    def _on_unsubscribe(self, client, userdata, mid, reason_codes, properties):
        with self.cond:
            self.unsubacks[mid] = list(reason_codes)
            self.cond.notify_all()

    # --- network thread ---
    def _run(self):
        while not self._stop.is_set():
            rc = self.c.loop(timeout=0.05)
            if rc != mqtt.MQTT_ERR_SUCCESS:
                with self.cond:
                    self.lost = True
                    self.cond.notify_all()
                return

    def _wait(self, pred, timeout, what):
        with self.cond:
            ok = self.cond.wait_for(pred, timeout)
        if not ok:
            raise AssertionError("%s: timed out after %.1fs waiting for %s"
                                 % (self.client_id or "client", timeout, what))

    # --- API used by tests ---
    def connect(self, timeout=5.0, expect_success=True):
        """Connect and wait for CONNACK. Returns (session_present, reason_code)."""
        self._thread = threading.Thread(target=self._run, daemon=True)
        # Tell paho a network thread exists, so publish()/subscribe() from
        # the test thread only queue packets instead of also writing to the
        # socket themselves: two writers could reorder packets.
        self.c._thread = self._thread
        if self.c.protocol == mqtt.MQTTv5:
            self.c.connect(HOST, self.port, self.keepalive, clean_start=self.clean_start,
                           properties=self.connect_properties)
        else:
            self.c.connect(HOST, self.port, self.keepalive)
        self._thread.start()
        self._wait(lambda: self.connacks or self.lost, timeout, "CONNACK")
        if not self.connacks:
            raise AssertionError("connection closed before CONNACK")
        sp, rc = self.connacks[-1]
        if expect_success:
            assert not rc.is_failure, "CONNACK refused: %s" % rc
        return sp, rc

    def subscribe(self, topic, qos=0, timeout=5.0, options=None, properties=None):
        """Subscribe to one filter or a list of (filter, qos); wait for SUBACK
        and return the granted QoS values as ints (128 = failure). MQTT 5:
        options (paho SubscribeOptions) instead of qos, properties."""
        if isinstance(topic, list):
            rc, mid = self.c.subscribe(topic, properties=properties)
        elif options is not None:
            rc, mid = self.c.subscribe(topic, options=options, properties=properties)
        else:
            rc, mid = self.c.subscribe(topic, qos, properties=properties)
        assert rc == mqtt.MQTT_ERR_SUCCESS, "subscribe not sent: %s" % rc
        self._wait(lambda: mid in self.subacks, timeout, "SUBACK")
        return [int(getattr(r, "value", r)) for r in self.subacks[mid]]

    def unsubscribe(self, topic, timeout=5.0):
        rc, mid = self.c.unsubscribe(topic)
        assert rc == mqtt.MQTT_ERR_SUCCESS, "unsubscribe not sent: %s" % rc
        self._wait(lambda: mid in self.unsubacks, timeout, "UNSUBACK")

    def publish(self, topic, payload=b"", qos=0, retain=False, wait=True, timeout=5.0, properties=None):
        info = self.c.publish(topic, payload, qos, retain, properties=properties)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, "publish not queued: %s" % info.rc
        if wait:
            self.wait_published(info, timeout)
        return info

    def wait_published(self, info, timeout=5.0):
        deadline = time.monotonic() + timeout
        while not info.is_published():
            if time.monotonic() >= deadline or self.lost:
                raise AssertionError("publish mid %s not completed (lost=%s)" % (info.mid, self.lost))
            info.wait_for_publish(0.05)

    def wait_messages(self, n, timeout=5.0, topic=None):
        """Wait until at least n messages (optionally on `topic`) arrived;
        return a copy of them."""
        def enough():
            return len(self._filtered(topic)) >= n
        with self.cond:
            self.cond.wait_for(enough, timeout)
            got = self._filtered(topic)
        assert len(got) >= n, "expected %d messages, got %d: %r" % (n, len(got), got[:20])
        return got

    def _filtered(self, topic):
        if topic is None:
            return list(self.messages)
        return [m for m in self.messages if m.topic == topic]

    def wait_for_message(self, pred, timeout=5.0, what="message"):
        def found():
            return any(pred(m) for m in self.messages)
        self._wait(found, timeout, what)
        return [m for m in self.messages if pred(m)][0]

    def wait_lost(self, timeout=5.0):
        self._wait(lambda: self.lost, timeout, "connection to be closed by the broker")

    def clear(self):
        with self.cond:
            del self.messages[:]
            del self.received[:]

    def disconnect(self, timeout=5.0):
        """Clean DISCONNECT, then stop the network thread."""
        if self._thread is None:
            return
        if not self.lost:
            self.c.disconnect()
            self._wait(lambda: self.disconnects or self.lost, timeout, "DISCONNECT to be sent")
        self._stop.set()
        self._thread.join(5)
        self._thread = None

    def freeze(self):
        """Stop the network thread but keep the socket open: the client goes
        silent (no PINGREQ) like a hung device."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def kill(self, reset=False):
        """Drop the TCP connection without sending DISCONNECT (like a crashed
        device). reset=True sends an RST (SO_LINGER 0) instead of a FIN."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        sock = self.c.socket()
        if sock is not None:
            if reset:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            sock.close()
        self.lost = True

    def close(self):
        """Teardown: clean disconnect if still connected, never raises."""
        try:
            if self._thread is not None and not self.lost and self.connacks:
                self.disconnect(timeout=2.0)
        except Exception:
            pass
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        try:
            sock = self.c.socket()
            if sock is not None:
                sock.close()
        except Exception:
            pass


class PahoPool:
    """Creates PahoClients for one test and closes all of them at teardown."""

    def __init__(self):
        self.clients = []

    def __call__(self, port, **kw):
        cl = PahoClient(port, **kw)
        self.clients.append(cl)
        return cl

    def connected(self, port, **kw):
        cl = self(port, **kw)
        cl.connect()
        return cl

    def close_all(self):
        for cl in self.clients:
            cl.close()


@pytest.fixture
def paho_pool():
    require_paho()
    pool = PahoPool()
    yield pool
    pool.close_all()


MARKER = b"\x00marker-"


def marker_sync(sub, pub, topic, timeout=5.0):
    """Publish a QoS 2 marker on `topic` (which `sub` must be subscribed to)
    and wait until it arrives: everything the broker sent `sub` before the
    marker has then reached the application too. Returns sub's messages
    before the marker, leaving out earlier markers.

    QoS 2 because paho hands an incoming QoS 2 message to on_message only at
    PUBREL, so a QoS 0/1 marker can overtake earlier QoS 2 messages."""
    token = MARKER + ("%f" % time.monotonic()).encode()
    pub.publish(topic, token, qos=2)
    sub.wait_for_message(lambda m: m.payload == token, timeout, "marker on " + topic)
    with sub.cond:
        out = []
        for m in sub.messages:
            if m.payload == token:
                break
            if not m.payload.startswith(MARKER):
                out.append(m)
    return out


# ---------------------------------------------------------------------------
# mosquitto_pub / mosquitto_sub
# ---------------------------------------------------------------------------

# A debug line of `mosquitto_sub -d`, e.g.
#   Client (null) received PUBLISH (d0, q1, r0, m1, 'a/b', ... (5 bytes))
_DEBUG = re.compile(rb"^Client \S+ (sending|received) ")
_PUBLISH = re.compile(rb"^Client \S+ received PUBLISH \(d(\d), q(\d), r(\d), m(\d+), '(.*)', \.\.\. \((\d+) bytes\)\)$")
_SUBSCRIBED = re.compile(rb"^Subscribed \(mid: \d+\): (.*)$")


def mosquitto_pub(port, topic, message=None, qos=0, retain=False, null=False,
                  args=(), stdin=None, timeout=15.0, check=True):
    """Run mosquitto_pub once; returns the CompletedProcess."""
    exe = require_tool("mosquitto_pub")
    cmd = [exe, "-h", HOST, "-p", str(port), "-t", topic, "-q", str(qos)]
    if retain:
        cmd.append("-r")
    if null:
        cmd.append("-n")
    elif message is not None:
        cmd += ["-m", message]
    cmd += list(args)
    try:
        res = subprocess.run(cmd, input=stdin, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError("mosquitto_pub timed out after %.0fs: %s" % (timeout, cmd))
    if check:
        assert res.returncode == 0, "mosquitto_pub rc=%d stderr=%r cmd=%s" % (
            res.returncode, res.stderr, cmd)
    return res


class MosqSub:
    """mosquitto_sub in the background with -d, so the test can wait for its
    SUBACK before publishing, and read each message's flags from the debug
    line. Output is line-buffered through stdbuf (coreutils)."""

    def __init__(self, port, topics, qos=0, count=None, wait_s=10, verbose=True,
                 fmt=None, args=()):
        exe = require_tool("mosquitto_sub")
        cmd = [exe, "-h", HOST, "-p", str(port), "-d", "-q", str(qos), "-W", str(int(wait_s))]
        if isinstance(topics, str):
            topics = [topics]
        for t in topics:
            cmd += ["-t", t]
        if count is not None:
            cmd += ["-C", str(count)]
        if fmt is not None:
            cmd += ["-F", fmt]
        elif verbose:
            cmd.append("-v")
        cmd += list(args)
        # Piped stdout is block-buffered by stdio: without stdbuf the SUBACK
        # line would only show up when mosquitto_sub exits.
        cmd = [require_tool("stdbuf"), "-oL"] + cmd
        self.cmd = cmd
        self.wait_s = wait_s
        self.cond = threading.Condition()
        self.lines = []      # every stdout line (bytes, no newline)
        self.output = []     # message lines only
        self.publishes = []  # (dup, qos, retain, topic) from debug lines
        self.granted = None
        self.eof = False
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for raw in iter(self.proc.stdout.readline, b""):
            line = raw.rstrip(b"\n")
            with self.cond:
                self.lines.append(line)
                m = _PUBLISH.match(line)
                s = _SUBSCRIBED.match(line)
                if m:
                    self.publishes.append((int(m.group(1)), int(m.group(2)),
                                           int(m.group(3)), m.group(5).decode()))
                elif s:
                    self.granted = [int(x) for x in s.group(1).split(b",")]
                elif not _DEBUG.match(line):
                    self.output.append(line)
                self.cond.notify_all()
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def _describe(self):
        err = b""
        if self.proc.poll() is not None:
            err = self.proc.stderr.read() or b""
        return "cmd=%s rc=%s stdout=%r stderr=%r" % (
            " ".join(self.cmd), self.proc.poll(), self.lines[-30:], err)

    def wait_subscribed(self, timeout=5.0):
        with self.cond:
            ok = self.cond.wait_for(lambda: self.granted is not None or self.eof, timeout)
        assert ok and self.granted is not None, "mosquitto_sub did not subscribe: " + self._describe()
        return self.granted

    def wait_output(self, n, timeout=5.0):
        with self.cond:
            self.cond.wait_for(lambda: len(self.output) >= n or self.eof, timeout)
            return list(self.output)

    def finish(self, timeout=None):
        """Wait for the process to exit (it must, through -C or -W); returns
        (returncode, message lines)."""
        if timeout is None:
            timeout = self.wait_s + 5
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError("mosquitto_sub did not exit: " + self._describe())
        self._reader.join(5)
        with self.cond:
            return rc, list(self.output)

    def signal(self, sig):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        for f in (self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except Exception:
                pass


class MosqPool:
    def __init__(self):
        self.subs = []

    def sub(self, port, topics, **kw):
        s = MosqSub(port, topics, **kw)
        self.subs.append(s)
        return s

    def close_all(self):
        for s in self.subs:
            s.close()


@pytest.fixture
def mosq():
    require_tool("mosquitto_pub")
    require_tool("mosquitto_sub")
    pool = MosqPool()
    yield pool
    pool.close_all()


SIGKILL = signal.SIGKILL
SIGINT = signal.SIGINT
