"""tools/deploy and tools/flash: the commands their dry runs print, their
refusals of bad input, esptool's merge-bin run for real (offline), the
Pico W's combined UF2, and a real deploy with the pinned mpremote into an
emulated board (tools/device/ptybridge.py: the MicroPython unix port's
REPL on a pty, its filesystem a littlefs image), which then boots and
serves paho-mqtt."""
import json
import os
import struct
import subprocess
import sys

import pytest

from brokerproc import REPO, free_port
from interop_util import PahoClient
from test_board_emulation import Board, WORLD, settings_for

from device import deploy_cli, geometry, layout, lfsimage

DEPLOY = os.path.join(REPO, "tools", "deploy")
FLASH = os.path.join(REPO, "tools", "flash")


def tool(path, *args):
    return subprocess.run([path] + list(args), capture_output=True, text=True, timeout=300)


def esp_firmware(path, chip_id=0):
    """A file with the header of an ESP firmware image for chip_id."""
    head = bytes([0xE9, 3, 2, 0x20]) + struct.pack("<I", 0x40080000) + bytes([0xEE, 0, 0, 0])
    head += struct.pack("<H", chip_id) + bytes(10)
    path.write_bytes(head + bytes(range(256)) * 8)
    return str(path)


def rp_firmware(path, family=geometry.RP_CHIPS["rp2040"], at=geometry.RP2040_XIP_BASE):
    path.write_bytes(lfsimage.to_uf2(bytes(range(256)) * 16, at, family))
    return str(path)


# --- tools/flash -----------------------------------------------------------------------

def test_flash_esp32_dry_run_prints_the_commands(tmp_path):
    fw = esp_firmware(tmp_path / "fw.bin")
    img = tmp_path / "fs.bin"
    img.write_bytes(bytes(2 * 1024 * 1024))
    r = tool(FLASH, "--chip", "esp32", "--port", "/dev/ttyUSB0", "--firmware", fw, "--image", str(img), "--dry-run")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "$ esptool --chip esp32 --port /dev/ttyUSB0 erase-flash",
        "$ esptool --chip esp32 --port /dev/ttyUSB0 --baud 460800 write-flash 0x1000 %s 0x200000 %s" % (fw, img)]


@pytest.mark.parametrize("chip,chip_id", [("esp32s2", 2), ("esp32s3", 9), ("esp32c3", 5)])
def test_flash_other_esp_chips_write_at_0(tmp_path, chip, chip_id):
    fw = esp_firmware(tmp_path / "fw.bin", chip_id)
    r = tool(FLASH, "--chip", chip, "--port", "P", "--firmware", fw, "--dry-run", "--no-erase")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["$ esptool --chip %s --port P --baud 460800 write-flash 0x0 %s" % (chip, fw)]


def test_flash_merged_runs_esptool_and_places_both(tmp_path):
    fw = esp_firmware(tmp_path / "fw.bin")
    img = tmp_path / "fs.bin"
    img.write_bytes(b"\x5a" * (2 * 1024 * 1024))
    merged = tmp_path / "merged.bin"
    r = tool(FLASH, "--chip", "esp32", "--firmware", fw, "--image", str(img), "--merged", str(merged))
    assert r.returncode == 0, r.stderr
    data = merged.read_bytes()
    fwb = open(fw, "rb").read()
    assert data[0x1000:0x1000 + len(fwb)] == fwb
    assert data[0x200000:0x400000] == img.read_bytes()


@pytest.mark.parametrize("case", ["other chip", "uf2 for esp", "not firmware", "missing", "unknown chip",
                                  "image size", "rp2 family", "rp2 not uf2", "rp2 drive"])
