#!/usr/bin/env python3
# Flash wear of midge's store against a naive one-file-per-item store, on a
# littlefs image with ESP32 geometry (tools/measure/lfs_fs.py) whose RAM block
# device counts erases and programmed bytes.
#
#   .venv/bin/python tools/wear.py [--n 1000] [--json wear.json]
#
# Scenarios (N operations each, 64-byte payloads):
#   retained_1_topic     N retained QoS 0 PUBLISHes of one topic, one every
#                        --interval-ms (a sensor republishing its value)
#   retained_10_topics   the same, rotating over 10 topics
#   queued_qos1          N QoS 1 PUBLISHes queued for an offline persistent
#                        session, then the session reconnects and every
#                        message is delivered and acknowledged
# Strategies:
#   naive                tools/measure/wear_baseline.py: one file per retained topic
#                        and per queued message, rewritten by tmp + rename
#   midge                lib/midge/store.py as configured by default
#                        (append-only log, store_sync_ms coalescing,
#                        compaction at half of store_max_bytes), or with
#                        --store-sync-ms
#   midge_sync0          the same log with store_sync_ms=0: every record is
#                        written at the commit after the packet that made it
#                        (the log without the time-window coalescing)
#
# midge runs in-process on CPython: packets built by tools/mqttspec.py go
# through midge.handlers exactly as midge.connection feeds them, with
# Broker.commit() after each one (one packet per received chunk: the
# worst case of the per-chunk group commit), and the injected clock
# advanced between packets with a Broker.tick() and a commit, as the
# server's 250 ms tick does. A step is one packet with the time after it.
#
# Figures per run (a scenario x a strategy), counted by the block device
# from the first operation to the last record on flash (setup excluded):
#   erases, erases_per_1000_ops, prog_bytes, prog_bytes_per_op, read_bytes,
#   blocks_touched (distinct 4 KB blocks erased or programmed),
#   blocks_erased, max_block_erases (erases of the most erased block),
#   steps (packets / file operations), blocks_touched_per_step (mean distinct
#   blocks one step touches), max_blocks_touched_step; for midge also the
#   store's own file_bytes_written, commits and compactions.
import argparse
import json
import sys

import hostlib
hostlib.midge_on_path()

import mqttspec as m  # noqa: E402  (packets from the spec, not midge's codec)
from fakeconn import Clock, FakeConn, frames  # noqa: E402  (also silences midge's log)
from measure import lfs_fs  # noqa: E402
from measure.wear_baseline import NaiveStore  # noqa: E402
from midge import handlers  # noqa: E402
from midge.broker import Broker  # noqa: E402
from midge.config import SPEC, load_config  # noqa: E402
from midge.store import Store  # noqa: E402

SCENARIOS = ("retained_1_topic", "retained_10_topics", "queued_qos1")
STRATEGIES = ("naive", "midge", "midge_sync0")
TICK_MS = 250  # midge.server calls Broker.tick() and commit() this often


# --- measuring ------------------------------------------------------------------------


class Meter:
    """Per-step and whole-run deltas of a CountingDevice's counters."""

    def __init__(self, dev):
        self.dev = dev
        self.start = dev.snapshot()
        self._step = self.start
        self.steps = 0
        self.touched_sum = 0   # sum over steps of distinct blocks touched
        self.touched_max = 0

    def step(self):
        """One step (a packet with its commit, or a file operation) ended."""
        d = self.dev.delta(self._step)
        self._step = self.dev.snapshot()
        self.steps += 1
        self.touched_sum += d["blocks_touched"]
        if d["blocks_touched"] > self.touched_max:
            self.touched_max = d["blocks_touched"]

    def result(self, ops):
        r = self.dev.delta(self.start)
        r["ops"] = ops
        r["erases_per_1000_ops"] = round(r["erases"] * 1000.0 / ops, 1)
        r["prog_bytes_per_op"] = round(r["prog_bytes"] / ops, 1)
        r["steps"] = self.steps
        r["blocks_touched_per_step"] = round(self.touched_sum / self.steps, 3) if self.steps else 0
        r["max_blocks_touched_step"] = self.touched_max
        return r


def topic_for(scenario, i):
    if scenario == "retained_10_topics":
        return "sensors/t%d" % (i % 10)
    if scenario == "retained_1_topic":
        return "sensors/t0"
    return "cmd/q"


