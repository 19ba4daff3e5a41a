# The broker under test as a subprocess, the way tools/run.sh starts it:
#   MICROPYPATH=.frozen:build/mpy micropython -X heapsize=<unix_heapsize>
#       -m midge --board B --host 127.0.0.1 --port P --config run/config.json
# (interp "cpython": PYTHONPATH=lib python -m midge ..., for debugging).
# Output goes to <workdir>/broker.log (earlier runs: broker.log.<n>).
#
# start() raises BrokerStartError when midge exits during start-up; for
# exit status 2 (a bad config value) its message is midge's own line.
# kill() is kill -9 (a crash or power cut); restart() starts again on the
# same port, config and store. dead() tells a broker that died by itself.
import json
import os
import signal
import subprocess
import time

from hostlib import ROOT, find_micropython, midge_command, signal_and_wait


class BrokerStartError(Exception):
    def __init__(self, message, status):
        super().__init__(message)
        self.status = status


def micropython():
    return find_micropython()


class BrokerCtl:
    def __init__(self, board, config, workdir, port, interp="micropython", heapsize=None):
        self.board, self.config, self.workdir, self.port = board, config, workdir, port
        self.interp, self.heapsize = interp, heapsize
        self.proc = None
        self.runs = 0
        self.killed = False
        self.logpath = os.path.join(workdir, "broker.log")
        self._log = None
        self.cmd = None

    def command(self):
        cfg_path = os.path.join(self.workdir, "config.json")
        with open(cfg_path, "w") as f:
            json.dump(self.config, f, indent=1, sort_keys=True)
        args = ["--board", self.board, "--host", "127.0.0.1", "--port", str(self.port), "--config", cfg_path]
        try:
            return midge_command(args, self.interp, heapsize=self.heapsize, code="mpy")
        except FileNotFoundError as e:
            raise BrokerStartError(str(e), 1)

    def start(self, timeout=15.0):
        os.makedirs(self.workdir, exist_ok=True)
        cmd, env = self.command()
        self.cmd = cmd
        self.runs += 1
        self.killed = False
        self._log = open(self.logpath, "wb")
        self._log.write(("$ " + " ".join(cmd) + "\n").encode())
        self._log.flush()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            status = self.proc.poll()
            if status is not None:
                raise BrokerStartError(self._exit_message(status), status)
            if "listening on" in self.log():
                return
            if time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                raise BrokerStartError("broker not listening after %.0f s:\n%s" % (timeout, self.tail()), 1)
            time.sleep(0.02)

    def _exit_message(self, status):
        lines = [ln for ln in self.log().splitlines() if ln.startswith("midge:")]
        if status == 2 and lines:
            return lines[-1]
        return "broker exited with status %s during start-up:\n%s" % (status, self.tail())

    def log(self, path=None):
        try:
            with open(path or self.logpath, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def tail(self, n=30):
        return "\n".join(self.log().splitlines()[-n:])

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def dead(self):
        """Exit status of a broker that died by itself, else None."""
        if self.proc is None or self.killed:
            return None
        return self.proc.poll()

    def kill(self):
        self.killed = True
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self._close_log()

    def restart(self, timeout=15.0):
        if self.alive():
            self.kill()
        self._close_log()
        if os.path.exists(self.logpath):
            os.replace(self.logpath, "%s.%d" % (self.logpath, self.runs))
        self.start(timeout)

    def stop(self):
        """SIGTERM (on the unix port: dies at once), wait; returns the status."""
        if self.alive():
            self.killed = True
            signal_and_wait(self.proc, signal.SIGTERM, 5)
        self._close_log()
        return None if self.proc is None else self.proc.returncode

    def _close_log(self):
        if self._log is not None:
            self._log.close()
            self._log = None

    def logs(self):
        paths = ["%s.%d" % (self.logpath, n) for n in range(1, self.runs)] + [self.logpath]
        return [p for p in paths if os.path.exists(p)]

    def traceback(self):
        """First line of the first Python traceback in any run's log, or None."""
        for p in self.logs():
            text = self.log(p)
            i = text.find("Traceback (most recent call last)")
            if i >= 0:
                rest = text[i:].splitlines()
                last = next((ln for ln in rest[1:] if not ln.startswith(" ")), rest[0])
                return "%s (%s)" % (last.strip(), os.path.basename(p))
        return None
