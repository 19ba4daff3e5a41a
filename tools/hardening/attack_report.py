#!/usr/bin/env python3
"""Before/after table of the issue 8 attacks (tools/attacks.py).

Runs every attack under `--board esp32` and `--board pico_w` (each against a
fresh broker: MicroPython unix port, the .mpy bundle, the board's unix
heapsize, sys_interval_s 1) against midge at `--before REV` (default 5eedceb)
and against the working tree's lib/midge (copied once at start), and prints
two markdown tables: the common figures (alive, heap after - baseline,
attacker closed, bystander served, fresh client ok, counters that moved) and
each attack's own figures.

    .venv/bin/python tools/attack_report.py [--before REV] [--only 1a,3] [--boards esp32]
        [--sides before,after] [--reps N] [--json FILE]

About 5-15 s per attack, board and side: about 6 minutes for everything.
"""
import argparse
import json
import sys
import tempfile
import time

from hardening import attacks


def _kb(n):
    if n is None:
        return "?"
    return "%+.1f KB" % (n / 1024.0)


def summary(r):
    """One cell: alive, heap after - baseline, attacker closed, bystander
    served, fresh client ok, counters moved."""
    if r is None:
        return "-"
    parts = ["alive" if r.get("alive") else "**DEAD**"]
    if r.get("heap_diff") is not None:
        parts.append("heap %s" % _kb(r["heap_diff"]))
    elif r.get("alive") and not r.get("sys_rounds_after"):
        parts.append("heap ? (**no $SYS round** after the attack: the monitor was starved)")
    else:
        parts.append("heap ?")
    ac = r.get("attacker_closed")
    parts.append("attacker n/a" if ac is None else ("attacker closed" if ac else "attacker not closed"))
    if "bystander_served" in r:
        parts.append("bystander served" if r["bystander_served"] else "bystander **not served**")
    parts.append("fresh ok" if r.get("fresh_ok") else "fresh **FAIL**")
    moved = r.get("counters_moved") or {}
    parts.append(" ".join("%s+%d" % (k, v) for k, v in sorted(moved.items())) or "no counter")
    if r.get("error"):
        parts.append("error: %s" % r["error"].splitlines()[0][:80])
    return ", ".join(parts)


def _fmt(v):
    if isinstance(v, float):
        return "%.3g" % v
    if isinstance(v, dict):
        return "{" + ", ".join("%s: %s" % (k, _fmt(x)) for k, x in sorted(v.items())) + "}"
    return str(v)


# the attack-specific figures worth a column, per attack
FIGURES = {
    "noop": [],
    "1a": ["flood_bytes", "flood_stopped", "attacker_closed_after_s"],
    "1b": ["flood_bytes", "flood_stopped", "attacker_closed_after_s"],
    "1c": ["retained_seeded", "flood_bytes", "flood_stopped", "attacker_closed_after_s"],
    "2a": ["packet_bytes", "suback_codes", "retained_received", "retained_distinct"],
    "2b": ["packet_bytes", "suback_codes", "retained_received", "retained_distinct"],
    "2c": ["packet_bytes", "suback_codes", "retained_received"],
    "2d": ["packet_bytes", "suback_codes"],
    "3": ["legit_ok", "legit_attempts", "legit_outcomes", "attacker_sockets_closed_by_broker"],
    "5": ["publisher_closed", "publisher_closed_at_message", "pubacks", "published", "planned",
          "sink_received_after_reconnect"],
    "6a": ["victim_received", "victim_acked", "victim_session_present", "throwaway_connacks"],
    "6b": ["victim_received", "victim_acked", "hogs", "victim_session_present"],
    "7": ["connected", "clients", "connect_p50_s", "connect_p99_s", "connect_max_s",
          "listen_overflows", "listen_drops", "heap_high_water_first_storm"],
}


