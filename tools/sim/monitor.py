# The simulator's own client on the broker: subscribes to $SYS/broker/# and
# keeps the broker's figures over time (heap after gc.collect(), connected
# clients, counters, store), reconnecting after each broker restart. $SYS
# values restart from zero with each broker run, so figures are kept per
# run and summed. At the end it reads every retained value once (a fresh
# "#" subscription) for the retained-state check.
#
# It is one more client and session and one more subscription on the broker:
# the run raises max_clients, max_sessions and max_subscriptions_total by
# one for it, so the scenario's clients meet the caps they would meet alone.
import asyncio

from .client import Client

CLIENT_ID = "midge-sim-monitor"
_PREFIX = "$SYS/broker/"


class Monitor:
    def __init__(self, run):
        self.run = run
        self.client = Client(run.rec, run.host, run.port, CLIENT_ID, 0xFFFF, keepalive_s=30,
                             on_publish=self._on_publish)
        self.samples = []        # [{t, run, heap_alloc, heap_free, clients, msgs_in, msgs_out}]
        self.per_run = {}        # broker run -> {"counters": {}, "store": {}, "values": {}}
        self.first_hits = {}     # counter -> first time its total was above 0
        self.run_no = 0
        self.new_sample = asyncio.Event()
        self.probe = None        # {topic: message key} while reading retained values
        self.stopping = False

    async def life(self):
        c = self.client
        while not self.stopping:
            ok, _ = await c.connect()
            if not ok:
                await asyncio.sleep(0.25)
                continue
            self.run_no = self.run.broker.runs
            self.per_run.setdefault(self.run_no, {"counters": {}, "store": {}, "values": {}})
            await c.subscribe([("$SYS/broker/#", 0)])
            await c.lost.wait()

    def _on_publish(self, p, decoded):
        topic = p["topic"]
        if self.probe is not None and p["retain"] and not topic.startswith("$"):
            if decoded is not None:
                kind, pub, seq, _t = decoded
                self.probe[topic] = Client.key_of(kind, pub, seq)
            return
        if not topic.startswith(_PREFIX):
            return
        try:
            value = int(p["payload"])
        except ValueError:
            return
        leaf = topic[len(_PREFIX):]
        r = self.per_run.setdefault(self.run_no, {"counters": {}, "store": {}, "values": {}})
        now = self.run.rec.now()
        if leaf.startswith("counters/"):
            name = leaf[len("counters/"):]
            r["counters"][name] = value
            if value and name not in self.first_hits:
                self.first_hits[name] = round(now, 2)
        elif leaf.startswith("store/"):
            r["store"][leaf[len("store/"):]] = value
        else:
            r["values"][leaf] = value
        if leaf == "heap/alloc" and not p["retain"]:
            v = r["values"]
            self.samples.append({"t": round(now, 3), "run": self.run_no, "heap_alloc": value,
                                 "heap_free": v.get("heap/free"), "clients": v.get("clients/connected"),
                                 "msgs_in": v.get("messages/received"), "msgs_out": v.get("messages/sent")})
            self.new_sample.set()

    def latest(self):
        return self.samples[-1] if self.samples else None

    def counters(self):
        """Counter totals over every broker run (as of each run's last $SYS)."""
        tot = {}
        for r in self.per_run.values():
            for k, v in r["counters"].items():
                tot[k] = tot.get(k, 0) + v
        return tot

    def store(self):
        """Store figures: commits, bytes_written, compactions, errors and
        damaged_records summed over runs; bytes (on flash) of the last run."""
        tot = {}
        last = max(self.per_run) if self.per_run else None
        for n, r in self.per_run.items():
            for k, v in r["store"].items():
                if k == "bytes":
                    if n == last:
                        tot[k] = v
                else:
                    tot[k] = tot.get(k, 0) + v
        return tot

    async def next_sample(self, timeout):
        """Wait for the next $SYS round (True) or timeout (False)."""
        self.new_sample.clear()
        try:
            await asyncio.wait_for(self.new_sample.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def read_retained(self, settle_s=1.5):
        """{topic: message key} of every retained simulator value now, or
        None when the broker refused the subscription (a cap)."""
        c = self.client
        if not c.connected:
            return None
        await c.unsubscribe(["$SYS/broker/#"])
        self.probe = {}
        codes = await c.subscribe([("#", 0)])
        if not codes or codes[0] > 2:
            self.probe = None
            return None
        await asyncio.sleep(settle_s)
        got, self.probe = self.probe, None
        return got
