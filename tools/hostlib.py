"""The one host helper for starting brokers and the things every host tool
and test needs: where the repository and the MicroPython unix port are, a
free port, midge's command line on either interpreter, waiting for a
broker to listen, and stopping a child process. Used by tests/host,
benchmarks/, measure/, hardening/, sim/ and device/ (tools/ is on sys.path:
the entry points live there, pytest.ini adds it for the tests)."""
import os
import shutil
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIB = os.path.join(ROOT, "lib")
VENV_BIN = os.path.join(ROOT, ".venv", "bin")
HOST = "127.0.0.1"
CODES = ("source", "mpy", "frozen")


def midge_on_path():
    """Make `import midge` find lib/midge in this CPython (tools that read
    its config or run the broker in-process). The one place tools touch
    sys.path for it."""
    if LIB not in sys.path:
        sys.path.insert(0, LIB)


def find_micropython():
    """Path of the micropython binary, or None: $MIDGE_MICROPYTHON, then
    .venv/bin, then beside this Python, then PATH."""
    cand = os.environ.get("MIDGE_MICROPYTHON")
    if cand:
        return cand if os.path.exists(cand) else None
    for d in (VENV_BIN, os.path.dirname(sys.executable)):
        cand = os.path.join(d, "micropython")
        if os.path.exists(cand):
            return cand
    return shutil.which("micropython")


def free_port():
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((HOST, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def micropython_path(code):
    """MICROPYPATH for where midge's code comes from: source (lib/,
    compiled at import), mpy (the .mpy bundle a board runs) or frozen (in
    the binary). The code comes ahead of .frozen, so that a build with
    midge frozen in still runs the files; asyncio comes from .frozen."""
    if code == "source":
        return LIB + ":.frozen"
    if code == "mpy":
        import build_mpy
        return build_mpy.build() + ":.frozen"
    if code == "frozen":
        return ".frozen"
    raise ValueError("code must be one of %s, not %r" % (", ".join(CODES), code))


def midge_command(args, interp="micropython", heapsize="400k", code="source", micropython=None,
                  lib=None, bundle=None):
    """(argv, env) that run `-m midge ARGS`, the one way every test and tool
    starts a broker: under the unix port (with -X heapsize and midge's code
    from `code`), or under this CPython. lib / bundle: another copy of the
    package's parent directory (a git revision's lib/, or its .mpy bundle)
    instead of this checkout's. Raises FileNotFoundError when there is no
    micropython."""
    env = dict(os.environ)
    if interp == "cpython":
        env["PYTHONPATH"] = lib or LIB
        env["PYTHONUNBUFFERED"] = "1"
        return [sys.executable, "-m", "midge"] + list(args), env
    mp = micropython or find_micropython()
    if mp is None:
        raise FileNotFoundError("micropython not found (.venv/bin/micropython); run tools/setup.sh")
    env["MICROPYPATH"] = bundle + ":.frozen" if bundle else micropython_path(code)
    return [mp, "-X", "heapsize=%s" % heapsize, "-m", "midge"] + list(args), env


def wait_listening(port, proc=None, timeout=15.0):
    """Until something accepts on 127.0.0.1:port. RuntimeError if proc
    exits first or the time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("broker exited with status %s before listening" % proc.returncode)
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("nothing listening on %s:%d after %.0f s" % (HOST, port, timeout))
            time.sleep(0.05)


def read_log(path):
    """A broker's log as text ("" while it does not exist yet)."""
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except (OSError, TypeError):
        return ""


def signal_and_wait(proc, sig, timeout=5.0):
    """Send `sig` to a running process and wait up to `timeout` seconds for
    it to exit; kill it if it does not. True if it exited on the signal,
    False if it had to be killed."""
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return False