def figures_cell(r):
    if r is None:
        return "-"
    f = r.get("figures") or {}
    keys = FIGURES.get(r["attack"], sorted(f))
    parts = ["%s %s" % (k, _fmt(f[k])) for k in keys if k in f]
    if r.get("heap_peak") is not None:
        parts.append("heap peak %d" % r["heap_peak"])
    else:
        parts.append("heap peak n/a (over within one $SYS round)")
    lg = r.get("log") or {}
    if lg.get("memory_error_lines") or lg.get("tracebacks") or lg.get("task_exception_not_retrieved"):
        parts.append("log: %d MemoryError, %d traceback, %d task exception not retrieved" % (
            lg.get("memory_error_lines", 0), lg.get("tracebacks", 0),
            lg.get("task_exception_not_retrieved", 0)))
    if r.get("broker_exit_status") is not None:
        parts.append("broker exited %s" % r["broker_exit_status"])
    if r.get("bystander_rt_failed"):
        parts.append("bystander round trips failed %d/%d" % (
            r["bystander_rt_failed"], r["bystander_rt_failed"] + r.get("bystander_rt_ok", 0)))
    return "; ".join(parts)


def tables(rows, sides):
    """rows: list of (attack, board, rep, {side: result})."""
    out = []
    head = "| attack | board | " + " | ".join(sides) + " |"
    out.append(head)
    out.append("|" + " --- |" * (2 + len(sides)))
    for name, board, rep, res in rows:
        label = name if rep == 0 else "%s (run %d)" % (name, rep + 1)
        out.append("| %s | %s | %s |" % (label, board, " | ".join(summary(res.get(s)) for s in sides)))
    out.append("")
    out.append("| attack | board | " + " | ".join("%s: figures" % s for s in sides) + " |")
    out.append("|" + " --- |" * (2 + len(sides)))
    for name, board, rep, res in rows:
        label = name if rep == 0 else "%s (run %d)" % (name, rep + 1)
        out.append("| %s | %s | %s |" % (label, board, " | ".join(figures_cell(res.get(s)) for s in sides)))
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default="5eedceb", help="git revision for the before column")
    ap.add_argument("--only", help="comma-separated attack names (tools/attacks.py --list)")
    ap.add_argument("--boards", default="esp32,pico_w")
    ap.add_argument("--sides", default="before,after", help="before, after or both")
    ap.add_argument("--reps", type=int, default=1, help="runs of each attack per board and side")
    ap.add_argument("--json", help="keep every raw result in this file")
    args = ap.parse_args(argv)
    names = attacks.ORDER if not args.only else [n.strip() for n in args.only.split(",") if n.strip()]
    for n in names:
        if n not in attacks.ATTACKS:
            ap.error("unknown attack %r; known: %s" % (n, ", ".join(attacks.ORDER)))
    boards = [b.strip() for b in args.boards.split(",") if b.strip()]
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    for s in sides:
        if s not in ("before", "after"):
            ap.error("--sides: before and/or after")
    work = tempfile.mkdtemp(prefix="midge-attack-report-")
    srcs = {}
    if "before" in sides:
        srcs["before"] = attacks.source(args.before, work)
    if "after" in sides:
        srcs["after"] = attacks.source(None, work)
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    t0 = time.monotonic()
    rows = []
    raw = []
    for name in names:
        for board in boards:
            for rep in range(args.reps):
                res = {}
                for side in sides:
                    sys.stderr.write("attack %s, board %s, %s (%s)%s ... " % (
                        name, board, side, srcs[side]["desc"],
                        "" if args.reps == 1 else ", run %d" % (rep + 1)))
                    sys.stderr.flush()
                    r = attacks.run(name, board, srcs[side], work)
                    r["side"] = side
                    r["rep"] = rep
                    sys.stderr.write("%.1f s: %s\n" % (r["duration_s"], summary(r)))
                    res[side] = r
                    raw.append(r)
                rows.append((name, board, rep, res))
    print("# midge attack report (issue 8)")
    print()
    print("Started %s, took %.0f s. MicroPython unix port (64-bit), .mpy bundle, "
          "-X heapsize=<board unix_heapsize> (attack 7: 2M), --board NAME, sys_interval_s 1." % (
              started, time.monotonic() - t0))
    for side in sides:
        print("- %s: %s" % (side, srcs[side]["desc"]))
    print("- work directory (broker logs): %s" % work)
    print()
    print("Heap: $SYS/broker/heap/alloc after gc.collect(), after the attacker left minus before it "
          "came. Counters: $SYS/broker/counters/* that moved during the attack.")
    print()
    print(tables(rows, sides))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"started": started, "sources": dict((s, srcs[s]["desc"]) for s in sides),
                       "results": raw}, f, indent=1, sort_keys=True, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
