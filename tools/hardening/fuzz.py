#!/usr/bin/env python3
"""Seeded socket fuzzer: mutated MQTT client sessions against midge under
the MicroPython unix port with a board's budget, the way `make run` runs it
(.mpy bundle from tools/build_mpy.py, built into the work directory at
start so that edits to lib/ during a long run do not change the broker;
MICROPYPATH=.frozen:<bundle>, -X heapsize=<board unix_heapsize>, --board
NAME, --config with sys_interval_s 1).

    .venv/bin/python tools/fuzz.py [--cases N] [--seed S] [--concurrency K]
        [--board esp32|pico_w] [--heapsize 200k] [--start N] [--check-every N]
        [--heap-margin BYTES] [--strict-heap] [--keep DIR] [--no-triage] [--quiet]
    .venv/bin/python tools/fuzz.py --replay SEED:CASE     # one case alone, verbose
    .venv/bin/python tools/fuzz.py --show SEED:CASE       # print the case, run nothing

The long run (100,000 cases; about 45 minutes on the 2-core host, 37 to 40 cases a second):

    .venv/bin/python tools/fuzz.py --cases 100000 --seed 1 --concurrency 6

A case (tools/hardening/fuzzlib.py) is one client session generated from (seed, case
number) alone: a valid script (CONNECT with a random client id, clean flag,
keepalive, protocol level and will; SUBSCRIBE with random filters and QoS,
wildcards and $SYS; PUBLISH QoS 0/1/2 with retain and random topics and
payloads; UNSUBSCRIBE; PINGREQ; PUBACK/PUBREC/PUBREL/PUBCOMP; DISCONNECT or
just closing), then, in three cases out of four, mutated (bit flips, byte
insertions and deletions, truncated packets and streams, duplicated,
reordered and dropped packets, junk packets, bad fixed-header flags and
types, oversized and wrong remaining lengths, broken string lengths), and
split into writes with small pauses. The client acknowledges what it
receives between two of its packets (an ack policy per case: all, none,
some, twice, wrong packet id, late), reads at once, slowly through a small
receive buffer, or not at all until the end, and ends with DISCONNECT, a
FIN, a reset, or by waiting for the broker to close it (connect timeout,
keepalive). --replay SEED:CASE sends the same bytes; only the timing of the
writes and what other cases publish meanwhile differ.

Checks. Per case: every byte the broker sends parses as MQTT 3.1.1 (the
independent decoder tools/mqttspec.py); CONNACK comes first and once, and a
refusing CONNACK is the last packet; the broker closes the socket after our
DISCONNECT or FIN, or by itself within connect_timeout_ms (no CONNECT) or
1.5 x a short keepalive when the case waits; an unmutated case within the
caps gets every reply it is owed (the right CONNACK code, or 3; a SUBACK per
SUBSCRIBE with one code per filter; PUBACK, PUBREC, PUBCOMP, PINGRESP) and
only deliveries that match its filters, unless the broker log says it shed
that client (heap reserve, MemoryError, max_clients: README "Heap
contract"). Every --check-every cases, with no case running, and at the
end: the broker process is alive; its log has no "Traceback", "internal
error" or "Task exception"; it holds no socket but the listener
(/proc/PID/fd); a fresh client completes CONNECT + SUBSCRIBE + QoS 1
PUBLISH round trip (when the caps are full of what the cases left, e.g.
SUBACK 0x80 at max_subscriptions_total, after clearing it); a fresh client
reads $SYS: internal_errors is 0 and one client is connected. At the end the
checker clears what the cases left (an empty retained message to every
topic a case retained, CONNECT clean session 1 + DISCONNECT for every client
id that used clean session 0, as recorded by the generator and read back
from the broker log, then a '#' sweep of retained messages), waits
--settle-s, and $SYS/broker/heap/alloc (taken after gc.collect()) must be
within --heap-margin of its value at start (measured the same way).
MemoryError and heap shedding are the documented ways of a full heap: their
counters are printed, and are findings only with --strict-heap.

A finding names its seed and case (or the cases running when a broker-wide
check failed; a traceback or a dead broker replays those alone to name the
culprit). Exit status 0 when nothing was found, 1 with findings, 2 for a bad
option or a broker that does not start.
"""
import argparse
import asyncio
import collections
import errno
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

import mqttspec as m
from hardening import fuzzlib
from hostlib import ROOT, find_micropython, midge_command, read_log, signal_and_wait
from rawclient import Closed, RawClient

HOST = "127.0.0.1"
CLOSE_WAIT_S = 13.0      # after our FIN/DISCONNECT: write_timeout_ms (10 s) + slack
CLEANUP_S = 60.0         # the checker's clean-up gives up after this
LOG_BAD = ("Traceback", "internal error", "Task exception")
EXCUSABLE = ("no_reply", "wrong_connack", "no_connack")
EXCUSES = ("memory", "heap", "max_clients")
HEAP_COUNTERS = ("memory_errors", "heap_low", "heap_refused", "heap_dropped")
TRIAGED = ("broker_died", "log_traceback", "log_internal_error", "log_task_exception")
_RESET = (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED, errno.ESHUTDOWN)


def micropython():
    return find_micropython()


def board_json(name):
    with open(os.path.join(ROOT, "boards", name, "board.json")) as f:
        return json.load(f)


# --- the broker -----------------------------------------------------------------------

