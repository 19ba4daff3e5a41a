# Levelled logging to stdout, cheap when a level is off.
#
# Call sites on hot paths guard with `if log.enabled(log.DEBUG):` so that no
# argument tuple or string is built when the level is off; the functions
# below also return at once when their level is off.
import sys
from .compat import const, ticks_ms

DEBUG = const(10)
INFO = const(20)
WARNING = const(30)
ERROR = const(40)
OFF = const(100)

LEVELS = {"debug": DEBUG, "info": INFO, "warning": WARNING, "error": ERROR, "off": OFF}
_NAMES = {DEBUG: "DEBUG", INFO: "INFO", WARNING: "WARN", ERROR: "ERROR"}

level = INFO


def set_level(name):
    global level
    level = LEVELS[name]


def enabled(lvl):
    return lvl >= level


def _emit(lvl, msg, args):
    if args:
        try:
            msg = msg % args
        except (TypeError, ValueError):
            msg = "%s %r" % (msg, args)
    sys.stdout.write("%d %s %s\n" % (ticks_ms(), _NAMES[lvl], msg))
    flush = getattr(sys.stdout, "flush", None)
    if flush:
        flush()


def debug(msg, *args):
    if level <= DEBUG:
        _emit(DEBUG, msg, args)


def info(msg, *args):
    if level <= INFO:
        _emit(INFO, msg, args)


def warning(msg, *args):
    if level <= WARNING:
        _emit(WARNING, msg, args)


def error(msg, *args):
    if level <= ERROR:
        _emit(ERROR, msg, args)
