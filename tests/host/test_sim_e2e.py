"""Host simulator end to end: one short run of tools/sim.py against the
broker under the MicroPython unix port (esp32 budget), and midge's own
config check surfacing as exit 2. Fails (never skips) when a tool is
missing. Asserts the accounting, never performance figures."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIM = os.path.join(ROOT, "tools", "sim.py")

TINY = """
name = "tiny"
board = "esp32"
duration_s = 6
drain_s = 2

[[sensors]]
name = "s"
count = 2
interval_s = 0.25
qos = 1
retain = true

[[sensors]]
name = "q2"
topic = "sensors/q2"
interval_s = 0.5
qos = 2
will_topic = "status/{id}"
disconnect_every_s = 1.5

[[subscribers]]
name = "display"
filters = ["sensors/#", "status/#"]
qos = 2

[[subscribers]]
name = "logger"
filters = ["sensors/s/+"]
qos = 1
clean_session = false
sleep_every_s = 3
sleep_for_s = 1
"""


def sim(args, timeout=60):
    return subprocess.run([sys.executable, SIM] + args, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_short_run_report_json_png_and_accounting(tmp_path):
    sc = tmp_path / "tiny.toml"
    sc.write_text(TINY)
    out = tmp_path / "out"
    p = sim([str(sc), "--out", str(out), "--json", str(tmp_path / "r.json")])
    assert p.returncode in (0, 1), p.stdout + p.stderr
    for name in ("report.txt", "chart.png", "broker.log", "config.json"):
        assert (out / name).exists(), name
    with open(out / "chart.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    r = json.loads((tmp_path / "r.json").read_text())
    assert "VERDICT: " + r["verdict"]["verdict"] in p.stdout
    assert (out / "report.txt").read_text() in p.stdout
    # the broker ran under the unix port with the board's heap budget
    assert r["broker"]["interp"] == "micropython" and "heapsize=200k" in r["broker"]["command"]
    cfg = r["broker"]["config"]
    assert cfg["sys_interval_s"] == 1 and cfg["max_clients"] == 8 and cfg["store_dir"]  # esp32 7 + monitor
    # a benign run: every owed QoS 1/2 delivery arrived, no cap, no broker error
    assert r["losses"] == {"lost": 0, "explained": {}, "unexplained": 0}, r["lost_samples"]
    assert r["dup_violations"] == []
    for q in ("1", "2"):
        d = r["delivery"][q]
        assert d["delivered"] == d["expected"] > 0, (q, d)
    assert r["verdict"]["verdict"] == "PASS", r["verdict"]
    assert p.returncode == 0
    assert r["subscribers"]["logger-0"]["owed"] > 0 and r["latency_queued_ms"]["n"] > 0  # slept, got its queue
    assert r["messages"]["wills_fired"] >= 1  # random closes without DISCONNECT
    assert r["retained"]["checked"] == 2 and r["retained"]["ok"] == 2
    assert r["heap"]["budget"] == 200 * 1024 and 0 < r["heap"]["peak_alloc"] < r["heap"]["budget"]
    assert r["series"]["sys"] and sum(r["series"]["throughput"]["in"]) == r["messages"]["readings_sent"]
    assert r["store"]["commits"] > 0


def test_bad_broker_config_surfaces_midges_message(tmp_path):
    sc = tmp_path / "bad.toml"
    sc.write_text(TINY + "\n[broker]\nmax_inflight = 0\n")
    p = sim([str(sc), "--out", str(tmp_path / "out")])
    assert p.returncode == 2, p.stdout + p.stderr
    assert "midge: config key 'max_inflight': 0 is out of range (allowed 1..65535)" in p.stderr
