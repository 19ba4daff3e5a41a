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
# list (small replies are packed into one buffer) and puts the connection on
# broker.dirty. flush_dirty() hands each dirty connection's list to the
# socket: at the end of every chunk a read loop handled (so the replies and
# deliveries of one wake-up leave together), or from a one-shot task for
# sends made outside a read loop (ticks, wills, drains). Runs of small parts
# are gathered in one shared scratch buffer for one write; a large part is
# written from where it is; what the socket does not take stays where it
# was, in the list, with an offset into its first part (compat.write_some:
# no copy, where MicroPython's Stream.write would copy the rest, the large
# blocks a fragmented heap cannot give). While the socket is full a task
# waits for room and writes on; it exists only while draining. Bytes queued and not yet drained are capped twice: deliveries
# stop at max_outbound_bytes (see Delivery.deliver for what happens above it),
# and nothing at all may pass Broker.max_unsent (max_outbound_bytes +
# max_packet_size + max_reply_bytes): a client that keeps sending requests
# without reading the replies is closed there (output_overflows). A drain
# that takes longer than write_timeout_ms is found by Server.tick, which
# closes the connection.
#
# Heap contract: a MemoryError raised by this connection's own work (its
# packets, its output, its will) closes this connection only: its output
# and unread input are dropped, its socket is closed, the broker counts
# memory_errors and re-measures the heap. send() and flush() never raise, so
# one connection's failure cannot surface in another's read loop.
#
# Durability: every write is preceded by Broker.commit(), so nothing leaves
# that acknowledges what the store has not written.
#
# Closing: the socket is closed once the last output is written; when the
# broker ended the connection (not the client's EOF), after a lingering
# read of at most _LINGER_MS that drops what the client still sends
# (_linger), so that its unread input does not turn the close into a reset.
import asyncio

from . import codec, handlers, log
from .message import Message
from .compat import (const, ticks_ms, ticks_diff, print_exception, peer_text, sleep_ms, stream_reader,
                     unsent, close_stream, write_some, writable, wait_for_ms)
from .protocol import ProtocolError, AWAIT_CONNECT, ACTIVE
from .wire311 import WIRE311
from .broker import Broker

_admit = Broker.admit  # the authorisation point, called through the class (see forward_qos0)

_CHUNK = const(4096)
_shared_buf = bytearray(_CHUNK)
_shared_mv = memoryview(_shared_buf)
_PAUSE_STEP_MS = const(2)
_TAIL_IN_PLACE = const(2048)  # longest tail that keeps half the buffer for reading
_ACTIVE = const(1)           # protocol.ACTIVE, inlined (tests/test_connection.py checks they agree)
_QOS0_PUBLISH = const(0x30)  # fixed header of a QoS 0, retain 0, DUP 0 PUBLISH
_SMALL = const(16)           # replies up to this size are packed into one buffer
_WRITE_MAX = const(2048)     # bytes gathered for one write: small packets leave in one syscall
_ABANDONED = const(1 << 40)  # added to _out_bytes when output is dropped: no room, no more sends
_LINGER_MS = const(500)      # longest wait for the client to close after the broker ends a connection
_gather = bytearray(_WRITE_MAX)  # ONE scratch buffer, shared: a run of small parts is copied
                                 # in and handed to the socket in one write, synchronously


def flush_dirty(broker):
    """Write the queued output of every connection on broker.dirty (sends
    made meanwhile, by a pump after a write, are flushed by this same loop,
    not by a scheduled task). Never raises: each flush answers for its own
    connection."""
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
    """A one-shot task flushes sends made outside a read loop. If it cannot
    be made (no running loop, or no heap for the task), the output waits
    for the next flush: the tick flushes every 250 ms."""
    broker.flush_scheduled = True
    coro = None
    try:
        coro = _flush_later(broker)
        asyncio.create_task(coro)
    except (RuntimeError, MemoryError):
        # RuntimeError: no running event loop (CPython, a test poking a
        # connection directly): nothing could write now
        if coro is not None:
            coro.close()
        broker.flush_scheduled = False


