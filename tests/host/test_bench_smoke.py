"""One quick run of tools/bench.py (--quick, one repetition, two scenarios,
midge under MicroPython and mosquitto): the JSON has the expected structure
and non-zero figures. Speed is never asserted. Without micropython or
mosquitto the test is skipped, or fails under CI=true (README.md)."""
import json
import os
import shutil
import subprocess
import sys

import pytest

import brokerproc

ROOT = brokerproc.REPO


def _require(ok, msg):
    if ok:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg)
    pytest.skip(msg)


def test_quick_run_json(tmp_path):
    _require(brokerproc.find_micropython() is not None,
             "micropython not found (.venv/bin/micropython); run tools/setup.sh")
    _require(os.path.exists("/usr/sbin/mosquitto") or shutil.which("mosquitto") is not None,
             "mosquitto not found; tools/setup.sh --with-debian installs it")
    out = tmp_path / "bench.json"
    cmd = [sys.executable, os.path.join(ROOT, "tools", "bench.py"), "--quick", "--reps", "1",
           "--scenario", "qos0_fanin,qos1_window", "--brokers", "micropython,mosquitto",
           "--wait-quiet", "0", "--json", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=110)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Medians over 1 repetition" in r.stdout
    assert "generator ceiling" in r.stdout
    data = json.loads(out.read_text())

    for key in ("machine", "settings", "ceilings", "runs", "medians", "ratios", "targets", "table"):
        assert key in data, key
    m = data["machine"]
    assert m["cores"] >= 1 and m["python"] and m["micropython"] and m["mosquitto"]
    assert data["settings"]["reps"] == 1 and data["settings"]["quick"] is True
    assert data["settings"]["broker_setup"]["micropython"]["config"]["max_clients"] >= 100

    for name in ("parse_fast_per_s", "parse_mixed_per_s", "qos_ack_path_per_s", "write_per_s",
                 "null_fanin_per_s", "null_fanout_per_s", "null_pingpong_p50_us"):
        assert data["ceilings"][name] > 0, name

    runs = data["runs"]
    assert sorted((r["scenario"], r["broker"]) for r in runs) == [
        ("qos0_fanin", "micropython"), ("qos0_fanin", "mosquitto"),
        ("qos1_window", "micropython"), ("qos1_window", "mosquitto")]
    for r in runs:
        assert r["error"] is None, r
        assert r["rep"] == 0
        primary = "delivered_per_s" if r["scenario"] == "qos0_fanin" else "msgs_per_s"
        assert r["metrics"][primary] > 0, r
    for r in runs:
        if r["scenario"] == "qos0_fanin":
            assert r["detail"]["sent"] > 0 and r["detail"]["received"] > 0
            assert 0 <= r["metrics"]["drop_pct"] <= 100
        else:
            assert r["detail"]["received"] == r["detail"]["sent"] > 0

    med = data["medians"]
    for b in ("micropython", "mosquitto"):
        assert med["qos0_fanin"]["delivered_per_s"][b] > 0
        assert med["qos1_window"]["msgs_per_s"][b] > 0
    assert data["ratios"]["mosquitto"]["qos0_fanin"]["delivered_per_s"]["micropython"] > 0

    targets = {t["id"]: t for t in data["targets"]}
    assert set(targets) >= {"fanin_abs", "fanin_rel", "qos1_abs", "pingpong_rel", "idle_heap",
                            "retained_rel"}
    for tid in ("fanin_abs", "fanin_rel", "qos1_abs"):
        assert targets[tid]["met"] in (True, False), targets[tid]
    for tid in ("pingpong_rel", "idle_heap", "retained_rel"):
        assert targets[tid]["met"] is None  # not run

    header = data["table"]["header"]
    assert header[:4] == ["scenario", "figure", "midge/MicroPython", "mosquitto"]
    assert len(data["table"]["rows"]) >= 3


@pytest.mark.parametrize("args", [["fanout", "3"], ["fanin", "2"], ["qos1", "5"], ["qos2", "5", "--split"]])
def test_hotpath_runs_every_scenario_on_both_interpreters(args):
    # tools/measure/hotpath.py (what hotpath_ir.sh counts): each scenario
    # runs to the end, every message delivered (it exits non-zero if not),
    # on the MicroPython unix port and on CPython
    mp = brokerproc.find_micropython()
    _require(mp is not None, "micropython not found (.venv/bin/micropython); run tools/setup.sh")
    script = os.path.join(ROOT, "tools", "measure", "hotpath.py")
    env = dict(os.environ, MICROPYPATH=".frozen:lib:tools",
               PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "lib"), os.path.join(ROOT, "tools")]))
    for cmd in ([mp, "-X", "heapsize=16M", script] + args, [sys.executable, script] + args):
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, (cmd, r.stdout, r.stderr)
        name, n, rate = r.stdout.split()
        assert name == args[0] and int(n) > 0 and int(rate) > 0
