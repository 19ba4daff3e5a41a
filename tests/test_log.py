# midge.log: levels, cheap when off, line format. Output is captured by
# swapping the module's `sys` for a stand-in (sys.stdout cannot be
# reassigned on MicroPython).
from midge import log


class _Out:
    def __init__(self):
        self.text = ""
        self.flushes = 0

    def write(self, s):
        self.text += s
        return len(s)

    def flush(self):
        self.flushes += 1


class _Sys:
    def __init__(self):
        self.stdout = _Out()


def _capture(fn):
    """Run fn with log output captured; restore sys and the level."""
    saved_sys = log.sys
    saved_level = log.level
    fake = _Sys()
    log.sys = fake
    try:
        fn()
    finally:
        log.sys = saved_sys
        log.level = saved_level
    return fake.stdout


def test_levels_order_and_names():
    assert log.DEBUG < log.INFO < log.WARNING < log.ERROR < log.OFF
    for name in ("debug", "info", "warning", "error", "off"):
        assert name in log.LEVELS


def test_set_level_and_enabled():
    saved = log.level
    try:
        log.set_level("warning")
        assert log.level == log.WARNING
        assert not log.enabled(log.DEBUG)
        assert not log.enabled(log.INFO)
        assert log.enabled(log.WARNING)
        assert log.enabled(log.ERROR)
        log.set_level("off")
        assert not log.enabled(log.ERROR)
        log.set_level("debug")
        assert log.enabled(log.DEBUG)
    finally:
        log.level = saved


def test_set_level_unknown_raises():
    saved = log.level
    try:
        log.set_level("loud")
        assert False, "accepted an unknown level"
    except KeyError:
        pass
    assert log.level == saved


def test_output_format_and_filtering():
    def run():
        log.set_level("info")
        log.debug("hidden %d", 1)
        log.info("client %s connected", "c1")
        log.warning("warn %d%%", 5)
        log.error("plain")
    out = _capture(run)
    lines = out.text.split("\n")
    assert lines[-1] == ""  # every line ends with a newline
    lines = lines[:-1]
    assert len(lines) == 3
    assert "hidden" not in out.text
    parts = lines[0].split(" ", 2)
    assert parts[0].isdigit()           # ticks_ms
    assert parts[1] == "INFO" and parts[2] == "client c1 connected"
    assert lines[1].split(" ", 2)[1:] == ["WARN", "warn 5%"]
    assert lines[2].split(" ", 2)[1:] == ["ERROR", "plain"]
    assert out.flushes == 3


def test_off_writes_nothing():
    def run():
        log.set_level("off")
        log.debug("a")
        log.info("b")
        log.warning("c")
        log.error("d")
    assert _capture(run).text == ""


def test_bad_format_arguments_do_not_raise():
    def run():
        log.set_level("debug")
        log.info("two %s %s", "only-one")
        log.info("%d", "not-a-number")
    out = _capture(run)
    lines = out.text.split("\n")[:-1]
    assert len(lines) == 2
    assert "only-one" in lines[0]
    assert "not-a-number" in lines[1]


def test_message_without_args_not_formatted():
    def run():
        log.set_level("info")
        log.info("100% literal")
    out = _capture(run)
    assert out.text.split(" ", 2)[2] == "100% literal\n"