class Connection:
    state = AWAIT_CONNECT   # protocol.AWAIT_CONNECT / ACTIVE / REFUSED / DETACHED (the broker moves it)
    wire = WIRE311          # the wire encoder of the protocol level of its CONNECT (handlers)
    session = None          # set by Broker.connect
    keepalive_ms = 0        # set by Broker.connect
    drain_started_ms = -1   # >= 0 while a write is draining
    closing = False         # no more packets are handled once set
    graceful = False        # DISCONNECT received: no will
    _out = ()               # bytes objects waiting to be written (a list once sent to)
    _out_bytes = 0          # bytes in _out + written and not yet drained
    _drainer = None         # the task draining the stream, while one runs
    _off = 0                # bytes of _out[0] already written
    _held = 0               # bytes written to a stream that keeps them (CPython) until drained
    _dirty = False          # on broker.dirty: flushed at the end of this chunk
    _owned = 0              # leading items of _out already made own copies (while draining)
    _paused = False         # the read loop stopped for backpressure
    _rest = b""             # bytes read but not yet handled (own copy, never the shared buffer)
    _tail = None            # the bytearray at the end of _out that small replies are packed into
    _done = False           # socket closed: nothing more is written
    _abandon = False        # output dropped (overflow, MemoryError): close without flushing
    _task = None            # the task running run()
    _eof = False            # the client closed its side (set at the end of run())
    registry = None         # list this connection is in while it runs
    listener = None         # the server.Listener it was accepted on (None: a test's)
    reply_later = None      # a refusing CONNACK held back (Broker._refuse: a failed login)...
    reply_delay_ms = 0      # ... sent this much later, before the close

    def __init__(self, broker, reader, writer, registry=None, listener=None):
        self.broker = broker
        self.reader = stream_reader(reader)
        self.writer = writer
        self.opened_ms = self.last_rx_ms = ticks_ms()
        if listener is not None:
            self.listener = listener
        if registry is not None:
            self.registry = registry
            registry.append(self)

    @property
    def peer(self):
        return peer_text(self.writer)

    # --- interface used by the broker --------------------------------------

    def send(self, data):
        """Queue bytes; never raises. Inside a read loop's chunk `data` may
        also be a memoryview into the shared read buffer
        (forward_qos0): the flush at the end of the chunk writes or
        copies it before the buffer is read into again. Past
        Broker.max_unsent the connection is closed instead (output_overflows);
        a MemoryError closes it too (memory_errors)."""
        n = len(data)
        b = self.broker
        if self._out_bytes + n > b.max_unsent:  # (also once abandoned: see _drop_output)
            self._overflow()
            return
        try:
            out = self._out
            if n > _SMALL and out:
                out.append(data)
            elif not out:
                out = self._out = [data]
            elif out[-1] is self._tail:
                self._tail.extend(data)  # PUBACKs of a burst: one buffer, not one object each
            else:
                t = self._tail = bytearray(data)
                out.append(t)
            self._out_bytes += n
            if not self._dirty:
                b.dirty.append(self)
                self._dirty = True
                if not b.flush_hold and not b.flush_scheduled:
                    _schedule_flush(b)
        except MemoryError:
            self._memory_error("queueing output")

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

    def _drop_output(self):
        """Forget everything queued and not yet handed to the stream (what
        the stream holds still counts until its drain ends or is
        abandoned); nothing more is queued. Frees the heap it held."""
        self._abandon = True
        for data in self._out:
            self._out_bytes -= len(data)
        self._out_bytes += self._off + _ABANDONED  # every later send() is over max_unsent
        self._out = ()
        self._off = 0
        self._tail = None
        self._owned = 0

    def _overflow(self):
        """max_unsent passed: the client does not read what it asked for
        (or the output was dropped already: then nothing more is done)."""
        if self._abandon:
            return
        self.broker.count("output_overflows")
        log.info("%s closed: unsent output over %d bytes", self._name(), self.broker.max_unsent)
        self._drop_output()
        self.close()

    def _memory_error(self, doing):
        """A MemoryError in this connection's own work: close it, free what
        it holds, let the broker re-measure the heap (and rewrite the store
        from memory if a record may be missing). Counted once per
        connection: a second MemoryError while its output is already
        dropped (the rest of the same chunk) is the same incident."""
        again = self._abandon
        self._drop_output()
        self._rest = b""
        self.close()
        if not again:
            self.broker.memory_error("%s closed: out of memory while %s" % (self._name(), doing))

    def flush(self):
        """Commit, then hand what is queued to the stream, unless a drain is
        running: that task writes the rest when the stream has drained.
        Never raises: an error closes this connection only."""
        self._dirty = False
        try:
            try:
                self._flush()
            except MemoryError:
                # no block to join the output into: make room once (what
                # failed changed nothing yet), then it is this connection's
                if not self.broker.flow.make_room():
                    raise
                self._flush()
        except MemoryError:
            self._memory_error("writing")
        except OSError as e:  # the stream writes at once where it can
            log.debug("%s write error %s", self._name(), e)
            self._drop_output()
            self.close()
        except Exception as e:
            self._internal_error(e)
            self._drop_output()
            self.close()

    def _flush(self):
        if self._drainer is None and not self._done and self._out and not self._pour():
            self._drainer = asyncio.create_task(self._drain())
        out = self._out
        if self._drainer is not None and len(out) > self._owned:
            # kept until the drain ends: views of the shared read buffer
            # (the QoS 0 fast path's frames) would change under it, so they
            # become own copies, each no larger than one packet. Only what
            # came since the last time is looked at; everything else in _out
            # is immutable or ours already.
            for k in range(self._owned, len(out)):
                if type(out[k]) is memoryview:
                    out[k] = bytes(out[k])
            self._owned = len(out)

    def _pour(self):
        """Write from the head of _out while the socket takes it, each
        write after a commit (nothing leaves that acknowledges what the
        store has not written), refilling from the session's queue as room
        frees. True when nothing is left to wait for; False when the socket
        is full, or the stream keeps what it was given (CPython): the drain
        task waits for room."""
        broker = self.broker
        while self._out and not self._done:
            if broker.store is not None and not self._commit():  # (no call without a store)
                return True
            n = self._write_some()
            full = n < 0
            if full:
                n = -n - 1
            broker.bytes_out += n
            if unsent(self.writer):
                self._held += n  # still counted in _out_bytes until drained
                return False
            self._out_bytes -= n
            if full:
                return False
            s = self.session
            if s is not None and (s.queue or s.backlog or s.resend):  # s.has_pending(), inline
                broker.flow.pump(s)  # may queue more: written by this same loop
        return True

    def _write_some(self):
        """One write from the head of _out: a run of small parts gathered in
        the shared scratch buffer, or one part from where it is (the socket
        copies what it takes before this returns). Allocates nothing.
        Returns the bytes the socket took, or -1 - that when it did not take
        all it was offered (it is full); what it did not take stays in
        _out."""
        out = self._out
        off = self._off
        p = out[0]
        size = len  # (a local: one builtin lookup per write, not per part)
        want = size(p) - off
        e = 1
        m = size(out)
        if m > 1 and want + size(out[1]) <= _WRITE_MAX:
            buf = _gather
            buf[:want] = memoryview(p)[off:] if off else p
            boff = 0
            while e < m:
                p = out[e]
                k = want + size(p)
                if k > _WRITE_MAX:
                    break
                buf[want:k] = p
                want = k
                e += 1
        else:
            buf = p
            boff = off
        n = write_some(self.writer, buf, boff, want)
        if n == want:  # all of parts 0..e-1
            if e == m:
                self._out = ()
                # handed over: the tail is never extended again, nothing is
                # owned (written only when not at the class default: see
                # _handed_over)
                if self._tail is not None:
                    self._tail = None
                if self._owned:
                    self._owned = 0
            else:
                del out[:e]
                if self._owned:
                    self._owned = self._owned - e if self._owned > e else 0
            if off:
                self._off = 0
            return n
        if n:
            self._advance(n)
        return -1 - n

    def _handed_over(self):
        """Everything queued went to the socket: the tail buffer is never
        extended again and nothing is owned. Attributes still at their
        class default are not assigned: an instance attribute set to its
        default costs a slot in the instance's table, and every lookup of
        a class default (a miss in that table) probes until an empty slot,
        so a fuller table slows every connection's hot path (measured:
        one more attribute took QoS 0 fan-out from 600k to 480k
        deliveries/s on the 64-bit unix port)."""
        if self._tail is not None:
            self._tail = None
        if self._owned:
            self._owned = 0

    def _advance(self, n):
        """n more bytes from the head of _out were written."""
        out = self._out
        off = self._off + n
        i = 0
        while i < len(out) and off >= len(out[i]):
            off -= len(out[i])
            i += 1
        if i == len(out):
            self._out = ()
            self._handed_over()
            off = 0
        elif i:
            del out[:i]
            self._owned = self._owned - i if self._owned > i else 0
        self._off = off

    # --- the connection's life --------------------------------------------------

    async def run(self):
        """The client's task. Its coroutine frame is what an idle client
        keeps (with the pending readinto), so it holds as few locals and
        handlers as it can: the work happens in _received and _closed."""
        self._task = asyncio.current_task()
        err = None
        try:
            while not self.closing:
                if self._paused:
                    self._paused = False
                    await self._backpressure()
                    self._received(-1)
                    continue
                n = await self.reader.readinto(self._read_space())
                if not n:
                    self._eof = True
                    break
                self._received(n)
        except asyncio.CancelledError:
            pass  # closed by the broker (takeover, keepalive) or the server
        except Exception as e:
            err = e
        self._wind_down(err)
        await self._finish()

    def _wind_down(self, err):
        """The read loop ended (err: what ended it, or None). Never raises:
        a MemoryError while handling a MemoryError (even setting a flag can
        allocate) must not skip the detach, or the close in _finish that
        follows."""
        if err is not None:
            try:
                self._read_failed(err)
            except Exception:
                pass
        try:
            self._closed()
        except Exception:
            pass

    def _read_failed(self, e):
        if isinstance(e, OSError):
            log.debug("%s socket error %s", self._name(), e)
        elif isinstance(e, MemoryError):  # e.g. waiting for input (the poller's entry)
            self._memory_error("reading")
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
        try:
            if n < 0:
                data = rest
            else:
                self.last_rx_ms = ticks_ms()
                broker = self.broker
                broker.bytes_in += n
                broker.heap.spend(n)
                k = len(rest)
                if k and k <= _TAIL_IN_PLACE:
                    _shared_buf[:k] = rest
                    data = _shared_mv[:k + n]
                elif k:
                    data = rest + _shared_mv[:n]
                else:
                    data = _shared_mv[:n]
            tail = self._handle(data)
            if tail or rest:
                self._rest = tail  # (b"" stays the class default: see _handed_over)
        except ProtocolError as e:
            self.broker.count(e.counter)
            if log.level <= log.INFO:
                log.info("%s closed: %s", self._name(), e.args[0] if e.args else e)
            if self.state == ACTIVE:
                # MQTT 5 says why [MQTT-4.13.1-1], with the error's text as
                # its Reason String; 3.1.1 just closes
                d = self.wire.disconnect(e.reason, e.args[0] if e.args else None)
                if d is not None:
                    self.send(d)
            self.closing = True
        except MemoryError:
            self._memory_error("handling its packets")
        except Exception as e:
            self._internal_error(e)
            self.closing = True
        # Durable before any reply of this chunk is written; then every
        # connection the chunk gave output (views of the shared buffer must
        # leave or be copied before the next read). After an error has
        # closed this one: a packet it left half done (a SUBSCRIBE whose
        # SUBACK was never queued) sends nothing of it.
        if self.broker.store is not None:
            self._commit()
        flush_dirty(self.broker)

    def _internal_error(self, e):
        self.broker.count("internal_errors")
        log.error("%s internal error, connection closed: %r", self._name(), e)
        print_exception(e)

    def _closed(self):
        """The read side is done: detach (the will, if any, is published
        and flushed to its subscribers). Detach comes first: it lets the
        session go before anything that may allocate (setting `closing`
        can: a new instance attribute), so a MemoryError here cannot leave
        the session attached to a closed connection, counted online."""
        broker = self.broker
        try:
            broker.detach(self, self.graceful)
            self.closing = True
            broker.commit()
        except MemoryError:
            broker.memory_error("%s: out of memory while detaching" % self._name())
        except OSError as e:  # the store could not write: counted and logged there
            log.debug("%s detach: %s", self._name(), e)
        except Exception as e:
            self._internal_error(e)
        flush_dirty(broker)

    def _handle(self, data):
        """Handle every complete packet in `data` (what they queue is
        flushed by _received). Returns the unhandled tail as an own copy.
        Stops early when closing, or when backpressure asks (sets
        _paused)."""
        broker = self.broker
        flow = broker.flow
        max_packet = broker.max_packet
        # locals, not globals: a global (or builtin) lookup per packet costs
        # more than a small packet's work (docs/DESIGN.md, "Hot paths")
        frame_end = codec.frame_end
        fast = forward_qos0
        handle = handlers.handle
        pos = 0
        broker.flush_hold = True  # flushed below, once for the whole chunk
        try:
            while True:
                v = frame_end(data, pos, max_packet)
                if v < 0:
                    break
                first = data[pos]
                start = pos + (v & 7)
                end = v >> 3
                if first != _QOS0_PUBLISH or not fast(self, data, pos, start, end):
                    handle(broker, self, first, data, start, end)
                pos = end
                if self.closing:
                    break
                if flow.pressured and flow.should_pause(self):
                    self._paused = True  # stop between packets, not only between reads
                    break
        finally:
            broker.flush_hold = False
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
            self._drop_output()
            log.error("%s closed: %s", self._name(), e)
            self.close()
            return False
        except MemoryError:
            self._memory_error("writing the store")
            return False

    async def _drain(self):
        """The socket was full: wait for room, let the session's queue refill
        what was freed, write on; until nothing is left. A wait that sees no
        room for write_timeout_ms is found by Server.tick (drain_started_ms)."""
        broker = self.broker
        try:
            while True:
                self.drain_started_ms = ticks_ms()
                await writable(self.writer)
                self.drain_started_ms = -1
                if self._held:
                    self._out_bytes -= self._held
                    self._held = 0
                s = self.session
                if s is not None and s.has_pending():
                    broker.flow.pump(s)
                if self._done or not self._out or self._pour():
                    break
        except asyncio.CancelledError:
            pass
        except (OSError, EOFError) as e:
            log.debug("%s write error %s", self._name(), e)
            self._drop_output()
            self.close()
        except MemoryError:
            self._memory_error("draining")
        except Exception as e:
            self._internal_error(e)
            self._drop_output()
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
        while waited < limit and broker.flow.should_pause(self):
            await sleep_ms(_PAUSE_STEP_MS)
            waited += _PAUSE_STEP_MS

    async def _finish(self):
        """Let what is still queued go out (a refusing CONNACK, the
        acknowledgements before a DISCONNECT) unless a drain stalls past
        write_timeout_ms or the output was abandoned; then close the socket
        and leave the registry. The socket is closed whatever happens
        (cancellation included): a leaked socket is a slot lost for good on
        a board."""
        try:
            if self.reply_later is not None:
                await self._reply_late()
            await self._flush_last()
            if (not self._eof and not self._abandon and self.state != AWAIT_CONNECT
                    and not self.broker.heap.level):
                await self._linger()
        except Exception:
            pass  # never leave the socket open for a failed flush
        finally:
            # the close first, allocating nothing; then the bookkeeping,
            # which may (setting a flag can), and must not undo it
            d = self._drainer
            if d is not None:
                d.cancel()
            close_stream(self.writer)
            reg = self.registry
            if reg is not None and self in reg:
                reg.remove(self)
            try:
                self._done = True
                self._drop_output()
                self._rest = b""
            except Exception:
                pass

    async def _reply_late(self):
        """A failed login: its refusing CONNACK goes out reply_delay_ms
        after the CONNECT (the client's socket slot is held meanwhile;
        max_clients and the per-peer failure limit bound that)."""
        await sleep_ms(self.reply_delay_ms)
        ack = self.reply_later
        self.reply_later = None
        if not self._abandon:
            self.send(ack)

    async def _linger(self):
        """The broker ends this connection after its CONNECT (a protocol
        error, a refused CONNECT, a takeover, a keep alive timeout, a
        DISCONNECT it received) and its last packets are written: read and
        drop what the client still sends until it closes, for at most
        _LINGER_MS. Not before a CONNECT (a silent socket closed to free
        its slot, or at connect_timeout_ms, has nothing to say and frees
        the slot at once), and not while the heap guard sheds load (the
        connection's heap goes back at once: a lingering task holds it).
        Closing a socket with unread input resets the connection, and a
        reset can destroy what the client has not read yet: the
        DISCONNECT that says why, a refusing CONNACK. Into the shared read
        buffer: nothing is kept across an await there."""
        started = ticks_ms()
        while True:
            left = _LINGER_MS - ticks_diff(ticks_ms(), started)
            if left <= 0:
                return
            try:
                n = await wait_for_ms(self.reader.readinto(_shared_buf), left)
            except Exception:  # the time is up (TimeoutError), or the socket failed
                return
            if not n:
                return  # the client closed its side

    async def _flush_last(self):
        if self._abandon:
            return
        self.flush()
        limit = self.broker.cfg["write_timeout_ms"]
        while self._drainer is not None and not self._abandon:
            started = self.drain_started_ms
            if started >= 0 and ticks_diff(ticks_ms(), started) > limit:
                break  # stalled: the stream is abandoned
            await sleep_ms(_PAUSE_STEP_MS)

    def _name(self):
        s = self.session
        return "client %s (%s)" % (s.client_id, self.peer) if s is not None else self.peer


