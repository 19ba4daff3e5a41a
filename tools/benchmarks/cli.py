#!/usr/bin/env python3
"""Benchmark midge (MicroPython unix port and CPython) against mosquitto.

Runs each scenario against a freshly started broker, brokers interleaved
round-robin inside each repetition, and prints the medians over the
repetitions, the ratios midge / mosquitto, the load generator's own
ceilings and the targets met or missed. BENCHMARKS.md explains the figures.

  .venv/bin/python tools/bench.py                       # everything, 3 reps (~8 min)
  .venv/bin/python tools/bench.py --quick --reps 1      # small counts, seconds
  .venv/bin/python tools/bench.py --scenario qos0_fanin,pingpong --brokers micropython,mosquitto
  .venv/bin/python tools/bench.py --midge-rev HEAD      # a git snapshot of lib/midge

Scenarios: qos0_fanin qos0_fanout qos1_window qos2 pingpong conn_scaling retained.
Brokers: micropython cpython mosquitto; also mosquitto_nodelay (mosquitto
with `set_tcp_nodelay true`) and null (the trivial relay of
tools/benchmarks/null.py: not conn_scaling or retained).
"""
import argparse
import json
import shutil
import tempfile
import time

from benchmarks import brokers as bb
from benchmarks import ceiling as bench_ceiling
from benchmarks import scenarios as sc
from benchmarks import stats as st

DEFAULT_BROKERS = ["micropython", "cpython", "mosquitto"]
BACKGROUND_WARN_PCT = 25  # background CPU before a run above this is reported
ALL_BROKERS = DEFAULT_BROKERS + ["mosquitto_nodelay", "null"]


