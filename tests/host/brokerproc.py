# Start the midge broker as a subprocess for host socket tests.
#
# By default the broker runs under the MicroPython unix port with a
# device-like heap cap (-X heapsize=), exactly as README.md documents:
#     MICROPYPATH=<repo>/lib:.frozen micropython -X heapsize=N -m midge \
#         --host 127.0.0.1 --port P [--config FILE.json]
# Env MIDGE_TEST_INTERP=cpython runs it under this CPython instead (for
# debugging); env MIDGE_MICROPYTHON names a micropython binary explicitly.
# BrokerProc(..., bundle=True) runs MicroPython on the .mpy bundle built by
# tools/build_mpy.py (what a board runs; a 200k heap is too small to
# compile the source once a store is on).
#
# stdout and stderr go to <workdir>/broker.log. stop() reports (as a string)
# a broker that died on its own before the test ended (the broker must
# survive every input a client can send), one that ignored SIGTERM, and one
# that logged a Python traceback (an internal error; env
# MIDGE_TEST_ALLOW_TRACEBACKS=1 turns that check off).
#
# Restart tests (a store_dir in the config): sigkill() ends the broker like a
# crash or power cut, sigterm() like a service stop (a clean stop on CPython;
# the MicroPython unix port has no signal module, so there it is a crash
# too), and restart() starts it again on the same port, config and store.
# Each earlier run's log is kept as broker.log.<run>; stop() checks all of
# them for tracebacks.
import json
import os
import signal
import socket
import subprocess
import time

from hostlib import HOST, ROOT as REPO, find_micropython, free_port, read_log, signal_and_wait  # noqa: F401 (used by tests)
import hostlib


def midge_command(interp, args, heapsize="400k", bundle=False):
    """(argv, env) that run `-m midge ARGS` under interp ("micropython":
    the unix port with -X heapsize, from lib/ or, bundle=True, from the .mpy
    bundle a board runs; "cpython": this interpreter). Raises BrokerError
    when micropython is missing (tests fail under CI=true, else skip)."""
    try:
        return hostlib.midge_command(args, interp, heapsize, "mpy" if bundle else "source")
    except FileNotFoundError as e:
        raise BrokerError(str(e))


def interpreter():
    """'cpython' or 'micropython' (env MIDGE_TEST_INTERP)."""
    return "cpython" if os.environ.get("MIDGE_TEST_INTERP", "").lower() == "cpython" else "micropython"


class BrokerError(Exception):
    pass


