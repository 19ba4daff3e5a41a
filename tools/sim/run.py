# One simulation run: start the broker with the board's budget and a
# generated config, start the monitor, the fleet, the faults and the
# progress line; stop publishing at duration_s, let the subscribers drain
# for drain_s, take a last $SYS round, read the retained values, stop
# everything and hand the collected facts to the report.
#
# Broker config the simulator generates (config.json in the output folder):
# the scenario's [broker] table, plus store_dir (a temporary folder, when
# store = true), sys_interval_s 1 unless set, and max_clients, max_sessions
# and max_subscriptions_total raised by one for the monitor connection.
import asyncio
import os
import shutil
import tempfile

from hostlib import free_port
from . import accounting, fleet, progress, verdict
from .brokerctl import BrokerCtl, BrokerStartError
from .monitor import Monitor
from .record import Recorder
from .scenario import effective_caps, heap_bytes


def broker_config(sc, store_dir):
    """The --config JSON for midge (see the module comment)."""
    board_cfg = sc["board_info"].get("config", {})
    cfg = dict(sc["broker"])
    cfg.setdefault("sys_interval_s", 1)
    for key, default in (("max_clients", 8), ("max_sessions", 16), ("max_subscriptions_total", 128)):
        base = cfg.get(key, board_cfg.get(key, default))
        if isinstance(base, int) and not isinstance(base, bool):
            cfg[key] = base + 1
    if store_dir:
        cfg["store_dir"] = store_dir
    return cfg


