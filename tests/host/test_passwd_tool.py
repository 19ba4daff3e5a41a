# tools/passwd (the password file tool) run as a program: add, change,
# delete, -c, -I, the errors (each exit status 1, the file untouched), and the
# file it writes loading under MicroPython. Small iteration counts (-I) keep
# it quick.
import os
import stat
import subprocess
import sys

import pytest

import hostlib
from midge import auth

TOOL = os.path.join(hostlib.ROOT, "tools", "passwd")


def _run(*args, stdin=""):
    return subprocess.run([sys.executable, TOOL] + list(args), input=stdin,
                          capture_output=True, text=True, timeout=60)


def _users(path):
    return auth.load_passwords(str(path))


def test_help():
    r = _run("-h")
    assert r.returncode == 0 and "-D FILE USER" in r.stdout and "-I N" in r.stdout


def test_create_add_change_delete(tmp_path):
    path = tmp_path / "passwd"
    r = _run("-b", "-c", "-I", "3", str(path), "alice", "apw")
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    users = _users(path)
    assert list(users) == ["alice"] and users["alice"].startswith("$pbkdf2-sha256$3$")
    assert auth.verify(users["alice"], b"apw") and not auth.verify(users["alice"], b"x")

    # add, prompting (no terminal: two lines of stdin); default iterations
    r = _run(str(path), "bob", stdin="b\u00e4pw\nb\u00e4pw\n")
    assert r.returncode == 0, r.stderr
    users = _users(path)
    assert users["bob"].startswith("$pbkdf2-sha256$%d$" % auth.ITERATIONS)
    assert auth.verify(users["bob"], "b\u00e4pw".encode())

    # comments, blank lines, CRLF and order survive a change
    text = path.read_bytes().decode()
    path.write_bytes(("# team\n\n" + text.replace("\n", "\r\n", 1) + "# end\n").encode())
    before = path.read_bytes().decode()  # bytes: read_text() would turn CRLF into LF
    r = _run("-b", "-I", "2", str(path), "alice", "new")
    assert r.returncode == 0, r.stderr
    after = path.read_bytes().decode()
    lines_b, lines_a = before.split("\n"), after.split("\n")
    assert len(lines_a) == len(lines_b)
    assert lines_a[0] == "# team" and lines_a[1] == "" and lines_a[-2] == "# end"
    assert lines_a[2].startswith("alice:$pbkdf2-sha256$2$") and lines_a[2].endswith("\r")
    assert lines_a[3] == lines_b[3]  # bob untouched
    assert auth.Authenticator(_users(path)).check("alice", b"new")
    assert not auth.Authenticator(_users(path)).check("alice", b"apw")

    r = _run("-D", str(path), "alice")
    assert r.returncode == 0, r.stderr
    assert list(_users(path)) == ["bob"]
    assert path.read_text().startswith("# team\n\nbob:") and path.read_text().endswith("# end\n")

    # -c overwrites: the one user left
    r = _run("-b", "-c", "-I", "1", str(path), "carol", "c")
    assert r.returncode == 0, r.stderr
    assert list(_users(path)) == ["carol"]


def test_existing_mode_kept_and_no_final_newline(tmp_path):
    path = tmp_path / "passwd"
    path.write_text("a:" + auth.hash_password("x", 1))  # no final newline
    os.chmod(path, 0o640)
    r = _run("-b", "-I", "1", str(path), "b", "y")
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert sorted(_users(path)) == ["a", "b"]
    assert os.listdir(tmp_path) == ["passwd"]  # no temporary file left


