"""The command line on both interpreters: start-up, --board, bad config, SIGTERM,
and the ESP32 budget carrying a full house of clients under its own heap cap."""
import json
import os
import signal
import socket
import subprocess
import time

import pytest

import brokerproc
from rawclient import RawClient

REPO = brokerproc.REPO


def _cmd(interp, args, heapsize="400k", bundle=False):
    try:
        return brokerproc.midge_command(interp, args, heapsize, bundle)
    except brokerproc.BrokerError as e:
        if os.environ.get("CI") == "true":
            pytest.fail("%s (CI)" % e)
        pytest.skip(str(e))


def _run(interp, args, timeout=10):
    cmd, env = _cmd(interp, args)
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _start(interp, args, heapsize="400k", bundle=False):
    cmd, env = _cmd(interp, args, heapsize, bundle)
    proc = subprocess.Popen(cmd, env=env, cwd="/", stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.time() + 10
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "listening on" in line:
            return proc, lines
    proc.kill()
    raise AssertionError("broker did not start: %s" % "".join(lines))


INTERPS = ["micropython", "cpython"]


@pytest.mark.parametrize("interp", INTERPS)
def test_bad_config_value_names_key_and_range(interp, tmp_path):
    cfg = tmp_path / "bad.json"
    cfg.write_text(json.dumps({"max_clients": 0}))
    r = _run(interp, ["--port", "1", "--config", str(cfg)])
    assert r.returncode == 2
    assert "max_clients" in r.stderr and "1..10000" in r.stderr, r.stderr


@pytest.mark.parametrize("interp", INTERPS)
def test_unknown_config_key_named(interp, tmp_path):
    cfg = tmp_path / "bad.json"
    cfg.write_text(json.dumps({"max_clientz": 3}))
    r = _run(interp, ["--config", str(cfg)])
    assert r.returncode == 2
    assert "unknown config key 'max_clientz'" in r.stderr, r.stderr


@pytest.mark.parametrize("interp", INTERPS)
def test_bad_json_and_missing_file_and_bad_flags(interp, tmp_path):
    cfg = tmp_path / "bad.json"
    cfg.write_text("{not json")
    r = _run(interp, ["--config", str(cfg)])
    assert r.returncode == 2 and "not valid JSON" in r.stderr, r.stderr
    r = _run(interp, ["--config", str(tmp_path / "missing.json")])
    assert r.returncode == 2 and "cannot read config file" in r.stderr, r.stderr
    r = _run(interp, ["--port", "70000"])
    assert r.returncode == 2 and "'port'" in r.stderr and "0..65535" in r.stderr, r.stderr
    r = _run(interp, ["--port", "abc"])
    assert r.returncode == 2 and "--port" in r.stderr, r.stderr
    r = _run(interp, ["--board", "nosuchboard"])
    assert r.returncode == 2 and "unknown board 'nosuchboard'" in r.stderr, r.stderr
    r = _run(interp, ["--bogus", "1"])
    assert r.returncode == 2 and "unknown option --bogus" in r.stderr, r.stderr
    r = _run(interp, ["--log-level", "loud"])
    assert r.returncode == 2 and "log_level" in r.stderr, r.stderr


@pytest.mark.parametrize("interp", INTERPS)
def test_board_budget_applied_and_sigterm_stops(interp):
    port = brokerproc.free_port()
    proc, lines = _start(interp, ["--board", "pico_w", "--port", str(port)])
    try:
        text = "".join(lines)
        assert "profile pico_w (--board pico_w)" in text
        assert "max_clients=4" in text and "max_packet_size=2048" in text, text
        assert "in memory only" in text
        with RawClient("127.0.0.1", port) as c:
            c.handshake("cli")
            c.publish("cli/t", b"x", qos=1)
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=10)
    assert rc is not None


