"""The benchmark scenarios. Each runs against one freshly started broker and
returns {"metrics": {...}, "detail": {...}, "notes": [...]}: metrics are
the figures the report takes medians of, detail the raw counts, notes
anything abnormal seen (disconnects, drops, broker counters).

All payloads are 64 bytes (bench_load.PAYLOAD)."""
import socket
import time

from benchmarks import load as bl
from benchmarks import mqtt as m
from benchmarks.stats import percentile

NAMES = ["qos0_fanin", "qos0_fanout", "qos1_window", "qos2", "pingpong", "conn_scaling", "retained"]

PARAMS = {
    "full": {
        "duration": 3.0, "warmup": 0.5, "fanin_pubs": 8, "fanout_subs": 8, "window": 10,
        "pp_rounds": 5000, "pp_warmup": 200, "conn_steps": [100, 200], "retained": 1000,
        "ceiling_s": 1.0, "ceiling_mb": 32,
    },
    "quick": {
        "duration": 0.6, "warmup": 0.15, "fanin_pubs": 8, "fanout_subs": 4, "window": 10,
        "pp_rounds": 300, "pp_warmup": 20, "conn_steps": [10, 20], "retained": 100,
        "ceiling_s": 0.3, "ceiling_mb": 4,
    },
}

# (scenario, metric, unit, better) rows of the report, in order. "better":
# "high" or "low" (how to read the ratio midge / mosquitto).
REPORT_ROWS = [
    ("qos0_fanin", "delivered_per_s", "msg/s", "high"),
    ("qos0_fanin", "drop_pct", "% dropped", "low"),
    ("qos0_fanout", "delivered_per_s", "deliveries/s", "high"),
    ("qos0_fanout", "drop_pct", "% dropped", "low"),
    ("qos1_window", "msgs_per_s", "msg/s", "high"),
    ("qos2", "msgs_per_s", "msg/s", "high"),
    ("pingpong", "p50_us", "us p50", "low"),
    ("pingpong", "p99_us", "us p99", "low"),
    ("conn_scaling", "connect_ms_per_client", "ms/client", "low"),
    ("conn_scaling", "heap_per_client_bytes", "B heap/client", "low"),
    ("conn_scaling", "rss_per_client_bytes", "B RSS/client", "low"),
    ("retained", "all_arrived_ms", "ms for all", "low"),
]


def describe(name, p):
    """One line saying what the scenario does with parameters p."""
    return {
        "qos0_fanin": "%d publishers -> 1 subscriber on bench/#, QoS 0, %.1f s (rate over the last %.1f s)"
                      % (p["fanin_pubs"], p["duration"], p["duration"] - p["warmup"]),
        "qos0_fanout": "1 publisher -> %d subscribers on bench/#, QoS 0, %.1f s (rate over the last %.1f s)"
                       % (p["fanout_subs"], p["duration"], p["duration"] - p["warmup"]),
        "qos1_window": "QoS 1 publisher, window %d unacked -> 1 QoS 1 subscriber, %.1f s"
                       % (p["window"], p["duration"]),
        "qos2": "QoS 2 publisher, window %d incomplete -> 1 QoS 2 subscriber, %.1f s"
                % (p["window"], p["duration"]),
        "pingpong": "ping/x -> echo client -> pong/x, QoS 0, %d round trips one at a time"
                    % p["pp_rounds"],
        "conn_scaling": "%s idle clients, keepalive 60, one subscription each" %
                        "/".join(str(s) for s in p["conn_steps"]),
        "retained": "%d retained messages on distinct topics, then a new '#' subscriber"
                    % p["retained"],
    }[name]


def broker_overrides(name):
    """Config changes a scenario needs from midge (none today: the bench
    config already has $SYS every second)."""
    return {}


# --- scenarios -----------------------------------------------------------------------

def _qos0_notes(res, what):
    notes = []
    if res["subscribers_closed"]:
        notes.append("%d subscriber connection(s) closed by the broker during %s" % (
            res["subscribers_closed"], what))
    if res["publishers_failed"]:
        notes.append("%d publisher connection(s) failed during %s" % (res["publishers_failed"], what))
    if res["drop_pct"]:
        notes.append("%.1f%% of QoS 0 messages not delivered (%d of %d)" % (
            res["drop_pct"], res["expected"] - res["received"], res["expected"]))
    return notes


def qos0_fanin(broker, p):
    res = bl.qos0_load(broker.port, p["fanin_pubs"], 1, p["duration"], p["warmup"], tag="fanin")
    return {"metrics": {"delivered_per_s": res["delivered_per_s"], "drop_pct": res["drop_pct"],
                        "sent_per_s": res["sent_per_s"]},
            "detail": res, "notes": _qos0_notes(res, "fan-in")}


def qos0_fanout(broker, p):
    res = bl.qos0_load(broker.port, 1, p["fanout_subs"], p["duration"], p["warmup"], tag="fanout")
    return {"metrics": {"delivered_per_s": res["delivered_per_s"], "drop_pct": res["drop_pct"],
                        "sent_per_s": res["sent_per_s"]},
            "detail": res, "notes": _qos0_notes(res, "fan-out")}


def _windowed(broker, p, qos):
    res = bl.windowed_load(broker.port, qos, p["window"], p["duration"], tag="q%d" % qos)
    notes = []
    if res["closed"]:
        notes.append("broker closed the %s connection during QoS %d" % (res["closed"], qos))
    if res["lost"]:
        notes.append("QoS %d: %d sent but not delivered by the end of the drain" % (qos, res["lost"]))
    if res["duplicates"]:
        notes.append("QoS %d: %d deliveries with DUP=1" % (qos, res["duplicates"]))
    if res["granted_qos"] != qos:
        notes.append("SUBSCRIBE QoS %d granted %d" % (qos, res["granted_qos"]))
    return {"metrics": {"msgs_per_s": res["msgs_per_s"]}, "detail": res, "notes": notes}


