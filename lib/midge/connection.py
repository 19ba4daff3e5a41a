# One client connection: the ONE place that turns errors into a close.
#
# Memory: an idle client holds one task (run(), waiting in readinto) and
# this object; nothing else. Attributes that most connections never change
# are class defaults, so they cost no instance heap until assigned.
#
# Reading: chunks of up to _CHUNK bytes into ONE buffer shared by all
# connections (a per-read allocation fragments a device heap, a buffer per
# connection costs _CHUNK per idle client). Sharing is safe because every
# complete packet in the chunk is handled, and the partial tail copied out,
# before the next await; the tail goes back in front of the next chunk
# after that read returns. The tail never exceeds max_packet_size because
# codec.frame_end rejects an oversize packet from its length field.
#
# Writing: handlers and the broker call send(), which only appends to a
# list and puts the connection on broker.dirty. flush_dirty() hands each
# dirty connection's list to its stream in one write: at the end of every
# chunk a read loop handled (so the replies and deliveries of one wake-up
# leave in one write per connection), or from a one-shot task for sends
# made outside a read loop (ticks, wills, drains). A write that the stream
# could not take at once is drained by a task that exists only while
# draining. Bytes queued and not yet drained are capped by
# max_outbound_bytes (see Broker.deliver for what happens above it); a drain
# that takes longer than write_timeout_ms is found by Server.tick, which
# closes the connection.
#
# Durability: every write is preceded by Broker.commit(), so nothing leaves
# that acknowledges what the store has not written.
import asyncio

from . import codec, handlers, log
from .compat import const, ticks_ms, ticks_diff, print_exception, peer_text, sleep_ms, stream_reader, unsent
from .protocol import ProtocolError

_CHUNK = const(4096)
_shared_buf = bytearray(_CHUNK)
_shared_mv = memoryview(_shared_buf)
_PAUSE_STEP_MS = const(2)
_TAIL_IN_PLACE = const(2048)  # longest tail that keeps half the buffer for reading
_QOS0_PUBLISH = const(0x30)  # fixed header of a QoS 0, retain 0, DUP 0 PUBLISH


def _join(parts):
    """One buffer of bytes and memoryviews (MicroPython's bytes.join takes
    bytes only)."""
    n = 0
    for p in parts:
        n += len(p)
    buf = bytearray(n)
    i = 0
    for p in parts:
        k = i + len(p)
        buf[i:k] = p
        i = k
    return buf


def flush_dirty(broker):
    """Write the queued output of every connection on broker.dirty (sends
    made meanwhile, by a pump after a write, are flushed by this same loop,
    not by a scheduled task)."""
    d = broker.dirty
    hold = broker.flush_hold
    broker.flush_hold = True
    try:
        while d:
            d.pop().flush()
    finally:
        broker.flush_hold = hold


async def _flush_later(broker):
    broker.flush_scheduled = False
    flush_dirty(broker)


def _schedule_flush(broker):
    broker.flush_scheduled = True
    coro = _flush_later(broker)
    try:
        asyncio.create_task(coro)
    except RuntimeError:
        # no running event loop (CPython, a test poking a connection
        # directly): nothing could write now; the next flush will
        coro.close()
        broker.flush_scheduled = False


