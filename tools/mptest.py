# Minimal test runner for the shared unit tests (tests/test_*.py), written
# to run UNDER MicroPython (unix port); it also runs on CPython, which is
# handy for debugging the runner itself.
#
#   MICROPYPATH=.frozen:lib:tests:tools micropython -X heapsize=2M tools/mptest.py [options] [files or dirs...]
#
#   (no paths)     every tests/test_*.py (top level only; tests/host/ is CPython-only)
#   DIR            every DIR/test_*.py (not recursive)
#   FILE.py        that file
#   -k SUBSTR      run only tests whose id "file.py::test_name" contains SUBSTR
#                  (may be repeated: a test runs if it matches any of them)
#   -x             stop after the first failure
#   -v             one line per test instead of one dot
#
# A test is every callable named test_* in the module, run in source order
# (MicroPython dicts are unordered, so the order comes from the `def test_`
# lines of the file; other test_* callables follow, sorted by name). An
# exception in a test, or a test that returns a coroutine/generator (the
# contract says async cases call asyncio.run() themselves), is a failure; a
# module that fails to import counts as one failure. gc.collect() runs
# between tests. The last line is "micropython: N passed, N failed" (the
# interpreter's name); the exit status is 1 if anything failed or no test ran.
import gc
import sys

try:
    import os
except ImportError:  # very small ports
    import uos as os

try:
    from time import ticks_ms, ticks_diff
except ImportError:  # CPython
    import time

    def ticks_ms():
        return int(time.monotonic() * 1000)

    def ticks_diff(a, b):
        return a - b


_IS_MP = sys.implementation.name == "micropython"


# ---- paths (MicroPython has no os.path) --------------------------------------
def _dirname(path):
    i = path.rfind("/")
    if i < 0:
        return ""
    return path[:i] or "/"


def _basename(path):
    return path[path.rfind("/") + 1:]


def _join(a, b):
    if not a or a == ".":
        return b
    return a.rstrip("/") + "/" + b


def _is_dir(path):
    try:
        return (os.stat(path)[0] & 0x4000) != 0
    except OSError:
        return False


def _repo_root():
    tools = _dirname(__file__) or "."
    if tools == "tools":
        return "."
    if tools.endswith("/tools"):
        return tools[:-6] or "/"
    return _join(tools, "..")


# ---- output -------------------------------------------------------------------
def _print_exc(e):
    if _IS_MP:
        sys.print_exception(e, sys.stdout)
    else:
        import traceback
        traceback.print_exception(type(e), e, e.__traceback__, file=sys.stdout)


def _write(s):
    sys.stdout.write(s)
    try:
        sys.stdout.flush()
    except AttributeError:
        pass


# ---- discovery ------------------------------------------------------------------
def _test_files(paths):
    files = []
    for p in paths:
        if _is_dir(p):
            names = [n for n in os.listdir(p) if n.startswith("test_") and n.endswith(".py")]
            names.sort()
            for n in names:
                files.append(_join(p, n))
        else:
            files.append(p)
    return files


def _source_order(path):
    """Names from `def test_...(` / `async def test_...(` lines, in file order."""
    names = []
    with open(path) as f:
        for line in f:
            if line.startswith("async def "):
                line = line[6:]
            if line.startswith("def test_"):
                end = line.find("(")
                if end > 4:
                    names.append(line[4:end].strip())
    return names


def _tests_of(module, path):
    found = []
    for name in _source_order(path):
        if name not in found and callable(getattr(module, name, None)):
            found.append(name)
    rest = [n for n in dir(module) if n.startswith("test_") and n not in found
            and callable(getattr(module, n, None))]
    rest.sort()
    return found + rest


def _selected(test_id, keywords):
    if not keywords:
        return True
    for k in keywords:
        if k in test_id:
            return True
    return False


# ---- running -------------------------------------------------------------------
class Result:
    def __init__(self):
        self.passed = 0
        self.failed = 0
        self.failures = []  # test ids


