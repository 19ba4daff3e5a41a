#!/usr/bin/env python3
"""What a TLS connection costs the broker, and what a login costs.

    .venv/bin/python tools/measure/tls_cost.py [--clients 10] [--handshakes 30] [--heapsize 400k]

Starts midge under the MicroPython unix port (64-bit: Python objects there
are about twice their size on a 32-bit board) with a plain and a TLS
listener (certificates from tools/mkcert in a temporary directory) and a
password file, then prints:

  - the Python heap per idle TLS client and per idle plain client
    ($SYS/broker/heap/alloc, after a collection, with N clients connected
    minus with none): on the unix port mbedTLS allocates its buffers with
    libc malloc, outside that heap, so the process's resident size per TLS
    client is printed too (on rp2 those buffers are on the MicroPython heap,
    on an ESP32 in the IDF heap: about 20 KB each);
  - the time from TCP connect to CONNACK, over TLS and plain, without a
    password and with one (the PBKDF2 check of auth.ITERATIONS), median and
    90th percentile over --handshakes connections, measured by this CPython
    client on 127.0.0.1.
"""
import argparse
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, os.path.join(ROOT, "lib"))

import hostlib  # noqa: E402
import mqttspec as m  # noqa: E402
from midge import auth  # noqa: E402


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def read_packet(s):
    head = s.recv(2)
    if len(head) < 2:
        raise OSError("closed before CONNACK")
    body = b""
    while len(body) < head[1]:
        chunk = s.recv(head[1] - len(body))
        if not chunk:
            raise OSError("closed in a packet")
        body += chunk
    return head + body


def connect(port, cid, ctx=None, user=None, password=None):
    """(socket, seconds from TCP connect to CONNACK)."""
    t0 = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if ctx is not None:
        s = ctx.wrap_socket(s, server_hostname="localhost")
    s.sendall(m.connect(cid, keepalive=0, username=user,
                        password=None if password is None else password.encode()))
    ack = read_packet(s)
    dt = time.perf_counter() - t0
    if ack[0] != 0x20 or ack[3] != 0:
        raise RuntimeError("CONNACK %r" % ack)
    return s, dt


def sys_value(port, topic):
    """The second publication of a $SYS value (the first may predate the
    last change), read by a plain anonymous client."""
    s, _ = connect(port, "tls-cost-reader-%d" % time.monotonic_ns())
    s.sendall(m.subscribe(1, [(topic, 0)]))
    seen = 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        p = read_packet(s)
        if p[0] & 0xF0 == 0x30:
            seen += 1
            if seen == 2:
                tlen = (p[2] << 8) | p[3]
                s.close()
                return int(p[4 + tlen:])
    raise RuntimeError("no %s" % topic)


def quantiles(xs):
    xs = sorted(xs)
    return statistics.median(xs) * 1000, xs[int(len(xs) * 0.9) - 1] * 1000


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--handshakes", type=int, default=30)
    ap.add_argument("--heapsize", default="400k")
    args = ap.parse_args(argv)
    work = tempfile.mkdtemp(prefix="midge-tls-cost-")
    certs = os.path.join(work, "certs")
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "mkcert"), "--out", certs],
                   check=True, capture_output=True)
    pw = os.path.join(work, "passwd")
    with open(pw, "w") as f:
        f.write("alice:%s\n" % auth.hash_password("secret"))
    port, tls_port = hostlib.free_port(), hostlib.free_port()
    cfg = os.path.join(work, "cfg.json")
    with open(cfg, "w") as f:
        import json
        json.dump({"password_file": pw, "allow_anonymous": True, "sys_interval_s": 1,
                   "tls_cert_file": os.path.join(certs, "server.crt"),
                   "tls_key_file": os.path.join(certs, "server.key"),
                   "listeners": [{"host": "127.0.0.1", "port": tls_port, "tls": True, "allow_anonymous": True}],
                   "max_clients": 4 * args.clients + 20, "max_tls_clients": 2 * args.clients + 10,
                   "auth_max_failures": 1000}, f)
    cmd, env = hostlib.midge_command(["--host", "127.0.0.1", "--port", str(port), "--config", cfg,
                                      "--log-level", "warning"], "micropython", args.heapsize)
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        hostlib.wait_listening(port, proc)
        hostlib.wait_listening(tls_port, proc)
        ctx = ssl.create_default_context(cafile=os.path.join(certs, "ca.crt"))
        # warm up: code and buffers the first of each kind allocates for good
        for c in (None, ctx):
            connect(tls_port if c else port, "warm", c)[0].close()
        time.sleep(0.5)
        base_heap = sys_value(port, "$SYS/broker/heap/alloc")
        base_rss = rss_kb(proc.pid)
        held = [connect(tls_port, "tls-%d" % i, ctx)[0] for i in range(args.clients)]
        time.sleep(0.5)
        tls_heap = sys_value(port, "$SYS/broker/heap/alloc")
        tls_rss = rss_kb(proc.pid)
        for s in held:
            s.close()
        time.sleep(1.0)
        base2 = sys_value(port, "$SYS/broker/heap/alloc")
        held = [connect(port, "tcp-%d" % i)[0] for i in range(args.clients)]
        time.sleep(0.5)
        tcp_heap = sys_value(port, "$SYS/broker/heap/alloc")
        for s in held:
            s.close()
        times = {}
        for name, p, c, user in (("plain, anonymous", port, None, None), ("TLS, anonymous", tls_port, ctx, None),
                                 ("plain, password", port, None, "alice"), ("TLS, password", tls_port, ctx, "alice")):
            ts = []
            for i in range(args.handshakes):
                s, dt = connect(p, "t-%d" % i, c, user, "secret" if user else None)
                s.close()
                ts.append(dt)
            times[name] = quantiles(ts)
        print("midge under the MicroPython unix port (64-bit), -X heapsize=%s, %d clients" % (args.heapsize, args.clients))
        print("  Python heap per idle TLS client:     %6d bytes" % ((tls_heap - base_heap) // args.clients))
        print("  resident size per idle TLS client:   %6d bytes (mbedTLS buffers: libc malloc on the unix port)"
              % ((tls_rss - base_rss) * 1024 // args.clients))
        print("  Python heap per idle plain client:   %6d bytes" % ((tcp_heap - base2) // args.clients))
        print("  heap after the TLS clients left:     %+6d bytes against before they came" % (base2 - base_heap))
        print("  connect to CONNACK (median / p90 of %d, ms; PBKDF2 with %d iterations for 'password'):"
              % (args.handshakes, auth.ITERATIONS))
        for name in times:
            print("    %-18s %7.2f / %7.2f" % (name, times[name][0], times[name][1]))
    finally:
        proc.terminate()
        proc.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
