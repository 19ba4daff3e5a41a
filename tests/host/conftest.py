# Fixtures for the host socket tests: a midge broker subprocess per test.
#
#   broker                       default config, heapsize 400k
#   broker_factory(config, heapsize="400k")   any number of brokers with
#                                per-test caps; all stopped at teardown
#
# A broker that dies during a test (for example on malformed input) fails
# that test at teardown with the broker's log. Without micropython the tests
# are skipped, or fail under CI=true (README.md).
import os

import pytest

import brokerproc  # tests/host is on sys.path (pytest.ini: pythonpath)


def _require_interpreter():
    if brokerproc.interpreter() == "cpython":
        return
    if brokerproc.find_micropython() is None:
        msg = "micropython not found (.venv/bin/micropython or PATH); run tools/setup.sh"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture
def broker_factory(tmp_path, request):
    _require_interpreter()
    procs = []

    def make(config=None, heapsize="400k"):
        b = brokerproc.BrokerProc(config, heapsize, workdir=str(tmp_path / ("broker%d" % len(procs))))
        procs.append(b)
        try:
            b.start()
        except brokerproc.BrokerError as e:
            pytest.fail(str(e))
        return b

    yield make

    failed = getattr(request.node, "rep_call", None)
    errors = []
    for b in procs:
        err = b.stop()
        if err:
            errors.append(err)
        elif failed is not None and failed.failed:
            # Shown under "Captured stdout teardown" of the failed test.
            print("---- broker log (%s) ----\n%s" % (b.logpath, b.log_tail(40)))
    if errors:
        pytest.fail("\n\n".join(errors), pytrace=False)


@pytest.fixture
def broker(broker_factory):
    return broker_factory()


@pytest.fixture
def boards():
    """Emulated boards a test starts (test_board_emulation.Board): stopped
    at the end of the test, however it ends."""
    started = []
    yield started
    for b in started:
        b.stop()


# tests/host/test_frozen_build.py needs a unix port with midge frozen in
# (tools/firmware unix32: MicroPython's source, which CI cannot fetch). It
# runs when MIDGE_FROZEN_MICROPYTHON names that binary, and is not
# collected otherwise (README "Firmware with midge frozen in").
collect_ignore = [] if os.environ.get("MIDGE_FROZEN_MICROPYTHON") else ["test_frozen_build.py"]