def _list(values, allowed, what):
    out = []
    for v in values:
        for name in v.split(","):
            name = name.strip()
            if not name:
                continue
            if name not in allowed:
                raise SystemExit("bench: unknown %s %r (choose from %s)" % (what, name, ", ".join(allowed)))
            if name not in out:
                out.append(name)
    return out


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", action="append", default=[],
                    help="scenario(s), repeatable or comma separated (default: all)")
    ap.add_argument("--brokers", action="append", default=[],
                    help="broker(s), comma separated (default: micropython,cpython,mosquitto)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    ap.add_argument("--quick", action="store_true", help="small counts and short runs (tests)")
    ap.add_argument("--json", metavar="OUT", help="write all results as JSON here")
    ap.add_argument("--markdown", metavar="OUT", help="write the result tables as Markdown here")
    ap.add_argument("--heapsize", default=bb.MICROPYTHON_HEAPSIZE,
                    help="-X heapsize of the MicroPython broker (default %s)" % bb.MICROPYTHON_HEAPSIZE)
    ap.add_argument("--midge-rev", metavar="REV",
                    help="benchmark lib/midge of this git revision (git archive) instead of the working tree")
    ap.add_argument("--no-ceilings", action="store_true", help="skip the generator ceilings")
    ap.add_argument("--wait-quiet", type=float, default=5.0, metavar="S",
                    help="before each run wait up to S seconds for other processes to use less "
                         "than %d%%%% of a core (default 5; 0: do not wait)" % BACKGROUND_WARN_PCT)
    ap.add_argument("--keep", action="store_true", help="keep the work directory (broker logs)")
    args = ap.parse_args(argv)
    args.scenarios = _list(args.scenario, sc.NAMES, "scenario") or list(sc.NAMES)
    args.broker_names = _list(args.brokers, ALL_BROKERS, "broker") or list(DEFAULT_BROKERS)
    if args.reps < 1:
        ap.error("--reps must be at least 1")
    return args


def _print(*a):
    print(*a, flush=True)


def primary(scenario):
    for s, metric, unit, better in sc.REPORT_ROWS:
        if s == scenario:
            return metric, unit
    return None, None


def wait_quiet(limit_s):
    """Wait up to limit_s for the background CPU (other processes) to fall
    below BACKGROUND_WARN_PCT; returns (last background %, seconds waited)."""
    t = time.monotonic()
    while True:
        bg = bb.background_cpu_pct()
        waited = time.monotonic() - t
        if bg is None or bg <= BACKGROUND_WARN_PCT or waited >= limit_s:
            return bg, waited


def run_one(broker, scenario, params, rep, quiet_s=0.0):
    """Start `broker`, run `scenario`, stop it; returns the run record."""
    bg, waited = wait_quiet(quiet_s)
    rec = {"rep": rep, "scenario": scenario, "broker": broker.name, "metrics": {}, "detail": {},
           "notes": [], "error": None, "loadavg_before": bb.loadavg(),
           "background_cpu_pct": bg, "waited_quiet_s": waited}
    try:
        broker.start(sc.broker_overrides(scenario))
    except Exception as e:
        rec["error"] = "start failed: %s" % e
        rec["notes"].append(rec["error"])
        return rec
    try:
        meter = bb.CpuMeter(broker.proc.pid).__enter__()
        try:
            out = sc.RUNNERS[scenario](broker, params)
            rec["metrics"] = out["metrics"]
            rec["detail"] = out["detail"]
            rec["notes"] += out["notes"]
        except Exception as e:  # a broker that misbehaves is a result, not a crash
            rec["error"] = "%s: %s" % (type(e).__name__, e)
            rec["notes"].append("scenario failed: %s" % rec["error"])
        rec["cpu"] = meter.finish()
        if broker.name in ("micropython", "cpython") and broker.alive():
            try:
                rec["broker_counters"] = sc.midge_counters(broker.port)
            except Exception as e:
                rec["notes"].append("could not read $SYS counters: %s" % e)
            bad = {k: v for k, v in rec.get("broker_counters", {}).items()
                   if k in ("slow_dropped", "slow_disconnects", "queue_dropped", "internal_errors",
                            "malformed_packets", "clients_refused", "sessions_refused",
                            "subscriptions_refused", "retained_refused", "inflight_in_exceeded",
                            "keepalive_timeouts")}
            if bad:
                rec["notes"].append("midge counters: " + ", ".join(
                    "%s=%d" % (k, bad[k]) for k in sorted(bad)))
    finally:
        rec["notes"] += broker.stop()
    rec["loadavg_after"] = bb.loadavg()
    return rec


def progress_line(rec, reps):
    metric, unit = primary(rec["scenario"])
    v = rec["metrics"].get(metric)
    cpu = rec.get("cpu", {})
    extra = ""
    if "generator_cpu_pct" in cpu:
        extra = " (cpu %%: broker %s, generator %s, other %s)" % (
            st.fmt_num(cpu.get("broker_cpu_pct")), st.fmt_num(cpu.get("generator_cpu_pct")),
            st.fmt_num(cpu.get("other_cpu_pct")))
    if (rec.get("background_cpu_pct") or 0) > BACKGROUND_WARN_PCT:
        extra += " [background %s%%]" % st.fmt_num(rec["background_cpu_pct"])
    line = "  [rep %d/%d] %-13s %-17s %12s %-14s%s" % (
        rec["rep"] + 1, reps, rec["scenario"], rec["broker"], st.fmt_num(v), unit, extra)
    for n in rec["notes"]:
        line += "\n      note: " + n
    return line


def build_table(medians, brokers, ceilings):
    """Rows for the results table (strings) and the header."""
    midges = [b for b in brokers if b in ("micropython", "cpython")]
    header = ["scenario", "figure"] + [st.BROKER_LABELS[b] for b in brokers]
    ratio_cols = []
    for ref, short in (("mosquitto", "mosq"), ("mosquitto_nodelay", "mosq-nd")):
        if ref in brokers:
            for b in midges:
                ratio_cols.append((b, ref))
                header.append(("MP" if b == "micropython" else "CPy") + "/" + short)
    header.append("generator ceiling")
    ceil_of = {
        ("qos0_fanin", "delivered_per_s"): ceilings.get("null_fanin_per_s"),
        ("qos0_fanout", "delivered_per_s"): ceilings.get("null_fanout_per_s"),
        ("qos1_window", "msgs_per_s"): ceilings.get("null_qos1_per_s"),
        ("qos2", "msgs_per_s"): ceilings.get("null_qos2_per_s"),
        ("pingpong", "p50_us"): ceilings.get("null_pingpong_p50_us"),
        ("pingpong", "p99_us"): ceilings.get("null_pingpong_p99_us"),
    }
    rows = []
    for scen, metric, unit, better in sc.REPORT_ROWS:
        by = medians.get(scen, {}).get(metric)
        if by is None:
            continue
        row = [scen, unit]
        for b in brokers:
            row.append(st.fmt_num(by.get(b)))
        for b, ref in ratio_cols:
            row.append(st.fmt_ratio(st.ratio(by.get(b), by.get(ref))))
        c = ceil_of.get((scen, metric))
        row.append(st.fmt_num(c) if c is not None else "")
        rows.append(row)
    return header, rows


def cpu_table(runs, brokers, scenarios):
    header = ["scenario"] + ["%s broker/gen/other %%" % st.BROKER_LABELS[b] for b in brokers]
    rows = []
    for scen in scenarios:
        row = [scen]
        for b in brokers:
            rs = [r for r in runs if r["scenario"] == scen and r["broker"] == b and r.get("cpu")]
            if not rs:
                row.append("-")
                continue
            parts = []
            for k in ("broker_cpu_pct", "generator_cpu_pct", "other_cpu_pct"):
                v = st.median([r["cpu"].get(k) for r in rs])
                parts.append("-" if v is None else "%.0f" % v)
            row.append("/".join(parts))
        rows.append(row)
    return header, rows


def format_targets(results):
    lines = []
    for t in results:
        if t["met"] is None:
            lines.append("  n/a   %s (not measured in this run)" % t["text"])
            continue
        word = "MET " if t["met"] else "MISS"
        lines.append("  %s  %s: midge/MicroPython %s vs threshold %s (%.2fx the threshold)" % (
            word, t["text"], st.fmt_num(t["value"]), st.fmt_num(t["threshold"]), t["margin"]))
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    params = dict(sc.PARAMS["quick" if args.quick else "full"])
    workdir = tempfile.mkdtemp(prefix="midge-bench-")
    started = time.time()
    machine = bb.machine()
    _print("midge benchmark, %s" % time.strftime("%Y-%m-%d %H:%M:%S"))
    _print("machine: %s, %s cores, kernel %s, %s" % (machine["cpu"], machine["cores"],
                                                     machine["kernel"], machine["os"]))
    _print("python %s; micropython %s; %s" % (machine["python"], machine["micropython"],
                                              machine["mosquitto"]))
    if "micropython" in args.broker_names and machine.get("micropython_bits") == 64:
        _print("note: the MicroPython unix port is 64-bit: heap objects are about twice their "
               "size on a 32-bit ESP32 / RP2040")

    source = None
    brokers = []
    for name in args.broker_names:
        if name in ("micropython", "cpython") and source is None:
            source = bb.midge_source(args.midge_rev, workdir)
        try:
            brokers.append(bb.make_broker(name, workdir, heapsize=args.heapsize, source=source))
        except RuntimeError as e:
            raise SystemExit("bench: %s" % e)
    scenarios = args.scenarios
    if "null" in args.broker_names:
        bad = [s for s in scenarios if s not in sc.NULL_OK]
        if bad:
            raise SystemExit("bench: the null relay serves only %s, not %s" % (
                ", ".join(sc.NULL_OK), ", ".join(bad)))
    settings = {"reps": args.reps, "quick": args.quick, "scenarios": scenarios,
                "brokers": args.broker_names, "params": params,
                "scenario_text": {s: sc.describe(s, params) for s in scenarios},
                "broker_setup": {b.name: b.describe() for b in brokers}}
    if source is not None:
        _print("midge source: %s" % source["desc"])
    for b in brokers:
        d = b.describe()
        if b.name == "micropython":
            _print("micropython broker: -X heapsize=%s, .mpy bundle, config %s" % (
                d["heapsize"], json.dumps(d["config"], sort_keys=True)))
        elif b.name == "cpython":
            _print("cpython broker: the same config")
        elif b.name.startswith("mosquitto"):
            _print("%s conf: %s" % (b.name, "; ".join(d["conf"].strip().splitlines())))
    _print("scenarios (64-byte payloads):")
    for s in scenarios:
        _print("  %-13s %s" % (s, sc.describe(s, params)))

    ceilings = {}
    if not args.no_ceilings:
        _print("generator ceilings ...")
        wait_quiet(args.wait_quiet)

        def make_peer(mode):
            return bb.NullPeer(workdir, mode).start()
        ceilings = bench_ceiling.measure(params, make_peer)
        _print(format_ceilings(ceilings))

    runs = []
    try:
        for rep in range(args.reps):
            for scen in scenarios:
                k = rep % len(brokers)
                for b in brokers[k:] + brokers[:k]:
                    rec = run_one(b, scen, params, rep, args.wait_quiet)
                    runs.append(rec)
                    _print(progress_line(rec, args.reps))
    finally:
        for b in brokers:
            b.kill()

    medians = st.medians_of(runs)
    header, rows = build_table(medians, args.broker_names, ceilings)
    _print("")
    _print("Medians over %d repetition(s) (ratio: midge / mosquitto):" % args.reps)
    _print(st.format_table(header, rows))
    _print("")
    ch, cr = cpu_table(runs, args.broker_names, scenarios)
    _print("CPU during the runs, % of one core (median; 'other' = other processes + kernel):")
    _print(st.format_table(ch, cr))
    targets = []
    if "micropython" in args.broker_names:
        targets = st.evaluate_targets(medians)
        _print("")
        _print("Targets (midge on MicroPython vs mosquitto):")
        _print(format_targets(targets))
        if "mosquitto_nodelay" in args.broker_names:
            extra = [t for t in st.evaluate_targets(medians, ref="mosquitto_nodelay")
                     if t["id"].endswith("_rel")]
            _print("Relative targets against mosquitto with set_tcp_nodelay true:")
            _print(format_targets(extra))
            for t in extra:
                t["ref"] = "mosquitto_nodelay"
            targets = targets + extra
    bg = [r["background_cpu_pct"] for r in runs if r.get("background_cpu_pct") is not None]
    busy = [x for x in bg if x > BACKGROUND_WARN_PCT]
    _print("")
    _print("Background load before the runs (other processes, %% of one core): median %s, max %s"
           % (st.fmt_num(st.median(bg)), st.fmt_num(max(bg) if bg else None)))
    if busy:
        _print("WARNING: %d of %d runs started with more than %d%% of a core busy elsewhere; "
               "those figures are depressed (re-run on a quiet machine)" % (
                   len(busy), len(bg), BACKGROUND_WARN_PCT))
    notes = sorted({"%s/%s: %s" % (r["scenario"], r["broker"], n) for r in runs for n in r["notes"]})
    if notes:
        _print("")
        _print("Notes (anything abnormal seen):")
        for n in notes:
            _print("  " + n)
    elapsed = time.time() - started
    _print("")
    _print("total time %.0f s" % elapsed)

    result = {
        "version": 1,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "elapsed_s": elapsed,
        "machine": machine,
        "settings": settings,
        "midge_source": source["desc"] if source else None,
        "ceilings": ceilings,
        "runs": runs,
        "medians": medians,
        "ratios": ratios(medians, args.broker_names),
        "targets": targets,
        "background_cpu_pct": {"median": st.median(bg), "max": max(bg) if bg else None,
                               "runs_over_%d" % BACKGROUND_WARN_PCT: len(busy)},
        "table": {"header": header, "rows": rows},
    }
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(result, cr_header=ch, cpu_rows=cr))
        _print("wrote %s" % args.markdown)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, sort_keys=True)
        _print("wrote %s" % args.json)
    if args.keep:
        _print("broker logs kept in %s" % workdir)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def ratios(medians, brokers):
    """{reference: {scenario: {metric: {broker: median / the reference's median}}}}
    for the references mosquitto and mosquitto_nodelay (when run)."""
    out = {}
    for ref in ("mosquitto", "mosquitto_nodelay"):
        if ref not in brokers:
            continue
        for scen, metrics in medians.items():
            for metric, by in metrics.items():
                for b in brokers:
                    if b.startswith("mosquitto"):
                        continue
                    r = st.ratio(by.get(b), by.get(ref))
                    if r is not None:
                        out.setdefault(ref, {}).setdefault(scen, {}).setdefault(metric, {})[b] = r
    return out


