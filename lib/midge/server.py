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
#
# Listeners (README, "Users, ACLs and TLS"): the main one on host/port, and
# each entry of `listeners`, plain or TLS, each with its own anonymous
# setting, all sharing max_clients. A TLS socket past max_tls_clients is
# closed at once (tls_refused); one that has delivered no byte of MQTT
# within tls_handshake_timeout_ms is closed by the tick
# (tls_handshake_timeouts). The password file and the ACL file are loaded
# before anything listens; a listener that would let anyone on the network
# in without the operator saying so refuses to start (listener_plan).
import asyncio

from . import log
from .broker import Broker, VERSION
from .compat import (const, ticks_ms, ticks_diff, set_nodelay, mem_free, sleep_ms, print_exception,
                     on_sigterm, MICROPYTHON, close_stream, accept_forever, unload)
from .protocol import AWAIT_CONNECT
from .connection import Connection, flush_dirty

_TICK_MS = const(250)


class Listener:
    """One listening address: where, plain or TLS, and whether clients
    without a user name get in (resolved: True or False)."""

    def __init__(self, name, host, port, tls, anonymous):
        self.name = name          # the config key that made it ("host/port", "listeners[0]")
        self.host = host
        self.port = port          # the bound port once listening (config port 0: a free one)
        self.tls = tls
        self.anonymous = anonymous
        self.sock = None


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
        self.port = cfg["port"]  # the main listener's bound port once listening (cfg port 0: a free one)
        self.listeners = []      # Listener, the main one first, once run() has planned them
        self._tls = None         # the TLS server context, when a listener is TLS

    def stop(self):
        """Stop at the next tick; run() then closes the listener and the store."""
        self.stopping = True

    def _prepare(self):
        """Everything start-up checks before a client can connect, then the
        listening sockets (listeners.start: its code is dropped again, it
        is heap on a board). ConfigError names the key."""
        from . import listeners
        try:
            listeners.start(self)
        finally:
            listeners = None
            unload("midge.listeners")
        self.port = self.listeners[0].port

    def _close_listeners(self):
        for lst in self.listeners:
            if lst.sock is not None:
                lst.sock.close()
                lst.sock = None

    async def run(self):
        cfg = self.cfg
        tasks = []
        try:
            self._prepare()
            self.broker.restore()
            on_sigterm(self.stop)
            for lst in self.listeners:
                tasks.append(asyncio.create_task(self._serve(lst)))
                log.info("midge %s listening on %s:%d (%s%s)", VERSION, lst.host, lst.port,
                         "TLS, " if lst.tls else "", "anonymous allowed" if lst.anonymous else "user name and password required")
            log.info("%s, max_clients=%d, free heap %d",
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
            for t in tasks:
                t.cancel()
                try:
                    await t
                except BaseException:
                    pass
            self._close_listeners()
            self.broker.close()
            log.info("stopped")

    def _serve(self, lst):
        """The accept loop of one listener (compat.accept_forever)."""
        if lst.tls:
            return accept_forever(lst.sock, lambda r, w: self._accept(r, w, lst), self._tls,
                                  self.cfg["tls_handshake_timeout_ms"])
        return accept_forever(lst.sock, lambda r, w: self._accept(r, w, lst))

    def _accept(self, reader, writer, lst=None):
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
            if lst is not None and lst.tls and self._tls_open() >= self.cfg["max_tls_clients"]:
                broker.count("tls_refused")
                log.info("TLS connection refused: max_tls_clients reached")
                close_stream(writer)
                return
            set_nodelay(writer)
            conn = Connection(broker, reader, writer, self.conns, lst)
            asyncio.create_task(conn.run())
        except MemoryError:
            if conn is not None and conn in self.conns:
                self.conns.remove(conn)
            close_stream(writer)
            broker.memory_error("out of memory accepting a connection")

    def _tls_open(self):
        n = 0
        for c in self.conns:
            lst = c.listener
            if lst is not None and lst.tls:
                n += 1
        return n

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
        tls_ms = cfg["tls_handshake_timeout_ms"]
        broker = self.broker
        for conn in self.conns:
            if conn.closing:
                continue  # Connection._finish bounds its own last write
            lst = conn.listener
            if (lst is not None and lst.tls and conn.state == AWAIT_CONNECT and conn.last_rx_ms == conn.opened_ms
                    and ticks_diff(now, conn.opened_ms) > tls_ms):
                # no byte of MQTT yet: the handshake (which MicroPython
                # runs inside the first reads) has not completed
                broker.count("tls_handshake_timeouts")
                log.info("%s closed: no TLS handshake within %d ms", conn.peer, tls_ms)
                conn.close()
            elif conn.state == AWAIT_CONNECT and ticks_diff(now, conn.opened_ms) > connect_ms:
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