class Broker:
    """midge under the unix port on a private .mpy bundle built at start
    (the source tree may change while a long run goes on)."""

    def __init__(self, workdir, board, heapsize, extra_config=None):
        self.workdir = workdir
        self.board = board
        self.heapsize = heapsize
        self.config = dict(fuzzlib.FUZZ_CONFIG)
        self.config.update(extra_config or {})
        self.cfg = dict(board_json(board).get("config", {}))  # what the caps are
        self.cfg.update(self.config)
        self.port = None
        self.proc = None
        self.runs = 0
        self.logpath = None
        self._log = None
        self._log_pos = 0
        self.bundle = None
        self.lib_digest = None

    def build(self):
        import build_mpy
        import hashlib
        h = hashlib.sha1()
        src = os.path.join(ROOT, "lib", "midge")
        for name in sorted(os.listdir(src)):
            if name.endswith(".py"):
                with open(os.path.join(src, name), "rb") as f:
                    h.update(name.encode() + b"\0" + f.read())
        self.lib_digest = h.hexdigest()[:12]
        self.bundle = build_mpy.build(os.path.join(self.workdir, "mpy"))
        return self.bundle

    def start(self, timeout=15.0):
        mp = micropython()
        if mp is None:
            raise RuntimeError("micropython not found (.venv/bin/micropython); run tools/setup.sh")
        if self.bundle is None:
            self.build()
        self.runs += 1
        s = socket.socket()
        s.bind((HOST, 0))
        self.port = s.getsockname()[1]
        s.close()
        cfg_path = os.path.join(self.workdir, "config.json")
        with open(cfg_path, "w") as f:
            json.dump(self.config, f)
        cmd, env = midge_command(["--board", self.board, "--host", HOST, "--port", str(self.port),
                                  "--config", cfg_path], heapsize=self.heapsize, micropython=mp,
                                 bundle=self.bundle)
        self.logpath = os.path.join(self.workdir, "broker.%d.log" % self.runs)
        self._log = open(self.logpath, "wb")
        self._log.write(("$ MICROPYPATH=%s %s\n" % (env["MICROPYPATH"], " ".join(cmd))).encode())
        self._log.flush()
        self._log_pos = 0
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("broker exited with status %s at start:\n%s"
                                   % (self.proc.returncode, self.log_text()[-3000:]))
            if "listening on" in self.log_text():
                return
            time.sleep(0.02)
        self.kill()
        raise RuntimeError("broker not listening after %.0f s:\n%s" % (timeout, self.log_text()[-3000:]))

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log_text(self):
        return read_log(self.logpath)

    def new_log(self):
        """Complete log lines since the last call."""
        try:
            with open(self.logpath, "rb") as f:
                f.seek(self._log_pos)
                data = f.read()
        except OSError:
            return ""
        if self.alive():
            data = data[:data.rfind(b"\n") + 1]  # a line being written: next time
        self._log_pos += len(data)
        return data.decode("utf-8", "replace")

    def socket_fds(self):
        """Sockets the broker process holds (listener included), or -1."""
        n = 0
        try:
            d = "/proc/%d/fd" % self.proc.pid
            for name in os.listdir(d):
                try:
                    if os.readlink(os.path.join(d, name)).startswith("socket:"):
                        n += 1
                except OSError:
                    pass
        except OSError:
            return -1
        return n

    def stop(self):
        if self.alive():
            signal_and_wait(self.proc, signal.SIGTERM, 5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill(self):
        if self.alive():
            self.proc.kill()
            self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


# --- one case over a socket -----------------------------------------------------------

class Result:
    def __init__(self, case):
        self.case = case
        self.findings = []         # (kind, detail)
        self.received = []         # packets (dicts without "raw")
        self.local_port = None
        self.connect_failed = None
        self.refused = False       # EOF before any byte: max_clients or a broker going down
        self.eof = False
        self.reset = False
        self.eof_before_end = False
        self.close_latency = None  # s from our FIN/DISCONNECT to the broker's close
        self.bytes_in = 0
        self.bytes_out = 0
        self.acks_sent = 0
        self.end_taken = case.end

    def find(self, kind, detail):
        self.findings.append((kind, detail))


def _short(pkt):
    d = dict(pkt)
    d.pop("raw", None)
    if "payload" in d and len(d["payload"]) > 24:
        d["payload"] = d["payload"][:24] + b"..."
    return d


async def run_case(case, port, timing=None):
    """Play one case against the broker on `port`; returns a Result."""
    res = Result(case)
    loop = asyncio.get_running_loop()
    timing = timing or random.Random()
    ack_rng = fuzzlib.case_rng(case.seed, case.number, "acks")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    if case.rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, case.rcvbuf)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, (HOST, port)), 5.0)
    except (OSError, asyncio.TimeoutError) as e:
        res.connect_failed = repr(e)
        sock.close()
        return res
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    res.local_port = sock.getsockname()[1]
    st = {"buf": b"", "parse": True, "acks": [], "late": [], "last_rx": time.monotonic(),
          "connacks": 0, "after_refusal": 0, "refused_rc": None, "first": None, "mute": False}
    eof = asyncio.Event()
    got = asyncio.Event()
    drain_now = asyncio.Event()
    if case.read_mode != "never":
        drain_now.set()
    slow = case.read_mode == "slow"

    def on_packet(pkt):
        res.received.append(_short(pkt))
        t = pkt["type"]
        if st["first"] is None:
            st["first"] = t
            if t != "connack":
                res.find("reply_order", "first packet from the broker is %s, not CONNACK: %r" % (t, _short(pkt)))
        if t == "connack":
            st["connacks"] += 1
            if st["connacks"] > 1:
                res.find("reply_order", "a second CONNACK: %r" % _short(pkt))
            if pkt["rc"] != 0:
                st["refused_rc"] = pkt["rc"]
        elif st["refused_rc"] is not None:
            st["after_refusal"] += 1
            res.find("reply_order", "%s after CONNACK rc %d (the broker must close): %r"
                     % (t, st["refused_rc"], _short(pkt)))
        replies = fuzzlib.ack_replies(case, pkt, ack_rng)
        if replies:
            if case.ack_policy == "late":
                st["late"].extend(replies)
            else:
                st["acks"].extend(replies)

    async def reader():
        try:
            while True:
                if not drain_now.is_set():
                    await drain_now.wait()
                try:
                    data = await loop.sock_recv(sock, 512 if slow else 65536)
                except OSError as e:
                    if e.errno in _RESET or isinstance(e, ConnectionError):
                        res.reset = True
                        return
                    raise
                if not data:
                    return
                res.bytes_in += len(data)
                st["last_rx"] = time.monotonic()
                if st["parse"]:
                    st["buf"] += data
                    while True:
                        try:
                            pkt, used = m.parse(st["buf"])
                        except (m.MalformedError, ValueError, IndexError) as e:
                            res.find("malformed_reply", "%s; bytes %r" % (e, st["buf"][:120]))
                            st["parse"] = False
                            st["buf"] = b""
                            break
                        if pkt is None:
                            break
                        st["buf"] = st["buf"][used:]
                        on_packet(pkt)
                    got.set()
                if slow:
                    await asyncio.sleep(timing.choice((0.001, 0.003, 0.01, 0.02)))
        finally:
            res.eof = True
            eof.set()
            got.set()

    async def send(data):
        if not data:
            return True
        try:
            await asyncio.wait_for(loop.sock_sendall(sock, data), 15.0)
            res.bytes_out += len(data)
            return True
        except asyncio.TimeoutError:
            res.find("send_stalled", "the broker took no bytes for 15 s (case not reading: %s)"
                     % case.read_mode)
            return False
        except OSError:
            return False

    async def flush_acks(at_boundary):
        if at_boundary and st["acks"] and not st["mute"]:
            data = b"".join(st["acks"])
            n = len(st["acks"])
            st["acks"] = []
            if await send(data):
                res.acks_sent += n

    async def wait_quiet(quiet_s, limit_s, until=None):
        """Read (and acknowledge, at a packet boundary) until nothing came
        for quiet_s, `until()` holds, EOF, or limit_s."""
        deadline = time.monotonic() + limit_s
        while not eof.is_set():
            await flush_acks(at_boundary)
            if until is not None and until():
                return
            now = time.monotonic()
            if now >= deadline:
                return
            idle = now - st["last_rx"]
            if until is None and idle >= quiet_s:
                return
            got.clear()
            wait = min(deadline - now, quiet_s - idle if until is None else 0.05)
            try:
                await asyncio.wait_for(got.wait(), max(wait, 0.001))
            except asyncio.TimeoutError:
                pass

    rtask = asyncio.ensure_future(reader())
    off = 0
    stream_len = sum(len(w) for w, _ in case.writes)
    try:
        for data, pause in case.writes:
            await flush_acks(off in case.boundaries)
            if eof.is_set() or not await send(data):
                break
            off += len(data)
            if pause:
                await asyncio.sleep(pause / 1000.0)
            if eof.is_set():
                break
        # replies go out only between two of our packets, and never after a
        # DISCONNECT: the broker reads no more, and unread bytes make its
        # close a reset that can cost us the replies it sent before
        sent_disconnect = (off == stream_len and case.end == "disconnect" and case.packets
                           and case.packets[-1][1] == m.disconnect())
        at_boundary = off in case.boundaries and off == stream_len and not sent_disconnect
        res.eof_before_end = eof.is_set()

        if case.end != "idle":
            if case.expect is not None and case.read_mode != "never":
                await wait_quiet(0, 3.0, lambda: not _owed(case, res))
            if case.read_mode != "never":
                await wait_quiet(case.quiet_ms / 1000.0, 1.0)
            if st["late"] and at_boundary and not eof.is_set():
                st["acks"].extend(st["late"])
                st["late"] = []
                await flush_acks(True)

        end = case.end
        if end == "idle":
            # send nothing more: the broker must close the socket itself, by
            # connect_timeout_ms without a CONNECT, by 1.5 x a short keepalive
            st["mute"] = True
            drain_now.set()
            await wait_quiet(case.quiet_ms / 1000.0, 1.0)  # a CONNACK on its way
            t0 = time.monotonic()
            ka = _sent_keepalive(case)
            while not eof.is_set():
                connected = any(p["type"] == "connack" and p["rc"] == 0 for p in res.received)
                if not connected:
                    limit = _cfg_connect_timeout_s(case) + 2.0
                elif ka is not None and 0 < ka <= 5:
                    limit = ka * 1.5 + 2.0
                else:
                    end = "shut"  # a session without a short keepalive may stay
                    break
                left = t0 + limit - time.monotonic()
                if left <= 0:
                    res.find("socket_left_open", "waited %.1f s without sending (%s): the broker "
                             "kept the socket open" % (limit, "no CONNACK" if not connected
                                                      else "keepalive %d s" % ka))
                    end = "shut"
                    break
                got.clear()
                try:
                    await asyncio.wait_for(got.wait(), left)
                except asyncio.TimeoutError:
                    pass
            if eof.is_set() and end == "idle":
                res.close_latency = time.monotonic() - t0
        res.end_taken = end
        if end == "reset":
            if case.expect is not None and case.read_mode == "never":
                drain_now.set()
                await wait_quiet(0, 3.0, lambda: not _owed(case, res))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif end in ("shut", "disconnect") and not eof.is_set():
            if end == "shut" or not sent_disconnect or case.mutations:
                # a mutated DISCONNECT may not be one: a FIN ends it for sure
                if end == "disconnect":
                    drain_now.set()
                    try:
                        await asyncio.wait_for(eof.wait(), 0.3)
                    except asyncio.TimeoutError:
                        pass
                try:
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
            drain_now.set()
            t0 = time.monotonic()
            try:
                await asyncio.wait_for(eof.wait(), CLOSE_WAIT_S)
                res.close_latency = time.monotonic() - t0
            except asyncio.TimeoutError:
                res.find("socket_left_open", "no EOF or reset %.0f s after our %s" % (
                    CLOSE_WAIT_S, "FIN" if end == "shut" else "DISCONNECT (then FIN)"))
    finally:
        rtask.cancel()
        try:
            await rtask
        except BaseException:
            pass
        sock.close()
    res.refused = res.bytes_in == 0 and res.eof and not res.received and (
        res.eof_before_end or case.read_mode == "never")
    if case.expect is not None and st["parse"]:
        _check_owed(case, res)
    if case.expect is not None and not case.mutations and st["parse"]:
        _check_deliveries(case, res)
    return res


