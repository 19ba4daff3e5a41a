# The report of one run: build() turns the run's facts into one JSON-able
# dict (what report.json holds), text() renders it for the terminal and
# report.txt. No I/O here except write().
import json
import os


def _bins(times, t_end):
    n = int(t_end) + 1
    out = [0] * n
    for t in times:
        i = int(t)
        if 0 <= i < n:
            out[i] += 1
    return out


def build(facts):
    sc, run, acc = facts["scenario"], facts["run"], facts["accounting"]
    rec = run.rec
    msgs = list(rec.messages.values())
    data = [m for m in msgs if m["kind"] == "data"]
    wills = [m for m in msgs if m["kind"] == "will"]
    heap = dict(facts["facts"]["heap"])
    if heap.get("budget") and heap.get("min_free") is not None:
        heap["min_free_pct"] = round(100.0 * heap["min_free"] / heap["budget"], 1)
    if heap.get("budget") and heap.get("peak_alloc") is not None:
        heap["peak_alloc_pct"] = round(100.0 * heap["peak_alloc"] / heap["budget"], 1)
    counters = facts["facts"]["counters"]
    caps = {k: v for k, v in counters.items() if v and k in run.cap_names}
    scen = {k: v for k, v in sc.items() if k != "board_info"}
    t_end = facts["t_end"]
    return {
        "scenario": scen,
        "board": sc["board_info"],
        "broker": {"interp": run.interp, "command": run.broker.cmd, "config": facts["config"],
                   "port": run.port, "logs": [os.path.basename(p) for p in run.broker.logs()]},
        "verdict": facts["verdict"],
        "duration": {"publishing_s": sc["duration_s"], "drain_s": sc["drain_s"], "t_end": round(t_end, 3)},
        "messages": {
            "readings_sent": len(data),
            "readings_accepted": sum(1 for m in data if m["t_accept"] is not None),
            "readings_skipped_offline": rec.skipped,
            "readings_due_connected": rec.scheduled + rec.behind,
            "readings_skipped_behind": rec.behind,
            "by_qos": {str(q): sum(1 for m in data if m["qos"] == q) for q in (0, 1, 2)},
            "wills_fired": len(wills),
            "wills_owed": sum(1 for m in wills if m["t_accept"] is not None),
        },
        "delivery": acc["per_qos"],
        "losses": facts["facts"]["attribution"],
        "lost_samples": acc["lost_samples"],
        "dup_violations": acc["dup_violations"],
        "retained_copies": acc["retained_copies"],
        "subscribers": acc["subscribers"],
        "latency_live_ms": acc["latency_live_ms"],
        "latency_queued_ms": acc["latency_queued_ms"],
        "heap": heap,
        "caps_hit": caps,
        "first_hits": {k: v for k, v in facts["facts"]["first_hits"].items() if k in caps},
        "counters": counters,
        "store": facts["store"] if sc["store"] else None,
        "retained": facts["facts"]["retained"],
        "connect_refused": facts["facts"]["refused"],
        "restarts": facts["restarts"],
        "events": facts["events"],
        "series": {
            "sys": facts["samples"],
            "throughput": {"bin_s": 1, "in": _bins(rec.sent_times, t_end), "out": _bins(rec.recv_times, t_end)},
        },
    }


def _n(v):
    return "n/a" if v is None else "{:,}".format(v)


def _ms(v):
    return "n/a" if v is None else "%.1f ms" % v


def _lat(p):
    if not p["n"]:
        return "none"
    return "p50 %s  p90 %s  p99 %s  max %s  (n=%d)" % (_ms(p["p50"]), _ms(p["p90"]), _ms(p["p99"]),
                                                     _ms(p["max"]), p["n"])


