#!/usr/bin/env python3
"""Heap figures of midge under the MicroPython unix port (64-bit: objects
are about twice their size on a 32-bit ESP32 or RP2040).

Starts the broker under `micropython -X heapsize=...` with $SYS every
second, reads $SYS/broker/heap/alloc (taken right after gc.collect()) and
reports:
  - heap after start (no clients),
  - per idle connected client (clean session, keepalive 0),
  - per subscription (one new filter per client),
  - per retained 64-byte message (distinct topics),
  - per queued 64-byte QoS 1 message (for an offline persistent session),
  - the MQTT 5 code, which the first MQTT 5 client loads (that client's heap
    less one 3.1.1 client's), and per idle connected MQTT 5 client.
Each per-item figure is the difference over N items divided by N.

--micropython PATH runs another unix port build, for example the 32-bit
one with midge frozen in (tools/firmware unix32); --code says where midge's
code comes from: source (lib/, compiled at import: the code is heap), mpy
(the .mpy bundle, as tools/deploy installs it: the bytecode is heap) or
frozen (in the binary: no heap for code; needs a build with midge frozen).

Usage: .venv/bin/python tools/heap_report.py [--clients N] [--retained N] [--queued N]
           [--micropython PATH] [--code source|mpy|frozen] [--json FILE]
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import mqttspec  # the project's spec-written packet encoder
import mqtt5spec  # and its MQTT 5 counterpart
from hostlib import ROOT, find_micropython, free_port, midge_command  # noqa: F401 (ROOT, free_port: for store_heap)


def micropython():
    return find_micropython() or "micropython"


def word_bits(mp):
    """32 or 64: the pointer size of a unix port build."""
    out = subprocess.run([mp, "-c", "import sys; print(sys.maxsize)"], capture_output=True, text=True).stdout
    return 64 if int(out.strip()) > 2 ** 32 else 32


class Client:
    """A minimal blocking client: enough to connect, subscribe, publish."""

    def __init__(self, port, client_id, keepalive=0, clean=True, version=4):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buf = b""
        self.spec = mqtt5spec if version == 5 else mqttspec
        if version == 5:
            self.sock.sendall(mqtt5spec.connect(client_id, clean_start=clean, keepalive=keepalive))
        else:
            self.sock.sendall(mqttspec.connect(client_id=client_id, clean=clean, keepalive=keepalive))
        pkt = self.recv_packet()
        if pkt["type"] != "connack" or pkt["rc"] != 0:
            raise RuntimeError("CONNECT refused: %r" % pkt)

    def recv_packet(self, timeout=5):
        self.sock.settimeout(timeout)
        while True:
            pkt, used = self.spec.parse(self.buf)
            if pkt is not None:
                self.buf = self.buf[used:]
                return pkt
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("broker closed the connection")
            self.buf += data

    def close(self):
        self.sock.close()


class SysWatcher(Client):
    def latest_alloc(self, updates=2):
        """Wait for `updates` fresh $SYS/broker/heap/alloc values; return the last."""
        value = None
        for _ in range(updates):
            while True:
                pkt = self.recv_packet(timeout=5)
                if pkt["type"] == "publish" and pkt["topic"] == "$SYS/broker/heap/alloc":
                    value = int(pkt["payload"])
                    break
        return value


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--retained", type=int, default=200)
    ap.add_argument("--queued", type=int, default=200)
    ap.add_argument("--heapsize", default="4M")
    ap.add_argument("--micropython", default=None, help="unix port binary (default .venv/bin/micropython)")
    ap.add_argument("--code", choices=["source", "mpy", "frozen"], default="source")
    ap.add_argument("--json", help="write the figures here too")
    args = ap.parse_args()

    port = free_port()
    mp = args.micropython or micropython()
    bits = word_bits(mp)
    cfg = {"sys_interval_s": 1, "max_clients": 2 * args.clients + 10, "max_sessions": 2 * args.clients + 10,
           "max_retained_messages": args.retained + 10, "max_retained_bytes": 1 << 20,
           "max_queued_messages": args.queued + 10, "max_queued_total": args.queued + 10,
           "max_queued_bytes": 1 << 20, "max_queued_bytes_total": 1 << 20,
           "log_level": "warning"}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(cfg, f)
        cfg_path = f.name
    cmd, env = midge_command(["--port", str(port), "--config", cfg_path], heapsize=args.heapsize,
                             code=args.code, micropython=mp)
    proc = subprocess.Popen(cmd, env=env)
    clients = []
    try:
        deadline = time.time() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        watcher = SysWatcher(port, "heap-watcher")
        watcher.sock.sendall(mqttspec.subscribe(1, [("$SYS/broker/heap/alloc", 0)]))
        base = watcher.latest_alloc(3)

        for i in range(args.clients):
            clients.append(Client(port, "idle-%04d" % i))
        with_clients = watcher.latest_alloc()

        for i, c in enumerate(clients):
            c.sock.sendall(mqttspec.subscribe(1, [("sensors/node%04d/temp" % i, 1)]))
            if c.recv_packet()["type"] != "suback":
                raise RuntimeError("no SUBACK")
        with_subs = watcher.latest_alloc()

        pub = clients[0]
        payload = b"x" * 64
        for i in range(args.retained):
            pub.sock.sendall(mqttspec.publish("retained/node%04d/state" % i, payload, qos=1,
                                              retain=True, pid=1 + i % 60000))
            if pub.recv_packet()["type"] != "puback":
                raise RuntimeError("no PUBACK")
        with_retained = watcher.latest_alloc()

        # an offline persistent session that QoS 1 messages queue for
        sleeper = Client(port, "sleeper", clean=False)
        sleeper.sock.sendall(mqttspec.subscribe(1, [("queue/#", 1)]))
        if sleeper.recv_packet()["type"] != "suback":
            raise RuntimeError("no SUBACK")
        sleeper.close()
        time.sleep(0.3)
        before_queue = watcher.latest_alloc()
        for i in range(args.queued):
            pub.sock.sendall(mqttspec.publish("queue/node%04d" % i, payload, qos=1, pid=1 + i % 60000))
            if pub.recv_packet()["type"] != "puback":
                raise RuntimeError("no PUBACK")
        with_queue = watcher.latest_alloc()

        # MQTT 5: the first MQTT 5 client loads its code (props.py,
        # wire5.py); then idle MQTT 5 clients, against the 3.1.1 ones above
        first5 = Client(port, "v5-first", version=5)
        with_v5_code = watcher.latest_alloc()
        clients5 = [Client(port, "v5-idle-%04d" % i, version=5) for i in range(args.clients)]
        with_v5_clients = watcher.latest_alloc()
        clients += [first5] + clients5

        figures = {
            "interpreter": "MicroPython unix port (%d-bit)" % bits,
            "micropython": mp,
            "code": args.code,
            "heapsize": args.heapsize,
            "heap_after_start_bytes": base,
            "per_idle_client_bytes": round((with_clients - base) / args.clients),
            "per_subscription_bytes": round((with_subs - with_clients) / args.clients),
            "per_retained_64B_message_bytes": round((with_retained - with_subs) / args.retained),
            "per_queued_64B_message_bytes": round((with_queue - before_queue) / args.queued),
            "per_idle_mqtt5_client_bytes": round((with_v5_clients - with_v5_code) / args.clients),
            "mqtt5_code_bytes": (with_v5_code - with_queue) - round((with_clients - base) / args.clients),
            "clients": args.clients,
            "retained": args.retained,
            "queued": args.queued,
        }
    finally:
        for c in clients:
            c.close()
        proc.terminate()
        proc.wait(timeout=10)
        os.unlink(cfg_path)
    print("midge heap figures, MicroPython unix port (%d-bit%s), code: %s"
          % (bits, "; objects about twice their size on a 32-bit board" if bits == 64 else "", args.code))
    print("  heap in use after start:          %7d bytes" % figures["heap_after_start_bytes"])
    print("  per idle connected client:        %7d bytes (over %d clients)" % (figures["per_idle_client_bytes"], args.clients))
    print("  per subscription:                 %7d bytes" % figures["per_subscription_bytes"])
    print("  per retained 64-byte message:     %7d bytes (over %d topics)" % (figures["per_retained_64B_message_bytes"], args.retained))
    print("  per queued 64-byte QoS 1 message: %7d bytes (over %d messages, one offline session)"
          % (figures["per_queued_64B_message_bytes"], args.queued))
    print("  per idle connected MQTT 5 client: %7d bytes (over %d clients)"
          % (figures["per_idle_mqtt5_client_bytes"], args.clients))
    print("  MQTT 5 code, loaded by the first:  %7d bytes (its heap less one 3.1.1 client's)"
          % figures["mqtt5_code_bytes"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
