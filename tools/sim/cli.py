# Command line of the simulator (tools/sim.py). Exit status: 0 PASS,
# 1 DEGRADED or FAIL (the report says which), 2 a bad scenario, a bad
# option or a broker config value midge refused (the message names it).
import argparse
import os
import sys

from . import report as report_mod
from .brokerctl import BrokerStartError
from .scenario import ScenarioError, load

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="tools/sim.py",
        description="Run midge under a board's heap budget against a simulated fleet and report.")
    ap.add_argument("scenario", help="scenario file (.toml or .json), e.g. tools/scenarios/pico_w_hub.toml")
    ap.add_argument("--out", help="output folder (default build/sim/<scenario name>)")
    ap.add_argument("--json", help="path of the JSON report (default <out>/report.json)")
    ap.add_argument("--board", help="board profile, overrides the scenario's")
    ap.add_argument("--duration", type=float, help="seconds of publishing, overrides duration_s")
    ap.add_argument("--interp", choices=("micropython", "cpython"), default="micropython",
                    help="broker interpreter (default micropython: the unix port with the board's heap)")
    ap.add_argument("--dump", action="store_true",
                    help="also write accounting_input.json (every send, receipt, connection period)")
    ap.add_argument("--no-chart", action="store_true", help="skip chart.png")
    args = ap.parse_args(argv)
    try:
        sc = load(args.scenario, args.board, args.duration)
    except ScenarioError as e:
        sys.stderr.write("sim: %s: %s\n" % (args.scenario, e))
        return 2
    out_dir = args.out or os.path.join(ROOT, "build", "sim", sc["name"])
    from .run import Run
    run = Run(sc, out_dir, args.interp, dump=args.dump)
    print("sim: %s on board %s (%s), %g s + %g s drain, output in %s" % (
        sc["name"], sc["board"], args.interp, sc["duration_s"], sc["drain_s"], out_dir), flush=True)
    try:
        facts = run.execute()
    except BrokerStartError as e:
        sys.stderr.write("sim: the broker did not start: %s\n" % e)
        return 2 if e.status == 2 else 1
    r = report_mod.build(facts)
    text = report_mod.write(r, out_dir, args.json)
    if not args.no_chart:
        from . import chart
        chart.draw(r, os.path.join(out_dir, "chart.png"))
    print(text, end="")
    files = [os.path.join(out_dir, "report.txt"), args.json or os.path.join(out_dir, "report.json")]
    if not args.no_chart:
        files.append(os.path.join(out_dir, "chart.png"))
    files.append(os.path.join(out_dir, "broker.log"))
    print("files: " + ", ".join(files))
    return 0 if r["verdict"]["verdict"] == "PASS" else 1