def _fail(result, test_id, verbose, what, exc=None):
    result.failed += 1
    result.failures.append(test_id)
    _write("F\n" if not verbose else "FAIL\n")
    _write("---- FAIL %s: %s\n" % (test_id, what))
    if exc is not None:
        _print_exc(exc)


def _run_one(fn, test_id, result, verbose):
    if verbose:
        _write("%s ... " % test_id)
    try:
        ret = fn()
        if ret is not None and (hasattr(ret, "send") or hasattr(ret, "__await__")):
            # An `async def test_` that nobody awaited: it did not run.
            try:
                ret.close()
            except Exception:
                pass
            _fail(result, test_id, verbose,
                  "returned a coroutine/generator; call asyncio.run() inside the test")
            return False
    except KeyboardInterrupt:
        raise
    except SystemExit as e:
        _fail(result, test_id, verbose, "SystemExit", e)
        return False
    except Exception as e:
        _fail(result, test_id, verbose, "%s" % type(e).__name__, e)
        return False
    result.passed += 1
    _write("ok\n" if verbose else ".")
    return True


def _run_file(path, keywords, result, verbose, stop_first):
    """Returns False when -x asked to stop."""
    base = _basename(path)
    if not base.endswith(".py"):
        _fail(result, path, verbose, "not a .py file")
        return not stop_first
    modname = base[:-3]
    folder = _dirname(path) or "."
    if folder not in sys.path:
        sys.path.insert(0, folder)
    if not verbose:
        _write("%s " % path)
    try:
        module = __import__(modname)
    except KeyboardInterrupt:
        raise
    except Exception as e:
        _fail(result, path, verbose, "import failed: %s" % type(e).__name__, e)
        sys.modules.pop(modname, None)
        return not stop_first

    ok = True
    for name in _tests_of(module, path):
        test_id = "%s::%s" % (base, name)
        if not _selected(test_id, keywords):
            continue
        gc.collect()
        if not _run_one(getattr(module, name), test_id, result, verbose):
            ok = False
            if stop_first:
                break
    if not verbose:
        _write("\n")
    # Free the module's functions and data before the next file.
    module = None
    sys.modules.pop(modname, None)
    gc.collect()
    return ok or not stop_first


def _usage(msg=None):
    if msg:
        print("mptest: %s" % msg)
    print("usage: micropython tools/mptest.py [-k SUBSTR]... [-x] [-v] [file.py|dir ...]")
    sys.exit(2)


def main(argv):
    keywords = []
    paths = []
    verbose = False
    stop_first = False
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "-k":
            i += 1
            if i >= len(argv):
                _usage("-k needs a substring")
            keywords.append(argv[i])
        elif a.startswith("-k") and len(a) > 2:
            keywords.append(a[2:])
        elif a == "-x":
            stop_first = True
        elif a == "-v":
            verbose = True
        elif a in ("-h", "--help"):
            _usage()
        elif a.startswith("-"):
            _usage("unknown option %s" % a)
        else:
            paths.append(a.rstrip("/") or "/")
        i += 1

    root = _repo_root()
    # Make `import midge`, `import mqttspec` and `import fakeconn` (tools/)
    # work without MICROPYPATH too.
    for p in (_join(root, "tests"), _join(root, "lib"), _join(root, "tools")):
        if p not in sys.path:
            sys.path.append(p)
    if not paths:
        paths = [_join(root, "tests")]

    result = Result()
    start = ticks_ms()
    for path in _test_files(paths):
        if not _run_file(path, keywords, result, verbose, stop_first):
            break
    secs = ticks_diff(ticks_ms(), start) / 1000

    if result.failures:
        print("\nfailed:")
        for t in result.failures:
            print("  " + t)
    if result.passed + result.failed == 0:
        print("mptest: no test ran (paths %s, -k %s)" % (paths, keywords))
    gc.collect()
    try:
        mem = " heap free %d" % gc.mem_free()
    except AttributeError:
        mem = ""
    print("(%.1f s%s)" % (secs, mem))
    print("%s: %d passed, %d failed" % (sys.implementation.name, result.passed, result.failed))
    if result.failed or result.passed == 0:
        sys.exit(1)


main(sys.argv[1:])
