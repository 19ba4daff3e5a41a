#!/usr/bin/env python3
"""Heap cost of loading a full store, on the MicroPython unix port (64-bit).

Fills a store to a board's caps through a running broker (every session of
max_sessions persistent with max_subscriptions filters, the all-session
queue caps filled with QoS 1 messages, the retained count cap filled with
64-byte messages), kills the broker (SIGKILL), restarts it on that store
under the board's own unix heap cap, and compares heap in use after start
($SYS/broker/heap/alloc, after gc.collect()) with a start on an empty store.

--micropython PATH and --code source|mpy|frozen as in tools/heap_report.py
(default: the .venv unix port on the .mpy bundle); --heapsize overrides the
board's unix_heapsize (a 32-bit build stands for the board at about its
device_heap_bytes).

Usage: .venv/bin/python tools/store_heap.py [--board esp32] [--micropython PATH]
           [--code mpy] [--heapsize H] [--json FILE]
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

from hostlib import midge_command, wait_listening
from measure.heap import ROOT, Client, SysWatcher, free_port, micropython, mqttspec, word_bits

RUN = {"micropython": None, "code": "mpy"}  # set by main()


def start(port, board, heapsize, store, cfg_path, logfile):
    """Start the broker (by default the .mpy bundle, as a board runs it);
    wait until it accepts connections."""
    cmd, env = midge_command(["--board", board, "--port", str(port), "--store", store, "--config", cfg_path],
                             heapsize=heapsize, code=RUN["code"], micropython=RUN["micropython"] or micropython())
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=logfile, stderr=subprocess.STDOUT)
    try:
        wait_listening(port, proc, timeout=20)
    except RuntimeError as e:
        if proc.poll() is None:
            proc.kill()
        raise RuntimeError("%s (log: %s)" % (e, logfile.name))
    return proc


def fill(port, cfg):
    sessions = cfg["max_sessions"] - 1  # one session slot is the publisher's
    subs = min(cfg["max_subscriptions"], cfg["max_subscriptions_total"] // sessions)
    per_session = cfg["max_queued_total"] // sessions
    size = min(cfg["max_queued_bytes_total"] // cfg["max_queued_total"] - 16, 200)
    for i in range(sessions):
        c = Client(port, "node%02d" % i, keepalive=0, clean=False)
        c.sock.sendall(mqttspec.subscribe(1, [("fill/%02d/f%02d" % (i, j), 1) for j in range(subs)]))
        if c.recv_packet()["type"] != "suback":
            raise RuntimeError("no SUBACK")
        c.close()
    pub = Client(port, "filler")
    pid = 0
    for i in range(sessions):
        for k in range(per_session):
            pid = pid % 65000 + 1
            pub.sock.sendall(mqttspec.publish("fill/%02d/f%02d" % (i, k % subs), b"q" * size,
                                              qos=1, pid=pid))
            if pub.recv_packet()["type"] != "puback":
                raise RuntimeError("no PUBACK")
    for k in range(cfg["max_retained_messages"]):
        pid = pid % 65000 + 1
        pub.sock.sendall(mqttspec.publish("retained/node%03d" % k, b"r" * 64, qos=1, retain=True, pid=pid))
        if pub.recv_packet()["type"] != "puback":
            raise RuntimeError("no PUBACK")
    pub.close()


def sys_after_start(port):
    """{topic leaf: int} of heap/alloc, clients/total and retained/count,
    from the second $SYS publication after connecting."""
    w = SysWatcher(port, "heap-watcher")
    w.sock.sendall(mqttspec.subscribe(1, [("$SYS/broker/heap/alloc", 0), ("$SYS/broker/clients/total", 0),
                                          ("$SYS/broker/retained/count", 0)]))
    values = {}
    seen_alloc = 0
    while seen_alloc < 2:
        pkt = w.recv_packet(timeout=5)
        if pkt["type"] != "publish":
            continue
        leaf = pkt["topic"][len("$SYS/broker/"):]
        values[leaf] = int(pkt["payload"])
        if leaf == "heap/alloc":
            seen_alloc += 1
    w.close()
    values["clients/total"] -= 1  # the watcher's own session
    return values


def measure(board_name, heapsize=None):
    """Fill a store to the board's caps, restart on it, return the figures."""
    with open(os.path.join(ROOT, "boards", board_name, "board.json")) as f:
        board = json.load(f)
    import hostlib
    hostlib.midge_on_path()
    from midge.config import load_config
    cfg = load_config(board["config"])
    heap = heapsize or board["unix_heapsize"]
    work = tempfile.mkdtemp(prefix="midge-store-heap-")
    cfg_path = os.path.join(work, "cfg.json")
    with open(cfg_path, "w") as f:
        json.dump({"sys_interval_s": 1}, f)
    empty_dir, full_dir = os.path.join(work, "empty"), os.path.join(work, "full")
    port = free_port()
    logfile = open(os.path.join(work, "broker.log"), "w")

    proc = start(port, board_name, heap, empty_dir, cfg_path, logfile)
    try:
        empty = sys_after_start(port)
    finally:
        proc.kill()
        proc.wait()

    proc = start(port, board_name, heap, full_dir, cfg_path, logfile)
    try:
        fill(port, cfg)
        time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    store_bytes = sum(os.path.getsize(os.path.join(full_dir, n)) for n in os.listdir(full_dir))
    t0 = time.time()
    proc = start(port, board_name, heap, full_dir, cfg_path, logfile)
    load_s = time.time() - t0
    try:
        full = sys_after_start(port)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    subs = min(cfg["max_subscriptions"], cfg["max_subscriptions_total"] // (cfg["max_sessions"] - 1))
    return {
        "interpreter": "MicroPython unix port (%d-bit)" % word_bits(RUN["micropython"] or micropython()),
        "code": RUN["code"], "board": board_name, "heapsize": heap,
        "store_bytes": store_bytes, "sessions": cfg["max_sessions"] - 1,
        "subscriptions_per_session": subs,
        "queued_messages": cfg["max_queued_total"] // (cfg["max_sessions"] - 1) * (cfg["max_sessions"] - 1),
        "retained_messages": cfg["max_retained_messages"],
        "sessions_loaded": full["clients/total"], "retained_loaded": full["retained/count"],
        "heap_alloc_empty_store": empty["heap/alloc"], "heap_alloc_full_store": full["heap/alloc"],
        "heap_for_full_store": full["heap/alloc"] - empty["heap/alloc"],
        "start_seconds_full_store": round(load_s, 2), "log": logfile.name,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--board", default="esp32")
    ap.add_argument("--json")
    ap.add_argument("--micropython")
    ap.add_argument("--code", choices=["source", "mpy", "frozen"], default="mpy")
    ap.add_argument("--heapsize")
    args = ap.parse_args()
    RUN["micropython"] = args.micropython
    RUN["code"] = args.code
    fig = measure(args.board, args.heapsize)
    print("midge: heap cost of a full store, board %s, -X heapsize=%s, %s, code: %s"
          % (fig["board"], fig["heapsize"], fig["interpreter"], fig["code"]))
    print("  store file:                 %7d bytes (%d sessions x %d filters, %d queued QoS 1, %d retained)"
          % (fig["store_bytes"], fig["sessions"], fig["subscriptions_per_session"],
             fig["queued_messages"], fig["retained_messages"]))
    print("  loaded:                     %d sessions, %d retained" % (fig["sessions_loaded"], fig["retained_loaded"]))
    print("  heap after start, empty:    %7d bytes" % fig["heap_alloc_empty_store"])
    print("  heap after start, full:     %7d bytes (+%d), start took %.2f s"
          % (fig["heap_alloc_full_store"], fig["heap_for_full_store"], fig["start_seconds_full_store"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(fig, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
