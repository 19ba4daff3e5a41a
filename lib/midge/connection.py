# One client connection: the ONE place that turns errors into a close.
#
# Reading: chunks of up to _CHUNK bytes into ONE buffer shared by all
# connections (a per-read allocation fragments a device heap, a buffer per
# connection costs _CHUNK per idle client). Sharing is safe because every
# complete packet in the chunk is handled, and the partial tail copied out,
# before the next await. The tail never exceeds max_packet_size because
# codec.split_frame rejects an oversize packet from its length field.
#
# Writing: handlers and the broker call send(), which only appends to a
# list; a writer task joins the list and writes it in one go, so the
# replies of one wake-up leave in one write. Bytes queued but not yet
# drained are capped by max_outbound_bytes (see Broker.deliver for what
# happens above it); a drain that takes longer than write_timeout_ms is
# found by Server.tick, which closes the connection.
import asyncio

from . import codec, handlers, log
from .compat import const, ticks_ms, ticks_diff, print_exception, peer_text, read_chunk, sleep_ms
from .protocol import ProtocolError

_CHUNK = const(4096)
_shared_buf = bytearray(_CHUNK)
_PAUSE_STEP_MS = const(2)


class Connection:
    def __init__(self, broker, reader, writer):
        self.broker = broker
        self.reader = reader
        self.writer = writer
        self.session = None        # set by Broker.connect
        self.keepalive_ms = 0      # set by Broker.connect
        self.opened_ms = ticks_ms()
        self.last_rx_ms = self.opened_ms
        self.drain_started_ms = -1  # >= 0 while a write is draining
        self.closing = False       # no more packets are handled once set
        self.graceful = False      # DISCONNECT received: no will
        self.peer = peer_text(writer)
        self._out = []             # bytes objects waiting for the writer task
        self._out_bytes = 0        # queued + being drained
        self._max_out = broker.cfg["max_outbound_bytes"]
        self._wake = asyncio.Event()
        self._task = None          # the task running run()
        self._writer_task = None

    # --- interface used by the broker --------------------------------------

    def send(self, data):
        if not self._out:
            self._wake.set()
        self._out.append(data)
        self._out_bytes += len(data)

    def room(self):
        return self._max_out - self._out_bytes

    def close(self):
        """Ask to close, from any task. The reading task is cancelled unless
        it is the caller (then it sees `closing` after the current packet)."""
        if self.closing:
            return
        self.closing = True
        self._wake.set()
        task = self._task
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    # --- the connection's life --------------------------------------------------

    async def run(self):
        self._task = asyncio.current_task()
        self._writer_task = asyncio.create_task(self._write_loop())
        broker = self.broker
        try:
            await self._read_loop()
        except ProtocolError as e:
            broker.count(e.counter)
            if log.level <= log.INFO:
                log.info("%s closed: %s", self._name(), e.args[0] if e.args else e)
        except EOFError:
            pass
        except OSError as e:
            log.debug("%s socket error %s", self._name(), e)
        except asyncio.CancelledError:
            pass  # closed by the broker (takeover, keepalive) or the server
        except Exception as e:  # a bug must cost one connection, never the broker
            broker.count("internal_errors")
            log.error("%s internal error, connection closed: %r", self._name(), e)
            print_exception(e)
        self.closing = True
        try:
            broker.detach(self, self.graceful)
            broker.commit()
        except Exception as e:
            log.error("detach failed: %r", e)
            print_exception(e)
        await self._finish()

    async def _read_loop(self):
        reader = self.reader
        broker = self.broker
        max_packet = broker.cfg["max_packet_size"]
        rest = b""       # bytes read but not yet handled (own copy, never the shared buffer)
        need_read = True
        while not self.closing:
            if need_read:
                data = await read_chunk(reader, _shared_buf)
                if not data:
                    raise EOFError()
                self.last_rx_ms = ticks_ms()
                broker.bytes_in += len(data)
                if rest:
                    data = rest + data
            else:
                data = rest
            pos = 0
            paused = False
            while True:
                frame = codec.split_frame(data, pos, max_packet)
                if frame is None:
                    break
                first, start, end = frame
                handlers.handle(broker, self, first, data, start, end)
                pos = end
                if self.closing:
                    self._commit()
                    return
                if broker.pressured and broker.should_pause(self):
                    paused = True  # stop between packets, not only between reads
                    break
            rest = bytes(data[pos:]) if pos < len(data) else b""
            self._commit()  # durable before any reply of this chunk is written
            need_read = not paused
            if paused:
                await self._backpressure()

    def _commit(self):
        """Broker.commit(); if the store could not write what this
        connection's queued replies acknowledge, those replies are dropped
        and the connection closed: nothing is acknowledged that is not
        durable (the client resends after reconnecting)."""
        try:
            self.broker.commit()
        except OSError as e:  # store.StoreWriteError
            self._out = []
            self._out_bytes = 0
            log.error("%s closed: %s", self._name(), e)
            self.close()

    async def _backpressure(self):
        """Wait while a connected subscriber's queue is over half full, at
        most backpressure_ms (Broker.should_pause)."""
        broker = self.broker
        waited = 0
        limit = broker.cfg["backpressure_ms"]
        while waited < limit and broker.should_pause(self):
            await sleep_ms(_PAUSE_STEP_MS)
            waited += _PAUSE_STEP_MS

    async def _write_loop(self):
        try:
            await self._write_forever()
        except asyncio.CancelledError:
            pass
        except (OSError, EOFError) as e:
            log.debug("%s write error %s", self._name(), e)
            self.close()

    async def _write_forever(self):
        """Write whatever is queued, one join per wake-up, until the
        connection is closing and nothing is left to write."""
        writer = self.writer
        while True:
            if not self._out:
                if self.closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            self._commit()  # e.g. records of a pump() after the last drain
            if not self._out:
                continue
            out = self._out
            data = out[0] if len(out) == 1 else b"".join(out)
            self._out = []
            writer.write(data)
            self.drain_started_ms = ticks_ms()
            await writer.drain()
            self.drain_started_ms = -1
            n = len(data)
            self._out_bytes -= n
            self.broker.bytes_out += n
            s = self.session
            if s is not None and s.has_pending():
                self.broker.pump(s)

    async def _finish(self):
        """Let the writer send what is still queued (a refusing CONNACK, the
        acknowledgements before a DISCONNECT) unless a drain stalls past
        write_timeout_ms, then close the socket."""
        wt = self._writer_task
        if wt is not None:
            self._wake.set()
            limit = self.broker.cfg["write_timeout_ms"]
            while not wt.done():
                started = self.drain_started_ms
                if started >= 0 and ticks_diff(ticks_ms(), started) > limit:
                    wt.cancel()  # stalled: the stream is abandoned
                    break
                await sleep_ms(_PAUSE_STEP_MS)
        try:
            self.writer.close()
            await self.writer.wait_closed()
        except Exception:
            pass

    def _name(self):
        s = self.session
        return "client %s (%s)" % (s.client_id, self.peer) if s is not None else self.peer