def _cfg_connect_timeout_s(case):
    return getattr(case, "connect_timeout_s", 5.0)


def _sent_keepalive(case):
    """The keepalive of the CONNECT this case sent (after mutation), or None."""
    try:
        pkt, _ = m.parse(case.stream())
    except Exception:
        return None
    if pkt is None or pkt["type"] != "connect":
        return None
    return pkt["keepalive"]


def _owed(case, res):
    """What an unmutated in-limits case is still owed (empty when done)."""
    exp = case.expect
    rcv = res.received
    owed = []
    connacks = [p for p in rcv if p["type"] == "connack"]
    if not connacks:
        return ["CONNACK"]
    if connacks[0]["rc"] != 0:
        return []
    have = collections.Counter((p["type"], p.get("pid")) for p in rcv)
    for kind in ("puback", "pubrec", "pubcomp"):
        for pid, n in collections.Counter(exp[kind]).items():
            if have[(kind, pid)] < n:
                owed.append("%s %d" % (kind.upper(), pid))
    subacks = collections.Counter(p["pid"] for p in rcv if p["type"] == "suback")
    for pid, codes in exp["suback"]:
        if not subacks[pid]:
            owed.append("SUBACK %d" % pid)
    n = sum(1 for p in rcv if p["type"] == "pingresp")
    if n < exp["pingresp"]:
        owed.append("PINGRESP x%d" % (exp["pingresp"] - n))
    return owed


def _check_owed(case, res):
    exp = case.expect
    connacks = [p for p in res.received if p["type"] == "connack"]
    if not connacks:
        res.find("no_connack", "no CONNACK for an unmutated CONNECT (%s)" % (
            "the broker closed the socket without a byte" if res.eof and not res.bytes_in else
            "the socket stayed open"))
        return
    rc = connacks[0]["rc"]
    if rc == 3 and exp["connack"] == 0:
        # server unavailable: documented for max_sessions when every offline
        # session holds messages (clean newcomer) and under the heap reserve
        return
    if rc != exp["connack"]:
        res.find("wrong_connack", "CONNACK rc %d, expected %d" % (rc, exp["connack"]))
        return
    if rc != 0:
        if not res.eof:
            res.find("socket_left_open", "no close after CONNACK rc %d" % rc)
        return
    owed = _owed(case, res)
    if owed:
        res.find("no_reply", "unmutated case within the caps never got: %s%s; %s" % (
            ", ".join(owed[:8]), " (the broker closed the connection first)" if res.eof_before_end else "",
            _received_text(res)))
    for p in res.received:
        if p["type"] == "suback":
            for pid, codes in exp["suback"]:
                if pid == p["pid"]:
                    if len(p["codes"]) != len(codes) or any(
                            c != 0x80 and c > q for c, q in zip(p["codes"], codes)):
                        res.find("wrong_suback", "SUBACK %r for requested QoS %r" % (p["codes"], codes))


def _received_text(res, limit=16):
    """The packets a case received, short, for a finding's detail."""
    out = []
    for p in res.received[:limit]:
        t = p["type"]
        if t == "publish":
            out.append("PUBLISH(%r q%d r%d d%d pid=%s)" % (p["topic"][:40], p["qos"], p["retain"], p["dup"],
                                                        p["pid"]))
        elif t == "suback":
            out.append("SUBACK(%d %r)" % (p["pid"], p["codes"]))
        elif t == "connack":
            out.append("CONNACK(rc=%d sp=%d)" % (p["rc"], p["session_present"]))
        else:
            out.append("%s(%s)" % (t.upper(), p.get("pid", "")))
    if len(res.received) > limit:
        out.append("... %d more" % (len(res.received) - limit))
    return "received: " + " ".join(out) + ("; then EOF" if res.eof else "")