def test_flash_refuses_bad_input(tmp_path, case):
    fw = esp_firmware(tmp_path / "fw.bin")
    args, want = {
        "other chip": (["--chip", "esp32", "--firmware", esp_firmware(tmp_path / "s3.bin", 9)], "for esp32s3, not esp32"),
        "uf2 for esp": (["--chip", "esp32", "--firmware", rp_firmware(tmp_path / "p.uf2")], "is a UF2 file"),
        "not firmware": (["--chip", "esp32", "--firmware", _write(tmp_path / "x.bin", b"hello")],
                         "not an ESP firmware image"),
        "missing": (["--chip", "esp32", "--firmware", str(tmp_path / "nope.bin")], "nope.bin"),
        "unknown chip": (["--chip", "esp8266", "--firmware", fw], "unknown chip 'esp8266'"),
        "image size": (["--chip", "esp32", "--image", _write(tmp_path / "i.bin", bytes(4096))],
                       "make it with tools/image"),
        "rp2 family": (["--chip", "rp2040", "--firmware", rp_firmware(tmp_path / "q.uf2", family=0x12345678)],
                       "not rp2040"),
        "rp2 not uf2": (["--chip", "rp2040", "--firmware", fw], "not a UF2 file"),
        "rp2 drive": (["--chip", "rp2040", "--firmware", rp_firmware(tmp_path / "r.uf2"), "--drive", str(tmp_path),
                       "--out", str(tmp_path / "c.uf2")], "not a BOOTSEL drive"),
    }[case]
    r = tool(FLASH, *(args + ["--dry-run"]))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert want in r.stderr and r.stderr.startswith("flash: ")


def _write(path, data):
    path.write_bytes(data)
    return str(path)


def test_flash_pico_w_one_uf2_of_firmware_and_filesystem(tmp_path):
    fw = rp_firmware(tmp_path / "fw.uf2")
    img = tmp_path / "fs.uf2"
    r = tool(os.path.join(REPO, "tools", "image"), "--board", "pico_w", "--out", str(img))
    assert r.returncode == 0, r.stderr
    drive = tmp_path / "RPI-RP2"
    drive.mkdir()
    (drive / "INFO_UF2.TXT").write_text("UF2 Bootloader v3.0\nModel: Raspberry Pi RP2\nBoard-ID: RPI-RP2\n")
    out = tmp_path / "combined.uf2"
    r = tool(FLASH, "--chip", "rp2040", "--firmware", fw, "--image", str(img), "--drive", str(drive), "--out", str(out))
    assert r.returncode == 0, r.stderr
    copied = (drive / "combined.uf2").read_bytes()
    assert copied == out.read_bytes()
    blocks = lfsimage.uf2_blocks(copied)
    raw = [struct.unpack_from("<8I", copied, i * 512) for i in range(len(blocks))]
    assert [h[5] for h in raw] == list(range(len(blocks)))        # block numbers
    assert {h[6] for h in raw} == {len(blocks)}                    # total
    fs_base = geometry.RP2040_XIP_BASE + geometry.PICO_W_FS_OFFSET
    fw_blocks = [b for b in blocks if b[0] < fs_base]
    fs_blocks = [b for b in blocks if b[0] >= fs_base]
    assert fw_blocks[0][0] == geometry.RP2040_XIP_BASE
    assert len(fs_blocks) * 256 == geometry.PICO_W_FS_SIZE
    image = b"".join(p for _a, p, _f in fs_blocks)
    files = lfsimage.read(image, prog_size=256)
    assert set(files) == {dev for dev, _h in layout.device_files("pico_w")}


# --- tools/deploy ----------------------------------------------------------------------