class Run:
    def __init__(self, sc, out_dir, interp="micropython", out=None, dump=False):
        """dump: also write accounting_input.json (every send, receipt and
        connection period) to out_dir."""
        self.sc, self.out_dir, self.interp, self.out, self.dump = sc, out_dir, interp, out, dump
        self.rec = Recorder()
        self.host = "127.0.0.1"
        self.port = free_port()
        self.stopping = False
        self.broker_down = False
        self.t_stop = sc["duration_s"] + sc["drain_s"]
        self.heapsize = sc["board_info"]["unix_heapsize"]
        self.budget = heap_bytes(self.heapsize) if interp == "micropython" else None
        self.cap_names = verdict.CAP_COUNTERS
        self.restarts = []
        self.broker_died = None
        self.start_failed = None

    # time helpers (seconds since the start of the run)
    async def sleep(self, s):
        await asyncio.sleep(max(0.0, s))

    async def wait_any(self, event, timeout):
        """Until `event` is set, the run stops, or timeout (None: no limit)."""
        waits = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(self.stop_event.wait())]
        try:
            await asyncio.wait(waits, timeout=None if timeout is None else max(0.0, timeout),
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def sleep_until(self, t):
        await asyncio.sleep(max(0.0, t - self.rec.now()))

    def execute(self):
        """Run the scenario; returns the facts for report.build(). Raises
        BrokerStartError when the broker does not start (exit 2: its
        message names the bad config key)."""
        os.makedirs(self.out_dir, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix="midge-sim-store-") if self.sc["store"] else None
        self.config = broker_config(self.sc, tmp)
        self.broker = BrokerCtl(self.sc["board"], self.config, self.out_dir, self.port,
                                self.interp, self.heapsize)
        try:
            self.broker.start()
            self.rec = Recorder()  # time 0: the broker is listening
            self.t_stop = self.sc["duration_s"] + self.sc["drain_s"]
            return asyncio.run(self._main())
        finally:
            self.broker.stop()
            if tmp:
                shutil.rmtree(tmp, ignore_errors=True)

    async def _main(self):
        sc = self.sc
        self.stop_event = asyncio.Event()
        self.monitor = Monitor(self)
        tasks = [asyncio.create_task(self.monitor.life())]
        await self.monitor.next_sample(3.0)  # a first heap figure before the fleet
        self.nodes = fleet.build(self)
        tasks += [asyncio.create_task(n.life()) for n in self.nodes]
        tasks += [asyncio.create_task(self._fault(f)) for f in sc["faults"]]
        tasks.append(asyncio.create_task(self._watch()))
        show = asyncio.create_task(progress.show(self, self.out))
        # run until the stop time, or until the broker died by itself
        while self.rec.now() < self.t_stop and self.broker_died is None and self.start_failed is None:
            await asyncio.sleep(0.1)
        t_end = self.rec.now()
        # one more $SYS round so the counters include the end of the run
        if self.broker.alive():
            await self.monitor.next_sample(float(self.config["sys_interval_s"]) + 2.0)
        self.stopping = True
        self.stop_event.set()
        retained = None
        if self.broker.alive():
            retained = await self.monitor.read_retained()
        self.monitor.stopping = True
        await asyncio.gather(*(n.client.disconnect() for n in self.nodes), self.monitor.client.disconnect())
        show.cancel()
        for t in tasks:
            t.cancel()
        await asyncio.gather(show, *tasks, return_exceptions=True)
        return self._facts(t_end, retained)

    async def _watch(self):
        while True:
            await asyncio.sleep(0.2)
            status = self.broker.dead()
            if status is not None and not self.broker_down:
                self.broker_died = "exit status %s, log: %s" % (status, self.broker.tail(5).replace("\n", " | "))
                self.rec.event("broker_died", self.broker_died)
                return

    async def _fault(self, f):
        await self.sleep_until(f["at_s"])
        if f["kind"] == "stall":
            targets = [n for n in self.nodes if f["client"] in (n.cid, n.group)]
            self.rec.event("stall", "%s for %g s" % (f["client"], f["for_s"]), for_s=f["for_s"])
            await asyncio.gather(*(n.client.stall(f["for_s"]) for n in targets))
            return
        # broker_restart: kill -9, wait down_s, start on the same port and store
        self.broker_down = True
        for n in self.nodes:
            n.client.killed = True
        t_kill = self.rec.now()
        self.rec.event("broker_kill", "kill -9")
        self.broker.kill()
        await self.sleep(f["down_s"])
        try:
            await asyncio.to_thread(self.broker.restart)
        except BrokerStartError as e:
            self.start_failed = str(e)
            self.rec.event("broker_start_failed", str(e))
            return
        t_up = self.rec.now()
        self.rec.event("broker_up", "restarted (%.2f s after the kill)" % (t_up - t_kill))
        self.restarts.append({"t_kill": round(t_kill, 3), "t_up": round(t_up, 3)})
        self.rec.broker_up(t_up)
        await asyncio.sleep(0.5)  # the clients saw the connection drop long ago
        for n in self.nodes:
            n.client.killed = False
        self.broker_down = False

    def _facts(self, t_end, retained):
        """Everything the report needs, as plain data."""
        sc, mon = self.sc, self.monitor
        inp = self.rec.accounting_input(t_end, sc["grace_s"])
        caps = effective_caps(sc)
        inp["pending_cap"] = caps["max_queued_messages"] + caps["max_inflight"]
        if self.dump:
            import json
            with open(os.path.join(self.out_dir, "accounting_input.json"), "w") as f:
                json.dump(inp, f)
        acc = accounting.account(inp)
        counters = mon.counters()
        att = accounting.attribute_losses(acc, counters, bool(self.restarts) and not sc["store"])
        ret = accounting.check_retained(list(self.rec.messages.values()), retained) if retained is not None else None
        allocs = [s["heap_alloc"] for s in mon.samples if s["heap_alloc"] is not None and s["heap_alloc"] >= 0]
        frees = [s["heap_free"] for s in mon.samples if s["heap_free"] is not None and s["heap_free"] >= 0]
        heap = {"budget": self.budget, "heapsize": self.heapsize if self.budget else None,
                "device_heap_bytes": sc["board_info"].get("device_heap_bytes"),
                "min_free": min(frees) if frees else None, "peak_alloc": max(allocs) if allocs else None,
                "start_alloc": allocs[0] if allocs else None}
        store = mon.store()
        notes = []
        clients = sum(g["count"] for g in sc["sensors"] + sc["subscribers"])
        sockets = sc["board_info"].get("tcp_sockets")
        if sockets and clients > sockets - 1:
            notes.append("%d clients at once need more than the %d TCP sockets of the board's stock "
                         "firmware (listener included): custom firmware with more lwIP PCBs" % (clients, sockets))
        if "max_clients" in sc["broker"]:
            notes.append("[broker] raises max_clients from the board's %s to %s" % (
                sc["board_info"].get("config", {}).get("max_clients"), caps["max_clients"]))
        if acc["unknown_receipts"]:
            notes.append("%d received messages matched no recorded send" % acc["unknown_receipts"])
        if store.get("damaged_records"):
            notes.append("store: %d damaged records discarded at a restart" % store["damaged_records"])
        lat = acc["latency_live_ms"]
        facts = {
            "attribution": att, "dup_violations": acc["dup_violations"], "retained": ret,
            "counters": counters, "first_hits": mon.first_hits, "heap": heap,
            "broker": {"died": self.broker_died, "traceback": self.broker.traceback(),
                       "start_failed": self.start_failed},
            "refused": {str(k): v for k, v in self.rec.refused.items()},
            "store_errors": store.get("errors", 0), "latency_p99_ms": lat["p99"],
            "qos0_lost": acc["per_qos"]["0"]["lost"], "notes": notes,
            "scheduled": self.rec.scheduled + self.rec.behind, "behind": self.rec.behind,
        }
        v = verdict.decide(facts, sc["verdict"])
        return {"scenario": sc, "run": self, "t_end": t_end, "accounting": acc, "facts": facts,
                "verdict": v, "store": store, "samples": mon.samples, "events": self.rec.events,
                "restarts": self.restarts, "config": self.config, "retained_seen": retained}
