"""`make run` as a user meets it: on a terminal (a pty), with extra flags
through ARGS, and a Ctrl-C that stops the broker and exits 0 without
make's "*** Interrupt"; and the profile line of a start without --board."""
import os
import pty
import select
import subprocess
import sys
import time

from hostlib import ROOT, free_port


def _read_until(fd, text, timeout):
    out = b""
    deadline = time.monotonic() + timeout
    while text.encode() not in out and time.monotonic() < deadline:
        r, _w, _x = select.select([fd], [], [], 0.5)
        if r:
            try:
                data = os.read(fd, 4096)
            except OSError:
                break
            if not data:
                break
            out += data
    return out


def test_make_run_takes_args_and_ctrl_c_exits_0(tmp_path):
    port = free_port()
    store = tmp_path / "store"
    pid, fd = pty.fork()
    if pid == 0:  # the child: make on a terminal, as a user types it
        os.chdir(ROOT)
        os.environ["MIDGE_SKIP_SETUP"] = "1"
        os.execvp("make", ["make", "run", "PORT=%d" % port, "ARGS=--store %s --log-level info" % store])
    try:
        out = _read_until(fd, "listening on", 60)
        assert b"listening on 127.0.0.1:%d" % port in out, out.decode(errors="replace")
        assert b"profile esp32 (--board esp32)" in out
        assert store.is_dir(), "ARGS did not reach midge (--store)"
        os.write(fd, b"\x03")  # Ctrl-C on the terminal
        out += _read_until(fd, "\x00", 15)  # until the terminal closes
    finally:
        _pid, status = os.waitpid(pid, 0)
        os.close(fd)
    text = out.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert "Interrupt" not in text and "Error" not in text, text
    assert "stopped" in text


def test_no_board_means_the_host_profile():
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "lib"))
    p = subprocess.Popen([sys.executable, "-m", "midge", "--port", str(port)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in p.stdout:
            lines.append(line)
            if "listening on" in line:
                break
    finally:
        p.terminate()
        p.wait(10)
    text = "".join(lines)
    assert "profile host (no --board: a PC's caps" in text, text
    assert "max_clients=1000" in text and "max_topic_levels=128" in text, text
