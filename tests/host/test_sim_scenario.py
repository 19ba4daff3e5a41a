"""Host simulator: scenario files are parsed, defaulted and validated
(tools/sim/scenario.py). No sockets."""
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sim import scenario
from sim.scenario import ScenarioError, validate

BASE_SENSOR = {"name": "s", "count": 2}
BASE_SUB = {"name": "d", "filters": ["sensors/#"]}


def base(**top):
    d = {"board": "esp32", "duration_s": 10, "sensors": [dict(BASE_SENSOR)], "subscribers": [dict(BASE_SUB)]}
    d.update(top)
    return d


def error(data):
    with pytest.raises(ScenarioError) as e:
        validate(data)
    return str(e.value)


def test_defaults_filled_in():
    sc = validate(base())
    assert sc["name"] == "scenario" and sc["seed"] == 1 and sc["store"] is True and sc["drain_s"] == 3.0
    s = sc["sensors"][0]
    assert (s["qos"], s["interval_s"], s["payload_bytes"], s["retain"], s["clean_session"]) == (1, 1.0, 64, False, True)
    assert s["start_s"] == 1.0 and sc["subscribers"][0]["start_s"] == 0.0
    assert s["mqtt_version"] == "3.1.1" and s["topic"] == "sensors/{name}/{i}"
    assert sc["verdict"]["min_heap_free_pct"] == 10.0
    assert sc["board_info"]["unix_heapsize"] == "200k"


def test_example_scenarios_are_valid():
    d = os.path.join(ROOT, "tools", "scenarios")
    names = sorted(f for f in os.listdir(d) if f.endswith(".toml"))
    assert {"pico_w_hub.toml", "esp32_gateway.toml", "pico_w_overload.toml"} <= set(names)
    for f in names:
        sc = scenario.load(os.path.join(d, f))
        assert 20 <= sc["duration_s"] + sc["drain_s"] <= 60, f


@pytest.mark.parametrize("data, words", [
    (base(colour="red"), ["colour", "unknown key"]),
    (base(sensors=[dict(BASE_SENSOR, speed=3)]), ["sensors[0].speed", "unknown key"]),
    (base(subscribers=[dict(BASE_SUB, qos_max=1)]), ["subscribers[0].qos_max", "unknown key"]),
    (base(faults=[{"kind": "stall", "at_s": 1, "client": "d-0", "when": 2}]), ["faults[0].when", "unknown key"]),
    (base(verdict={"heap": 1}), ["verdict.heap", "unknown key"]),
])
def test_unknown_keys_at_every_level(data, words):
    msg = error(data)
    for w in words:
        assert w in msg, msg


