# The fleet: one Node per simulated device, built from the scenario's
# [[sensors]] and [[subscribers]] groups, each running its life as one
# asyncio task: wait for start_s, connect (retrying every reconnect_s),
# subscribe (clean session, or a persistent session the broker did not
# have), publish readings on schedule (sensors, until duration_s), and come
# and go: offline cycles (DISCONNECT, sleep, reconnect), random closes
# without DISCONNECT (the will fires), reading pauses (slow consumers).
# Everything ends with a DISCONNECT when the run stops (after the drain
# and the last $SYS round), so subscribers are connected to the end.
import asyncio
import random

from . import mqtt, payload
from .client import Client
from .scenario import expand


class Node:
    def __init__(self, run, group, kind, i, index):
        self.run, self.g, self.kind = run, group, kind
        self.cid = "%s-%d" % (group["name"], i)
        self.group = group["name"]
        self.rng = random.Random("%d/%s" % (run.sc["seed"], self.cid))
        will = None
        if group["will_topic"]:
            will = (expand(group["will_topic"], group["name"], i), group["will_qos"], group["will_retain"])
        self.client = Client(run.rec, run.host, run.port, self.cid, index,
                             mqtt.V5 if group["mqtt_version"] == "5" else mqtt.V311,
                             group["clean_session"], group["keepalive_s"], will,
                             group.get("read_rate_msgs_s", 0.0),
                             small_rcvbuf=bool(group.get("pause_every_s")))
        if kind == "sensor":
            self.topic = expand(group["topic"], group["name"], i)
            self.seq = 0
        else:
            self.filters = [(expand(f, group["name"], i), group["qos"]) for f in group["filters"]]
            run.rec.add_subscriber(self.cid, group["clean_session"])

    async def life(self):
        run, g, c = self.run, self.g, self.client
        await run.sleep_until(g["start_s"])
        next_sleep = None
        if g["sleep_every_s"]:
            next_sleep = g["start_s"] + self.rng.uniform(0, g["sleep_every_s"])
        next_abort = self._next_abort(g["start_s"])
        if self.kind == "subscriber" and g["pause_every_s"]:
            asyncio.create_task(self._pauses())
        if self.kind == "sensor":
            asyncio.create_task(self._publish_loop())
        self.done = False
        while not run.stopping and not self.done:
            ok, present = await c.connect()
            if not ok:
                await run.sleep(g["reconnect_s"])
                continue
            if self.kind == "subscriber" and (g["clean_session"] or not present):
                codes = await c.subscribe(self.filters)
                if codes is not None and c.period is not None:
                    c.period["t_sub"] = run.rec.now()
                    c.period["granted"] = [[f, code] for (f, _q), code in zip(self.filters, codes)]
            # connected: wait for whichever comes first (offline cycles and
            # random disconnects only while the sensors publish)
            due = [t for t in (next_sleep, next_abort) if t is not None and t < run.sc["duration_s"]]
            await run.wait_any(c.lost, (min(due) - run.rec.now()) if due else None)
            now = run.rec.now()
            if run.stopping or self.done:
                break
            if not c.connected:  # lost: broker restart, broker closed it
                await run.sleep(g["reconnect_s"])
                continue
            if next_sleep is not None and now >= next_sleep:
                await c.disconnect()
                next_sleep += g["sleep_every_s"]
                await run.sleep(g["sleep_for_s"])
            elif next_abort is not None and now >= next_abort:
                c.abort()
                next_abort = self._next_abort(now + g["reconnect_s"])
                await run.sleep(g["reconnect_s"])
        await c.disconnect()

    def _next_abort(self, after):
        if not self.g["disconnect_every_s"]:
            return None
        return after + self.rng.expovariate(1.0 / self.g["disconnect_every_s"])

    async def _publish_loop(self):
        g, run, c = self.g, self.run, self.client
        t = g["start_s"] + self.rng.uniform(0, min(g["interval_s"], 1.0))
        while True:
            t += g["interval_s"] + (self.rng.uniform(-g["jitter_s"], g["jitter_s"]) if g["jitter_s"] else 0)
            if t >= run.sc["duration_s"]:
                break
            await run.sleep_until(t)
            if not c.connected:
                run.rec.skipped += 1
                continue
            run.rec.scheduled += 1
            now = run.rec.now()
            if now - t > g["interval_s"]:
                # fell behind (inflight window full, broker backpressure,
                # stall): the readings due meanwhile are skipped, not burst
                run.rec.behind += int((now - t) / g["interval_s"])
                t = now
            self.seq += 1
            key = Client.key_of("data", c.index, self.seq)
            body = payload.encode("data", c.index, self.seq, now, g["payload_bytes"])
            await c.publish(key, self.seq, self.topic, body, g["qos"], g["retain"])
        # done: leave once the broker has acknowledged everything (or after
        # half the drain), so the subscribers' sockets are free to come back
        deadline = run.sc["duration_s"] + run.sc["drain_s"] / 2
        while c.out and run.rec.now() < deadline:
            await asyncio.sleep(0.05)
        self.done = True
        await c.disconnect()

    async def _pauses(self):
        g, run = self.g, self.run
        t = g["start_s"] + self.rng.uniform(0, g["pause_every_s"])
        while t < run.t_stop and not run.stopping:
            await run.sleep_until(t)
            await self.client.pause_reading(g["pause_for_s"])
            t += g["pause_every_s"]


def build(run):
    """Nodes for the scenario: subscribers first (publisher indexes are
    positions in this list)."""
    nodes = []
    for kind, key in (("subscriber", "subscribers"), ("sensor", "sensors")):
        for g in run.sc[key]:
            for i in range(g["count"]):
                nodes.append(Node(run, g, kind, i, len(nodes)))
    return nodes