class BrokerProc:
    def __init__(self, config=None, heapsize="400k", workdir=None, port=None, bundle=False):
        self.config = dict(config or {})
        self.heapsize = heapsize
        self.bundle = bundle     # MicroPython: run the .mpy bundle (tools/build_mpy.py), as a board does
        self.workdir = workdir or os.path.join("/tmp", "midge-test-%d" % os.getpid())
        self.host = HOST
        self.port = port or free_port()
        self.proc = None
        self.logpath = os.path.join(str(self.workdir), "broker.log")
        self._log = None
        self.clients = []
        self.runs = 0            # start()s so far
        self.old_logs = []       # logs of earlier runs (restart())
        self.ended = False       # the current run was ended by sigkill()/sigterm()

    def command(self):
        args = ["--host", self.host, "--port", str(self.port)]
        if self.config:
            path = os.path.join(str(self.workdir), "config.json")
            with open(path, "w") as f:
                json.dump(self.config, f)
            args += ["--config", path]
        cmd, env = midge_command(interpreter(), args, self.heapsize, self.bundle)
        env["PYTHONUNBUFFERED"] = "1"
        return cmd, env

    def start(self, timeout=10.0):
        os.makedirs(str(self.workdir), exist_ok=True)
        cmd, env = self.command()
        self.runs += 1
        self.ended = False
        self._log = open(self.logpath, "wb")
        self._log.write(("$ " + " ".join(cmd) + "\n").encode())
        self._log.flush()
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        next_poll = time.monotonic() + 0.3
        while True:
            if self.proc.poll() is not None:
                raise BrokerError("broker exited with status %s during start-up:\n%s" % (
                    self.proc.returncode, self.log_tail()))
            if "listening on" in self.log():
                return self
            now = time.monotonic()
            if now >= deadline:
                self.kill()
                raise BrokerError("broker not listening after %.0fs:\n%s" % (timeout, self.log_tail()))
            # Fallback if the line never shows: poll the port now and then.
            if now >= next_poll:
                next_poll = now + 0.5
                if self._port_open():
                    return self
            time.sleep(0.02)

    def _port_open(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(0.2)
        try:
            s.connect((self.host, self.port))
            return True
        except OSError:
            return False
        finally:
            s.close()

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log(self):
        return read_log(self.logpath)

    def log_tail(self, n=60):
        return "\n".join(self.log().splitlines()[-n:])

    # --- clients (closed at stop) -------------------------------------------------

    def raw(self, **kw):
        """A RawClient with a TCP connection, nothing sent yet."""
        from rawclient import RawClient
        c = RawClient(self.host, self.port, **kw)
        self.clients.append(c)
        return c

    def client(self, client_id="", **kw):
        """A RawClient that completed CONNECT with CONNACK rc 0."""
        c = self.raw()
        ack = c.handshake(client_id, **kw)
        assert ack["rc"] == 0, "CONNACK rc %d for client %r" % (ack["rc"], client_id)
        c.connack = ack
        return c

    # --- shutdown ---------------------------------------------------------------------

    def kill(self):
        if self.alive():
            self.proc.kill()
            self.proc.wait()

    def _end(self, sig, timeout):
        """Send `sig`, wait for the exit, then close the clients (they are
        still connected when the signal arrives, as at a real crash); the
        run counts as ended on purpose (stop() does not report it). Returns
        the exit status (negative: the signal)."""
        if self.proc is None:
            raise BrokerError("broker was never started")
        if self.proc.poll() is not None and not self.ended:
            raise BrokerError("broker process died unexpectedly (status %s); log tail:\n%s" % (
                self.proc.returncode, self.log_tail()))
        if self.proc.poll() is None:
            if not signal_and_wait(self.proc, sig, timeout):
                raise BrokerError("broker did not exit within %.0f s of signal %d; log tail:\n%s"
                                  % (timeout, sig, self.log_tail()))
        self.ended = True
        for c in self.clients:
            c.close()
        self.clients = []
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def sigkill(self):
        """SIGKILL: a crash or power cut, nothing is flushed. Returns the
        exit status."""
        return self._end(signal.SIGKILL, 5.0)

    def sigterm(self, timeout=5.0):
        """SIGTERM and wait: a clean stop on CPython; on the MicroPython
        unix port (no signal module) the process dies at once, like a
        crash. Returns the exit status."""
        return self._end(signal.SIGTERM, timeout)

    def restart(self, timeout=10.0):
        """Start the broker again on the same port, config and workdir (so
        the same store_dir) after sigkill()/sigterm() (a running broker is
        SIGKILLed first). The finished run's log moves to broker.log.<run>."""
        if self.alive():
            self.sigkill()
        elif self.proc is not None and not self.ended:
            raise BrokerError("broker process died unexpectedly (status %s); log tail:\n%s" % (
                self.proc.returncode, self.log_tail()))
        if self._log is not None:
            self._log.close()
            self._log = None
        if os.path.exists(self.logpath):
            old = "%s.%d" % (self.logpath, self.runs)
            os.replace(self.logpath, old)
            self.old_logs.append(old)
        return self.start(timeout)

    def stop(self):
        """SIGTERM and wait. Returns an error string if the broker died on its
        own before this call, or did not stop on SIGTERM; else None."""
        for c in self.clients:
            c.close()
        self.clients = []
        if self.proc is None:
            return None
        err = None
        if self.ended:
            pass  # sigkill()/sigterm() ended it on purpose
        elif self.proc.poll() is not None:
            err = "broker process died unexpectedly (status %s); log tail:\n%s" % (
                self.proc.returncode, self.log_tail())
        elif not signal_and_wait(self.proc, signal.SIGTERM, 5):
                err = "broker did not exit within 5 s of SIGTERM; log tail:\n%s" % self.log_tail()
        if self._log is not None:
            self._log.close()
            self._log = None
        if err is None and os.environ.get("MIDGE_TEST_ALLOW_TRACEBACKS", "") != "1":
            err = self.traceback_error()
        return err

    def traceback_error(self):
        """A broker that survives but logs a traceback hit an internal error
        (an exception its error handling did not expect): report it."""
        for path in self.old_logs + [self.logpath]:
            try:
                with open(path, "rb") as f:
                    text = f.read().decode("utf-8", "replace")
            except OSError:
                continue
            i = text.find("Traceback (most recent call last)")
            if i < 0:
                continue
            start = text.rfind("\n", 0, max(i - 1, 0)) + 1
            return ("broker logged a traceback (internal error; env MIDGE_TEST_ALLOW_TRACEBACKS=1 "
                    "ignores it) in %s:\n%s" % (path, "\n".join(text[start:].splitlines()[:30])))
        return None
