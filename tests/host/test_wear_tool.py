# The flash-wear tooling: tools/measure/lfs_fs.py (littlefs image with an
# erase-counting block device, midge's filesystem interface) and
# tools/wear.py (naive files vs midge's store). Quick, and asserts no
# performance figures: only that the counting, the image round trip and the
# report work. littlefs-python comes from requirements.txt.
import json
import os

import pytest


if os.environ.get("CI", "").lower() != "true":
    pytest.importorskip("littlefs", reason="littlefs-python missing; run tools/setup.sh")

from measure import lfs_fs
from measure import wear


def _write(fs, path, data):
    f = fs.open(path, "wb")
    f.write(data)
    fs.sync(f)
    f.close()


def test_device_counts_erases_and_programmed_bytes():
    fs = lfs_fs.new_fs()
    snap = fs.dev.snapshot()
    _write(fs, "/ten_kb", bytes(10 * 1024))
    d = fs.dev.delta(snap)
    assert d["erases"] >= 3                 # 10 KB spans three 4 KB blocks
    assert d["prog_bytes"] >= 10 * 1024
    assert d["blocks_touched"] >= 3
    assert fs.dev.erases == sum(fs.dev.block_erases)


def test_geometry_is_esp32_like():
    g = lfs_fs.new_fs().geometry
    assert g["block_size"] == 4096 and g["block_count"] == 512
    assert g["read_size"] == 32 and g["prog_size"] == 32 and g["lookahead_size"] == 32


def test_interface_matches_the_store_filesystem():
    fs = lfs_fs.new_fs(block_count=32)
    fs.mkdir("/d")
    fs.mkdir("/d")                           # exists: no error
    assert fs.size("/d/a") == -1
    f = fs.open("/d/a", "ab")                # append creates, as on MicroPython
    f.write(b"hello")
    fs.sync(f)
    f.close()
    _write(fs, "/d/a.tmp", b"new!!!")
    fs.rename("/d/a.tmp", "/d/a")           # replaces the old file
    assert fs.listdir("/d") == ["a"]
    assert fs.size("/d/a") == 6
    f = fs.open("/d/a", "rb")
    buf = bytearray(3)
    assert f.readinto(buf) == 3 and buf == b"new"
    assert f.tell() == 3
    f.seek(0)
    assert f.read() == b"new!!!"
    f.close()
    fs.remove("/d/a")
    fs.remove("/d/a")                        # missing: no error
    with pytest.raises(OSError):
        fs.open("/d/a", "rb")


def test_image_round_trip(tmp_path):
    fs = lfs_fs.new_fs()
    fs.mkdir("/store")
    _write(fs, "/store/one", b"first file")
    _write(fs, "/store/two", bytes(range(256)) * 20)   # over a block
    path = str(tmp_path / "flash.img")
    lfs_fs.save_image(fs, path)
    assert os.path.getsize(path) == 512 * 4096

    back = lfs_fs.mount_image(path)
    assert sorted(back.listdir("/store")) == ["one", "two"]
    assert back.read_file("/store/one") == b"first file"
    assert back.read_file("/store/two") == bytes(range(256)) * 20
    assert back.dev.erases == 0              # counters start fresh


def test_mount_rejects_a_blank_image(tmp_path):
    path = str(tmp_path / "blank.img")
    with open(path, "wb") as f:
        f.write(b"\xff" * (16 * 4096))
    from littlefs import LittleFSError

    with pytest.raises(LittleFSError):
        lfs_fs.mount_image(path)


def test_wear_tool_small_run_writes_sane_json(tmp_path, capsys):
    out = str(tmp_path / "wear.json")
    assert wear.main(["--n", "20", "--json", out]) == 0
    printed = capsys.readouterr().out
    assert "retained_1_topic" in printed and "naive" in printed

    with open(out) as f:
        doc = json.load(f)
    assert doc["params"]["n"] == 20
    results = doc["results"]
    assert set(results) == set(wear.SCENARIOS)
    total_erases = 0
    for scenario in wear.SCENARIOS:
        assert set(results[scenario]) == set(wear.STRATEGIES)
        for strategy in wear.STRATEGIES:
            r = results[scenario][strategy]
            for key in ("erases", "erases_per_1000_ops", "prog_bytes", "prog_bytes_per_op",
                        "read_bytes", "blocks_touched", "max_block_erases", "steps",
                        "blocks_touched_per_step", "file_bytes_written"):
                assert key in r, (scenario, strategy, key)
                assert r[key] >= 0, (scenario, strategy, key)
            assert r["ops"] == 20
            assert r["prog_bytes"] > 0 and r["blocks_touched"] > 0 and r["steps"] > 0
            if strategy != "naive":
                assert r["commits"] > 0
            total_erases += r["erases"]
    assert total_erases > 0