def _check_deliveries(case, res):
    """Every PUBLISH an unmutated case receives matches one of its filters,
    at no more than the highest QoS a SUBACK granted to a matching filter."""
    granted = {}
    by_pid = case.expect["filters"]
    for p in res.received:
        if p["type"] == "suback" and p["pid"] in by_pid:
            for f, code in zip(by_pid[p["pid"]], p["codes"]):
                if code != 0x80:
                    granted[f] = max(granted.get(f, 0), code)
    for p in res.received:
        if p["type"] != "publish":
            continue
        if not any(fuzzlib.topic_matches(f, p["topic"]) for f in case.filters):
            res.find("unexpected_publish", "PUBLISH on %r matches none of the case's filters %r; %s"
                     % (p["topic"], case.filters[:8], _received_text(res)))
            return
        qos = [granted[f] for f in granted if fuzzlib.topic_matches(f, p["topic"])]
        if not qos:
            res.find("unexpected_publish", "PUBLISH on %r matches only filters the broker refused "
                     "(SUBACK 0x80) or never acknowledged: %r; %s" % (p["topic"], case.filters[:8],
                                                                       _received_text(res)))
            return
        if p["qos"] > max(qos):
            res.find("qos_above_granted", "PUBLISH on %r at QoS %d, granted at most %d [MQTT-3.8.4-6]; %s"
                     % (p["topic"], p["qos"], max(qos), _received_text(res)))
            return


# --- the checker (runs while no case runs; blocking) ------------------------------------

_CONNECTED = re.compile(r" INFO client (.*) connected \(clean=([01]) ")
_GONE = re.compile(r" INFO session (.*) (?:evicted|expired)")


def sessions_in_log(text, alive=None):
    """Client ids whose persistent session the broker log says may still
    exist: connected with clean=0 and not since evicted, expired or
    replaced by a clean-session CONNECT. `alive` (a dict, updated) carries
    the state from earlier log text."""
    alive = {} if alive is None else alive
    for ln in text.splitlines():
        mt = _CONNECTED.search(ln)
        if mt:
            if mt.group(2) == "0":
                alive[mt.group(1)] = True
            else:
                alive.pop(mt.group(1), None)
            continue
        mt = _GONE.search(ln)
        if mt:
            alive.pop(mt.group(1), None)
    return alive


