"""The board, emulated: tools/image builds the filesystem image a user
writes to the board; the MicroPython unix port mounts it with vfs.VfsLfs2
over a file-backed block device (tools/device/emulate.py), with stub
machine and network modules (tools/device/board_stubs), and boots
/main.py from it as the firmware would, under the board's heap. paho-mqtt
drives the hub that comes up. Proves the image, the paths, the settings
and the boot sequence together: good settings, missing settings, wrong
Wi-Fi, a Wi-Fi drop, autostart off, a bad config value, and the store on
the image's flash surviving a restart."""
import json
import os
import signal
import subprocess
import threading
import time

import pytest

from brokerproc import REPO, find_micropython, free_port
from interop_util import PahoClient

from device import geometry, layout, lfsimage

EMULATE = os.path.join(REPO, "tools", "device", "emulate.py")
BOARDS = ("esp32", "pico_w")


def board_heap(board):
    return layout.board_info(board)["unix_heapsize"]


def settings_for(port, **extra):
    s = {"wifi": {"ssid": "home", "password": "secret"}, "hostname": "hub-test",
         "config": {"host": "127.0.0.1", "port": port, "store_dir": "/store", "sys_interval_s": 1}}
    s.update(extra)
    return s


def build_image(tmp_path, board, settings=None, extra_files=(), via_cli=True):
    """The raw filesystem image (a .bin for the ESP32; the Pico W's .uf2
    unpacked, its addresses checked) at tmp_path/fs.img."""
    out = str(tmp_path / ("image." + ("uf2" if board == "pico_w" else "bin")))
    if via_cli and not extra_files:
        cmd = [os.path.join(REPO, "tools", "image"), "--board", board, "--out", out]
        if settings is not None:
            path = tmp_path / "settings.json"
            path.write_text(json.dumps(settings))
            cmd += ["--settings", str(path)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        data = open(out, "rb").read()
    else:
        files = [(dev, open(host, "rb").read()) for dev, host in layout.device_files(board)]
        if settings is not None:
            files.append((layout.SETTINGS_PATH, json.dumps(settings).encode()))
        files += list(extra_files)
        chip = layout.board_info(board)["chip"]
        _off, size = geometry.filesystem(chip)
        data, _used = lfsimage.build(files, size, prog_size=prog_size(board))
    if board == "pico_w":
        blocks = lfsimage.uf2_blocks(data) if data[:4] == b"UF2\n" else None
        if blocks is not None:
            base = geometry.RP2040_XIP_BASE + geometry.PICO_W_FS_OFFSET
            assert [a for a, _p, _f in blocks] == [base + 256 * i for i in range(len(blocks))]
            assert {f for _a, _p, f in blocks} == {geometry.RP_CHIPS["rp2040"]}
            data = b"".join(p for _a, p, _f in blocks)
    img = tmp_path / "fs.img"
    img.write_bytes(data)
    return str(img)


def prog_size(board):
    return 256 if board == "pico_w" else 32


class Board:
    """An emulated board running an image, its console collected."""

    def __init__(self, tmp_path, board, image, world, heap=None):
        self.world_path = str(tmp_path / "world.json")
        self.set_world(world)
        mp = find_micropython()
        assert mp, "micropython not found"
        self.lines = []
        self.eof = False        # the console has closed: the board stopped
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(
            [mp, "-X", "heapsize=" + (heap or board_heap(board)), EMULATE, image, self.world_path, str(prog_size(board))],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=str(tmp_path))
        threading.Thread(target=self._read, daemon=True).start()

    def set_world(self, world):
        tmp = self.world_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(world, f)
        os.replace(tmp, self.world_path)

    def _read(self):
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def wait_line(self, text, timeout=20.0, after=0):
        """Index of the first console line from `after` on containing text."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for i in range(after, len(self.lines)):
                    if text in self.lines[i]:
                        return i
                left = deadline - time.monotonic()
                if left <= 0 or self.eof:
                    raise AssertionError("no console line with %r; console:\n%s" % (text, self.console()))
                self.cond.wait(min(left, 0.2))

    def console(self):
        return "\n".join(self.lines)

    def has(self, text):
        return any(text in line for line in self.lines)

    def exit_code(self, timeout=15.0):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError("board did not stop; console:\n" + self.console())

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # Ctrl-C on the console
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


WORLD = {"aps": {"home": "secret"}, "wifi_up": True, "address": "127.0.0.1", "join_ms": 200}




def round_trip(port, topic, retain=False):
    sub = PahoClient(port, client_id="emu-sub")
    pub = PahoClient(port, client_id="emu-pub")
    try:
        sub.connect()
        sub.subscribe(topic, qos=1)
        pub.connect()
        pub.publish(topic, b"hello board", qos=1, retain=retain)
        sub.wait_messages(1)
        assert sub.messages[0].payload == b"hello board"
    finally:
        sub.close()
        pub.close()


@pytest.mark.parametrize("board", BOARDS)
def test_good_settings_boot_serve_and_store_on_flash(tmp_path, boards, board):
    port = free_port()
    image = build_image(tmp_path, board, settings_for(port))
    b = Board(tmp_path, board, image, WORLD)
    boards.append(b)
    ready = b.wait_line("midge: hub ready at mqtt://127.0.0.1:%d (hub-test)" % port)
    assert b.has("emu: hostname hub-test")
    assert b.has("emu: watchdog started (8000 ms)")
    assert not b.has("no /board.json"), "the board file was not found where deploy puts it"
    assert b.has("max_clients=%d" % layout.board_info(board)["config"]["max_clients"])
    round_trip(port, "emu/retained", retain=True)
    time.sleep(1.5)  # store_sync_ms: the retained message reaches flash
    b.stop()
    assert b.proc.returncode == 0, b.console()
    i = b.wait_line("midge: stopped (Ctrl-C)", after=ready)
    b.wait_line("emu: timer every", after=i)   # the watchdog stays fed for maintenance
    b.wait_line("emu: main.py returned: the REPL", after=i)
    assert not b.has("machine.reset()")
    # the store is on the image's flash
    files = lfsimage.read(open(image, "rb").read(), prog_size=prog_size(board))
    assert any(p.startswith("/store/") for p in files), sorted(files)
    # and a restart from the same flash still has the retained message
    b2 = Board(tmp_path, board, image, WORLD)
    boards.append(b2)
    b2.wait_line("hub ready at")
    sub = PahoClient(port, client_id="emu-again")
    try:
        sub.connect()
        sub.subscribe("emu/retained", qos=1)
        sub.wait_messages(1)
        assert sub.messages[0].payload == b"hello board" and sub.messages[0].retain
    finally:
        sub.close()


@pytest.mark.parametrize("board", BOARDS)
def test_missing_settings_waits_in_setup_mode(tmp_path, boards, board):
    image = build_image(tmp_path, board, settings=None)
    b = Board(tmp_path, board, image, WORLD)
    boards.append(b)
    b.wait_line("midge: setup mode: no /midge.json")
    assert b.exit_code() == 0
    assert b.has("emu: main.py returned: the REPL")
    assert not b.has("machine.reset()") and not b.has("watchdog started")


def test_wrong_wifi_password_retries_with_backoff_while_serving(tmp_path, boards):
    port = free_port()
    image = build_image(tmp_path, "esp32", settings_for(port))
    b = Board(tmp_path, "esp32", image, dict(WORLD, aps={"home": "other"}))
    boards.append(b)
    b.wait_line("cannot join (wrong password); next try in 1 s")
    b.wait_line("cannot join (wrong password); next try in 2 s")
    assert not b.has("hub ready")
    round_trip(port, "emu/x")   # the broker serves meanwhile (here: over loopback)
    b.set_world(WORLD)          # the password is fixed at the access point
    b.wait_line("hub ready at mqtt://127.0.0.1:%d" % port, timeout=30)
    assert not b.has("machine.reset()")


def test_wifi_drop_rejoins_and_sessions_survive(tmp_path, boards):
    port = free_port()
    image = build_image(tmp_path, "esp32", settings_for(port))
    b = Board(tmp_path, "esp32", image, WORLD)
    boards.append(b)
    first = b.wait_line("hub ready at")
    sub = PahoClient(port, client_id="emu-persistent", clean_session=False)
    try:
        sub.connect()
        sub.subscribe("emu/drop", qos=1)
        b.set_world(dict(WORLD, wifi_up=False))
        lost = b.wait_line("Wi-Fi 'home' lost", after=first)
        b.wait_line("cannot join (no ap found)", after=lost)
        pub = PahoClient(port, client_id="emu-pub2")
        pub.connect()
        pub.publish("emu/drop", b"during the drop", qos=1)
        pub.close()
        sub.wait_messages(1)
        b.set_world(WORLD)
        b.wait_line("hub ready at", after=lost, timeout=30)
    finally:
        sub.close()
    assert not b.has("machine.reset()")


@pytest.mark.parametrize("how", ["file", "button"])
def test_autostart_off(tmp_path, boards, how):
    port = free_port()
    extra = [("/noautostart", b"")] if how == "file" else []
    image = build_image(tmp_path, "esp32", settings_for(port), extra_files=extra, via_cli=False)
    b = Board(tmp_path, "esp32", image, dict(WORLD, boot_button=(how == "button")))
    boards.append(b)
    b.wait_line("midge: autostart off: " + ("/noautostart exists" if how == "file" else "the boot button"))
    assert b.exit_code() == 0
    assert not b.has("watchdog started") and not b.has("listening on")


def test_bad_config_value_on_the_board_names_the_key(tmp_path, boards):
    port = free_port()
    bad = settings_for(port)
    bad["config"]["max_clients"] = 0
    # tools/image refuses it ...
    r = subprocess.run([os.path.join(REPO, "tools", "image"), "--board", "esp32", "--out", str(tmp_path / "x.bin"),
                        "--settings", _write(tmp_path / "bad.json", bad)], capture_output=True, text=True)
    assert r.returncode == 2 and "max_clients" in r.stderr, r.stderr
    # ... and a board given it anyway waits in setup mode naming the key
    image = build_image(tmp_path, "esp32", bad, extra_files=[("/unused", b"")], via_cli=False)
    b = Board(tmp_path, "esp32", image, WORLD)
    boards.append(b)
    b.wait_line("midge: setup mode: config key 'max_clients'")
    assert b.exit_code() == 0
    assert not b.has("machine.reset()")


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return str(path)


def test_image_mounts_back_file_by_file(tmp_path):
    """The image holds exactly the layout's files, byte for byte, and the
    ESP32 geometry follows the firmware version."""
    port = free_port()
    image = build_image(tmp_path, "esp32", settings_for(port))
    files = lfsimage.read(open(image, "rb").read())
    want = {dev: open(host, "rb").read() for dev, host in layout.device_files("esp32")}
    settings = files.pop(layout.SETTINGS_PATH)
    assert json.loads(settings) == settings_for(port)
    assert files == want
    assert os.path.getsize(image) == 2 * 1024 * 1024
    assert geometry.filesystem("esp32", (1, 25)) == (0x200000, 0x200000)
    assert geometry.filesystem("esp32", (1, 28), 8 << 20) == (0x200000, 6 << 20)
    assert geometry.filesystem("rp2040") == (0x12C000, 848 * 1024)
    with pytest.raises(geometry.GeometryError):
        geometry.filesystem("esp32", (1, 22))


def test_store_too_large_for_the_heap_is_setup_mode_not_a_reset_loop(tmp_path, boards):
    """A store filled under a larger heap (caps raised) does not fit the
    board's: the hub says so and waits, instead of resetting forever."""
    port = free_port()
    big = settings_for(port)
    big["config"].update({"max_retained_messages": 400, "max_retained_bytes": 1 << 20, "store_max_bytes": 1 << 21})
    image = build_image(tmp_path, "esp32", big)
    b = Board(tmp_path, "esp32", image, WORLD, heap="4M")
    boards.append(b)
    b.wait_line("hub ready at")
    pub = PahoClient(port, client_id="filler")
    try:
        pub.connect()
        for i in range(400):
            pub.publish("fill/%03d" % i, b"r" * 200, qos=1, retain=True)
    finally:
        pub.close()
    time.sleep(1.5)  # store_sync_ms
    b.stop()
    b2 = Board(tmp_path, "esp32", image, WORLD)   # the board's own heap
    boards.append(b2)
    b2.wait_line("midge: setup mode: not enough heap to start")
    assert b2.exit_code() == 0
    assert not b2.has("machine.reset()")
