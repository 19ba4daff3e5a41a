# Listener and housekeeping: accepts sockets up to max_clients, runs one
# Connection per client, and ticks once every _TICK_MS: connect timeouts,
# stuck writes, then Broker.tick (keepalive, $SYS).
import asyncio

from . import log
from .broker import Broker, VERSION
from .compat import const, ticks_ms, ticks_diff, set_nodelay, mem_free, sleep_ms, print_exception, on_sigterm, MICROPYTHON
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
                              sync_ms=cfg["store_sync_ms"])
            broker = Broker(cfg, store=store)
        self.broker = broker
        self.conns = []  # open Connections; len() <= max_clients
        self.stopping = False

    def stop(self):
        """Stop at the next tick; run() then closes the listener and the store."""
        self.stopping = True

    async def run(self):
        cfg = self.cfg
        self.broker.restore()
        on_sigterm(self.stop)
        srv = await asyncio.start_server(self._accept, cfg["host"], cfg["port"])
        log.info("midge %s listening on %s:%d (%s, max_clients=%d, free heap %d)",
                 VERSION, cfg["host"], cfg["port"],
                 "micropython" if MICROPYTHON else "cpython", cfg["max_clients"], mem_free())
        try:
            while not self.stopping:
                await sleep_ms(_TICK_MS)
                try:
                    self.tick()
                except Exception as e:  # housekeeping must never stop the broker
                    self.broker.count("internal_errors")
                    log.error("tick failed: %r", e)
                    print_exception(e)
                if self.on_tick is not None:
                    self.on_tick()
        finally:
            srv.close()
            await srv.wait_closed()
            self.broker.close()
            log.info("stopped")

    def _accept(self, reader, writer):
        """start_server's callback. A plain function returning the
        coroutine to run as the client's task (both interpreters accept
        that): the connection's own run() frame is the only one an idle
        client keeps. The connection is in self.conns while it runs."""
        if len(self.conns) >= self.cfg["max_clients"]:
            self.broker.count("clients_refused")
            log.info("connection refused: max_clients reached")
            return _refuse(writer)
        set_nodelay(writer)
        return Connection(self.broker, reader, writer, self.conns).run()

    def tick(self):
        now = ticks_ms()
        cfg = self.cfg
        connect_ms = cfg["connect_timeout_ms"]
        write_ms = cfg["write_timeout_ms"]
        for conn in self.conns:
            if conn.closing:
                continue  # Connection._finish bounds its own last write
            if conn.session is None and ticks_diff(now, conn.opened_ms) > connect_ms:
                self.broker.count("connect_timeouts")
                log.info("%s closed: no CONNECT within %d ms", conn.peer, connect_ms)
                conn.close()
            elif conn.drain_started_ms >= 0 and ticks_diff(now, conn.drain_started_ms) > write_ms:
                self.broker.count("slow_disconnects")
                log.info("%s closed: write stalled for %d ms", conn.peer, write_ms)
                conn.close()
        self.broker.tick()
        try:
            self.broker.commit()
        except OSError:
            pass  # logged and counted by the store; each writer commits before it sends
        flush_dirty(self.broker)


async def _refuse(writer):
    try:
        writer.close()
        await writer.wait_closed()
    except Exception:
        pass