def test_deploy_dry_run_prints_every_command_and_no_secret(tmp_path):
    r = tool(DEPLOY, "--board", "esp32", "--port", "/dev/ttyUSB0", "--ssid", "home", "--password", "s3cret!",
             "--hostname", "attic", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "s3cret!" not in r.stdout + r.stderr
    cmds = [line[2:] for line in r.stdout.splitlines() if line.startswith("$ ")]
    assert cmds[0].startswith("mpremote connect /dev/ttyUSB0 resume exec ") and "MIDGE-PROBE" in cmds[0]
    copy = cmds[1]
    assert copy.startswith("mpremote connect /dev/ttyUSB0 resume exec ")
    steps = copy.split(" + ")
    assert "fs cp -r " in steps[1] and steps[1].endswith("/lib :")
    targets = [s.rsplit(" ", 1)[1] for s in steps[2:-1]]
    assert targets == [":/board.json", ":/main.py", ":/midge.json"]
    assert steps[-1] == "reset"
    assert cmds[2] == "(console of /dev/ttyUSB0 at 115200 baud, until 'midge: hub ready at')"
    assert len(cmds) == 3
    assert '"hostname": "attic"' in r.stdout and '"password": "********"' in r.stdout


def test_deploy_stop_and_start_dry_run():
    r = tool(DEPLOY, "--board", "pico_w", "--port", "/dev/ttyACM0", "--stop", "--dry-run")
    cmds = [line[2:] for line in r.stdout.splitlines() if line.startswith("$ ")]
    assert cmds[1:] == ["mpremote connect /dev/ttyACM0 resume fs touch :/noautostart",
                        "mpremote connect /dev/ttyACM0 resume reset"], r.stdout
    r = tool(DEPLOY, "--board", "pico_w", "--port", "/dev/ttyACM0", "--start", "--dry-run")
    cmds = [line[2:] for line in r.stdout.splitlines() if line.startswith("$ ")]
    assert 'os.remove(\\"/noautostart\\")' in cmds[1] and cmds[2] == "mpremote connect /dev/ttyACM0 resume reset"
    assert cmds[3].startswith("(console of /dev/ttyACM0")


@pytest.mark.parametrize("args,want", [
    (["--board", "nope"], "unknown board 'nope'"),
    (["--board", "esp32", "--password", "x"], "--password without --ssid"),
    (["--board", "esp32", "--ssid", "home"], "no terminal to ask on"),
    (["--board", "esp32", "--ssid", "home", "--password", "x", "--hostname", "bad_name"], "key 'hostname'"),
    (["--board", "esp32", "--settings", "/nonexistent.json"], "/nonexistent.json"),
])
def test_deploy_refuses_bad_input(args, want):
    r = subprocess.run([DEPLOY, "--port", "/dev/ttyUSB0", "--dry-run"] + args, capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=120)
    assert r.returncode == 2 and want in r.stderr, (r.stdout, r.stderr)


@pytest.mark.parametrize("answer,want", [
    ("MIDGE-PROBE 1 22 2566 esp32", "MicroPython 1.22; midge needs 1.23 or later"),
    ("MIDGE-PROBE 1 28 2822 rp2", "is a 'rp2' board, not esp32"),
    ("MIDGE-PROBE 1 28 2565 esp32", ".mpy format 5.2"),
    ("Traceback: no", "did not answer the probe"),
])
def test_deploy_probe_refusals(answer, want):
    with pytest.raises(deploy_cli.DeployError) as e:
        deploy_cli.check_probe(answer, "esp32")
    assert want in str(e.value)
    assert deploy_cli.check_probe("MIDGE-PROBE 1 28 2822 esp32", "esp32") == (1, 28)


@pytest.fixture
def emulated_board_port(tmp_path):
    """An emulated ESP32 with an empty, formatted filesystem, reachable by
    mpremote: (socket URL, image path, bridge process)."""
    image = tmp_path / "flash.img"
    data, _used = lfsimage.build([], geometry.filesystem("esp32")[1])
    image.write_bytes(data)
    procs = []

    def start(platform="esp32"):
        p = subprocess.Popen([sys.executable, os.path.join(REPO, "tools", "device", "ptybridge.py"), str(image),
                              "--platform", platform], stdout=subprocess.PIPE, text=True)
        procs.append(p)
        port = int(p.stdout.readline().split()[-1])
        return "socket://127.0.0.1:%d" % port, str(image)
    yield start
    for p in procs:
        p.kill()
        p.wait()


def test_deploy_with_mpremote_into_an_emulated_board_then_boot(tmp_path, emulated_board_port, boards):
    url, image = emulated_board_port()
    port = free_port()
    settings = tmp_path / "s.json"
    settings.write_text(json.dumps(settings_for(port)))
    r = tool(DEPLOY, "--board", "esp32", "--port", url, "--settings", str(settings), "--no-reset")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "board: MicroPython 1." in r.stdout
    files = lfsimage.read(open(image, "rb").read())
    want = {dev: open(host, "rb").read() for dev, host in layout.device_files("esp32")}
    assert json.loads(files.pop("/midge.json")) == settings_for(port)
    assert files == want
    # a module of an older midge is removed; what is unchanged is not copied again
    data = open(image, "rb").read()
    files_before = lfsimage.read(data)
    img2, _u = lfsimage.build(sorted(files_before.items()) + [("/lib/midge/old.mpy", b"M\x06")],
                              geometry.filesystem("esp32")[1])
    open(image, "wb").write(img2)
    r = tool(DEPLOY, "--board", "esp32", "--port", url, "--no-reset")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "removed /lib/midge/old.mpy" in r.stdout
    assert r.stdout.count("Up to date:") == len(want), r.stdout
    assert "/lib/midge/old.mpy" not in lfsimage.read(open(image, "rb").read())
    # the board boots what deploy wrote, and serves
    b = Board(tmp_path, "esp32", image, WORLD)
    boards.append(b)
    b.wait_line("midge: hub ready at mqtt://127.0.0.1:%d" % port)
    c = PahoClient(port, client_id="after-deploy")
    try:
        c.connect()
        c.subscribe("d/#", qos=1)
        c.publish("d/x", b"deployed", qos=1)
        c.wait_messages(1)
    finally:
        c.close()


def test_deploy_refuses_a_board_of_another_platform(emulated_board_port):
    url, image = emulated_board_port(platform="rp2")
    before = open(image, "rb").read()
    r = tool(DEPLOY, "--board", "esp32", "--port", url, "--ssid", "x", "--password", "y")
    assert r.returncode == 2 and "is a 'rp2' board, not esp32" in r.stderr, r.stdout + r.stderr
    assert open(image, "rb").read() == before   # nothing written




def test_package_json_lists_every_module():
    pkg = json.load(open(os.path.join(REPO, "package.json")))
    want = sorted(["midge/" + n, "lib/midge/" + n] for n in os.listdir(os.path.join(REPO, "lib", "midge"))
                  if n.endswith(".py"))
    want += [["midge_hub.py", "firmware/midge_hub.py"], ["midge_settings.py", "firmware/midge_settings.py"]]
    assert sorted(pkg["urls"]) == sorted(want)
    from midge.broker import VERSION
    assert pkg["version"] == VERSION


@pytest.mark.timeout(300)  # ~130 s: mpremote copies each of ~38 files over the emulated board's raw REPL
def test_mip_install_of_the_repository_into_an_emulated_board(emulated_board_port):
    """`mpremote mip install` with the repository's package.json (here the
    local file: no network) puts midge where a board imports it from."""
    url, image = emulated_board_port()
    mpremote = os.path.join(os.path.dirname(sys.executable), "mpremote")
    r = subprocess.run([mpremote, "connect", url, "resume", "mip", "install", os.path.join(REPO, "package.json")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    files = lfsimage.read(open(image, "rb").read())
    assert files["/lib/midge/broker.py"] == open(os.path.join(REPO, "lib", "midge", "broker.py"), "rb").read()
    assert "/lib/midge_hub.py" in files and "/lib/midge_settings.py" in files
    r = subprocess.run([mpremote, "connect", url, "resume", "exec",
                        "import midge.server, midge_settings; print('imported', midge.server.VERSION)"],
                       capture_output=True, text=True, timeout=120)
    assert "imported 0." in r.stdout, r.stdout + r.stderr


# --- tools/firmware ----------------------------------------------------------------------

@pytest.mark.parametrize("target,port,stock", [("esp32", "esp32", "ESP32_GENERIC"), ("pico_w", "rp2", "RPI_PICO_W")])
def test_firmware_dry_run_prints_the_build(tmp_path, target, port, stock):
    r = tool(os.path.join(REPO, "tools", "firmware"), target, "--src", str(tmp_path / "mp"), "--dry-run")
    assert r.returncode == 0, r.stderr
    cmds = [line[2:] for line in r.stdout.splitlines() if line.startswith("$ ")]
    board = os.path.join(REPO, "build", "firmware", target, "board")
    assert cmds[0].startswith("make -C %s/mp/mpy-cross" % tmp_path)
    assert cmds[1].startswith("make -C %s/mp/ports/%s" % (tmp_path, port)) and "BOARD_DIR=" + board in cmds[1]
    assert "assemble %s from %s/mp/ports/%s/boards/%s" % (board, tmp_path, port, stock) in r.stdout


def test_firmware_refuses_a_tree_that_is_not_micropython(tmp_path):
    r = tool(os.path.join(REPO, "tools", "firmware"), "pico_w", "--src", str(tmp_path))
    assert r.returncode == 2 and "not a MicroPython source tree" in r.stderr


def test_firmware_board_files_freeze_midge():
    for board in ("esp32", "pico_w"):
        text = open(os.path.join(REPO, "boards", board, "manifest.py")).read()
        assert 'package("midge", base_path="$(BOARD_DIR)/midge/lib")' in text
        assert 'include("$(BOARD_DIR)/stock_manifest.py")' in text
    assert "CONFIG_LWIP_MAX_SOCKETS=16" in open(os.path.join(REPO, "boards", "esp32", "sdkconfig.midge")).read()
    assert "#define MEMP_NUM_TCP_PCB" in open(os.path.join(REPO, "boards", "pico_w", "lwipopts_midge.h")).read()
