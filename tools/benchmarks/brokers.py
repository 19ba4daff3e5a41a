"""Broker launchers for the benchmark: midge under the MicroPython unix port
(.mpy bundle, as tools/run.sh), midge under CPython, Debian's mosquitto, and
the null relay (tools/benchmarks/null.py). Every broker listens on 127.0.0.1 on a
free port, logs to a file in the work directory and is stopped with SIGTERM
(SIGKILL after 5 s). Also: the machine description printed with the results.
"""
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time

from hostlib import HOST, ROOT, find_micropython, free_port, midge_command, signal_and_wait  # noqa: F401 (free_port: used by callers)

# Caps raised so that no cap bites in any scenario (the figures measure the
# broker, not its device budget). sys_interval_s 1: $SYS/broker/heap/alloc
# for conn_scaling and the drop counters read after every scenario.
MIDGE_CONFIG = {
    "max_clients": 2000,
    "max_sessions": 4000,
    "max_subscriptions": 16,
    "max_subscriptions_total": 100000,
    "max_inflight": 10,
    "max_queued_messages": 100000,
    "max_queued_bytes": 1 << 24,
    "max_queued_total": 1000000,
    "max_queued_bytes_total": 1 << 26,
    "max_outbound_bytes": 1 << 20,
    "max_retained_messages": 100000,
    "max_retained_bytes": 1 << 24,
    "sys_interval_s": 1,
    "log_level": "info",
}
MICROPYTHON_HEAPSIZE = "16M"

MOSQUITTO_CONF = """\
listener {port} 127.0.0.1
allow_anonymous true
max_inflight_messages 10
max_queued_messages 1000000
persistence false
log_dest stdout
"""


def micropython_path():
    return find_micropython()


def mosquitto_path():
    for p in ("/usr/sbin/mosquitto", shutil.which("mosquitto")):
        if p and os.path.exists(p):
            return p
    return None


def rss_bytes(pid):
    """VmRSS of a process from /proc/<pid>/status, in bytes (None if gone)."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _port_open(port):
    s = socket.socket()
    s.settimeout(0.2)
    try:
        s.connect((HOST, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


class BrokerProcess:
    """One broker kind; start() runs a fresh process (a scenario gets a fresh
    broker), stop() ends it and returns notes on anything abnormal."""

    name = "?"

    def __init__(self, workdir):
        self.workdir = workdir
        self.proc = None
        self.port = None
        self.logpath = None
        self.runs = 0

    def command(self, port, overrides):
        raise NotImplementedError

    def describe(self):
        return {}

    def start(self, overrides=None, timeout=15.0):
        self.runs += 1
        self.port = free_port()
        self.logpath = os.path.join(self.workdir, "%s-%d.log" % (self.name, self.runs))
        cmd, env = self.command(self.port, overrides or {})
        log = open(self.logpath, "ab")
        log.write(("$ " + " ".join(cmd) + "\n").encode())
        log.flush()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while not _port_open(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError("%s exited with status %s at start:\n%s" % (
                    self.name, self.proc.returncode, self.log_tail()))
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError("%s not listening after %.0f s:\n%s" % (
                    self.name, timeout, self.log_tail()))
            time.sleep(0.02)
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def rss(self):
        return rss_bytes(self.proc.pid) if self.alive() else None

    def log(self):
        try:
            with open(self.logpath, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except (OSError, TypeError):
            return ""

    def log_tail(self, n=30):
        return "\n".join(self.log().splitlines()[-n:])

    def kill(self):
        if self.alive():
            self.proc.kill()
            self.proc.wait()

    def stop(self):
        """SIGTERM and wait; returns a list of notes (died on its own,
        ignored SIGTERM, traceback in its log)."""
        notes = []
        if self.proc is None:
            return notes
        if self.proc.poll() is not None:
            notes.append("%s died during the scenario (status %s); log tail: %s" % (
                self.name, self.proc.returncode, self.log_tail(8)))
        elif not signal_and_wait(self.proc, signal.SIGTERM, 5):
                notes.append("%s ignored SIGTERM for 5 s (killed)" % self.name)
        text = self.log()
        if "Traceback" in text:
            i = text.find("Traceback")
            notes.append("%s logged a traceback: %s" % (self.name, text[i:i + 600]))
        self.proc = None
        return notes


class Midge(BrokerProcess):
    """midge under the MicroPython unix port (interp "micropython", the .mpy
    bundle of tools/build_mpy.py) or under CPython (interp "cpython")."""

    def __init__(self, workdir, interp, heapsize=MICROPYTHON_HEAPSIZE, config=None, source=None):
        super().__init__(workdir)
        self.interp = interp
        self.name = interp
        self.heapsize = heapsize
        self.config = dict(MIDGE_CONFIG if config is None else config)
        self.source = source or midge_source(None, workdir)
        self.bundle = None
        if interp == "micropython":
            self.bundle = self.source["mpy"]()

    def command(self, port, overrides):
        cfg = dict(self.config)
        cfg.update(overrides)
        path = os.path.join(self.workdir, "midge-%s-%d.json" % (self.interp, self.runs))
        with open(path, "w") as f:
            json.dump(cfg, f, indent=1, sort_keys=True)
        args = ["--host", HOST, "--port", str(port), "--config", path]
        if self.interp == "cpython":
            return midge_command(args, "cpython", lib=self.source["lib"])
        try:
            return midge_command(args, heapsize=self.heapsize, bundle=self.bundle)
        except FileNotFoundError as e:
            raise RuntimeError(str(e))

    def describe(self):
        d = {"config": self.config, "source": self.source["desc"]}
        if self.interp == "micropython":
            d["heapsize"] = self.heapsize
            d["command"] = ("MICROPYPATH=.frozen:BUNDLE .venv/bin/micropython -X heapsize=%s "
                            "-m midge --host 127.0.0.1 --port PORT --config FILE.json "
                            "(BUNDLE: the snapshot of lib/midge compiled with the pinned "
                            "mpy-cross, as tools/build_mpy.py does)" % self.heapsize)
        else:
            d["command"] = ("PYTHONPATH=lib .venv/bin/python -m midge --host 127.0.0.1 "
                            "--port PORT --config FILE.json")
        return d


class Mosquitto(BrokerProcess):
    """Debian's mosquitto with MOSQUITTO_CONF; nodelay=True adds
    `set_tcp_nodelay true` (broker name mosquitto_nodelay): mosquitto leaves
    Nagle's algorithm on by default, midge sets TCP_NODELAY."""

    def __init__(self, workdir, nodelay=False):
        super().__init__(workdir)
        self.nodelay = nodelay
        self.name = "mosquitto_nodelay" if nodelay else "mosquitto"
        self.exe = mosquitto_path()
        if self.exe is None:
            raise RuntimeError("mosquitto not found (/usr/sbin/mosquitto); "
                               "apt-get install mosquitto, or tools/setup.sh --with-debian")

    def command(self, port, overrides):
        path = os.path.join(self.workdir, "mosquitto-%d.conf" % self.runs)
        with open(path, "w") as f:
            f.write(self.conf().format(port=port))
        return [self.exe, "-c", path], dict(os.environ)

    def conf(self):
        return MOSQUITTO_CONF + ("set_tcp_nodelay true\n" if self.nodelay else "")

    def describe(self):
        return {"conf": self.conf().format(port="PORT"),
                "command": "%s -c FILE.conf" % self.exe}