def payload_for(i, size):
    """`size` bytes, different on every update (a changing reading)."""
    head = b"%08d" % i
    return (head * (size // len(head) + 1))[:size]


# --- (a) naive baseline ---------------------------------------------------------------


def run_naive(scenario, n, size, geometry):
    fs = lfs_fs.new_fs(**geometry)
    store = NaiveStore(fs)
    if scenario == "queued_qos1":
        store.add_session("sub")
    meter = Meter(fs.dev)
    if scenario == "queued_qos1":
        for i in range(n):
            store.enqueue("sub", i, topic_for(scenario, i), 1, payload_for(i, size))
            meter.step()
        for i in range(n):  # delivered in order, each PUBACK removes a file
            store.acked("sub", i)
            meter.step()
    else:
        for i in range(n):
            store.retain(topic_for(scenario, i), 0, payload_for(i, size))
            meter.step()
    r = meter.result(n)
    r["file_bytes_written"] = store.bytes_written
    return r


# --- (b) midge's store, driven through the broker ----------------------------------


class MidgeRig:
    """A Broker with a Store on a littlefs image, fed raw MQTT packets."""

    def __init__(self, fs, overrides):
        self.clock = Clock()
        cfg = load_config(overrides)
        self.store = Store(cfg["store_dir"], fs=fs, max_bytes=cfg["store_max_bytes"],
                           sync_ms=cfg["store_sync_ms"])
        self.broker = Broker(cfg, self.clock, store=self.store)
        self.broker.restore()

    def client(self, client_id, clean):
        """A FakeConn after CONNECT + CONNACK 0 (what follows stays in .out)."""
        conn = FakeConn()
        self.feed(conn, m.connect(client_id, clean=clean, keepalive=0))
        pkts = conn.take()
        if not pkts or pkts[0]["type"] != "connack" or pkts[0]["rc"] != 0:
            raise RuntimeError("CONNECT %s refused: %r" % (client_id, pkts[:1]))
        conn.out = b"".join(p["raw"] for p in pkts[1:])
        return conn

    def feed(self, conn, data):
        """One received chunk, as midge.connection handles it: every packet
        through handlers.handle, then Broker.commit(); a DISCONNECT ends
        the connection with detach."""
        for first, start, end in frames(data):
            handlers.handle(self.broker, conn, first, data, start, end)
            if conn.closing:
                break
        self.broker.commit()
        if conn.closing:
            self.broker.detach(conn, conn.graceful)
            self.broker.commit()

    def wait(self, ms):
        """`ms` pass: the server's tick, each followed by a commit, every
        TICK_MS (midge.server's housekeeping period) and at the end."""
        while ms > 0:
            step = min(ms, TICK_MS)
            self.clock.advance(step)
            self.broker.tick()
            self.broker.commit()
            ms -= step

    def settle(self):
        """Let every deferred record reach flash (store_sync_ms passes)."""
        self.wait(self.broker.cfg["store_sync_ms"] + 1)
        while self.store.pending():
            self.wait(self.broker.cfg["store_sync_ms"] + 1)


def midge_overrides(strategy, n, size, sync_ms=None):
    """Config for a run: the store on, $SYS off (its retained topics are
    exempt from the store but would add routing noise), queue caps raised
    so that N messages fit in one offline session."""
    room = n * (size + 64)
    o = {
        "store_dir": "/midge",
        "sys_interval_s": 0,
        "max_queued_messages": n,
        "max_queued_bytes": room,
        "max_queued_total": n,
        "max_queued_bytes_total": room,
    }
    if strategy == "midge_sync0":
        o["store_sync_ms"] = 0
    elif sync_ms is not None:
        o["store_sync_ms"] = sync_ms
    return o


def run_midge(strategy, scenario, n, size, geometry, interval_ms, ack_ms, sync_ms=None):
    fs = lfs_fs.new_fs(**geometry)
    rig = MidgeRig(fs, midge_overrides(strategy, n, size, sync_ms))
    pub = rig.client("publisher", clean=True)
    if scenario == "queued_qos1":
        sub = rig.client("sub", clean=False)
        rig.feed(sub, m.subscribe(1, [("cmd/#", 1)]))
        rig.feed(sub, m.disconnect())
        rig.settle()
    else:
        rig.settle()
    st = rig.store
    base = (st.bytes_written, st.commits, st.compactions)
    meter = Meter(fs.dev)
    if scenario == "queued_qos1":
        for i in range(n):
            rig.feed(pub, m.publish(topic_for(scenario, i), payload_for(i, size), qos=1,
                                    pid=i % 65535 + 1))
            pub.out = b""  # PUBACKs to the publisher
            rig.wait(interval_ms)
            meter.step()
        got = _deliver_all(rig, n, ack_ms, meter)
        if got != n:
            raise RuntimeError("queued_qos1: %d of %d messages delivered" % (got, n))
    else:
        for i in range(n):
            rig.feed(pub, m.publish(topic_for(scenario, i), payload_for(i, size), retain=True))
            rig.wait(interval_ms)
            meter.step()
    rig.settle()
    meter.step()
    r = meter.result(n)
    r["file_bytes_written"] = st.bytes_written - base[0]
    r["commits"] = st.commits - base[1]
    r["compactions"] = st.compactions - base[2]
    _check_reload(fs, rig, scenario, n, size)
    return r


def _deliver_all(rig, n, ack_ms, meter):
    """Reconnect the persistent subscriber and acknowledge every PUBLISH,
    one PUBACK per chunk. Returns the number of messages received."""
    sub = rig.client("sub", clean=False)
    meter.step()
    got = 0
    while True:
        pkts = [p for p in sub.take() if p["type"] == "publish"]
        if not pkts:
            break
        for p in pkts:
            got += 1
            rig.feed(sub, m.puback(p["pid"]))
            rig.wait(ack_ms)
            meter.step()
    rig.feed(sub, m.disconnect())
    return got


def _check_reload(fs, rig, scenario, n, size):
    """The image holds what the broker holds: mount a copy, load it into a
    fresh broker, compare the retained messages (the queue is empty after
    delivery; the subscription must survive)."""
    copy = lfs_fs.mount_bytes(bytes(fs.dev.buffer), **fs.geometry)
    cfg = rig.broker.cfg
    st = Store(cfg["store_dir"], fs=copy, max_bytes=cfg["store_max_bytes"], sync_ms=cfg["store_sync_ms"])
    b = Broker(cfg, Clock(), store=st)
    b.restore()
    want = {}
    for msg in _retained(rig.broker):
        want[msg.topic] = msg.payload
    have = {}
    for msg in _retained(b):
        have[msg.topic] = msg.payload
    if have != want:
        raise RuntimeError("%s: reloaded retained %r != %r" % (scenario, sorted(have), sorted(want)))
    if scenario != "queued_qos1" and want.get(topic_for(scenario, n - 1)) != payload_for(n - 1, size):
        raise RuntimeError("%s: last retained update not on flash" % scenario)
    if scenario == "queued_qos1":
        s = b.sessions.get("sub")
        if s is None or "cmd/#" not in s.subs or s.queue:
            raise RuntimeError("queued_qos1: reloaded session wrong")


def _retained(broker):
    found = []
    broker.retained.match(["#"], found)
    return found


# --- report -------------------------------------------------------------------------


COLUMNS = (
    ("erases", "erases"),
    ("erases_per_1000_ops", "erases/1000"),
    ("prog_bytes_per_op", "prog B/op"),
    ("blocks_touched", "blocks"),
    ("max_block_erases", "max er/blk"),
    ("blocks_touched_per_step", "blk/step"),
)


def table(results):
    lines = []
    head = "%-20s %-12s" % ("scenario", "strategy") + "".join(" %11s" % c[1] for c in COLUMNS)
    lines.append(head)
    lines.append("-" * len(head))
    for scenario in results:
        for strategy in results[scenario]:
            r = results[scenario][strategy]
            lines.append("%-20s %-12s" % (scenario, strategy)
                         + "".join(" %11s" % r[c[0]] for c in COLUMNS))
    return "\n".join(lines)


def run_all(n=1000, size=64, interval_ms=1000, ack_ms=10, geometry=None,
            scenarios=SCENARIOS, strategies=STRATEGIES, sync_ms=None):
    """{scenario: {strategy: figures}} plus the parameters under "_params"."""
    geometry = dict(lfs_fs.ESP32, **(geometry or {}))
    results = {}
    for scenario in scenarios:
        results[scenario] = {}
        for strategy in strategies:
            if strategy == "naive":
                r = run_naive(scenario, n, size, geometry)
            else:
                r = run_midge(strategy, scenario, n, size, geometry, interval_ms, ack_ms, sync_ms)
            results[scenario][strategy] = r
    params = {"n": n, "payload_bytes": size, "interval_ms": interval_ms, "ack_ms": ack_ms,
              "geometry": geometry, "store_sync_ms": sync_ms}  # None: the config default
    return results, params


def main(argv=None):
    ap = argparse.ArgumentParser(description="flash wear: naive files vs midge's store on littlefs")
    ap.add_argument("--n", type=int, default=1000, help="operations per scenario (default 1000)")
    ap.add_argument("--payload-bytes", type=int, default=64)
    ap.add_argument("--interval-ms", type=int, default=1000,
                    help="time between PUBLISHes (default 1000: once a second)")
    ap.add_argument("--ack-ms", type=int, default=10, help="time between PUBACKs on delivery")
    ap.add_argument("--store-sync-ms", type=int, default=None,
                    help="store_sync_ms of the 'midge' strategy (default: the config default)")
    ap.add_argument("--block-count", type=int, default=lfs_fs.ESP32["block_count"])
    ap.add_argument("--scenario", action="append", choices=SCENARIOS, help="only these (repeatable)")
    ap.add_argument("--strategy", action="append", choices=STRATEGIES, help="only these (repeatable)")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    a = ap.parse_args(argv)
    results, params = run_all(a.n, a.payload_bytes, a.interval_ms, a.ack_ms,
                              {"block_count": a.block_count},
                              tuple(a.scenario or SCENARIOS), tuple(a.strategy or STRATEGIES),
                              a.store_sync_ms)
    g = params["geometry"]
    sync_ms = SPEC["store_sync_ms"][0] if a.store_sync_ms is None else a.store_sync_ms
    print("littlefs %d x %d B blocks, read/prog %d/%d, cache %d, block_cycles %d; "
          "N=%d, %d-byte payloads, one PUBLISH every %d ms; midge store_sync_ms %d"
          % (g["block_count"], g["block_size"], g["read_size"], g["prog_size"], g["cache_size"],
             g["block_cycles"], a.n, a.payload_bytes, a.interval_ms, sync_ms))
    print(table(results))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"params": params, "results": results}, f, indent=2, sort_keys=True)
            f.write("\n")
        print("wrote %s" % a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