def qos1_window(broker, p):
    return _windowed(broker, p, 1)


def qos2(broker, p):
    return _windowed(broker, p, 2)


def pingpong(broker, p):
    lat = bl.pingpong(broker.port, p["pp_rounds"], p["pp_warmup"])
    return {"metrics": {"p50_us": percentile(lat, 50), "p99_us": percentile(lat, 99),
                        "mean_us": sum(lat) / len(lat)},
            "detail": {"rounds": len(lat), "min_us": min(lat), "max_us": max(lat)}, "notes": []}


def conn_scaling(broker, p):
    """Connect idle clients (keepalive 60, one distinct subscription each)
    in steps; per step: connect+subscribe time, broker heap (midge on
    MicroPython: $SYS/broker/heap/alloc, taken after gc.collect()) and
    broker RSS (/proc/<pid>/status VmRSS)."""
    port = broker.port
    watcher = None
    heap_topic = "$SYS/broker/heap/alloc"
    use_heap = broker.name == "micropython"
    if use_heap:
        watcher = bl.SysWatcher(port, [heap_topic])
    clients = []
    notes = []
    try:
        time.sleep(0.3)
        base_rss = broker.rss()
        base_heap = int(watcher.fresh(heap_topic, 2)) if use_heap else None
        setup_s = []
        steps = []
        for step in p["conn_steps"]:
            while len(clients) < step:
                i = len(clients)
                t = time.perf_counter()
                c = bl.Client(port, "idle-%05d" % i, keepalive=60)
                c.subscribe("bench/idle/%05d" % i, 0)
                setup_s.append(time.perf_counter() - t)
                clients.append(c)
            heap = int(watcher.fresh(heap_topic, 2)) if use_heap else None
            time.sleep(0.3)
            rss = broker.rss()
            steps.append({"clients": step, "heap_alloc": heap, "rss": rss})
        n = len(clients)
        last = steps[-1]
        metrics = {
            "connect_ms_per_client": 1000.0 * sum(setup_s) / n,
            "connect_p99_ms": 1000.0 * percentile(setup_s, 99),
            "rss_per_client_bytes": (last["rss"] - base_rss) / n
            if last["rss"] is not None and base_rss is not None else None,
        }
        if use_heap:
            metrics["heap_per_client_bytes"] = (last["heap_alloc"] - base_heap) / n
        # a client the broker dropped meanwhile would make the figure too small
        dead = 0
        for c in clients:
            c.sock.setblocking(False)
            try:
                if c.sock.recv(1) == b"":
                    dead += 1
            except BlockingIOError:
                pass
            except OSError:
                dead += 1
        if dead:
            notes.append("%d idle clients were disconnected by the broker" % dead)
        return {"metrics": metrics,
                "detail": {"base_rss": base_rss, "base_heap_alloc": base_heap, "steps": steps},
                "notes": notes}
    finally:
        bl.close_all(clients)
        if watcher is not None:
            watcher.close()


def retained(broker, p):
    """Publish N retained messages (QoS 0, distinct topics bench/ret/NNNN)
    and wait for a PINGRESP (the broker has handled them all); then a new
    client subscribes to '#': time from SUBSCRIBE to the N-th PUBLISH."""
    n = p["retained"]
    port = broker.port
    pub = bl.Client(port, "ret-pub")
    sub = None
    try:
        batch = b"".join(m.publish("bench/ret/%05d" % i, bl.PAYLOAD, retain=True) for i in range(n))
        t = time.perf_counter()
        pub.sock.sendall(batch)
        pub.ping()
        store_ms = (time.perf_counter() - t) * 1000
        sub = bl.Client(port, "ret-sub")
        counter = m.Counter()
        sock = sub.sock
        sock.settimeout(30)
        t0 = time.perf_counter()
        first = None
        sock.sendall(m.subscribe(1, [("#", 0)]))
        while counter.publishes < n:
            try:
                data = sock.recv(bl.RECV)
            except socket.timeout:
                break
            if not data:
                break
            if counter.feed(data) and first is None:
                first = time.perf_counter()
        t1 = time.perf_counter()
        got = counter.publishes
        notes = []
        if got < n:
            notes.append("only %d of %d retained messages arrived" % (got, n))
        return {"metrics": {"all_arrived_ms": (t1 - t0) * 1000 if got >= n else None,
                            "store_ms": store_ms},
                "detail": {"received": got, "first_ms": (first - t0) * 1000 if first else None},
                "notes": notes}
    finally:
        pub.close()
        if sub is not None:
            sub.close()


RUNNERS = {
    "qos0_fanin": qos0_fanin,
    "qos0_fanout": qos0_fanout,
    "qos1_window": qos1_window,
    "qos2": qos2,
    "pingpong": pingpong,
    "conn_scaling": conn_scaling,
    "retained": retained,
}

# Scenarios the null relay can serve (no retained, no sessions).
NULL_OK = ("qos0_fanin", "qos0_fanout", "qos1_window", "qos2", "pingpong")


def midge_counters(port, listen_s=1.2):
    """Non-zero $SYS/broker/counters/* of a midge broker (a fresh $SYS round
    comes within sys_interval_s 1)."""
    w = bl.SysWatcher(port, ["$SYS/broker/counters/#"], client_id="bench-counters")
    try:
        vals = w.read_for(listen_s)
    finally:
        w.close()
    out = {}
    for topic, v in vals.items():
        name = topic.rsplit("/", 1)[-1]
        try:
            iv = int(v)
        except ValueError:
            continue
        if iv:
            out[name] = iv
    return out