class Connection:
    session = None          # set by Broker.connect
    keepalive_ms = 0        # set by Broker.connect
    drain_started_ms = -1   # >= 0 while a write is draining
    closing = False         # no more packets are handled once set
    graceful = False        # DISCONNECT received: no will
    _out = ()               # bytes objects waiting to be written (a list once sent to)
    _out_bytes = 0          # bytes in _out + written and not yet drained
    _drainer = None         # the task draining the stream, while one runs
    _dirty = False          # on broker.dirty: flushed at the end of this chunk
    _owned = 0              # leading items of _out that are own copies (while draining)
    _paused = False         # the read loop stopped for backpressure
    _rest = b""             # bytes read but not yet handled (own copy, never the shared buffer)
    _done = False           # socket closed: nothing more is written
    _task = None            # the task running run()
    registry = None         # list this connection is in while it runs

    def __init__(self, broker, reader, writer, registry=None):
        self.broker = broker
        self.reader = stream_reader(reader)
        self.writer = writer
        self.opened_ms = self.last_rx_ms = ticks_ms()
        if registry is not None:
            self.registry = registry
            registry.append(self)

    @property
    def peer(self):
        return peer_text(self.writer)

    # --- interface used by the broker --------------------------------------

    def send(self, data):
        """Queue bytes. Inside a read loop's chunk `data` may also be a
        memoryview into the shared read buffer (Broker.forward_qos0): the
        flush at the end of the chunk writes or copies it before the buffer
        is read into again."""
        out = self._out
        if not out:
            out = self._out = []
        if not self._dirty:
            self._dirty = True
            b = self.broker
            b.dirty.append(self)
            if not b.flush_hold and not b.flush_scheduled:
                _schedule_flush(b)
        out.append(data)
        self._out_bytes += len(data)

    def room(self):
        return self.broker.max_outbound - self._out_bytes

    def close(self):
        """Ask to close, from any task. The reading task is cancelled unless
        it is the caller (then it sees `closing` after the current packet)."""
        if self.closing:
            return
        self.closing = True
        task = self._task
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def flush(self):
        """Commit, then hand what is queued to the stream, unless a drain is
        running: that task writes the rest when the stream has drained."""
        self._dirty = False
        out = self._out
        if self._drainer is not None and len(out) > self._owned:
            # kept until the drain ends: own the bytes (views of the shared
            # read buffer would change under it). Only what came since the
            # last time is copied, so a long drain does not copy it all again.
            k = self._owned
            out[k:] = [_join(out[k:])]
            self._owned = k + 1
        broker = self.broker
        while self._out and self._drainer is None and not self._done:
            if not self._commit():
                return
            try:
                n = self._write_out()
            except OSError as e:  # the stream writes at once where it can
                log.debug("%s write error %s", self._name(), e)
                self.close()
                return
            if unsent(self.writer):
                self._drainer = asyncio.create_task(self._drain(n))
                return
            # the socket took it all: the room is free again at once
            self._out_bytes -= n
            broker.bytes_out += n
            s = self.session
            if s is not None and s.has_pending():
                broker.pump(s)  # may queue more: written by the next turn

    # --- the connection's life --------------------------------------------------

    async def run(self):
        """The client's task. Its coroutine frame is what an idle client
        keeps (with the pending readinto), so it holds as few locals and
        handlers as it can: the work happens in _received and _closed."""
        self._task = asyncio.current_task()
        try:
            while not self.closing:
                if self._paused:
                    self._paused = False
                    await self._backpressure()
                    self._received(-1)
                    continue
                n = await self.reader.readinto(self._read_space())
                if not n:
                    break  # EOF
                self._received(n)
        except asyncio.CancelledError:
            pass  # closed by the broker (takeover, keepalive) or the server
        except Exception as e:
            self._read_failed(e)
        self._closed()
        await self._finish()

    def _read_failed(self, e):
        if isinstance(e, OSError):
            log.debug("%s socket error %s", self._name(), e)
        else:  # a bug must cost one connection, never the broker
            self._internal_error(e)

    def _read_space(self):
        """Where the next read goes: behind the room for a tail that fits
        (_received puts the tail in front once the shared buffer is ours
        again), else the whole shared buffer."""
        k = len(self._rest)
        if k and k <= _TAIL_IN_PLACE:
            return _shared_mv[k:]
        return _shared_buf

    def _received(self, n):
        """n new bytes in the shared buffer (-1: none, go on with the tail
        after a backpressure pause): handle every complete packet, keep the
        tail in _rest (an own copy). The tail goes back in front of the new
        bytes without a new buffer where it fits (a 4 KB allocation per
        split packet fragments a device heap until one fails). A protocol
        error or a bug closes this connection only."""
        rest = self._rest
        if n < 0:
            data = rest
        else:
            self.last_rx_ms = ticks_ms()
            self.broker.bytes_in += n
            k = len(rest)
            if k and k <= _TAIL_IN_PLACE:
                _shared_buf[:k] = rest
                data = _shared_mv[:k + n]
            elif k:
                data = rest + _shared_mv[:n]
            else:
                data = _shared_mv[:n]
        try:
            self._rest = self._handle(data)
        except ProtocolError as e:
            self.broker.count(e.counter)
            if log.level <= log.INFO:
                log.info("%s closed: %s", self._name(), e.args[0] if e.args else e)
            self.closing = True
        except Exception as e:
            self._internal_error(e)
            self.closing = True

    def _internal_error(self, e):
        self.broker.count("internal_errors")
        log.error("%s internal error, connection closed: %r", self._name(), e)
        print_exception(e)

    def _closed(self):
        """The read side is done: detach (the will, if any, is published
        and flushed to its subscribers)."""
        self.closing = True
        broker = self.broker
        try:
            broker.detach(self, self.graceful)
            broker.commit()
        except Exception as e:
            log.error("detach failed: %r", e)
            print_exception(e)
        flush_dirty(broker)

    def _handle(self, data):
        """Handle every complete packet in `data`, then flush what they
        queued. Returns the unhandled tail as an own copy. Stops early when
        closing, or when backpressure asks (sets _paused)."""
        broker = self.broker
        max_packet = broker.max_packet
        pos = 0
        broker.flush_hold = True  # flushed below, once for the whole chunk
        try:
            while True:
                v = codec.frame_end(data, pos, max_packet)
                if v < 0:
                    break
                first = data[pos]
                start = pos + (v & 7)
                end = v >> 3
                if first != _QOS0_PUBLISH or not broker.forward_qos0(self, data, pos, start, end):
                    handlers.handle(broker, self, first, data, start, end)
                pos = end
                if self.closing:
                    break
                if broker.pressured and broker.should_pause(self):
                    self._paused = True  # stop between packets, not only between reads
                    break
        finally:
            broker.flush_hold = False
            self._commit()  # durable before any reply of this chunk is written
            flush_dirty(broker)
        return bytes(data[pos:]) if pos < len(data) else b""

    def _commit(self):
        """Broker.commit(); True if it wrote what it had to. If the store
        could not write what this connection's queued replies acknowledge,
        those replies are dropped and the connection closed: nothing is
        acknowledged that is not durable (the client resends after
        reconnecting)."""
        try:
            self.broker.commit()
            return True
        except OSError as e:  # store.StoreWriteError
            for data in self._out:
                self._out_bytes -= len(data)
            self._out = ()
            self._owned = 0
            log.error("%s closed: %s", self._name(), e)
            self.close()
            return False

    def _write_out(self):
        """Hand _out to the stream in one write; returns the bytes written."""
        out = self._out
        data = out[0] if len(out) == 1 else _join(out)
        self._out = ()
        self._owned = 0
        self.writer.write(data)
        return len(data)

    async def _drain(self, n):
        """Drain the write of n bytes, let the session's queue refill the
        freed room, write what was queued meanwhile; repeat until nothing is
        left."""
        broker = self.broker
        try:
            while True:
                self.drain_started_ms = ticks_ms()
                await self.writer.drain()
                self.drain_started_ms = -1
                self._out_bytes -= n
                broker.bytes_out += n
                s = self.session
                if s is not None and s.has_pending():
                    broker.pump(s)
                if self._done or not self._out or not self._commit():
                    break
                n = self._write_out()
        except asyncio.CancelledError:
            pass
        except (OSError, EOFError) as e:
            log.debug("%s write error %s", self._name(), e)
            self.close()
        finally:
            self.drain_started_ms = -1
            self._drainer = None

    async def _backpressure(self):
        """Wait while a connected subscriber's queue is over half full, at
        most backpressure_ms (Broker.should_pause)."""
        broker = self.broker
        waited = 0
        limit = broker.cfg["backpressure_ms"]
        while waited < limit and broker.should_pause(self):
            await sleep_ms(_PAUSE_STEP_MS)
            waited += _PAUSE_STEP_MS

    async def _finish(self):
        """Let what is still queued go out (a refusing CONNACK, the
        acknowledgements before a DISCONNECT) unless a drain stalls past
        write_timeout_ms, then close the socket and leave the registry."""
        try:
            await self._flush_and_close()
        finally:
            reg = self.registry
            if reg is not None:
                reg.remove(self)

    async def _flush_and_close(self):
        self.flush()
        limit = self.broker.cfg["write_timeout_ms"]
        while self._drainer is not None:
            started = self.drain_started_ms
            if started >= 0 and ticks_diff(ticks_ms(), started) > limit:
                self._drainer.cancel()  # stalled: the stream is abandoned
                break
            await sleep_ms(_PAUSE_STEP_MS)
        self._done = True
        try:
            self.writer.close()
            await self.writer.wait_closed()
        except Exception:
            pass

    def _name(self):
        s = self.session
        return "client %s (%s)" % (s.client_id, self.peer) if s is not None else self.peer