class Checker:
    def __init__(self, broker, out):
        self.b = broker
        self.out = out
        self.n = 0
        self.attempts = collections.Counter()   # round trips that needed a retry
        self.deadline = None                     # no client() past this (monotonic)

    def client(self, cid, clean=True, patience=6.0):
        """A connected RawClient, retried for `patience` seconds (max_clients
        while closed cases leave, the heap guard while it recovers), never
        past the checker's deadline (self.deadline, monotonic)."""
        last = None
        end = time.monotonic() + patience
        if self.deadline is not None:
            end = min(end, self.deadline)
        while True:
            c = None
            try:
                c = RawClient(HOST, self.b.port, timeout=3.0)
                ack = c.handshake(cid, clean=clean, keepalive=0, timeout=3.0)
                if ack["rc"] == 0:
                    return c
                last = "CONNACK rc %d" % ack["rc"]
            except Closed:
                last = "closed without CONNACK%s" % (" (not a byte: refused at accept)"
                                                     if c is not None and not c.buf else "")
            except (OSError, AssertionError) as e:
                last = repr(e)
            if c is not None:
                c.close()
            if time.monotonic() >= end:
                break
            time.sleep(0.3)
        raise RuntimeError("checker could not connect as %r: %s" % (cid, last))

    def sys_batch(self, c, fresh=True, timeout=4.0):
        """$SYS/broker/# values -> dict topic -> str (the retained ones,
        then, if fresh, the next live publication of each)."""
        pid = c.pid()
        c.send(m.subscribe(pid, [("$SYS/broker/#", 0)]))
        c.send(m.pingreq())
        vals = {}
        deadline = time.monotonic() + timeout
        while True:
            p = c.recv(max(0.01, deadline - time.monotonic()))
            if p is None:
                raise RuntimeError("no PINGRESP after the $SYS subscription")
            if p["type"] == "pingresp":
                break
            if p["type"] == "publish":
                vals[p["topic"]] = p["payload"].decode()
        if "$SYS/broker/counters/internal_errors" not in vals:
            # no $SYS publication yet (the broker just started): wait for one
            fresh = True
            vals = dict((t, "?") for t in ("$SYS/broker/heap/alloc", "$SYS/broker/clients/connected",
                                            "$SYS/broker/counters/internal_errors"))
        if fresh:
            seen = {}
            while not set(vals) <= set(seen) and time.monotonic() < deadline:
                p = c.recv(max(0.01, deadline - time.monotonic()))
                if p is not None and p["type"] == "publish" and not p["retain"]:
                    seen[p["topic"]] = p["payload"].decode()
            vals.update(seen)
        c.send(m.unsubscribe(c.pid(), ["$SYS/broker/#"]))
        c.wait_for("unsuback", 3.0)
        c.drain(0.05)
        c.pending = []
        return vals

    def round_trip(self, c):
        self.n += 1
        topic = "fzcheck/rt"
        codes = c.subscribe([(topic, 1)], timeout=5.0)
        if codes != [1]:
            raise RuntimeError("round trip: SUBACK %r" % codes)
        payload = b"rt-%d" % self.n
        c.publish(topic, payload, qos=1, timeout=5.0)
        p = c.wait_for("publish", 5.0, lambda p: p["topic"] == topic and p["payload"] == payload)
        if p is None:
            raise RuntimeError("round trip: the QoS 1 message did not come back")
        c.ack(p)
        c.unsubscribe([topic], timeout=5.0)

    def try_round_trip(self, errors, attempts=2):
        """A fresh client: CONNECT, SUBSCRIBE, QoS 1 PUBLISH back to it,
        DISCONNECT. True if one of `attempts` tries passed; the failures go
        to `errors`."""
        for _ in range(attempts):
            c = None
            try:
                c = self.client("fzcheck")
                self.round_trip(c)
                c.disconnect()
                return True
            except (RuntimeError, AssertionError, Closed, OSError, m.MalformedError) as e:
                errors.append(repr(e))
                if c is not None:
                    c.close()
                time.sleep(0.5)
        return False

    def read_sys(self, fresh, attempts=3):
        """$SYS values through a fresh client, or raise RuntimeError."""
        return self.with_client("could not read $SYS", lambda c: self.sys_batch(c, fresh=fresh),
                                attempts)

    def check(self, ctx, label):
        """The periodic check (no case running): returns ([(kind, detail,
        suspects)], $SYS values or None)."""
        found = []
        b = self.b
        log = b.new_log()
        ctx.window_log = log
        sessions_in_log(log, ctx.log_sessions)
        for bad in LOG_BAD:
            i = log.find(bad)
            if i >= 0:
                start = log.rfind("\n", 0, max(0, log.rfind("\n", 0, i))) + 1
                excerpt = "\n".join(log[start:].splitlines()[:25])
                found.append(("log_" + bad.replace(" ", "_").lower(),
                              "broker log has %r:\n%s" % (bad, excerpt), ctx.suspects_in_log(log[:i + 200])))
                break
        if not b.alive():
            found.append(("broker_died", "broker exited with status %s; log tail:\n%s"
                          % (b.proc.returncode, "\n".join(b.log_text().splitlines()[-25:])),
                          sorted(ctx.suspects_at_death or ctx.recent)))
            return found, None
        # every case closed its socket: the broker must hold the listener only
        # (a leak already reported is reported again only when it grows)
        floor = max(ctx.base_fds, ctx.leaks.get("fds", 0))
        deadline = time.monotonic() + 4.0
        fds = b.socket_fds()
        while fds > floor and time.monotonic() < deadline:
            time.sleep(0.1)
            fds = b.socket_fds()
        if fds > floor:
            ctx.leaks["fds"] = fds
            found.append(("sockets_left_open", "%s: the broker holds %d sockets with no client "
                          "connected (the listener alone: %d)" % (label, fds, ctx.base_fds),
                          sorted(ctx.recent)))
        errors = []
        if not self.try_round_trip(errors):
            # the caps may be full of what the cases left (SUBACK 0x80 for a
            # full max_subscriptions_total, CONNACK 3): clear it and retry
            self.attempts["round trips that passed only after the clean-up"] += 1
            try:
                done = self.clean_up(ctx)
            except (RuntimeError, AssertionError, Closed, OSError, m.MalformedError) as e:
                done = {"error": repr(e)}
            if not self.try_round_trip(errors):
                self.attempts["round trips that passed only after the clean-up"] -= 1
                found.append(("checker_round_trip", "%s: a fresh client's CONNECT + SUBSCRIBE + QoS 1 "
                              "round trip failed with no case running, also after clearing retained "
                              "messages and sessions (%s): %s" % (label, done, errors), sorted(ctx.recent)))
                return found, None
        if errors:
            self.attempts["round trip failures before one passed"] += len(errors)
            self.attempts["e.g. " + errors[-1][:100]] = 1
        try:
            vals = self.read_sys(fresh=True)
        except RuntimeError as e:
            # 37 $SYS messages at once: closed for a MemoryError when what the
            # cases left fills the heap; clear it and retry
            self.attempts["$SYS reads that passed only after the clean-up"] += 1
            self.attempts["e.g. " + str(e)[:100]] = 1
            try:
                self.clean_up(ctx)
                vals = self.read_sys(fresh=True)
            except (RuntimeError, AssertionError, Closed, OSError, m.MalformedError) as e2:
                self.attempts["$SYS reads that passed only after the clean-up"] -= 1
                found.append(("checker_sys", "%s: %s; after clearing retained messages and sessions: %s"
                              % (label, e, e2), sorted(ctx.recent)))
                return found, None
        ie = vals.get("$SYS/broker/counters/internal_errors")
        if ie != "0" and ie != ctx.leaks.get("internal_errors"):
            ctx.leaks["internal_errors"] = ie
            found.append(("internal_errors", "$SYS/broker/counters/internal_errors = %s" % ie,
                          sorted(ctx.recent)))
        online = vals.get("$SYS/broker/clients/connected")
        if online != "1" and online != ctx.leaks.get("online"):
            # up to sys_interval_s old: ask for a fresh one
            try:
                vals = self.read_sys(fresh=True)
            except RuntimeError:
                pass
            online = vals.get("$SYS/broker/clients/connected")
            if online != "1" and online != ctx.leaks.get("online"):
                ctx.leaks["online"] = online
                found.append(("clients_left_connected", "$SYS/broker/clients/connected = %s with only "
                              "the checker connected" % online, sorted(ctx.recent)))
        return found, vals

    # --- the heap at start and end -------------------------------------------------

    def with_client(self, what, fn, attempts=4):
        """fn(client) with a fresh checker client, again with a new one if
        the broker closes it (a MemoryError while its heap is full closes
        the connection whose work failed: the checker's too)."""
        last = None
        for _ in range(attempts):
            c = None
            try:
                c = self.client("fzcheck")
                out = fn(c)
                c.disconnect()
                return out
            except (RuntimeError, AssertionError, Closed, OSError, m.MalformedError) as e:
                last = e
                if c is not None:
                    c.close()
                time.sleep(0.5)
        raise RuntimeError("%s: failed %d times, last: %r" % (what, attempts, last))

    def clean_up(self, ctx):
        """Clear what the cases left: retained topics, persistent sessions.
        Returns a dict of what was done."""
        done = {"retained_cleared": 0, "sessions_cleared": 0, "retained_swept": 0,
                "sessions_swept": 0}
        outer = self.deadline
        self.deadline = time.monotonic() + CLEANUP_S if outer is None else outer
        try:
            return self._clean_up(ctx, done)
        except RuntimeError as e:
            raise RuntimeError("%s (done so far: %s)" % (e, done))
        finally:
            self.deadline = outer

    def _clean_up(self, ctx, done):
        topics = sorted(ctx.retained)
        ctx.retained.clear()  # older ones: cleared then, or by the '#' sweep below

        def clear(c, batch):
            c.send(b"".join(m.publish(t, b"", retain=True) for t in batch))
            c.send(m.pingreq())
            if c.wait_for("pingresp", 10.0) is None:
                raise RuntimeError("no PINGRESP while clearing retained topics")

        for i in range(0, len(topics), 50):
            self.with_client("clearing retained topics", lambda c: clear(c, topics[i:i + 50]))
        done["retained_cleared"] = len(topics)
        ids = list(ctx.persistent) + ["fz%d" % i for i in range(fuzzlib.SHARED_IDS)]
        ids += [x for x in ctx.log_sessions if x not in ctx.persistent]
        for attempt in range(3):
            # under the heap reserve a CONNECT that needs a new session gets
            # CONNACK 3: again once the others freed their heap
            failed = []
            for cid in ids:
                if time.monotonic() > self.deadline:
                    failed.append("%s (clean-up out of time)" % cid)
                    continue
                try:
                    x = self.client(cid, clean=True, patience=0.5)
                except RuntimeError as e:
                    failed.append("%s (%s)" % (cid, e))
                    continue
                x.disconnect()
                done["sessions_cleared"] += 1
            if not failed:
                break
            ids = [f.split(" (")[0] for f in failed]
            time.sleep(0.5)
        if failed:
            done["sessions_not_cleared"] = failed

        # what mutated packets left: retained messages on other topics
        def sweep(c, flt):
            c.send(m.subscribe(c.pid(), [(flt, 0)]))
            c.send(m.pingreq())
            left = []
            while True:
                p = c.recv(5.0)
                if p is None:
                    raise RuntimeError("no PINGRESP after subscribing to %r" % flt)
                if p["type"] == "pingresp":
                    break
                if p["type"] == "publish" and p["retain"]:
                    left.append(p["topic"])
            c.unsubscribe([flt])
            if left:
                clear(c, left)
            return len(left)

        for flt in ("#", fuzzlib.DOLLAR_ROOT + "/#"):
            done["retained_swept"] += self.with_client("sweeping retained messages",
                                                       lambda c: sweep(c, flt))
        # clients/total counts the session of the checker that reads it
        vals = self.read_sys(fresh=True)
        total = int(vals.get("$SYS/broker/clients/total", "1"))
        if total > 1:  # sessions of ids neither the cases nor the log named
            # a session that holds nothing is evicted first
            n = int(self.b.cfg.get("max_sessions", 16))
            for i in range(n):
                self.client("fzsweep-%d" % i, clean=False).disconnect()
            for i in range(n):
                self.client("fzsweep-%d" % i, clean=True).disconnect()
            vals = self.read_sys(fresh=True)
            done["sessions_swept"] = total - int(vals.get("$SYS/broker/clients/total", "1"))
        done["sessions_left"] = int(vals.get("$SYS/broker/clients/total", "1")) - 1
        return done

    def heap(self, settle_s=2.0, batches=2):
        """(min, max) of $SYS/broker/heap/alloc over a few fresh $SYS
        publications, the checker connected and idle, plus the $SYS values."""
        time.sleep(settle_s)
        c = self.client("fzcheck")
        try:
            vals = {}
            heaps = []
            for _ in range(batches):
                vals = self.sys_batch(c, fresh=True)
                heaps.append(int(vals.get("$SYS/broker/heap/alloc", "-1")))
            return min(heaps), max(heaps), vals
        finally:
            c.disconnect()