def test_esp32_budget_full_house(tmp_path):
    """The ESP32 profile, as the .mpy bundle a board runs, under its own unix
    heap cap (200k): max_clients
    clients, each subscribed with a wildcard and publishing QoS 1 retained
    and live traffic, all delivered; one client more is refused."""
    with open(os.path.join(REPO, "boards", "esp32", "board.json")) as f:
        board = json.load(f)
    heap = board["unix_heapsize"]
    n = board["config"]["max_clients"]
    port = brokerproc.free_port()
    proc, _ = _start("micropython", ["--board", "esp32", "--port", str(port)], heapsize=heap, bundle=True)
    clients = []
    try:
        for i in range(n):
            c = RawClient("127.0.0.1", port)
            c.handshake("node%d" % i)
            assert c.subscribe([("house/#", 1)]) == [1]
            clients.append(c)
        extra = socket.create_connection(("127.0.0.1", port), timeout=2)
        extra.settimeout(2)
        assert extra.recv(10) == b""  # closed at once: max_clients
        extra.close()
        rounds = 20
        for r in range(rounds):
            for i, c in enumerate(clients):
                c.publish("house/node%d/temp" % i, b"%064d" % r, qos=1, retain=True)
            for c in clients:  # every client gets every node's reading, in order per node
                got = sorted(c.expect_publish(timeout=5)["topic"] for _ in range(n))
                assert got == sorted("house/node%d/temp" % i for i in range(n))
        clients[0].disconnect()
        time.sleep(0.3)  # let the broker notice the free slot (max_clients)
        late = RawClient("127.0.0.1", port)
        clients[0] = late
        late.handshake("late")
        late.subscribe([("house/#", 0)])
        retained = late.publishes(timeout=1)
        assert sorted(p["topic"] for p in retained) == sorted("house/node%d/temp" % i for i in range(n))
        assert all(p["retain"] and p["payload"] == b"%064d" % (rounds - 1) for p in retained)
        assert proc.poll() is None
    finally:
        for c in clients:
            c.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


@pytest.mark.parametrize("interp", INTERPS)
def test_host_that_does_not_resolve_exits_2(interp):
    r = _run(interp, ["--host", "nonsense.invalid", "--port", "0"])
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "config key 'host'" in r.stderr and "nonsense.invalid" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("interp", INTERPS)
def test_host_this_machine_cannot_bind_exits_2(interp, tmp_path):
    # 192.0.2.1 (TEST-NET-1) resolves but is no address of this machine:
    # bind fails in Server.run, which raises ConfigError naming the key.
    # (allow_anonymous set: a non-loopback listener needs the operator's word)
    cfg = tmp_path / "anon.json"
    cfg.write_text(json.dumps({"allow_anonymous": True}))
    r = _run(interp, ["--host", "192.0.2.1", "--port", "0", "--config", str(cfg)])
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "'host'" in r.stderr and "192.0.2.1" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("interp", INTERPS)
def test_json_config_is_strict_on_both(interp, tmp_path):
    # MicroPython's json module accepted this trailing comma; CPython's not.
    cfg = tmp_path / "trailing.json"
    cfg.write_text('{"max_clients": 5,}')
    r = _run(interp, ["--port", "0", "--config", str(cfg)])
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert str(cfg) in r.stderr and "line 1 column 18: trailing comma" in r.stderr, r.stderr
    cfg = tmp_path / "comment.json"
    cfg.write_text('{\n  "max_clients": 5 // five\n}\n')
    r = _run(interp, ["--port", "0", "--config", str(cfg)])
    assert r.returncode == 2 and str(cfg) in r.stderr and "line 2 column" in r.stderr, r.stderr


@pytest.mark.parametrize("interp", INTERPS)
def test_oversized_config_file_exits_2(interp, tmp_path):
    cfg = tmp_path / "big.json"
    cfg.write_text('{"max_clients": 5' + " " * 100000 + "}")
    r = _run(interp, ["--port", "0", "--config", str(cfg)])
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert str(cfg) in r.stderr and "larger than 16384 bytes" in r.stderr, r.stderr
    r = _run(interp, ["--port", "0", "--config", "/dev/zero"])  # endless: still capped
    assert r.returncode == 2 and "/dev/zero" in r.stderr, r.stderr