@pytest.mark.parametrize("args, stdin, message", [
    (("-b", "{missing}", "u", "p"), "", "does not exist"),
    (("-b", "{file}", "a:b", "p"), "", "':'"),
    (("-b", "{file}", "", "p"), "", "empty user"),
    (("-b", "{file}", "a\tb", "p"), "", "control"),
    (("-b", "{file}", "#a", "p"), "", "comment"),
    (("-b", "{file}", "u", ""), "", "empty password"),
    (("{file}", "u"), "one\ntwo\n", "do not match"),
    (("-D", "{file}", "nobody"), "", "not in"),
    (("-D", "-c", "{file}", "old"), "", "-D cannot"),
    (("-b", "-I", "0", "{file}", "u", "p"), "", "iterations"),
    (("-b", "-I", "x", "{file}", "u", "p"), "", "not a number"),
    (("-b", "{file}", "u"), "", "FILE USER PASSWORD"),
    (("{file}", "u", "p"), "", "FILE USER"),
    (("-x", "{file}", "u"), "", "unknown option"),
])
def test_errors_exit_1_and_leave_the_file(tmp_path, args, stdin, message):
    path = tmp_path / "passwd"
    path.write_text("# keep\nold:" + auth.hash_password("x", 1) + "\n")
    before = path.read_bytes()
    args = [a.format(file=path, missing=tmp_path / "nope") for a in args]
    r = _run(*args, stdin=stdin)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert message in r.stderr, r.stderr
    assert r.stderr.startswith("tools/passwd: ")
    assert path.read_bytes() == before
    assert not (tmp_path / "nope").exists()
    assert os.listdir(tmp_path) == ["passwd"]


def test_malformed_file_is_not_touched(tmp_path):
    path = tmp_path / "passwd"
    path.write_text("ok:" + auth.hash_password("x", 1) + "\nbroken line\n")
    r = _run("-b", str(path), "u", "p")
    assert r.returncode == 1 and "line 2" in r.stderr, r.stderr
    assert path.read_text().endswith("broken line\n")


def test_written_file_loads_under_micropython(tmp_path):
    mp = hostlib.find_micropython()
    if mp is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("micropython not found; run tools/setup.sh")
        pytest.skip("micropython not found")
    path = tmp_path / "passwd"
    assert _run("-b", "-c", "-I", "5", str(path), "alice", "apw").returncode == 0
    assert _run("-b", str(path), "b\u00f6b", "p\u00e4ss").returncode == 0  # default count
    script = (
        "from midge.auth import load_passwords, Authenticator\n"
        "u = load_passwords(%r)\n"
        "a = Authenticator(u)\n"
        "print(sorted(u) == ['alice', 'b\\u00f6b'], a.check('alice', b'apw'), a.check('alice', b'x'),\n"
        "      a.check('b\\u00f6b', 'p\\u00e4ss'.encode()), a.check('eve', b'apw'))\n"
    ) % str(path)
    env = dict(os.environ, MICROPYPATH=hostlib.micropython_path("source"))
    r = subprocess.run([mp, "-X", "heapsize=400k", "-c", script], cwd=hostlib.ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr + r.stdout
    assert r.stdout.strip() == "True True False True False", r.stdout


def test_password_cost_tool_runs_on_both_interpreters():
    """tools/measure/password_cost.py (the figure in the README): it runs,
    its checks agree with the file, and it prints a time per check."""
    mp = hostlib.find_micropython()
    if mp is None and os.environ.get("CI", "").lower() == "true":
        pytest.fail("micropython not found; run tools/setup.sh")
    tool = os.path.join(hostlib.ROOT, "tools", "measure", "password_cost.py")
    runs = [([sys.executable, tool, "3"], dict(os.environ, PYTHONPATH=os.path.join(hostlib.ROOT, "lib")))]
    if mp is not None:
        runs.append(([mp, "-X", "heapsize=200k", tool, "3", "20"],
                     dict(os.environ, MICROPYPATH=hostlib.micropython_path("source") + ":" + os.path.join(hostlib.ROOT, "tools"))))
    for cmd, env in runs:
        r = subprocess.run(cmd, cwd=hostlib.ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr + r.stdout
        assert "x %d iterations" % auth.ITERATIONS in r.stdout, r.stdout
        assert r.stdout.count(" ms  slowest ") == 2 and "agree with the file: True" in r.stdout, r.stdout
