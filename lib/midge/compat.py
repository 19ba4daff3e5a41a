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
    """Bytes a stream holds that the socket has not taken yet (0 for
    MicroPython's Stream, which write_some bypasses); -1 when the stream
    cannot tell (then the caller drains to be sure)."""
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


def close_stream(writer):
    """Close a stream's socket now, synchronously, on either interpreter;
    never raises. MicroPython's Stream.close() does nothing (its
    wait_closed() closes the socket), so the socket is closed directly, and
    the bytes the stream still held for it are dropped: asyncio's IO queue
    keeps a removed entry's value (this stream) in its dict table until the
    slot is reused (MicroPython dicts keep a deleted value), so a closed
    stream can stay reachable for a while; what it holds must not."""
    try:
        sock = getattr(writer, "s", None) if MICROPYTHON else None
        if sock is not None:
            sock.close()
            writer.out_buf = b""
        else:
            writer.close()
    except Exception:
        pass


def listen_socket(host, port, backlog):
    """A non-blocking listening TCP socket. Raises OSError (getaddrinfo,
    bind or listen failed); the socket is closed then."""
    import socket
    ai = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
    sock = socket.socket(ai[0], socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(ai[-1])
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def unload(name):
    """Forget a module imported for a one-off job (its code is heap on a
    board running .mpy files): the code is collected once nothing else
    refers to it. The package attribute that importing it set goes too."""
    mod = sys.modules.pop(name, None)
    if mod is not None:
        i = name.rfind(".")
        pkg = sys.modules.get(name[:i]) if i > 0 else None
        child = name[i + 1:]
        if pkg is not None:
            try:
                delattr(pkg, child)
            except AttributeError:
                pass


def read_capped(path, limit):
    """The bytes of the file at path, or None if it holds more than limit
    bytes; read in 512-byte chunks, so never more than the limit plus a
    chunk is held (config, password and ACL files). Raises OSError."""
    parts = []
    size = 0
    with open(path, "rb") as f:
        while size <= limit:
            chunk = f.read(512)
            if not chunk:
                return b"".join(parts)
            parts.append(chunk)
            size += len(chunk)
    return None


def print_exception(exc):
    """Print a traceback on either interpreter."""
    if MICROPYTHON:
        sys.print_exception(exc)
    else:
        import traceback
        traceback.print_exception(type(exc), exc, exc.__traceback__)


if MICROPYTHON:
    import asyncio as _asyncio
    from asyncio import core as _core
    sleep_ms = _asyncio.sleep_ms
    wait_for_ms = _asyncio.wait_for_ms  # (awaitable, ms): TimeoutError after ms

    def _readable(sock):
        # awaitable: resume when sock is readable (what asyncio's own
        # Stream.readinto does; core's IO queue is the only way to wait for
        # a socket without a Stream)
        yield _core._io_queue.queue_read(sock)

    def _writable_sock(sock):
        yield _core._io_queue.queue_write(sock)

    def write_some(writer, buf, off, n):
        """Hand buf[off:off + n] to the socket without blocking, without a
        copy and without allocating; returns the bytes it took (fewer, or
        0, when it is full). Raises OSError. Stream.write would keep the
        rest as a copy, and append to that copy: the large blocks a
        fragmented heap cannot give. (A stream that is not an asyncio
        Stream, a test's fake, takes all.)"""
        sock = getattr(writer, "s", None)
        if sock is None:
            writer.write(memoryview(buf)[off:off + n])
            return n
        k = sock.write(buf, off, n)
        return k if k else 0  # None: it would block

    def writable(writer):
        """Awaitable: the socket has room again (a fake: its drain()). A TLS
        stream waits on the socket under its TLS layer (tls.TLSSocket.raw):
        an fd, which the unix port's poll() waits on without waking."""
        sock = getattr(writer, "s", None)
        return writer.drain() if sock is None else _writable_sock(getattr(sock, "raw", sock))

    async def accept_forever(sock, on_accept, tls=None, handshake_timeout_ms=0):
        """Accept connections on a listening socket until cancelled, calling
        on_accept(reader, writer) for each (it must not block). Our own
        loop, not start_server's: there a failure in the callback (a
        MemoryError making the Stream or the task) ends the accept task for
        good, and the listener with it. Here a failure costs that one
        socket, which is closed; on_accept is told nothing.

        tls: a tls.context() (lib/midge/tls.py): each socket is wrapped at
        once, without a handshake (tls.wrap), and on_accept gets it
        before the handshake: the handshake runs inside the connection's
        first reads. So a client that never completes it is an open
        connection that has read nothing, which the caller closes on its
        own clock (midge: Server.tick, tls_handshake_timeout_ms), and
        handshake_timeout_ms is not used here (CPython's start_server
        handshakes before the callback and needs it). Any failure here
        closes the raw socket (and frees the mbedTLS context if one was
        made); after on_accept, close_stream(writer) closes both, in
        every state of the handshake."""
        while True:
            await _readable(sock)
            try:
                s2, addr = sock.accept()
            except OSError:
                continue  # e.g. the peer reset before accept
            stream = None
            try:
                s2.setblocking(False)
                if tls is None:
                    stream = _asyncio.StreamWriter(s2, {"peername": addr})
                else:
                    stream = tls.wrap(s2, addr)
                on_accept(stream, stream)
            except Exception:
                if stream is not None and tls is not None:
                    close_stream(stream)  # its mbedTLS context now, not at a GC
                s2.close()

    def stream_reader(reader):
        """MicroPython's Stream has readinto(): the connection awaits it
        directly, one coroutine frame less per idle client."""
        return reader
else:
    import asyncio as _asyncio

    async def sleep_ms(ms):
        await _asyncio.sleep(ms / 1000)

    def wait_for_ms(aw, ms):
        """As MicroPython's: the awaitable, or TimeoutError after ms."""
        return _asyncio.wait_for(aw, ms / 1000)

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

    def write_some(writer, buf, off, n):
        """As on MicroPython; CPython's transport takes everything (and
        keeps what the socket does not: unsent() says how much)."""
        writer.write(memoryview(buf)[off:off + n] if off or n != len(buf) else buf)
        return n

    def writable(writer):
        """Awaitable: what the stream held has gone out."""
        return writer.drain()

    async def accept_forever(sock, on_accept, tls=None, handshake_timeout_ms=0):
        """As the MicroPython version: on_accept(reader, writer) per
        connection until cancelled. CPython's own accept loop survives a
        failing callback, so start_server on our socket does the work.
        With tls (a tls.context(): an SSLContext), asyncio does the handshake before
        on_accept is called, and closes a socket whose handshake fails or
        takes longer than handshake_timeout_ms (0: asyncio's 60 s); the
        caller never sees those."""
        if tls is None:
            srv = await _asyncio.start_server(on_accept, sock=sock)
        else:
            srv = await _asyncio.start_server(
                on_accept, sock=sock, ssl=tls,
                ssl_handshake_timeout=handshake_timeout_ms / 1000 if handshake_timeout_ms > 0 else None)
        try:
            await _asyncio.Event().wait()
        finally:
            srv.close()


class OSFS:
    """The filesystem the store writes to: the interpreter's own (a
    directory on the host, littlefs on a board). tools/measure/lfs_fs.py offers the
    same interface over a littlefs image for wear measurements. Errors are
    OSError; on MicroPython they carry only the errno number."""

    def open(self, path, mode):
        return open(path, mode)

    def rename(self, src, dst):
        import os
        os.rename(src, dst)  # atomic replace on POSIX and littlefs

    def remove(self, path):
        """Remove a file; a missing one (or any failure) is not an error."""
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

    def isdir(self, path):
        """True if path is a directory."""
        import os
        try:
            return (os.stat(path)[0] & 0x4000) != 0  # S_IFDIR
        except OSError:
            return False

    def scan(self, path):
        """Yield the names in directory `path` one at a time, never the
        whole listing at once (os.listdir of thousands of names exhausts a
        device heap). The directory must not be changed until the iteration
        ends."""
        import os
        if MICROPYTHON:
            for entry in os.ilistdir(path):  # (name, type, inode[, size]) tuples
                yield entry[0]
        else:
            with os.scandir(path) as it:
                for entry in it:
                    yield entry.name

    def mkdir(self, path):
        """Create a directory; no error if something of that name exists
        (the caller checks isdir)."""
        import os
        try:
            os.mkdir(path)
        except OSError as e:
            if not e.args or e.args[0] != 17:  # EEXIST
                raise

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