class NullPeer(BrokerProcess):
    """tools/benchmarks/null.py: the relay ("null broker") or the discard sink."""

    def __init__(self, workdir, mode="relay"):
        super().__init__(workdir)
        self.mode = mode
        self.name = "null" if mode == "relay" else "discard"

    def command(self, port, overrides):
        env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "tools"))
        return [sys.executable, "-m", "benchmarks.null", "--port", str(port), "--mode", self.mode], env

    def describe(self):
        return {"command": "PYTHONPATH=tools python -m benchmarks.null --mode %s" % self.mode}


def _git(*args):
    r = subprocess.run(["git"] + list(args), cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("git %s: %s" % (" ".join(args), r.stderr.strip()))
    return r.stdout.strip()


def midge_source(rev, workdir):
    """A snapshot of midge to benchmark: {"lib": dir for PYTHONPATH, "mpy":
    function returning the .mpy bundle dir, "desc": text for the report}.

    rev None copies the working tree's lib/midge, rev a git revision is
    exported with `git archive`; either way into workdir, compiled there
    with the pinned mpy-cross as tools/build_mpy.py does. Every repetition
    then measures the same code even while lib/midge is being edited."""
    import build_mpy
    if rev is None:
        try:
            head = _git("rev-parse", "--short", "HEAD")
            changed = [line.split()[-1] for line in
                       _git("status", "--porcelain", "--", "lib/midge").splitlines() if line.strip()]
        except (RuntimeError, OSError):
            head, changed = "?", []
        base = os.path.join(workdir, "src-worktree")
        shutil.rmtree(base, ignore_errors=True)
        shutil.copytree(os.path.join(ROOT, "lib", "midge"), os.path.join(base, "lib", "midge"),
                        ignore=shutil.ignore_patterns("__pycache__"))
        desc = "working tree lib/midge at HEAD %s" % head
        if changed:
            desc += " + uncommitted changes (%s)" % ", ".join(sorted(changed))
    else:
        commit = _git("rev-parse", "--short", rev)
        base = os.path.join(workdir, "src-" + commit)
        if not os.path.isdir(os.path.join(base, "lib", "midge")):
            os.makedirs(base, exist_ok=True)
            arch = subprocess.run(["git", "archive", commit, "lib/midge"], cwd=ROOT,
                                  capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", base], input=arch, check=True)
        desc = "git %s (%s) of lib/midge" % (rev, commit)
    lib = os.path.join(base, "lib")

    def mpy():
        out = os.path.join(base, "mpy")
        dst = os.path.join(out, "midge")
        if not os.path.isdir(dst):
            os.makedirs(dst)
            src = os.path.join(lib, "midge")
            for name in sorted(os.listdir(src)):
                if name.endswith(".py"):
                    r = subprocess.run(build_mpy.mpy_cross() + [
                        "-s", "midge/" + name, "-o", os.path.join(dst, name[:-3] + ".mpy"),
                        os.path.join(src, name)], capture_output=True, text=True)
                    if r.returncode != 0:
                        raise RuntimeError("mpy-cross failed on %s: %s" % (name, r.stderr.strip()))
        return out

    return {"lib": lib, "mpy": mpy, "desc": desc}


def make_broker(name, workdir, heapsize=MICROPYTHON_HEAPSIZE, source=None):
    if name in ("micropython", "cpython"):
        return Midge(workdir, name, heapsize=heapsize, source=source)
    if name in ("mosquitto", "mosquitto_nodelay"):
        return Mosquitto(workdir, nodelay=name == "mosquitto_nodelay")
    if name == "null":
        return NullPeer(workdir, "relay")
    raise ValueError("unknown broker %r (micropython, cpython, mosquitto, mosquitto_nodelay, null)"
                     % name)


# --- the machine ------------------------------------------------------------------

def _first_line(cmd):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (r.stdout or r.stderr or "").strip()
    return text.splitlines()[0] if text else None


def machine():
    cpu = None
    cores = 0
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cores += 1
                    cpu = cpu or line.split(":", 1)[1].strip()
    except OSError:
        pass
    mp = micropython_path()
    mosq = mosquitto_path()
    mpver = None
    if mp:
        mpver = _first_line([mp, "-c", (
            "import sys; v = sys.implementation.version; "
            "print('%d.%d.%d' % v[:3] + ('-' + v[3] if len(v) > 3 and v[3] else ''), "
            "'(' + sys.version.split(';', 1)[-1].strip() + ')', "
            "'%d-bit unix port' % (64 if sys.maxsize > 2**32 else 32))")])
    return {
        "cpu": cpu,
        "cores": cores or os.cpu_count(),
        "kernel": platform.release(),
        "os": _first_line(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "python": platform.python_version(),
        "micropython": mpver,
        "micropython_bits": 64 if mpver and "64-bit" in mpver else None,
        "mosquitto": _first_line([mosq, "-h"]) if mosq else None,
    }


# --- CPU accounting of one run -------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_cpu_s(pid):
    """utime + stime of a process in seconds (None if gone)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, IndexError, ValueError):
        return None


def _machine_busy_s():
    """Busy CPU seconds of the whole machine (all cores) from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            parts = f.readline().split()[1:]
    except OSError:
        return None
    vals = [int(x) for x in parts[:8]]
    idle = vals[3] + vals[4]
    return (sum(vals) - idle) / _TICK


class CpuMeter:
    """CPU used during a run, in percent of one core: the broker process,
    this generator process, and everything else on the machine (other
    processes and kernel softirq work such as loopback TCP)."""

    def __init__(self, broker_pid):
        self.pid = broker_pid

    def __enter__(self):
        self.t = time.monotonic()
        self.b = _proc_cpu_s(self.pid)
        t = os.times()
        self.g = t.user + t.system
        self.m = _machine_busy_s()
        return self

    def __exit__(self, *exc):
        self.finish()
        return False

    def finish(self):
        wall = time.monotonic() - self.t
        b = _proc_cpu_s(self.pid)
        t = os.times()
        g = t.user + t.system - self.g
        m = _machine_busy_s()
        self.result = {"wall_s": wall}
        if wall < 1.0:
            return self.result  # 100 Hz accounting ticks: too coarse for a shorter run
        broker = None if b is None or self.b is None else b - self.b
        if broker is not None:
            self.result["broker_cpu_pct"] = 100.0 * broker / wall
        self.result["generator_cpu_pct"] = 100.0 * g / wall
        if m is not None and self.m is not None:
            total = m - self.m
            self.result["machine_cpu_pct"] = 100.0 * total / wall
            if broker is not None:
                self.result["other_cpu_pct"] = max(0.0, 100.0 * (total - broker - g) / wall)
        return self.result


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def background_cpu_pct(seconds=0.3):
    """Machine-wide busy CPU (percent of one core) over `seconds` while this
    harness sleeps and no broker runs: load from other processes."""
    a = _machine_busy_s()
    time.sleep(seconds)
    b = _machine_busy_s()
    if a is None or b is None:
        return None
    return 100.0 * (b - a) / seconds