def markdown(result, cr_header, cpu_rows):
    """The tables of one run as Markdown (BENCHMARKS.md is built from this)."""
    m = result["machine"]
    s = result["settings"]
    out = ["Run of %s, %d repetition(s)%s, %.0f s; midge: %s." % (
        result["date"], s["reps"], " (--quick)" if s["quick"] else "", result["elapsed_s"],
        result["midge_source"]),
        "",
        "Machine: %s, %s cores, kernel %s, %s; Python %s; MicroPython %s; %s." % (
            m["cpu"], m["cores"], m["kernel"], m["os"], m["python"], m["micropython"], m["mosquitto"]),
        "", "### Medians", "",
        st.format_markdown(result["table"]["header"], result["table"]["rows"]),
        "", "### CPU during the runs (% of one core, median: broker / generator / other)", "",
        st.format_markdown(cr_header, cpu_rows), ""]
    bgc = result.get("background_cpu_pct") or {}
    out.append("Background load before the runs: median %s%%, max %s%% of a core." % (
        st.fmt_num(bgc.get("median")), st.fmt_num(bgc.get("max"))))
    if result["ceilings"]:
        out += ["", "### Generator ceilings", "", "```", format_ceilings(result["ceilings"]), "```"]
    if result["targets"]:
        out += ["", "### Targets", "", "| target | reference | midge/MicroPython | threshold | x threshold | |",
                "| --- | --- | ---: | ---: | ---: | --- |"]
        for t in result["targets"]:
            ref = t.get("ref", "mosquitto") if t["id"].endswith("_rel") else "-"
            met = "n/a" if t["met"] is None else ("met" if t["met"] else "**missed**")
            out.append("| %s | %s | %s | %s | %s | %s |" % (
                t["text"], ref, st.fmt_num(t["value"]), st.fmt_num(t["threshold"]),
                st.fmt_ratio(t["margin"]), met))
    notes = sorted({"%s/%s: %s" % (r["scenario"], r["broker"], n)
                    for r in result["runs"] for n in r["notes"]})
    if notes:
        out += ["", "### Notes from the runs", ""] + ["- " + n for n in notes]
    return "\n".join(out) + "\n"


def format_ceilings(c):
    f = st.fmt_num
    return "\n".join([
        "  subscriber parse, identical deliveries (pre-built stream): %s msg/s" % f(c["parse_fast_per_s"]),
        "  subscriber parse, every packet walked (worst case):        %s msg/s" % f(c["parse_mixed_per_s"]),
        "  QoS 1 subscriber acknowledging a pre-built stream:         %s msg/s" % f(c["qos_ack_path_per_s"]),
        "  8 publishers writing into a discarding socket:             %s msg/s" % f(c["write_per_s"]),
        "  null relay (trivial forwarder), QoS 0 fan-in delivered:    %s msg/s" % f(c["null_fanin_per_s"]),
        "  null relay, QoS 0 fan-out deliveries:                      %s /s" % f(c["null_fanout_per_s"]),
        "  null relay, QoS 1 window 10:                               %s msg/s" % f(c["null_qos1_per_s"]),
        "  null relay, QoS 2 window 10:                               %s msg/s" % f(c["null_qos2_per_s"]),
        "  null relay, ping-pong p50 / p99:                           %s / %s us" % (
            f(c["null_pingpong_p50_us"]), f(c["null_pingpong_p99_us"])),
    ])


if __name__ == "__main__":
    main()