@pytest.mark.parametrize("data, words", [
    (base(sensors=[dict(BASE_SENSOR, count=-1)]), ["sensors[0].count", "-1", "1..200"]),
    (base(sensors=[dict(BASE_SENSOR, qos=3)]), ["sensors[0].qos", "3", "0..2"]),
    (base(subscribers=[dict(BASE_SUB, qos=3)]), ["subscribers[0].qos", "0..2"]),
    (base(sensors=[dict(BASE_SENSOR, interval_s=0)]), ["sensors[0].interval_s", "0.001..3600"]),
    (base(sensors=[dict(BASE_SENSOR, interval_s="fast")]), ["sensors[0].interval_s", "not a number"]),
    (base(sensors=[dict(BASE_SENSOR, count=1.5)]), ["sensors[0].count", "not an integer"]),
    (base(sensors=[dict(BASE_SENSOR, retain="yes")]), ["sensors[0].retain", "true or false"]),
    (base(sensors=[dict(BASE_SENSOR, mqtt_version="4")]), ["sensors[0].mqtt_version", "3.1.1, 5"]),
    (base(sensors=[dict(BASE_SENSOR, payload_bytes=5000)]), ["sensors[0].payload_bytes", "max_packet_size 4096", "esp32"]),
    (base(board="pico_w", sensors=[dict(BASE_SENSOR, payload_bytes=3000)]), ["payload_bytes", "max_packet_size 2048"]),
    (base(broker={"max_packet_size": 1024}, sensors=[dict(BASE_SENSOR, payload_bytes=2000)]), ["max_packet_size 1024"]),
    (base(sensors=[dict(BASE_SENSOR, jitter_s=2)]), ["sensors[0].jitter_s", "above interval_s"]),
    (base(sensors=[dict(BASE_SENSOR, topic="a/+/b")]), ["sensors[0].topic", "wildcards"]),
    (base(subscribers=[dict(BASE_SUB, filters=["a/#/b"])]), ["subscribers[0].filters[0]", "'#'"]),
    (base(subscribers=[dict(BASE_SUB, filters=[])]), ["subscribers[0].filters", "non-empty"]),
    (base(subscribers=[{"count": 1, "filters": ["x"]}]), ["subscribers[0].name", "missing"]),
    (base(board="arduino"), ["board", "arduino", "esp32", "pico_w"]),
    (base(duration_s=0), ["duration_s", "1..3600"]),
    (base(sensors=[dict(BASE_SENSOR, sleep_every_s=5, sleep_for_s=6)]), ["sensors[0].sleep_for_s"]),
    (base(faults=[{"kind": "explode", "at_s": 1}]), ["faults[0].kind", "broker_restart, stall"]),
    (base(faults=[{"kind": "broker_restart", "at_s": 20}]), ["faults[0].at_s", "duration_s"]),
    (base(faults=[{"kind": "stall", "at_s": 2, "client": "nobody"}]), ["faults[0].client", "nobody"]),
    (base(subscribers=[dict(BASE_SUB, name="s")]), ["subscribers[0].name", "sensors[0]"]),
    (base(broker={"sys_interval_s": 0}), ["broker.sys_interval_s"]),
    (base(broker={"port": 1}), ["broker.port", "set by the simulator"]),
    (base(sensors=[], subscribers=[]), ["at least one"]),
])
def test_impossible_values_name_the_key_and_range(data, words):
    msg = error(data)
    for w in words:
        assert w in msg, msg


def test_overrides_from_the_command_line():
    sc = validate(base(), board="pico_w", duration_s=7)
    assert sc["board"] == "pico_w" and sc["duration_s"] == 7.0
    assert sc["board_info"]["unix_heapsize"] == "320k"
    with pytest.raises(ScenarioError):
        validate(base(), duration_s=-1)


def test_broker_overrides_pass_through_unchecked():
    # midge validates its own config at start (exit 2); the scenario keeps it
    sc = validate(base(broker={"max_clients": 0, "made_up": 1}))
    assert sc["broker"] == {"max_clients": 0, "made_up": 1}


def test_load_toml_and_errors(tmp_path):
    p = tmp_path / "x.toml"
    p.write_text('duration_s = 5\n[[subscribers]]\nname = "d"\nfilters = ["#"]\n')
    sc = scenario.load(str(p))
    assert sc["name"] == "x" and sc["duration_s"] == 5.0
    p.write_text("duration_s = = 5\n")
    with pytest.raises(ScenarioError, match="not valid TOML"):
        scenario.load(str(p))
    with pytest.raises(ScenarioError, match="cannot read"):
        scenario.load(str(tmp_path / "missing.toml"))


def test_cli_exit_2_for_a_bad_scenario(tmp_path, capsys):
    from sim.cli import main
    p = tmp_path / "bad.toml"
    p.write_text('[[sensors]]\nname = "s"\nqos = 3\n')
    assert main([str(p)]) == 2
    assert "sensors[0].qos: 3 is out of range (allowed 0..2)" in capsys.readouterr().err


def test_readme_documents_every_scenario_key():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    start = text.index("## Host simulator")
    section = text[start:text.find("\n## ", start + 5)]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows.setdefault(cells[0], []).append(cells)
    for where, key, default, allowed, _doc in scenario.reference_rows():
        cells = rows.get("`%s`" % key)
        assert cells, "README lacks scenario key %s (%s)" % (key, where)
        assert any(c[1] == where and c[3] == allowed for c in cells), (key, where, allowed, cells)
