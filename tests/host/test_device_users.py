"""tools/deploy and tools/image set up the hub's MQTT user: --mqtt-user
NAME [--mqtt-password PW] writes the password file /passwd (that user, the
password hashed with midge.auth.hash_password) and names it in the
settings' config; the plain password is in no file written and no output.
The settings template names /passwd; settings a board would refuse to
start with (a listener on 0.0.0.0, no password file, allow_anonymous
unset) are refused before anything is written. An image made with a user
boots in the emulated board and lets in that user only."""
import io
import json
import os
import stat
import subprocess
import tempfile

import pytest

from brokerproc import REPO, free_port
from interop_util import PahoClient
from test_board_emulation import Board, WORLD, build_image, prog_size, settings_for

from device import deploy_cli, layout, lfsimage
from device.settings_args import files_from_args
from midge import auth

DEPLOY = os.path.join(REPO, "tools", "deploy")
IMAGE = os.path.join(REPO, "tools", "image")
SECRET = "mqtt-Pa55word!"     # never in a file written, never in output
WIFI_SECRET = "wifi-s3cret"


def tool(path, *args):
    return subprocess.run([path] + list(args), capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)


def check_passwd(data, user, password):
    """The password file holds user alone, and password verifies, as the
    broker reads it (load_passwords, Authenticator.check)."""
    assert data.endswith(b"\n") and data.count(b"\n") == 1, data
    assert SECRET.encode() not in data and password.encode() not in data
    fd, path = tempfile.mkstemp(prefix="midge-test-passwd-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    try:
        users = auth.load_passwords(path)
    finally:
        os.remove(path)
    assert list(users) == [user]
    assert users[user].startswith("$pbkdf2-sha256$%d$" % auth.ITERATIONS)
    assert auth.verify(users[user], password.encode())
    a = auth.Authenticator(users)
    assert a.check(user, password.encode())
    assert not a.check(user, b"wrong") and not a.check("other", password.encode())


def test_the_template_names_the_password_file():
    with open(os.path.join(REPO, "firmware", "midge.example.json")) as f:
        template = json.load(f)
    assert template["config"]["password_file"] == layout.PASSWD_PATH == "/passwd"
    assert template["config"]["host"] == "0.0.0.0" and "allow_anonymous" not in template["config"]


# --- tools/deploy ----------------------------------------------------------------------

class FakeBoard:
    """deploy_cli.run's runner: answers the probe as a MicroPython 1.28
    ESP32 and keeps, at the copy, what the staged files held (the staging
    directory is gone once run returns)."""

    def __init__(self):
        self.cmds = []
        self.staged = {}     # device path -> (bytes, mode)

    def __call__(self, cmd, capture_output=True, text=True):
        self.cmds.append(cmd)
        out = ""
        if any("MIDGE-PROBE" in a for a in cmd):
            out = "MIDGE-PROBE 1 28 2822 esp32\n"
        for i, a in enumerate(cmd[:-1]):
            if a == "cp" and cmd[i + 1].startswith("/") and cmd[i + 2].startswith(":/") and cmd[i + 1] != "-r":
                host, dev = cmd[i + 1], cmd[i + 2][1:]
                with open(host, "rb") as f:
                    self.staged[dev] = (f.read(), stat.S_IMODE(os.stat(host).st_mode))
        return subprocess.CompletedProcess(cmd, 0, out, "")


def deploy(*args):
    fake = FakeBoard()
    out = io.StringIO()
    rc = deploy_cli.run(["--board", "esp32", "--port", "/dev/ttyUSB0", "--no-reset"] + list(args),
                        runner=fake, out=out)
    return rc, out.getvalue(), fake


def test_deploy_with_mqtt_user_copies_passwd_named_by_the_settings(capsys):
    rc, out, fake = deploy("--ssid", "home", "--password", WIFI_SECRET, "--mqtt-user", "hub",
                           "--mqtt-password", SECRET)
    assert rc == 0, out
    copy = " ".join(fake.cmds[1])
    targets = [step.rsplit(" ", 1)[1] for step in copy.split(" + ")[2:]]
    assert targets == [":/board.json", ":/main.py", ":/passwd", ":/midge.json"]  # the file before its name
    data, mode = fake.staged["/passwd"]
    check_passwd(data, "hub", SECRET)
    assert mode == 0o600
    settings, mode = fake.staged["/midge.json"]
    settings = json.loads(settings)
    assert settings["config"]["password_file"] == "/passwd" and mode == 0o600
    assert settings["wifi"] == {"ssid": "home", "password": WIFI_SECRET}
    for dev, (data, _mode) in fake.staged.items():
        assert SECRET.encode() not in data, dev
    err = capsys.readouterr()
    assert SECRET not in out + err.out + err.err and WIFI_SECRET not in out + err.out + err.err
    assert "password file /passwd: user 'hub' (password hashed)" in out
    tmp = fake.cmds[1][fake.cmds[1].index("-r") + 1].rsplit("/lib", 1)[0]
    assert not os.path.exists(tmp)    # the staging directory is removed


def test_deploy_mqtt_user_alone_writes_only_the_password_file():
    """A board keeps its settings (the template's name /passwd): a new user
    or password for it is one file."""
    rc, out, fake = deploy("--mqtt-user", "hub", "--mqtt-password", SECRET)
    assert rc == 0, out
    assert sorted(fake.staged) == ["/board.json", "/main.py", "/passwd"]
    check_passwd(fake.staged["/passwd"][0], "hub", SECRET)
    assert "settings: the board's own" in out and SECRET not in out


def test_deploy_dry_run_with_mqtt_user_prints_no_secret():
    r = tool(DEPLOY, "--board", "esp32", "--port", "/dev/ttyUSB0", "--ssid", "home", "--password", WIFI_SECRET,
             "--mqtt-user", "hub", "--mqtt-password", SECRET, "--dry-run")
    assert r.returncode == 0, r.stderr
    assert SECRET not in r.stdout + r.stderr and WIFI_SECRET not in r.stdout + r.stderr
    assert '"password_file": "/passwd"' in r.stdout
    copy = [line for line in r.stdout.splitlines() if line.startswith("$ ")][1]
    assert [s.rsplit(" ", 1)[1] for s in copy.split(" + ")[2:-1]] == [":/board.json", ":/main.py", ":/passwd",
                                                                        ":/midge.json"]


def test_deploy_settings_file_keeps_its_own_password_file(tmp_path):
    s = settings_for(1883)
    s["config"].update(host="0.0.0.0", password_file="/users")
    path = tmp_path / "s.json"
    path.write_text(json.dumps(s))
    rc, out, fake = deploy("--settings", str(path), "--mqtt-user", "hub", "--mqtt-password", SECRET)
    assert rc == 0, out
    assert "/passwd" not in fake.staged
    check_passwd(fake.staged["/users"][0], "hub", SECRET)
    assert json.loads(fake.staged["/midge.json"][0])["config"]["password_file"] == "/users"


def test_deploy_without_user_says_the_boards_own_password_file_is_used():
    rc, out, fake = deploy("--ssid", "home", "--password", "x")
    assert rc == 0, out
    assert "/passwd" not in fake.staged
    assert json.loads(fake.staged["/midge.json"][0])["config"]["password_file"] == "/passwd"
    assert "note: the settings name password_file /passwd: the board's own is used" in out


def test_mqtt_password_is_asked_for_twice():
    class Args:
        settings = None
        ssid = "home"
        password = "x"
        hostname = None
        mqtt_user = "hub"
        mqtt_password = None
    asked = []

    def prompt(text):
        asked.append(text)
        return SECRET
    files = dict(files_from_args(Args, prompt=prompt, interactive=True))
    assert asked == ["MQTT password for 'hub': ", "MQTT password for 'hub' (again): "]
    check_passwd(files["/passwd"], "hub", SECRET)
    answers = iter([SECRET, SECRET + "x"])
    with pytest.raises(layout.LayoutError) as e:
        files_from_args(Args, prompt=lambda _t: next(answers), interactive=True)
    assert "the two MQTT passwords for 'hub' differ" in str(e.value)
    with pytest.raises(layout.LayoutError) as e:
        files_from_args(Args, prompt=prompt, interactive=False)
    assert "--mqtt-user without --mqtt-password and no terminal to ask on" in str(e.value)


def _settings_file(tmp_path, name="s.json", **config):
    s = settings_for(1883)
    s["config"].update(config)
    path = tmp_path / name
    path.write_text(json.dumps(s))
    return str(path)


@pytest.mark.parametrize("case", ["no terminal", "password alone", "empty password", "colon", "comment",
                                  "nested password_file", "open on the LAN"])
def test_deploy_and_image_refuse_bad_user_input(tmp_path, case):
    args, want = {
        "no terminal": (["--ssid", "h", "--password", "x", "--mqtt-user", "hub"],
                        "--mqtt-user without --mqtt-password and no terminal to ask on"),
        "password alone": (["--ssid", "h", "--password", "x", "--mqtt-password", SECRET],
                           "--mqtt-password without --mqtt-user"),
        "empty password": (["--mqtt-user", "hub", "--mqtt-password", ""], "the password for 'hub' is empty"),
        "colon": (["--mqtt-user", "a:b", "--mqtt-password", SECRET], "holds no ':'"),
        "comment": (["--mqtt-user", "#hub", "--mqtt-password", SECRET], "does not start with '#'"),
        "nested password_file": (["--settings", _settings_file(tmp_path, "nested.json", password_file="/etc/users"),
                                  "--mqtt-user", "hub", "--mqtt-password", SECRET],
                                 "top of the board's filesystem"),
        # what the board would refuse to start with, in the broker's words
        "open on the LAN": (["--settings", _settings_file(tmp_path, "open.json", host="0.0.0.0")],
                            "config key 'allow_anonymous': the listener host/port on 0.0.0.0:1883 is not on "
                            "a loopback address and no password_file is set"),
    }[case]
    for cmd in ([DEPLOY, "--board", "esp32", "--port", "/dev/ttyUSB0", "--dry-run"],
                [IMAGE, "--board", "esp32", "--out", str(tmp_path / "x.bin")]):
        r = tool(*(cmd + args))
        assert r.returncode == 2 and want in r.stderr, (cmd[0], r.stdout, r.stderr)
        assert SECRET not in r.stdout + r.stderr
    assert not (tmp_path / "x.bin").exists()


def test_settings_open_on_the_lan_by_choice_are_accepted_with_a_note(tmp_path):
    r = tool(IMAGE, "--board", "esp32", "--out", str(tmp_path / "x.bin"),
             "--settings", _settings_file(tmp_path, host="0.0.0.0", allow_anonymous=True))
    assert r.returncode == 0, r.stderr
    assert "note: allow_anonymous is true: any device on the network may connect" in r.stdout


# --- tools/image -----------------------------------------------------------------------

@pytest.mark.parametrize("board", ["esp32", "pico_w"])
def test_image_with_mqtt_user_holds_passwd(tmp_path, board):
    out = tmp_path / ("fs." + ("uf2" if board == "pico_w" else "bin"))
    r = tool(IMAGE, "--board", board, "--ssid", "home", "--password", WIFI_SECRET, "--mqtt-user", "hub",
             "--mqtt-password", SECRET, "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert SECRET not in r.stdout + r.stderr and WIFI_SECRET not in r.stdout + r.stderr
    assert "password file /passwd: user 'hub'" in r.stdout
    data = out.read_bytes()
    assert SECRET.encode() not in data
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    if board == "pico_w":
        data = b"".join(p for _a, p, _f in lfsimage.uf2_blocks(data))
    files = lfsimage.read(data, prog_size=prog_size(board))     # mounted with littlefs-python
    check_passwd(files["/passwd"], "hub", SECRET)
    settings = json.loads(files["/midge.json"])
    assert settings["config"]["password_file"] == "/passwd"
    assert settings["wifi"] == {"ssid": "home", "password": WIFI_SECRET}
    assert set(files) == {dev for dev, _h in layout.device_files(board)} | {"/passwd", "/midge.json"}


def test_image_from_the_template_without_user_says_the_password_file_is_missing(tmp_path):
    r = tool(IMAGE, "--board", "esp32", "--ssid", "home", "--password", "x", "--out", str(tmp_path / "x.bin"))
    assert r.returncode == 0, r.stderr
    assert "note: the settings name password_file /passwd and the image holds none" in r.stdout
    assert "/passwd" not in lfsimage.read((tmp_path / "x.bin").read_bytes())


def test_image_with_user_boots_and_lets_in_that_user_only(tmp_path, boards):
    """The emulated board mounts the image, loads /passwd and checks logins
    with it: the user gets in, a wrong password and an anonymous client do
    not."""
    port = free_port()
    out = tmp_path / "fs.uf2"
    r = tool(IMAGE, "--board", "pico_w", "--settings", _settings_file(tmp_path, port=port),
             "--mqtt-user", "hub", "--mqtt-password", SECRET, "--out", str(out))
    assert r.returncode == 0, r.stderr
    image = tmp_path / "fs.img"
    image.write_bytes(b"".join(p for _a, p, _f in lfsimage.uf2_blocks(out.read_bytes())))
    b = Board(tmp_path, "pico_w", str(image), WORLD)
    boards.append(b)
    b.wait_line("midge: hub ready at mqtt://127.0.0.1:%d" % port)
    assert b.has("password file /passwd: 1 users")
    c = PahoClient(port, client_id="hub-1", username="hub", password=SECRET)
    try:
        c.connect()
        c.subscribe("t/#", qos=1)
        c.publish("t/x", b"hello", qos=1)
        c.wait_messages(1)
    finally:
        c.close()
    for who, kw in (("wrong", {"username": "hub", "password": "nope"}), ("anonymous", {})):
        c = PahoClient(port, client_id=who, **kw)
        try:
            _sp, rc = c.connect(expect_success=False, timeout=10)
            assert rc.is_failure, (who, rc)
        finally:
            c.close()
    assert SECRET not in b.console()


@pytest.mark.parametrize("config,want", [
    ({"host": "0.0.0.0"}, "midge: setup mode: config key 'allow_anonymous': the listener host/port on 0.0.0.0:"),
    ({"password_file": "/passwd"}, "midge: setup mode: config key 'password_file': password file /passwd: "
                                   "cannot read it"),
])
def test_board_without_a_password_file_waits_in_setup_mode(tmp_path, boards, config, want):
    """What the README says a board prints: open on the LAN without
    allow_anonymous, or a password file named and not there (settings the
    tools refuse, or an image made without --mqtt-user)."""
    s = settings_for(free_port())
    s["config"].update(config)
    image = build_image(tmp_path, "pico_w", s, via_cli=False)
    b = Board(tmp_path, "pico_w", image, WORLD)
    boards.append(b)
    b.wait_line(want)
    assert not b.has("hub ready")