# --- the run ---------------------------------------------------------------------------

class Context:
    def __init__(self, args, broker):
        self.args = args
        self.broker = broker
        self.ports = {}            # local port -> case number (since the last check)
        self.active = set()
        self.recent = collections.deque(maxlen=4 * args.concurrency)
        self.retained = set()
        self.persistent = collections.OrderedDict()  # most recent last; cleanup clears the last 3 x max_sessions
        self.findings = []         # (seed, case or None, kind, detail)
        self.stats = collections.Counter()
        self.mutations = collections.Counter()
        self.close_latencies = []
        self.suspects_at_death = None
        self.broker_down = False
        self.base_fds = 1          # sockets the idle broker holds: the listener
        self.done = 0
        self.leaks = {}            # broker-wide leaks reported so far (reported again if worse)
        self.log_sessions = {}     # client ids whose persistent session the log shows alive
        self.provisional = []      # oracle findings waiting for the log (resolve)
        self.excused = []
        self.window_log = ""

    def suspects_in_log(self, text):
        cases = set()
        for port in re.findall(r"127\.0\.0\.1:(\d+)", text):
            n = self.ports.get(int(port))
            if n is not None:
                cases.add(n)
        return sorted(cases)

    def record(self, case, res):
        a = self.args
        self.done += 1
        self.recent.append(case.number)
        if res.local_port:
            self.ports[res.local_port] = case.number
        retained, ids = fuzzlib.effects(case)
        for t in case.retained + retained:
            if t and "+" not in t and "#" not in t and fuzzlib._within_limits(t) and not (
                    t.startswith("$SYS/") or t == "$SYS") and not fuzzlib.has_controls(t):
                self.retained.add(t)
        keep = 3 * int(self.broker.cfg.get("max_sessions", 16))
        for cid in case.persistent + ids:
            if len(cid) > 64 or fuzzlib.has_controls(cid):
                continue  # refused (CONNACK 2, or closed): never a session
            self.persistent.pop(cid, None)
            self.persistent[cid] = True
            while len(self.persistent) > keep:
                self.persistent.popitem(last=False)
        s = self.stats
        if res.connect_failed:
            s["connect_failed"] += 1
            if self.suspects_at_death is None:
                self.suspects_at_death = set(self.active) | set(self.recent)
            self.broker_down = True
            return
        s["cases"] += 1
        s["mutated" if case.mutations else "unmutated"] += 1
        if case.expect is not None:
            s["unmutated_in_caps (replies checked)"] += 1
        for mu in case.mutations:
            self.mutations[mu] += 1
        s["read_" + case.read_mode] += 1
        s["end_" + res.end_taken] += 1
        s["split_" + case.split] += 1
        if res.refused:
            s["refused (EOF before any byte)"] += 1
        connack = [p for p in res.received if p["type"] == "connack"]
        if connack:
            s["connack_rc%d" % connack[0]["rc"]] += 1
        elif not res.refused:
            s["no_connack"] += 1
        if res.eof_before_end and not res.refused:
            s["closed_by_broker_during_script"] += 1
        s["packets_received"] += len(res.received)
        s["publishes_received"] += sum(1 for p in res.received if p["type"] == "publish")
        s["acks_sent"] += res.acks_sent
        s["bytes_out"] += res.bytes_out
        s["bytes_in"] += res.bytes_in
        if res.close_latency is not None:
            self.close_latencies.append(res.close_latency)
        for kind, detail in res.findings:
            if kind in EXCUSABLE:
                # decided at the next check, when the broker log of the window is read
                self.provisional.append((case.seed, case.number, res.local_port, case.client_id,
                                         kind, detail))
                continue
            self.report(case.seed, case.number, kind, detail)

    def report(self, seed, number, kind, detail):
        self.findings.append((seed, number, kind, detail))
        if not self.args.quiet:
            print("FINDING case %d:%d %s: %s" % (seed, number, kind, detail), flush=True)

    def resolve(self, log):
        """Oracle findings of unmutated cases are excused when the broker
        log says why it closed or refused that client: heap shedding or a
        MemoryError (README "Heap contract") or max_clients (a socket
        without CONNECT closed to make room)."""
        lines = [ln for ln in log.splitlines() if any(w in ln for w in EXCUSES)]
        for seed, number, port, cid, kind, detail in self.provisional:
            keys = ["127.0.0.1:%d)" % port, "127.0.0.1:%d " % port] if port else []
            if cid:
                keys += ["client %s " % cid, "client %s:" % cid]
            else:
                # an id the broker assigned ("midge-<n>-<n>"): the log names
                # no port in some lines ("out of memory delivering to
                # client midge-...: message dropped for it")
                keys += ["client midge-"]
            why = [ln for ln in lines if any(k in ln for k in keys)]
            if not why and kind == "no_connack" and "closed the socket without a byte" in detail:
                # refused at accept: that log line names no peer
                why = [ln for ln in lines if "connection refused:" in ln]
            if why:
                self.stats["oracle excused by the log (heap, MemoryError, max_clients)"] += 1
                self.excused.append((seed, number, kind, detail, why[0]))
            else:
                self.report(seed, number, kind, detail)
        self.provisional = []


def _print(args, *a):
    print(*a, flush=True)


async def run_batch(ctx, numbers):
    a = ctx.args
    sem = asyncio.Semaphore(a.concurrency)
    b = ctx.broker

    async def one(n):
        async with sem:
            if ctx.broker_down:
                return
            case = fuzzlib.make_case(a.seed, n, max_packet=int(b.cfg.get("max_packet_size", 4096)))
            case.connect_timeout_s = int(b.cfg.get("connect_timeout_ms", 5000)) / 1000.0
            ctx.active.add(n)
            try:
                res = await asyncio.wait_for(run_case(case, b.port), 60.0)
            except asyncio.TimeoutError:
                res = Result(case)
                res.find("case_hung", "the case did not finish within 60 s")
            finally:
                ctx.active.discard(n)
            ctx.record(case, res)

    await asyncio.gather(*(one(n) for n in numbers))


def counters_of(vals):
    pre = "$SYS/broker/counters/"
    return dict((k[len(pre):], int(v)) for k, v in (vals or {}).items() if k.startswith(pre))


def triage(ctx, suspects, workdir):
    """Replay the suspect cases alone, one after the other, on a fresh
    broker; return those after which it logged a traceback or an internal
    error or died (a new broker after each such one)."""
    a = ctx.args
    culprits = []
    tdir = os.path.join(workdir, "triage")
    os.makedirs(tdir, exist_ok=True)
    b = None
    try:
        for n in suspects[:30]:
            if b is None or not b.alive():
                if b is not None:
                    b.kill()
                b = Broker(tdir, a.board, a.heapsize)
                b.bundle = ctx.broker.bundle
                b.start()
                b.new_log()
            case = fuzzlib.make_case(a.seed, n, max_packet=int(b.cfg.get("max_packet_size", 4096)))
            case.connect_timeout_s = int(b.cfg.get("connect_timeout_ms", 5000)) / 1000.0
            asyncio.run(run_case(case, b.port))
            time.sleep(0.5)
            log = b.new_log()
            bad = [x for x in LOG_BAD if x in log]
            if bad or not b.alive():
                culprits.append((n, "broker died" if not b.alive() else ", ".join(bad)))
                b.kill()
                b = None
    finally:
        if b is not None:
            b.kill()
    return culprits


