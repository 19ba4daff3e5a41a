"""A damaged store through the real broker, under the ESP32 and the Pico W
budgets.

The broker runs under the MicroPython unix port from the .mpy bundle (as a
board runs it; from source a 200k heap is too small once a store is on)
with boards/<board>/board.json's config, its unix heap cap (200k, 320k),
sys_interval_s 1 and a store_dir. A persistent session and 20 retained
messages are written through it (each PUBLISH its own journal segment),
the broker is SIGKILLed, the store is damaged, and the broker is started
again. It must start, deliver everything that was readable (retained
values; the persistent session's queued messages), keep every damaged file
aside with its bytes unchanged, show the damage on $SYS, and carry a fresh
client's publish round trip.

Damages: a middle journal segment deleted; a flipped byte in the snapshot
header; 2,000 stray files in the store directory.

Start-up on a store_dir that cannot be used (a missing parent, a regular
file, a directory that refuses new files) exits with status 2 and a
message naming the path, on both interpreters. The refusing directory is
/sys/kernel: sysfs refuses new files even to root (EACCES), and where /sys
is mounted read-only (containers) the error is EROFS; the tests run as root
in CI, where a chmod'ed directory would not stop a write.
"""
import json
import os
import subprocess
import time

import pytest

import brokerproc
from rawclient import sys_values

REPO = brokerproc.REPO
N_RETAINED = 20
N_QUEUED = 12
STRAYS = 2000


def _board(name):
    with open(os.path.join(REPO, "boards", name, "board.json")) as f:
        return json.load(f)


@pytest.fixture(params=["esp32", "pico_w"])
def board_broker(tmp_path, request):
    """The broker under a board's budget, with a store."""
    if brokerproc.find_micropython() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("micropython not found (CI)")
        pytest.skip("micropython not found")
    board = _board(request.param)
    cfg = dict(board["config"])
    cfg["sys_interval_s"] = 1
    cfg["store_dir"] = str(tmp_path / "store")
    b = brokerproc.BrokerProc(cfg, board["unix_heapsize"], workdir=str(tmp_path / "broker"), bundle=True)
    try:
        b.start(timeout=20)
    except brokerproc.BrokerError as e:
        pytest.fail(str(e))
    yield b
    err = b.stop()
    if err:
        pytest.fail(err, pytrace=False)


def _val(i):
    return b"val-%02d" % i


def _msg(i):
    return b"msg-%02d" % i


def _fill(b, n_retained=N_RETAINED, n_queued=N_QUEUED):
    """Persistent session "dev" (q/#, QoS 1, offline) with n_queued QoS 1
    messages queued; n_retained retained messages; one commit each."""
    s = b.client("dev", clean=False)
    assert s.subscribe([("q/#", 1)]) == [1]
    s.disconnect()
    p = b.client("filler")
    for i in range(max(n_retained, n_queued)):
        if i < n_retained:
            p.publish("r/%02d" % i, _val(i), qos=1, retain=True)
        if i < n_queued:
            p.publish("q/%02d" % i, _msg(i), qos=1)
    p.disconnect()


def _files(d):
    out = {}
    for name in os.listdir(d):
        with open(os.path.join(d, name), "rb") as f:
            out[name] = f.read()
    return out


def _segments(d):
    return sorted(int(n[6:]) for n in os.listdir(d)
                  if n.startswith("midge.") and n[6:].isdigit() and str(int(n[6:])) == n[6:])


def _restart(b):
    try:
        b.restart(timeout=30)
    except brokerproc.BrokerError as e:
        pytest.fail(str(e))
    log = b.log()
    assert "Traceback" not in log and "memory allocation failed" not in log, b.log_tail()


def _check(b, retained, queued, sys_want):
    """Everything readable is there, $SYS shows the damage, and a fresh
    client completes a publish round trip."""
    c = b.client("rcheck")
    assert c.subscribe([("r/#", 1)]) == [1]
    got = sorted(p["payload"] for p in c.publishes(1.0))
    assert got == sorted(retained), "retained after the restart: %r" % got
    c.disconnect()
    s = b.client("dev", clean=False)
    assert s.connack["session_present"] == 1, "persistent session lost"
    got = [p["payload"] for p in s.publishes(1.0)]
    assert got == queued, "queued messages delivered: %r" % got
    s.disconnect()
    m = b.client("sysmon")
    assert m.subscribe([("$SYS/broker/store/#", 0)]) == [0]
    keys = ["$SYS/broker/store/" + k for k in sys_want]
    vals = sys_values(m, 4.0, lambda v: all(k in v for k in keys))
    m.disconnect()
    for k in sys_want:
        assert vals.get("$SYS/broker/store/" + k) == str(sys_want[k]), (k, vals)
    rt = b.client("roundtrip")
    assert rt.subscribe([("rt/x", 1)]) == [1]
    rt.publish("rt/x", b"ping", qos=1)
    rt.expect_publish("rt/x", b"ping", timeout=3.0)
    rt.disconnect()