def forward_qos0(conn, buf, pos, start, end):
    """The QoS 0 fast path, an optimisation of the full path for a
    PUBLISH with fixed header 0x30 (QoS 0, retain 0) at buf[pos:end],
    body at buf[start:end], whose topic was routed before
    (Subscriptions.route: filled only by topics that passed
    Broker.check_name, and only with plain routes, every grant a QoS):
    the packet goes byte for byte to every subscriber that speaks the same
    wire (every delivery of a QoS 0 message is QoS 0 and retain 0, and the
    3.1 and 3.1.1 layouts are one), the one frame shared by all; no
    Message is built. It passes the same authorisation point as the full
    path (Broker.admit). Returns False when it did nothing (not ACTIVE, an
    MQTT 5 publisher, or the topic is not in the route cache): the caller
    then takes the full path. While MQTT 5 clients are connected
    (Broker.v5_online), an MQTT 5 subscriber gets the message through the
    full path's delivery; with none, the loop does not look. `conn` is a
    Connection (or the tests' FakeConn)."""
    broker = conn.broker
    v5 = broker.v5_online
    if conn.state != _ACTIVE or end - start < 2 or (v5 and conn.wire.v5):
        return False
    t_end = start + 2 + ((buf[start] << 8) | buf[start + 1])
    if t_end > end:
        return False
    topic = bytes(buf[start + 2:t_end])
    route = broker.routes.get(topic)  # (Subscriptions.route, without the call)
    if route is None:
        return False
    if not _admit(broker, conn.session, topic):
        return True
    frame = None
    others = None
    sent = 0
    n = end - pos
    # heap short: QoS 0 goes only to subscribers that have nothing unsent
    max_out = broker.max_outbound
    slack = max_out - 1 if broker.heap.level else 0
    # Per delivery this loop makes no call and no global lookup in the
    # common case: a Python call (its frame is allocated on the heap) or a
    # builtin's lookup costs more than the rest of a delivery; so room() and
    # Connection.send are inlined, and methods are taken from the class
    # (docs/DESIGN.md, "Hot paths").
    cls = _type = type
    send = None
    for s in route:
        c = s.conn
        if c is None:
            continue  # QoS 0 is not queued for offline sessions
        if v5 and c.wire.v5:
            others = _gather_item(others, s)
            continue
        used = c._out_bytes
        if max_out - used <= slack:  # room() <= slack
            broker.flow.drop_qos0(c)
            continue
        if frame is None:
            # a view, not a copy: the flush at the end of the chunk
            # writes or copies it before `buf` changes (send())
            frame = buf[pos:end] if _type(buf) is memoryview else bytes(buf[pos:end])
        out = c._out
        if out and c._dirty:
            # send()'s common case: on broker.dirty already, so the flush at
            # the end of this chunk writes or copies the view; within
            # max_unsent, since used + n < max_outbound + max_packet_size
            try:
                out.append(frame)
                c._out_bytes = used + n
            except MemoryError:
                c._memory_error("queueing output")  # as send() would
                continue
        else:
            if _type(c) is not cls:
                cls = _type(c)
                send = cls.send
            send(c, frame)
        sent += 1
    broker.msgs_out += sent  # (once per message, not per delivery)
    if others is not None:
        p = conn.wire.decode_publish(0, buf, start, end)
        msg = Message(p.topic, p.payload, 0, False, p.topic_bytes)
        deliver = broker.flow.deliver
        for s in others:
            deliver(s, msg, 0)  # (a cached route's grants are plain)
    return True


def _gather_item(found, item):
    """found (a list, made on first use) with item appended."""
    if found is None:
        found = []
    found.append(item)
    return found