def fuzz(args):
    workdir = args.keep or tempfile.mkdtemp(prefix="midge-fuzz-")
    os.makedirs(workdir, exist_ok=True)
    b = Broker(workdir, args.board, args.heapsize)
    max_clients = int(b.cfg.get("max_clients", 8))
    if args.concurrency > max_clients - 1:
        print("fuzz: --concurrency %d is more than max_clients %d of board %s minus one (the checker)"
              % (args.concurrency, max_clients, args.board), file=sys.stderr)
        return 2
    if not _start(b):
        return 2
    ctx = Context(args, b)
    chk = Checker(b, sys.stdout)
    _print(args, "midge fuzz: seed %d, cases %d..%d, concurrency %d, board %s, -X heapsize=%s, "
           "port %d, lib/midge %s, workdir %s" % (args.seed, args.start, args.start + args.cases - 1,
                                                   args.concurrency, args.board, args.heapsize, b.port,
                                                   b.lib_digest, workdir))
    restarts = 0
    # the start: warm up (a round trip, the clean-up paths), then the heap
    found, _ = chk.check(ctx, "start")
    if found:
        for kind, detail, _s in found:
            print("fuzz: broker not healthy at start: %s: %s" % (kind, detail), file=sys.stderr)
        b.kill()
        return 2
    time.sleep(0.3)
    ctx.base_fds = b.socket_fds()  # the listener alone
    chk.clean_up(ctx)
    heap0_min, heap0_max, vals0 = chk.heap(settle_s=1.0)
    counters0 = counters_of(vals0)
    retained0 = vals0.get("$SYS/broker/retained/count")
    _print(args, "start: heap/alloc %d..%d B, %s socket(s) held by the idle broker, retained/count %s"
           % (heap0_min, heap0_max, ctx.base_fds, retained0))
    b.new_log()
    heaps = []
    t_fuzz = time.monotonic()
    last_progress = t_fuzz
    n = args.start
    end = args.start + args.cases
    loop = asyncio.new_event_loop()
    unusable = False
    try:
        while n < end:
            batch = list(range(n, min(end, n + args.check_every)))
            loop.run_until_complete(run_batch(ctx, batch))
            n = batch[-1] + 1
            found, vals = chk.check(ctx, "case %d" % n)
            ctx.resolve(ctx.window_log)
            if vals and "$SYS/broker/heap/alloc" in vals:
                heaps.append(int(vals["$SYS/broker/heap/alloc"]))
            for kind, detail, suspects in found:
                ctx.findings.append((args.seed, None, kind, detail + "\n  suspects (cases): %s" % suspects))
                print("FINDING after case %d: %s: %s\n  suspects (cases): %s" % (n - 1, kind, detail, suspects),
                      flush=True)
                if suspects and kind in TRIAGED and not args.no_triage:
                    culprits = triage(ctx, suspects, workdir)
                    msg = ("  replayed alone: %s" % ", ".join("case %d:%d (%s)" % (args.seed, x, why)
                                                              for x, why in culprits)
                           if culprits else "  replayed alone: none of the suspects reproduces it alone")
                    print(msg, flush=True)
                    ctx.findings[-1] = ctx.findings[-1][:3] + (ctx.findings[-1][3] + "\n" + msg,)
            ctx.ports = {}
            if b.alive() and any(k in ("checker_round_trip", "checker_sys") for k, _d, _s in found):
                print("fuzz: a fresh client cannot use the idle broker: stopping after case %d" % (n - 1),
                      flush=True)
                unusable = True
                break
            if not b.alive() or ctx.broker_down:
                restarts += 1
                if restarts > 3:
                    print("fuzz: the broker died %d times: stopping" % restarts, flush=True)
                    break
                b.kill()
                b.start()
                ctx.broker_down = False
                ctx.suspects_at_death = None
                ctx.leaks = {}
                chk.check(ctx, "restart")
                time.sleep(0.3)
                ctx.base_fds = b.socket_fds()
                heap0_min, heap0_max, vals0 = chk.heap(settle_s=1.0)
                counters0 = counters_of(vals0)
                print("broker restarted (run %d); new heap baseline %d" % (b.runs, heap0_min), flush=True)
            now = time.monotonic()
            if not args.quiet and (now - last_progress >= args.progress_s or n >= end):
                last_progress = now
                el = now - t_fuzz
                _print(args, "[%6.0fs] cases %d/%d (%.1f/s), findings %d, heap/alloc %s" % (
                    el, ctx.done, args.cases, ctx.done / max(el, 1e-9), len(ctx.findings),
                    heaps[-1] if heaps else "?"))
    finally:
        loop.close()
    elapsed = time.monotonic() - t_fuzz
    # the end: everything closed; clear what the cases left; the heap
    end_found, vals_end = [], None
    if not unusable:
        end_found, vals_end = chk.check(ctx, "end")
    else:
        ctx.window_log = b.new_log()
    ctx.resolve(ctx.window_log)
    for kind, detail, suspects in end_found:
        ctx.findings.append((args.seed, None, kind, detail + "\n  suspects (cases): %s" % suspects))
    heap1_min = heap1_max = None
    cleanup = {}
    counters1 = counters_of(vals_end)  # before the clean-up moves some
    if b.alive() and not unusable and not any(k in ("checker_round_trip", "checker_sys")
                                              for k, _d, _s in end_found):
        try:
            cleanup = chk.clean_up(ctx)
            heap1_min, heap1_max, vals1 = chk.heap(settle_s=args.settle_s)
            vals_end = vals1
        except (RuntimeError, Closed, OSError, AssertionError) as e:
            ctx.findings.append((args.seed, None, "checker_cleanup", repr(e)))
    if not counters1:
        counters1 = counters_of(vals_end)
    # a last look at the log (the clean-up ran through it too)
    log = b.new_log()
    for bad in LOG_BAD:
        if bad in log:
            i = log.find(bad)
            ctx.findings.append((args.seed, None, "log_" + bad.replace(" ", "_").lower(),
                                 "\n".join(log[max(0, log.rfind("\n", 0, i - 200)):].splitlines()[:25])))
            break
    if args.strict_heap:
        for k in HEAP_COUNTERS:
            d = counters1.get(k, 0) - counters0.get(k, 0)
            if d > 0:
                ctx.findings.append((args.seed, None, "heap_" + k, "$SYS/broker/counters/%s +%d" % (k, d)))
    delta = None
    if heap1_min is not None and heap0_min >= 0:
        delta = heap1_min - heap0_min
        if delta > args.heap_margin:
            ctx.findings.append((args.seed, None, "heap_not_back",
                                 "heap/alloc %d at start, %d at end (+%d B > margin %d B) after clearing "
                                 "retained topics and sessions" % (heap0_min, heap1_min, delta, args.heap_margin)))
        rc1 = (vals_end or {}).get("$SYS/broker/retained/count")
        if rc1 != retained0:
            cleanup["retained messages left (topics the clean-up could not find)"] = "%s (start %s)" % (
                rc1, retained0)
    b.stop()

    # --- the report -----------------------------------------------------------------------
    s = ctx.stats
    print("")
    print("cases run: %d of %d in %.1f s (%.1f cases/s), concurrency %d, seed %d, board %s, heapsize %s"
          % (s["cases"], args.cases, elapsed, s["cases"] / max(elapsed, 1e-9), args.concurrency,
             args.seed, args.board, args.heapsize))
    print("cases: " + ", ".join("%s %d" % (k, s[k]) for k in sorted(s) if k not in
                                ("cases", "bytes_in", "bytes_out")))
    print("bytes: sent %d, received %d" % (s["bytes_out"], s["bytes_in"]))
    print("mutations: " + ", ".join("%s %d" % kv for kv in sorted(ctx.mutations.items())))
    if ctx.close_latencies:
        cl = sorted(ctx.close_latencies)
        print("broker close after our FIN/DISCONNECT or its own timeout: median %.3f s, max %.3f s"
              % (cl[len(cl) // 2], cl[-1]))
    moved = ["%s +%d" % (k, counters1[k] - counters0.get(k, 0)) for k in sorted(counters1)
             if counters1[k] != counters0.get(k, 0)]
    print("counters moved%s: %s" % (" (since the last restart)" if restarts else "",
                                    ", ".join(moved) or "none"))
    if cleanup:
        print("clean-up: " + ", ".join("%s %s" % kv for kv in sorted(cleanup.items())))
    if chk.attempts:
        print("checker: " + ", ".join("%s %s" % kv for kv in sorted(chk.attempts.items())))
    mem = dict((k, counters1.get(k, 0) - counters0.get(k, 0)) for k in HEAP_COUNTERS if k in counters1)
    if any(mem.values()):
        print("heap pressure (README \"Heap contract\"; findings only with --strict-heap): "
              + ", ".join("%s +%d" % kv for kv in sorted(mem.items())))
    if heaps:
        print("heap/alloc at the checks (no case connected, before any clean-up): min %d, max %d, last %d"
              % (min(heaps), max(heaps), heaps[-1]))
    print("heap/alloc: start %d..%d B, end %s B, delta %s B (margin %d B)" % (
        heap0_min, heap0_max, "%d..%d" % (heap1_min, heap1_max) if heap1_min is not None else "?",
        "%+d" % delta if delta is not None else "?", args.heap_margin))
    print("broker restarts: %d; log: %s" % (restarts, b.logpath))
    if ctx.excused:
        print("oracle findings excused by the broker log: %d, e.g. case %d:%d %s (log: %s)"
              % ((len(ctx.excused),) + ctx.excused[0][:3] + (ctx.excused[0][4].strip()[:160],)))
    if ctx.findings:
        print("findings: %d" % len(ctx.findings))
        for seed, case, kind, detail in ctx.findings[:50]:
            where = "case %d:%d" % (seed, case) if case is not None else "run"
            print("  [%s] %s: %s" % (where, kind, detail))
            if case is not None:
                print("    replay: .venv/bin/python tools/fuzz.py --replay %d:%d --board %s --heapsize %s"
                      % (seed, case, args.board, args.heapsize))
    else:
        print("findings: none")
    if not args.keep and not ctx.findings:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if ctx.findings else 0


def _parse_ref(text):
    try:
        seed, case = text.split(":")
        return int(seed), int(case)
    except ValueError:
        raise SystemExit("fuzz: expected SEED:CASE, got %r" % text)


def show(args):
    seed, n = _parse_ref(args.show)
    b_cfg = dict(board_json(args.board).get("config", {}))
    case = fuzzlib.make_case(seed, n, max_packet=int(b_cfg.get("max_packet_size", 4096)))
    print(case.summary())
    print("split %s: %s" % (case.split, [(len(d), p) for d, p in case.writes]))
    print("packets = " + case.literal())
    return 0


def _start(b):
    """Build the bundle and start the broker; False (said on stderr) if
    either fails."""
    try:
        b.build()
        b.start()
        return True
    except (RuntimeError, subprocess.CalledProcessError) as e:
        print("fuzz: %s" % e, file=sys.stderr)
        return False


def replay(args):
    seed, n = _parse_ref(args.replay)
    workdir = args.keep or tempfile.mkdtemp(prefix="midge-fuzz-replay-")
    b = Broker(workdir, args.board, args.heapsize)
    if not _start(b):
        return 2
    case = fuzzlib.make_case(seed, n, max_packet=int(b.cfg.get("max_packet_size", 4096)))
    case.connect_timeout_s = int(b.cfg.get("connect_timeout_ms", 5000)) / 1000.0
    print(case.summary())
    print("packets = " + case.literal())
    res = asyncio.run(run_case(case, b.port))
    print("received (%d packets, %d bytes):" % (len(res.received), res.bytes_in))
    for p in res.received[:60]:
        print("   ", p)
    print("eof=%s reset=%s refused=%s closed_during_script=%s close_latency=%s end=%s" % (
        res.eof, res.reset, res.refused, res.eof_before_end,
        "%.3f" % res.close_latency if res.close_latency is not None else None, res.end_taken))
    time.sleep(1.5)
    findings = list(res.findings)
    ctx = Context(args, b)
    chk = Checker(b, sys.stdout)
    found, _ = chk.check(ctx, "replay")
    findings += [(k, d) for k, d, _s in found]
    log = b.log_text()
    b.stop()
    print("broker log:")
    print("\n".join("    " + ln for ln in log.splitlines()[-40:]))
    for kind, detail in findings:
        print("FINDING %s: %s" % (kind, detail))
    print("findings: %d" % len(findings))
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if findings else 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=None, help="default: a random one (printed)")
    ap.add_argument("--start", type=int, default=0, help="first case number")
    ap.add_argument("--concurrency", type=int, default=None,
                    help="cases at once (default: min(6, board max_clients - 1))")
    ap.add_argument("--board", default="esp32")
    ap.add_argument("--heapsize", default=None, help="default: the board's unix_heapsize")
    ap.add_argument("--check-every", type=int, default=500)
    ap.add_argument("--heap-margin", type=int, default=8192)
    ap.add_argument("--settle-s", type=float, default=3.0, help="wait before the final heap reading")
    ap.add_argument("--strict-heap", action="store_true",
                    help="heap shedding or a MemoryError (memory_errors, heap_low, heap_refused, "
                    "heap_dropped moved) is a finding too")
    ap.add_argument("--keep", metavar="DIR", help="work directory to keep (logs, bundle)")
    ap.add_argument("--no-triage", action="store_true", help="do not replay suspects of a broker finding")
    ap.add_argument("--progress-s", type=float, default=10.0)
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--replay", metavar="SEED:CASE")
    ap.add_argument("--show", metavar="SEED:CASE")
    args = ap.parse_args(argv)
    try:
        bj = board_json(args.board)
    except OSError:
        print("fuzz: no board %r (boards/%s/board.json)" % (args.board, args.board), file=sys.stderr)
        return 2
    if args.heapsize is None:
        args.heapsize = bj["unix_heapsize"]
    if args.concurrency is None:
        args.concurrency = max(1, min(6, int(bj.get("config", {}).get("max_clients", 8)) - 1))
    if args.show:
        return show(args)
    if args.replay:
        return replay(args)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 31)
    if args.cases < 1 or args.concurrency < 1 or args.check_every < 1:
        print("fuzz: --cases, --concurrency and --check-every must be at least 1", file=sys.stderr)
        return 2
    return fuzz(args)


if __name__ == "__main__":
    sys.exit(main())
