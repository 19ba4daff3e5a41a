# Listener and housekeeping: accepts sockets up to max_clients, runs one
# Connection per client, and ticks once every _TICK_MS: connect timeouts,
# stuck writes, the heap guard, then Broker.tick (keepalive, $SYS).
#
# Admission of every accepted socket: when max_clients connections are
# open, the oldest one that has not completed CONNECT is closed to make room
# (preconnect_closed), so sockets that never speak cannot keep clients out;
# if every open connection has completed CONNECT, the new socket is closed
# at once (clients_refused). The heap reserve is applied at CONNECT
# (Broker.connect refuses new sessions), never here: a socket is how a
# client whose session exists comes back, and how an operator reaches a
# broker whose state fills its heap.
# A socket that is admitted and sends no complete CONNECT within
# connect_timeout_ms is closed by the tick (connect_timeouts).
import asyncio

from . import log
from .broker import Broker, VERSION
from .compat import (const, ticks_ms, ticks_diff, set_nodelay, mem_free, sleep_ms, print_exception,
                     on_sigterm, MICROPYTHON, close_stream, listen_socket, accept_forever)
from .errors import ConfigError
from .protocol import AWAIT_CONNECT
from .connection import Connection, flush_dirty

_TICK_MS = const(250)


class Server:
    def __init__(self, cfg, broker=None, on_tick=None):
        self.cfg = cfg
        self.on_tick = on_tick
        if broker is None:
            store = None
            if cfg["store_dir"]:
                from .store import Store
                store = Store(cfg["store_dir"], max_bytes=cfg["store_max_bytes"],
                              sync_ms=cfg["store_sync_ms"], max_record_bytes=cfg["max_packet_size"] + 64)
            broker = Broker(cfg, store=store)
        self.broker = broker
        self.conns = []  # open Connections; len() <= max_clients (+1 while a victim closes)
        self.stopping = False
        self.port = cfg["port"]  # the bound port once listening (cfg port 0: a free one)

    def stop(self):
        """Stop at the next tick; run() then closes the listener and the store."""
        self.stopping = True

    def _listen(self):
        """The listening socket. A host or port that cannot be listened on
        is a configuration error (start-up exits 2 naming the key)."""
        cfg = self.cfg
        try:
            sock = listen_socket(cfg["host"], cfg["port"], cfg["listen_backlog"] or cfg["max_clients"])
        except OSError as e:
            raise ConfigError("config key 'host'/'port': cannot listen on %s:%d: %s"
                              % (cfg["host"], cfg["port"], _errtext(e)))
        try:
            self.port = sock.getsockname()[1] if not MICROPYTHON else self.port
        except Exception:
            pass
        return sock

    async def run(self):
        cfg = self.cfg
        sock = self._listen()
        listener = None
        try:
            self.broker.restore()
            on_sigterm(self.stop)
            listener = asyncio.create_task(accept_forever(sock, self._accept))
            log.info("midge %s listening on %s:%d (%s, max_clients=%d, free heap %d)",
                     VERSION, cfg["host"], self.port,
                     "micropython" if MICROPYTHON else "cpython", cfg["max_clients"], mem_free())
            while not self.stopping:
                await sleep_ms(_TICK_MS)
                try:
                    self.tick()
                except MemoryError:
                    self.broker.memory_error("tick: out of memory")
                except Exception as e:  # housekeeping must never stop the broker
                    self.broker.count("internal_errors")
                    log.error("tick failed: %r", e)
                    print_exception(e)
                if self.on_tick is not None:
                    self.on_tick()
        finally:
            if listener is not None:
                listener.cancel()
                try:
                    await listener
                except BaseException:
                    pass
            sock.close()
            self.broker.close()
            log.info("stopped")

    def _accept(self, reader, writer):
        """Called by the accept loop for each new socket; never raises (a
        failure closes that socket only). The connection's task is the
        connection's own run() frame, the only one an idle client keeps;
        the connection is in self.conns while it runs."""
        broker = self.broker
        conn = None
        try:
            if len(self.conns) >= self.cfg["max_clients"] and not self._make_room():
                broker.count("clients_refused")
                log.info("connection refused: max_clients reached")
                close_stream(writer)
                return
            set_nodelay(writer)
            conn = Connection(broker, reader, writer, self.conns)
            asyncio.create_task(conn.run())
        except MemoryError:
            if conn is not None and conn in self.conns:
                self.conns.remove(conn)
            close_stream(writer)
            broker.memory_error("out of memory accepting a connection")

    def _make_room(self):
        """max_clients reached: close the oldest connection that has not
        completed CONNECT. True if one was closed."""
        victim = None
        for c in self.conns:
            if c.state == AWAIT_CONNECT and not c.closing and (
                    victim is None or ticks_diff(c.opened_ms, victim.opened_ms) < 0):
                victim = c
        if victim is None:
            return False
        self.broker.count("preconnect_closed")
        log.info("%s closed: no CONNECT yet, and max_clients reached", victim.peer)
        victim.close()
        return True

    def tick(self):
        now = ticks_ms()
        cfg = self.cfg
        connect_ms = cfg["connect_timeout_ms"]
        write_ms = cfg["write_timeout_ms"]
        broker = self.broker
        for conn in self.conns:
            if conn.closing:
                continue  # Connection._finish bounds its own last write
            if conn.state == AWAIT_CONNECT and ticks_diff(now, conn.opened_ms) > connect_ms:
                broker.count("connect_timeouts")
                log.info("%s closed: no CONNECT within %d ms", conn.peer, connect_ms)
                conn.close()
            elif conn.drain_started_ms >= 0 and ticks_diff(now, conn.drain_started_ms) > write_ms:
                broker.count("slow_disconnects")
                log.info("%s closed: write stalled for %d ms", conn.peer, write_ms)
                conn.close()
        broker.heap.check(now)
        broker.tick()
        try:
            broker.commit()
        except OSError:
            pass  # logged and counted by the store; each writer commits before it sends
        flush_dirty(broker)


def _errtext(e):
    """'[Errno 98] EADDRINUSE'-like text on both interpreters (MicroPython's
    OSError carries the number only, and its errno module names a few)."""
    code = e.args[0] if e.args else None
    if not isinstance(code, int) or len(e.args) > 1:
        return str(e)  # CPython: "[Errno 99] Cannot assign requested address"
    try:
        import errno
        name = errno.errorcode.get(code)
    except (ImportError, AttributeError):
        name = None
    return "[Errno %d] %s" % (code, name) if name else "[Errno %d]" % code
