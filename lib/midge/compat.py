# The one module that knows which interpreter it runs on.
#
# Everything else in midge imports time, const and memory facts from here,
# so the rest of the package is the same source on CPython and MicroPython.
# This module imports nothing from midge.
import sys
import gc

MICROPYTHON = sys.implementation.name == "micropython"

try:
    from micropython import const  # inlines _NAME = const(x) at compile time
except ImportError:
    def const(value):
        return value

try:
    from time import ticks_ms, ticks_diff, ticks_add  # MicroPython: wraps on 32-bit boards
except ImportError:
    import time as _time

    def ticks_ms():
        return int(_time.monotonic() * 1000)

    def ticks_diff(a, b):
        return a - b

    def ticks_add(a, delta):
        return a + delta


def mem_free():
    """Free heap in bytes, or -1 where the interpreter cannot tell."""
    try:
        return gc.mem_free()
    except AttributeError:
        return -1


def mem_alloc():
    """Allocated heap in bytes, or -1 where the interpreter cannot tell."""
    try:
        return gc.mem_alloc()
    except AttributeError:
        return -1


def set_nodelay(writer):
    """Turn on TCP_NODELAY (level 6 = IPPROTO_TCP, option 1) where the
    socket allows it; MicroPython has no constant for it. Best effort."""
    if MICROPYTHON:
        sock = getattr(writer, "s", None)  # get_extra_info knows only "peername"
    else:
        sock = writer.get_extra_info("socket")
    if sock is None:
        return
    try:
        sock.setsockopt(6, 1, 1)
    except (OSError, AttributeError, TypeError):
        pass


def peer_text(writer):
    """'host:port' of the peer. The unix port returns a raw sockaddr
    bytearray (family, port big-endian, IPv4 address); CPython and the
    boards return a tuple."""
    try:
        peer = writer.get_extra_info("peername")
    except Exception:
        return "?"
    if isinstance(peer, tuple):
        return "%s:%s" % (peer[0], peer[1])
    if isinstance(peer, (bytes, bytearray)) and len(peer) >= 8:
        return "%d.%d.%d.%d:%d" % (peer[4], peer[5], peer[6], peer[7], (peer[2] << 8) | peer[3])
    return "?"


def unsent(writer):
    """Bytes a stream holds that the socket has not taken yet; -1 when the
    stream cannot tell (then the caller drains to be sure)."""
    buf = getattr(writer, "out_buf", None)  # MicroPython's asyncio Stream
    if buf is not None:
        return len(buf)
    transport = getattr(writer, "transport", None)  # CPython's StreamWriter
    if transport is not None:
        try:
            return transport.get_write_buffer_size()
        except Exception:
            return -1
    return -1


def print_exception(exc):
    """Print a traceback on either interpreter."""
    if MICROPYTHON:
        sys.print_exception(exc)
    else:
        import traceback
        traceback.print_exception(type(exc), exc, exc.__traceback__)


if MICROPYTHON:
    import asyncio as _asyncio
    sleep_ms = _asyncio.sleep_ms

    def stream_reader(reader):
        """MicroPython's Stream has readinto(): the connection awaits it
        directly, one coroutine frame less per idle client."""
        return reader
else:
    import asyncio as _asyncio

    async def sleep_ms(ms):
        await _asyncio.sleep(ms / 1000)

    class _ReadInto:
        """CPython's StreamReader has no readinto(): this adds it (one copy;
        CPython is the host, not the device)."""

        def __init__(self, reader):
            self.reader = reader

        async def readinto(self, buf):
            data = await self.reader.read(len(buf))
            n = len(data)
            buf[:n] = data
            return n

    def stream_reader(reader):
        """A reader with `async readinto(buf) -> n` (0 at EOF)."""
        return reader if hasattr(reader, "readinto") else _ReadInto(reader)


class OSFS:
    """The filesystem the store writes to: the interpreter's own (a
    directory on the host, littlefs on a board). tools/lfs_fs.py offers the
    same interface over a littlefs image for wear measurements."""

    def open(self, path, mode):
        return open(path, mode)

    def rename(self, src, dst):
        import os
        os.rename(src, dst)  # atomic replace on POSIX and littlefs

    def remove(self, path):
        import os
        try:
            os.remove(path)
        except OSError:
            pass

    def size(self, path):
        """Bytes in the file, -1 if it does not exist."""
        import os
        try:
            return os.stat(path)[6]
        except OSError:
            return -1

    def listdir(self, path):
        import os
        return os.listdir(path)

    def mkdir(self, path):
        import os
        try:
            os.mkdir(path)
        except OSError:
            pass  # exists (or the parent is missing: open() will say so)

    def sync(self, f):
        """Make written bytes durable: flush, and fsync where the
        interpreter has it (CPython). MicroPython's flush() is a littlefs
        sync on the boards and a write(2) on the unix port."""
        f.flush()
        try:
            import os
            os.fsync(f.fileno())
        except (AttributeError, ImportError, OSError):
            pass


def on_sigterm(callback):
    """Call callback() on SIGTERM, from the running event loop (CPython).
    The MicroPython unix port has no signal module: there SIGTERM ends the
    process at once, which the store survives like any crash."""
    try:
        import signal
        import asyncio
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, callback)
    except (ImportError, AttributeError, NotImplementedError, RuntimeError):
        pass