def text(r):
    sc, b, v = r["scenario"], r["board"], r["verdict"]
    heap = r["heap"]
    out = []
    interp = "MicroPython unix port, -X heapsize=%s" % heap["heapsize"] if r["broker"]["interp"] == "micropython" \
        else "CPython (no heap figures)"
    out.append("midge simulator: %s   board %s (%s)" % (sc["name"], sc["board"], interp))
    if sc["description"]:
        out.append("  " + sc["description"].strip())
    out.append("  %g s publishing + %g s drain, seed %d, store %s, %d broker restart(s)" % (
        sc["duration_s"], sc["drain_s"], sc["seed"], "on" if sc["store"] else "off", len(r["restarts"])))
    out.append("")
    out.append("VERDICT: %s" % v["verdict"])
    for reason in v["reasons"]:
        out.append("  - " + reason)
    for note in v["notes"]:
        out.append("  note: " + note)
    out.append("")
    m = r["messages"]
    out.append("messages   %s readings sent (QoS 0/1/2: %s/%s/%s), %s accepted by the broker; not sent: %s while "
               "disconnected, %s of %s due while connected (the sensor fell behind); %s wills fired (%s owed)" % (
                   _n(m["readings_sent"]), _n(m["by_qos"]["0"]), _n(m["by_qos"]["1"]), _n(m["by_qos"]["2"]),
                   _n(m["readings_accepted"]), _n(m["readings_skipped_offline"]), _n(m["readings_skipped_behind"]),
                   _n(m["readings_due_connected"]), _n(m["wills_fired"]), _n(m["wills_owed"])))
    out.append("delivery   per (message, subscriber) pair, at effective QoS = min(publish, subscription)")
    out.append("  QoS  owed/expected  delivered    lost  (session dropped)  pending at end  duplicates  "
               "received, not owed")
    for q in ("0", "1", "2"):
        d = r["delivery"][q]
        out.append("  %-3s  %13s  %9s  %6s  %17s  %14s  %10s  %18s" % (
            q, _n(d["expected"]), _n(d["delivered"]), _n(d["lost"]), _n(d["lost_session"]),
            _n(d["pending"]), _n(d["duplicates"]), _n(d["not_owed_received"])))
    lo = r["losses"]
    expl = ", ".join("%s %d" % (k, n) for k, n in sorted(lo["explained"].items())) or "none"
    out.append("  QoS 1/2 owed and lost: %d; explained by caps: %s; unexplained: %d" % (lo["lost"], expl, lo["unexplained"]))
    out.append("  QoS 0 may be lost; pending: still queued for a persistent subscriber offline at the end; "
               "retained copies received on (re)subscribe: %d" % r["retained_copies"])
    for s in r["lost_samples"][:5]:
        out.append("  lost: %s %s (%s, QoS %d, sent at %.2f s, window end: %s)" % (
            s["subscriber"], s["key"], s["topic"], s["qos"], s["t_send"], s["window_end"]))
    out.append("latency    live: %s" % _lat(r["latency_live_ms"]))
    out.append("           queued for an offline session: %s" % _lat(r["latency_queued_ms"]))
    if heap.get("budget"):
        out.append("heap       budget %s B (%s; device %s B); peak in use %s B (%s%%); low-water free %s B (%s%%); "
                   "at start %s B  [$SYS heap/*, after gc.collect(), every sys_interval_s]" % (
                       _n(heap["budget"]), heap["heapsize"], _n(heap["device_heap_bytes"]), _n(heap["peak_alloc"]),
                       heap.get("peak_alloc_pct", "n/a"), _n(heap["min_free"]), heap.get("min_free_pct", "n/a"),
                       _n(heap["start_alloc"])))
    else:
        out.append("heap       n/a (CPython)")
    if r["caps_hit"]:
        hits = sorted(r["caps_hit"].items(), key=lambda kv: r["first_hits"].get(kv[0], 0))
        out.append("caps hit   " + ", ".join("%s=%d (first at %.1f s)" % (k, n, r["first_hits"].get(k, 0))
                                            for k, n in hits))
    else:
        out.append("caps hit   none")
    other = {k: n for k, n in r["counters"].items() if n and k not in r["caps_hit"]}
    if other:
        out.append("counters   " + ", ".join("%s=%d" % kv for kv in sorted(other.items())))
    st = r["store"]
    if st is not None:
        out.append("store      %s commits, %s bytes written, %s compactions, %s B on flash at the end, "
                   "%s errors, %s damaged records" % (
                       _n(st.get("commits")), _n(st.get("bytes_written")), _n(st.get("compactions")),
                       _n(st.get("bytes")), _n(st.get("errors")), _n(st.get("damaged_records"))))
    else:
        out.append("store      off (memory only)")
    for i, rs in enumerate(r["restarts"]):
        out.append("restart    %d: kill -9 at %.1f s, listening again at %.1f s" % (i + 1, rs["t_kill"], rs["t_up"]))
    for e in r["events"]:
        if e["kind"] in ("stall", "broker_died", "broker_start_failed"):
            out.append("fault      %s at %.1f s: %s" % (e["kind"], e["t"], e["detail"]))
    ret = r["retained"]
    if ret is None:
        out.append("retained   not checked (no retained readings, or the probe subscription was refused)")
    elif not ret["checked"]:
        out.append("retained   no readings published retained at QoS 1/2 (nothing to check)")
    else:
        out.append("retained   %d topics published retained at QoS 1/2: %d hold the last accepted value, "
                   "%d missing, %d stale" % (ret["checked"], ret["ok"], len(ret["missing"]), len(ret["stale"])))
    if r["connect_refused"]:
        out.append("refused    CONNECTs refused: " + ", ".join(
            ("%d closed before CONNACK" % n) if k == "-1" else ("%d with code %s" % (n, k))
            for k, n in sorted(r["connect_refused"].items())))
    out.append("subscribers (QoS 1/2 pairs)")
    for sid, s in sorted(r["subscribers"].items()):
        out.append("  %-20s owed %6s  delivered %6s  lost %5s  pending %4s  duplicates %5s" % (
            sid, _n(s["owed"]), _n(s["delivered"]), _n(s["lost"]), _n(s["pending"]), _n(s["duplicates"])))
    return "\n".join(out) + "\n"


def write(r, out_dir, json_path=None):
    """report.txt and report.json (or json_path) in out_dir; returns the text."""
    t = text(r)
    with open(os.path.join(out_dir, "report.txt"), "w") as f:
        f.write(t)
    with open(json_path or os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(r, f, indent=1, sort_keys=True, default=str)
    return t