def test_missing_middle_segment(board_broker):
    b = board_broker
    d = b.config["store_dir"]
    _fill(b)
    b.sigkill()
    segs = _segments(d)
    assert len(segs) >= N_RETAINED + N_QUEUED, segs
    files = _files(d)
    victim = None
    for n in segs[len(segs) // 2:]:
        if _val(N_RETAINED // 2) in files["midge.%d" % n] or _val(N_RETAINED // 2 + 1) in files["midge.%d" % n]:
            victim = n
            break
    assert victim is not None and victim != segs[-1]
    lost = [i for i in range(N_RETAINED) if _val(i) in files["midge.%d" % victim]]
    assert len(lost) == 1
    os.remove(os.path.join(d, "midge.%d" % victim))
    _restart(b)
    assert "midge.%d missing" % victim in b.log(), b.log_tail()
    _check(b, [_val(i) for i in range(N_RETAINED) if i not in lost],
           [_msg(i) for i in range(N_QUEUED)],
           {"missing_segments": 1, "damaged_files": 0, "damaged_records": 0})
    assert not [n for n in os.listdir(d) if "damaged" in n]


def test_flipped_byte_in_snapshot_header(board_broker):
    b = board_broker
    d = b.config["store_dir"]
    _fill(b, N_RETAINED, N_QUEUED - 2)
    b.sigkill()
    _restart(b)                        # the load compacts everything into midge.snap
    p = b.client("filler")             # and two more commits after it
    p.publish("r/%02d" % N_RETAINED, _val(N_RETAINED), qos=1, retain=True)
    p.publish("q/%02d" % (N_QUEUED - 2), _msg(N_QUEUED - 2), qos=1)
    p.publish("q/%02d" % (N_QUEUED - 1), _msg(N_QUEUED - 1), qos=1)
    p.disconnect()
    b.sigkill()
    snap = os.path.join(d, "midge.snap")
    with open(snap, "rb") as f:
        data = bytearray(f.read())
    assert data[:5] == b"MIDG\x02" and len(data) > 16
    data[10] ^= 0x5A                  # the base field
    with open(snap, "wb") as f:
        f.write(bytes(data))
    _restart(b)
    assert "header damaged" in b.log(), b.log_tail()
    with open(snap + ".damaged", "rb") as f:
        assert f.read() == bytes(data), "the damaged snapshot was not kept byte for byte"
    _check(b, [_val(i) for i in range(N_RETAINED + 1)], [_msg(i) for i in range(N_QUEUED)],
           {"missing_segments": 0, "damaged_files": 1, "damaged_records": 0})


def test_thousands_of_stray_files(board_broker):
    b = board_broker
    d = b.config["store_dir"]
    _fill(b)
    b.sigkill()
    strays = {}
    for i in range(STRAYS):
        name = ("photo-%04d.jpg", "midge.%d.bak", "midge.0%d", "midge.%d" % (10 ** 6 + i))[i % 4]
        if "%" in name:
            name = name % i
        strays[name] = name.encode() * 3
        with open(os.path.join(d, name), "wb") as f:
            f.write(strays[name])
    assert len(strays) == STRAYS
    _restart(b)
    _check(b, [_val(i) for i in range(N_RETAINED)], [_msg(i) for i in range(N_QUEUED)],
           {"missing_segments": 0, "damaged_files": 0, "damaged_records": 0})
    now = _files(d)
    for name in strays:
        assert now.get(name) == strays[name], "stray file %s changed or gone" % name
    ours = set(["midge.snap"] + ["midge.%d" % n for n in _segments(d) if n < 10 ** 6])
    assert set(now) - set(strays) == ours, sorted(set(now) - set(strays))   # nothing else appeared


# --- start-up on a store_dir that cannot be used --------------------------------------------

def _midge(interp, args):
    try:
        cmd, env = brokerproc.midge_command(interp, ["--port", str(brokerproc.free_port())] + args)
    except brokerproc.BrokerError as e:
        if os.environ.get("CI") == "true":
            pytest.fail("%s (CI)" % e)
        pytest.skip(str(e))
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=20)


def _refusing_dir():
    d = "/sys/kernel"
    why = None
    if not os.path.isdir(d):
        why = "no /sys/kernel on this host"
    else:
        try:
            open(os.path.join(d, "midge.probe"), "wb").close()
        except OSError:
            return d
        os.remove(os.path.join(d, "midge.probe"))
        why = "/sys/kernel takes new files here"
    if os.environ.get("CI") == "true":
        pytest.fail(why + " (CI: the read-only store_dir case must run)")
    pytest.skip(why)


@pytest.mark.parametrize("interp", ["micropython", "cpython"])
@pytest.mark.parametrize("what", ["missing_parent", "regular_file", "refusing_dir"])
def test_bad_store_dir_exits_2_naming_it(interp, what, tmp_path):
    if what == "missing_parent":
        path = str(tmp_path / "no" / "such" / "store")
        part = "cannot create: [Errno 2] ENOENT"
    elif what == "regular_file":
        path = str(tmp_path / "file")
        with open(path, "wb") as f:
            f.write(b"not a directory")
        part = "not a directory"
    else:
        path = _refusing_dir()
        part = ""  # EACCES or EROFS, said either way
    t0 = time.monotonic()
    r = _midge(interp, ["--store", path])
    assert r.returncode == 2, "exit %s:\n%s%s" % (r.returncode, r.stdout, r.stderr)
    assert "midge: config key 'store_dir': store_dir %s: %s" % (path, part) in r.stderr, r.stderr
    if what == "refusing_dir":
        assert "EACCES" in r.stderr or "EROFS" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr + r.stdout and "listening on" not in r.stdout
    assert time.monotonic() - t0 < 15
    if what == "regular_file":
        with open(path, "rb") as f:
            assert f.read() == b"not a directory"
    assert not os.path.exists(os.path.join(os.path.dirname(path), "midge.probe"))
