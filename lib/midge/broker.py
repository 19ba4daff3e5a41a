# The broker core: sessions, connect/takeover/will, routing, flow control
# and the periodic tick. No sockets and no asyncio: it talks to connections
# only through this small interface, which tests implement with a fake:
#
#   conn.send(data)      queue bytes for the client (never blocks, never
#                        raises: past max_unsent or on MemoryError the
#                        connection closes itself)
#   conn.room()          bytes that may still be queued before the
#                        max_outbound_bytes cap (<= 0: congested)
#   conn.close()         ask the connection to close (takeover, keepalive);
#                        it later calls Broker.detach(conn, graceful)
#   conn.session         the attached Session or None (set by the broker)
#   conn.keepalive_ms    0 = no keepalive; set by the broker on CONNECT
#   conn.last_rx_ms      ticks_ms of the last bytes received
#
# Time comes from the injected clock (ticks_ms by default) so tests can
# drive keepalive and $SYS deterministically, wrap-around included.
#
# Heap contract (README, "Heap contract"): every structure here that a
# client can grow is capped; self.heap (heap.HeapGuard) says when free heap
# is under heap_reserve_bytes, and the broker then refuses and drops in the
# documented steps. A MemoryError raised while delivering to one session is
# that session's: the message is dropped for it (and its connection, if
# any, closed), never the publisher's connection.
from . import codec, log
from .compat import const, ticks_ms, ticks_diff
from .message import Message
from .protocol import (
    CONNACK_ACCEPTED, CONNACK_ID_REJECTED, CONNACK_UNAVAILABLE, CONNACK_NOT_AUTHORIZED,
    SUBACK_FAILURE, ProtocolError, RC_TOPIC_NAME_INVALID,
)
from .heap import HeapGuard, CRITICAL
from .retained import Retained
from .session import Session, PID, MSG, QOS, RETAIN, STATE, AWAIT_ACK, AWAIT_COMP
from .subscriptions import Subscriptions
from . import topics
from . import sys_topics  # imported up front: compiling it later needs heap a full broker may not have

VERSION = "0.1.0"

_PRESSURE_MAX_MS = const(5000)  # longest one session's full queue slows others
_RELIEF_BATCH = const(8)        # queued messages dropped per heap check while CRITICAL
_ROOM_MAX = const(64)           # queued messages make_room() drops at most

# $SYS counters, all published under $SYS/broker/counters/<name>.
COUNTERS = (
    "clients_refused", "connect_timeouts", "keepalive_timeouts", "malformed_packets",
    "oversize_packets", "sessions_evicted", "sessions_refused", "queue_dropped",
    "slow_dropped", "slow_disconnects", "retained_refused", "subscriptions_refused",
    "topic_limit", "sys_publish_dropped", "inflight_in_exceeded", "internal_errors",
    "sessions_expired", "store_evicted", "output_overflows", "preconnect_closed",
    "memory_errors", "heap_low", "heap_refused", "heap_dropped",
)


class Broker:
    VERSION = VERSION

    def __init__(self, cfg, clock=ticks_ms, store=None):
        self.cfg = cfg
        self.store = store          # store.Store, or None: memory only
        self.clock = clock
        # Broker time: ticks_diff is only valid for half the ticks period
        # (~6.2 days on 32-bit boards), so elapsed time is accumulated in
        # small steps by now_ms() instead of diffing against start.
        self._last_ticks = clock()
        self.uptime_ms = 0
        self.sessions = {}          # client_id -> Session
        self.online = 0             # sessions with a connection
        self.subs = Subscriptions()
        self.retained = Retained(cfg["max_retained_messages"], cfg["max_retained_bytes"])
        self.counters = {}
        for name in COUNTERS:
            self.counters[name] = 0
        self.msgs_in = 0            # PUBLISH packets received
        self.msgs_out = 0           # PUBLISH packets sent
        self.bytes_in = 0           # maintained by the connection layer
        self.bytes_out = 0
        self._assigned = 0          # counter for broker-assigned client ids
        self._next_sys_ms = 0      # uptime_ms of the next $SYS publication
        # caps read once: the hot path does attribute lookups, not dict lookups
        self.max_inflight = cfg["max_inflight"]
        self.max_queued = cfg["max_queued_messages"]
        self.max_queued_bytes = cfg["max_queued_bytes"]
        self.max_queued_total = cfg["max_queued_total"]
        self.max_queued_bytes_total = cfg["max_queued_bytes_total"]
        self.queued_total = 0        # messages queued over all sessions
        self.queued_bytes_total = 0  # their size() over all sessions
        self.max_topic_length = cfg["max_topic_length"]
        self.max_topic_levels = cfg["max_topic_levels"]
        # Connected sessions whose queue is over half a cap -> now_ms() when
        # they got there. While one is here (for at most _PRESSURE_MAX_MS),
        # other connections pause between packets (backpressure_ms).
        self.pressured = {}
        self.max_outbound = cfg["max_outbound_bytes"]
        self.max_packet = cfg["max_packet_size"]
        # nothing may wait for one connection past this (Connection.send):
        # deliveries stop at max_outbound and are at most one packet each
        self.max_unsent = self.max_outbound + self.max_packet + cfg["max_reply_bytes"]
        self.heap = HeapGuard(cfg["heap_reserve_bytes"], cfg["max_packet_size"], self.count)
        self.heap.on_critical = self.relieve_heap
        self._serial = 0            # creation order of sessions (Session.serial)
        # Output plumbing shared with the connection layer (connection.py):
        # connections with queued output, whether a read loop is handling a
        # chunk (it flushes at the end), whether a flush task is scheduled.
        self.dirty = []
        self.flush_hold = False
        self.flush_scheduled = False

    def count(self, name):
        self.counters[name] += 1

    def memory_error(self, what):
        """A MemoryError was caught (and its connection, if any, closed by
        the caller): count it, re-measure the heap with a collection, and
        have the store rewritten from memory at the next commit, since a
        record may be missing for a change that was made."""
        self.counters["memory_errors"] += 1
        log.warning("%s", what)
        st = self.store
        if st is not None:
            st.mark_resync()
        self.heap.check(self.clock(), True)

    def store_for(self, s):
        """The store, if this session's state is persisted (clean 0)."""
        st = self.store
        return st if st is not None and not s.clean else None

    def commit(self):
        """Write what the store buffered when the durability rule says so.
        The connection layer calls this after each chunk it handled (before
        any reply of it is written), the server after each tick."""
        st = self.store
        if st is not None:
            st.commit(self, self.uptime_ms)

    def restore(self):
        """Load the store (once, before listening) and publish the wills of
        clients that were connected when the broker stopped: they never
        sent DISCONNECT."""
        st = self.store
        if st is None:
            return
        for will in st.open(self):
            self.publish(will)
        for s in self.sessions.values():
            s.last_seen_ms = self.uptime_ms
        self.commit()

    def close(self):
        """Clean stop: write everything buffered, close the store."""
        st = self.store
        if st is not None:
            st.sync_ms = 0  # write everything now
            self.commit()
            st.close()

    # restore_* rebuild state from store records without writing records

    def restore_retained(self, msg):
        if not self.retained.set(topics.split(msg.topic), msg):
            self.count("retained_refused")

    def restore_sub(self, s, filt, qos):
        levels = topics.filter_levels(filt)
        if levels is not None:
            s.subs[filt] = qos
            self.subs.add(levels, s, qos)

    def restore_unsub(self, s, filt):
        if s.subs.pop(filt, None) is not None:
            self.subs.remove(topics.split(filt), s)

    def restore_queue(self, s, msg, qos):
        s.add_queued((msg, qos))
        size = msg.size()
        s.queued_bytes += size
        self.queued_total += 1
        self.queued_bytes_total += size

    def now_ms(self):
        """Milliseconds since the broker started; never wraps. Called at
        every tick (4 a second) and on connect/detach, far more often than
        the half ticks period."""
        t = self.clock()
        self.uptime_ms += ticks_diff(t, self._last_ticks)
        self._last_ticks = t
        return self.uptime_ms

    # --- connect / disconnect --------------------------------------------------

    def connect(self, conn, c):
        """Handle a decoded, level-checked CONNECT (codec.Connect). Sends
        CONNACK. Returns True when accepted; on refusal the caller closes
        the connection after the CONNACK is written [MQTT-3.2.2-5]."""
        now = self.now_ms()
        cid = c.client_id
        if not self.cfg["allow_anonymous"]:
            conn.send(codec.connack(False, CONNACK_NOT_AUTHORIZED))
            return False
        if cid == "":
            if not c.clean:
                conn.send(codec.connack(False, CONNACK_ID_REJECTED))  # [MQTT-3.1.3-8]
                return False
            cid = self._assign_id()  # [MQTT-3.1.3-6]
        elif len(cid) > self.cfg["max_client_id_length"]:
            conn.send(codec.connack(False, CONNACK_ID_REJECTED))
            return False
        will = None
        if c.will_topic is not None:
            self.check_name(c.will_topic)  # same rules as a PUBLISH topic
            will = Message(c.will_topic, c.will_payload, c.will_qos, c.will_retain)
        s = self.sessions.get(cid)
        if s is not None and s.conn is not None:
            # Takeover [MQTT-3.1.4-2]: close the old connection; it did not
            # send DISCONNECT, so its will is published.
            old = s.conn
            self.detach(old, False)
            old.close()
            s = self.sessions.get(cid)  # a clean session was dropped by detach
        if s is not None and c.clean:
            self.drop_session(s)  # [MQTT-3.1.2-6]
            s = None
        present = s is not None
        if s is None:
            if self.heap.level:
                self.count("heap_refused")
                log.info("client %s refused: free heap under heap_reserve_bytes", cid)
                conn.send(codec.connack(False, CONNACK_UNAVAILABLE))
                return False
            if len(self.sessions) >= self.cfg["max_sessions"] and not self._evict_one(c.clean):
                self.count("sessions_refused")
                conn.send(codec.connack(False, CONNACK_UNAVAILABLE))
                return False
            s = Session(cid, c.clean, now)
            self._serial += 1
            s.serial = self._serial
            self.sessions[cid] = s
            st = self.store_for(s)
            if st is not None:
                st.session(s)
        s.will = will
        if will is not None:
            st = self.store_for(s)
            if st is not None:
                st.will(s, will)  # published after a restart if still set
        s.conn = conn
        s.last_seen_ms = now
        conn.session = s
        conn.keepalive_ms = c.keepalive_s * 1000
        self.online += 1
        conn.send(codec.connack(present, CONNACK_ACCEPTED))  # [MQTT-3.2.2-1..3]
        if log.level <= log.INFO:
            log.info("client %s connected (clean=%d keepalive=%ds present=%d)",
                     cid, c.clean, c.keepalive_s, present)
        if present:
            self._resend(s)
        return True

    def detach(self, conn, graceful):
        """The connection is gone (or going). Idempotent. Publishes the
        will unless the client sent DISCONNECT [MQTT-3.1.2-8],
        [MQTT-3.14.4-3]; drops a clean session."""
        s = conn.session
        if s is None:
            return
        conn.session = None
        if s.conn is not conn:
            return
        s.conn = None
        self.online -= 1
        self.pressured.pop(s, None)
        s.last_seen_ms = self.now_ms()
        will = s.will
        s.will = None
        if will is not None:
            st = self.store_for(s)
            if st is not None:
                st.will_del(s)
        if log.level <= log.INFO:
            log.info("client %s disconnected (%s)", s.client_id, "clean" if graceful else "unclean")
        if will is not None and not graceful:
            if topics.is_sys_reserved(will.topic):
                self.count("sys_publish_dropped")
            else:
                self.publish(will)
        if s.clean:
            self.drop_session(s)

    def _assign_id(self):
        while True:
            self._assigned += 1
            cid = "midge-%d-%d" % (self._last_ticks & 0xFFFF, self._assigned)
            if cid not in self.sessions:
                return cid

    def drop_session(self, s):
        """Forget a session and everything it holds."""
        st = self.store_for(s)
        if st is not None and st.opened:
            st.session_del(s)
        self.pressured.pop(s, None)
        self.queued_total -= len(s.queue)
        self.queued_bytes_total -= s.queued_bytes
        for filt in s.subs:
            self.subs.remove(topics.split(filt), s)
        s.subs = {}
        s.will = None
        s.clear_delivery_state()  # (a dropped session may stay reachable for a while
        # from a deleted dict slot: MicroPython keeps the value; it holds nothing)
        if self.sessions.get(s.client_id) is s:
            del self.sessions[s.client_id]

    def _evict_one(self, for_clean):
        """max_sessions is reached and a CONNECT needs a new session: make
        room, fairly. Online sessions are never evicted. First choice: the
        least recently seen offline session that holds nothing (no queued,
        in-flight or inbound QoS 2 state): evicting it destroys nothing
        anyone was promised. Else, only for a persistent (clean session 0)
        newcomer, the most recently CREATED offline session that holds
        messages: established sessions outlast newcomers, so throw-away
        clients churn each other, not a long-standing session's
        acknowledged messages. A clean-session newcomer never evicts a
        session that holds messages (it is refused: sessions_refused).
        True if a session was dropped."""
        idle = None
        held = None
        for s in self.sessions.values():
            if s.conn is not None:
                continue
            if not s.holds_messages():
                if idle is None or s.last_seen_ms < idle.last_seen_ms:
                    idle = s
            elif held is None or _newer(s, held):
                held = s
        victim = idle if idle is not None else None if for_clean else held
        if victim is None:
            return False
        self.count("sessions_evicted")
        log.info("session %s evicted (max_sessions)", victim.client_id)
        self.drop_session(victim)
        return True

    def check_name(self, topic, nbytes=-1):
        """Raise ProtocolError unless `topic` may be published to: a valid
        name [MQTT-3.3.2-2] within max_topic_length (UTF-8 bytes, `nbytes`
        when the caller has them) and max_topic_levels."""
        if not topics.name_ok(topic):
            raise ProtocolError("invalid topic name", RC_TOPIC_NAME_INVALID)
        if nbytes < 0:
            nbytes = len(topic.encode())
        if nbytes > self.max_topic_length or topic.count("/") >= self.max_topic_levels:
            raise ProtocolError("topic over max_topic_length/levels", RC_TOPIC_NAME_INVALID, "topic_limit")

    # --- routing -----------------------------------------------------------------

    def publish(self, msg, exempt=False, cache_route=False):
        """Route one message: retained store, then every matching session
        once at the highest granted QoS, downgraded to the message's QoS
        [MQTT-3.8.4-6]. cache_route: the topic came from a client PUBLISH
        and passed check_name: its route is taken from, or left in, the
        route cache (Subscriptions.route), which forward_qos0 uses too."""
        route = self.subs.route(msg.topic_bytes) if cache_route else None
        if route is None or msg.retain:
            levels = topics.split(msg.topic)
        if msg.retain:
            if (self.heap.level >= CRITICAL and not exempt and msg.payload
                    and self.retained.get(levels) is None):
                self.count("heap_refused")  # a new retained topic, heap short
            elif not self.retained.set(levels, msg, exempt):
                self.count("retained_refused")
            elif not exempt and self.store is not None:
                self.store.retain(msg.topic, msg.qos, msg.payload)
        if route is None:
            route = {}
            self.subs.match(levels, route)
            if cache_route:
                self.subs.cache_route(msg.topic_bytes, route)
        mq = msg.qos
        for s in route:
            q = route[s]
            try:
                self.deliver(s, msg, q if q < mq else mq)
            except MemoryError:
                # this subscriber's queue or output needed the heap: the
                # message is lost for it, not the publisher's connection
                conn = s.conn
                if conn is not None:
                    conn.close()
                self.memory_error("out of memory delivering to client %s: message dropped for it"
                                  % s.client_id)

    def forward_qos0(self, conn, buf, pos, start, end):
        """Fast path for a PUBLISH with fixed header 0x30 (QoS 0, retain 0)
        at buf[pos:end], body at buf[start:end], whose topic was routed
        before (Subscriptions.route): the packet goes to every subscriber
        byte for byte, the one frame shared by all (every delivery of a QoS
        0 message is QoS 0 and retain 0, and the body layout is the same
        for every protocol level spoken); no Message is built. Returns
        False when it did nothing: no session yet, or the topic is not in
        the route cache; the caller then takes the full path, which
        validates the topic and caches its route."""
        if conn.session is None or end - start < 2:
            return False
        t_end = start + 2 + ((buf[start] << 8) | buf[start + 1])
        if t_end > end:
            return False
        route = self.subs.route(bytes(buf[start + 2:t_end]))
        if route is None:
            return False
        self.msgs_in += 1
        frame = None
        # heap short: QoS 0 goes only to subscribers that have nothing unsent
        slack = self.max_outbound - 1 if self.heap.level else 0
        for s in route:
            c = s.conn
            if c is None:
                continue  # QoS 0 is not queued for offline sessions
            if c.room() <= slack:
                self._drop_qos0(c)
                continue
            if frame is None:
                # a view, not a copy: the connection layer writes or copies
                # it before `buf` changes (Connection.send)
                frame = buf[pos:end] if type(buf) is memoryview else bytes(buf[pos:end])
            c.send(frame)
            self.msgs_out += 1
        return True

    def deliver(self, s, msg, qos):
        """Send a live message to one session or queue it (retain 0
        [MQTT-3.3.1-9])."""
        conn = s.conn
        if qos == 0:
            if conn is None:
                return  # QoS 0 is not queued for offline sessions
            if conn.room() <= (self.max_outbound - 1 if self.heap.level else 0):
                self._drop_qos0(conn)
                return
            _send_publish(conn, msg.head0(), msg)
            self.msgs_out += 1
            return
        if (conn is not None and not s.queue and not s.resend and len(s.inflight) < self.max_inflight
                and conn.room() > 0):
            pid = self._send_new(s, msg, qos, False)
            st = self.store_for(s)
            if st is not None:
                st.inflight(s, msg, pid, qos, False)
        else:
            self._enqueue(s, msg, qos)

    def _drop_qos0(self, conn):
        """A QoS 0 message not sent to a congested subscriber: over
        max_outbound_bytes (slow_dropped), or with any output unsent while
        the heap is short (heap_dropped)."""
        if conn.room() <= 0:
            self.counters["slow_dropped"] += 1
        else:
            self.counters["heap_dropped"] += 1

    def _send_new(self, s, msg, qos, retain):
        pid = s.next_pid()
        head = self.head(msg, qos, retain, False, pid)  # before any state changes
        s.add_inflight([pid, msg, qos, retain, AWAIT_ACK])
        _send_publish(s.conn, head, msg)
        self.msgs_out += 1
        return pid

    def head(self, msg, qos, retain, dup, pid):
        """msg.head(...), one new small buffer; if the heap has no block
        for it, make_room() and try once more (a second MemoryError is the
        caller's)."""
        try:
            return msg.head(qos, retain, dup, pid)
        except MemoryError:
            if not self.make_room():
                raise
            return msg.head(qos, retain, dup, pid)

    def make_room(self):
        """A MemoryError struck allocating something that cannot wait (a
        client's PUBLISH, a packet to send, a write): a fragmented heap can
        fail a block of one packet with far more free. Give heap back by
        dropping the oldest queued messages of the largest queues (oldest
        payloads lie together: dropping a few frees a block), counted as
        heap_dropped, until a packet fits again or _ROOM_MAX are gone; the
        caller then tries once more. True if anything was dropped."""
        heap = self.heap
        dropped = 0
        while dropped < _ROOM_MAX and self._shed_queued():
            dropped += 1
            if dropped % _RELIEF_BATCH == 0 and heap.fits():
                break
        if dropped:
            log.warning("heap: a block of one packet could not be allocated; "
                        "%d queued messages dropped", dropped)
            heap.fits()  # collects
        return dropped > 0

    def _enqueue(self, s, msg, qos):
        """Queue a message for a session. Caps, all drop-oldest (counter
        queue_dropped): per session max_queued_messages/max_queued_bytes,
        where this session's oldest message makes room; over all sessions
        max_queued_total/max_queued_bytes_total, where the oldest message
        of the session holding the MOST (count, or bytes for the byte cap)
        makes room, so sessions that hoard the shared budget pay for it,
        not one that holds a few. Heap under half heap_reserve_bytes:
        nothing new is queued (heap_dropped)."""
        size = msg.size()
        if size > self.max_queued_bytes or self.max_queued == 0 or size > self.max_queued_bytes_total:
            self.count("queue_dropped")
            return
        if self.heap.level >= CRITICAL:
            self.count("heap_dropped")
            return
        while s.queue and (len(s.queue) >= self.max_queued or s.queued_bytes + size > self.max_queued_bytes):
            self._drop_oldest(s)
        while (self.queued_total >= self.max_queued_total
               or self.queued_bytes_total + size > self.max_queued_bytes_total):
            victim = self._largest_queue(s, self.queued_total >= self.max_queued_total)
            if victim is None:
                self.count("queue_dropped")  # the total cap is 0
                return
            self._drop_oldest(victim)
        s.add_queued((msg, qos))
        s.queued_bytes += size
        self.queued_total += 1
        self.queued_bytes_total += size
        st = self.store_for(s)
        if st is not None:
            st.queue(s, msg, qos)
        if s.conn is not None and s not in self.pressured and self._over_half(s):
            self.pressured[s] = self.uptime_ms

    def _drop_oldest(self, s):
        self.dequeue(s)
        self.count("queue_dropped")
        st = self.store_for(s)
        if st is not None:
            st.drop(s)

    def relieve_heap(self):
        """The heap is CRITICAL (heap.HeapGuard): give heap back by dropping
        the oldest queued messages of the largest queues, at most
        _RELIEF_BATCH per check, as a queue cap would (heap_dropped).
        Queued messages are what a client can make the broker hold in bulk;
        whoever holds the most pays first."""
        for _ in range(_RELIEF_BATCH):
            if not self._shed_queued():
                return

    def _shed_queued(self):
        """Drop the oldest queued message of the largest queue, for the
        heap (heap_dropped). False if nothing is queued."""
        victim = self._largest_queue(None, False)
        if victim is None:
            return False
        self.dequeue(victim)
        self.counters["heap_dropped"] += 1
        st = self.store_for(victim)
        if st is not None:
            st.drop(victim)
        return True

    def _largest_queue(self, own, by_count):
        """The session holding the most queued messages (by_count) or
        bytes, `own` (the receiving session, or None) when it ties for the
        most, or None if nothing is queued. A scan of the sessions, done
        only when an all-session cap is hit or the heap is critical."""
        best = own
        most = 0 if own is None else len(own.queue) if by_count else own.queued_bytes
        for s in self.sessions.values():
            n = len(s.queue) if by_count else s.queued_bytes
            if n > most:
                best = s
                most = n
        return best if most else None

    def dequeue(self, s):
        """Oldest queued (msg, qos) of a session, keeping the totals."""
        entry = s.pop_queued()
        size = entry[0].size()
        s.queued_bytes -= size
        self.queued_total -= 1
        self.queued_bytes_total -= size
        return entry

    def _over_half(self, s):
        return len(s.queue) * 2 >= self.max_queued or s.queued_bytes * 2 >= self.max_queued_bytes

    def should_pause(self, conn):
        """Backpressure: pause reading from `conn` while another connected
        session's queue is over half full. A session that stays there
        longer than _PRESSURE_MAX_MS no longer slows anyone (it is not
        keeping up, or not acknowledging: its queue drops oldest as usual),
        so one stuck subscriber cannot throttle the broker for long."""
        p = self.pressured
        if not p:
            return False
        own = conn.session
        limit = self.uptime_ms - _PRESSURE_MAX_MS
        for s in p:
            if s is not own and p[s] >= limit:
                return True
        return False

    def pump(self, s):
        """Move waiting messages onto the wire while the inflight window
        and the connection's outbound buffer allow: retained messages for
        new subscriptions first, then the session queue. Called after
        CONNECT, SUBSCRIBE, PUBACK/PUBCOMP and when a connection drains."""
        conn = s.conn
        if conn is None:
            return
        inf = s.inflight
        while s.resend and conn.room() > 0:
            e = inf[len(inf) - s.resend]
            s.resend -= 1
            if e[STATE] == AWAIT_ACK:
                _send_publish(conn, self.head(e[MSG], e[QOS], e[RETAIN], True, e[PID]), e[MSG])  # DUP [MQTT-3.3.1-1]
                self.msgs_out += 1
            else:
                conn.send(codec.pubrel(e[PID]))
        if s.resend:
            return  # in order [MQTT-4.4.0-1]: nothing new before the resends
        bl = s.backlog
        while bl and conn.room() > 0:
            topic, entry = bl.popitem()
            msg, qos = entry
            if qos and len(s.inflight) >= self.max_inflight:
                bl[topic] = entry  # window full: back until a PUBACK
                break
            if qos:
                pid = self._send_new(s, msg, qos, True)
                st = self.store_for(s)
                if st is not None:
                    st.inflight(s, msg, pid, qos, True)
            else:
                _send_publish(conn, self.head(msg, 0, True, False, 0), msg)
                self.msgs_out += 1
        if bl is not None and not bl:
            s.backlog = None
        q = s.queue
        st = self.store_for(s)
        while q and len(s.inflight) < self.max_inflight and conn.room() > 0:
            msg, qos = self.dequeue(s)
            pid = self._send_new(s, msg, qos, False)
            if st is not None:
                st.send(s, pid)
        if s in self.pressured and not self._over_half(s):
            del self.pressured[s]

    def _resend(self, s):
        """Reconnect of a persistent session: unacknowledged PUBLISH again
        with DUP [MQTT-3.3.1-1], PUBREL again for those awaiting PUBCOMP, in
        the original order [MQTT-4.4.0-1], then whatever is queued. pump()
        sends them as the connection's output has room (up to max_inflight
        packets of max_packet_size each would otherwise go at once)."""
        s.resend = len(s.inflight)
        self.pump(s)

    # --- acknowledgements from the client ------------------------------------

    def puback(self, s, pid):
        e = s.find_inflight(pid)
        if e is not None and e[QOS] == 1:
            s.drop_inflight(e)
            st = self.store_for(s)
            if st is not None:
                st.done(s, pid)
            self.pump(s)

    def pubrec(self, s, pid):
        e = s.find_inflight(pid)
        if e is not None and e[QOS] == 2 and e[STATE] == AWAIT_ACK:
            # (if still waiting for its resend, it is now resent as a PUBREL:
            # one more, which the client answers with PUBCOMP again)
            e[STATE] = AWAIT_COMP
            e[MSG] = None  # the message itself is no longer needed [MQTT-4.3.3-1]
            st = self.store_for(s)
            if st is not None:
                st.comp(s, pid)
        s.conn.send(codec.pubrel(pid))

    def pubcomp(self, s, pid):
        e = s.find_inflight(pid)
        if e is not None and e[STATE] == AWAIT_COMP:
            s.drop_inflight(e)
            st = self.store_for(s)
            if st is not None:
                st.done(s, pid)
            self.pump(s)

    # --- subscriptions ---------------------------------------------------------------

    def subscribe(self, s, pid, requests, extra=0):
        """SUBSCRIBE: per-filter return codes in order [MQTT-3.8.4-5], SUBACK
        [MQTT-3.8.4-1], then retained messages for each accepted filter
        [MQTT-3.8.4-3]. requests: [(filter str, or None for one longer than
        max_topic_length, requested qos)]; extra: filters past
        max_filters_per_packet, refused unread. Bounded work: a filter is
        checked for length and depth before it is split, a filter repeated
        in the packet is one subscription, and the retained messages go to
        the session's backlog, which holds each topic once (_backlog_add)."""
        codes = bytearray(len(requests) + extra)
        i = 0
        for filt, qos in requests:
            codes[i] = self._subscribe_filter(s, filt, qos)
            i += 1
        for k in range(extra):
            self.count("subscriptions_refused")
            codes[i + k] = SUBACK_FAILURE
        s.conn.send(codec.suback(pid, codes))
        if s.backlog:
            self.pump(s)

    def _subscribe_filter(self, s, filt, qos):
        """One filter of a SUBSCRIBE: its return code."""
        if filt is None or len(filt) > self.max_topic_length or filt.count("/") >= self.max_topic_levels:
            self.count("topic_limit")
            return SUBACK_FAILURE
        levels = topics.filter_levels(filt)
        if levels is None:
            return SUBACK_FAILURE
        if not topics.within_limits(filt, levels, self.max_topic_length, self.max_topic_levels):
            self.count("topic_limit")  # characters fit, UTF-8 bytes do not
            return SUBACK_FAILURE
        new = filt not in s.subs
        if new:
            cfg = self.cfg
            if len(s.subs) >= cfg["max_subscriptions"] or self.subs.count >= cfg["max_subscriptions_total"]:
                self.count("subscriptions_refused")
                return SUBACK_FAILURE
            if self.heap.level >= CRITICAL:
                self.count("heap_refused")
                return SUBACK_FAILURE
        self.subs.add(levels, s, qos)
        s.subs[filt] = qos
        st = self.store_for(s)
        if st is not None:
            st.sub(s, filt, qos)
        found = []
        self.retained.match(levels, found)
        for msg in found:
            self._backlog_add(s, msg, qos if qos < msg.qos else msg.qos)
        return qos

    def _backlog_cap(self):
        """Topics one session's retained backlog may hold: every retained
        topic the caps allow, plus the broker's own $SYS set."""
        r = self.retained
        return r.max_messages + (r.total - r.count)

    def _backlog_add(self, s, msg, qos):
        """Queue a retained message for a new subscription, at most once
        per topic (the newest message and the highest QoS win), at most
        _backlog_cap() topics (past it: slow_dropped; the client is not
        reading what it asked for). Heap under half the reserve: not
        queued (heap_dropped)."""
        bl = s.backlog
        if bl is None:
            bl = s.backlog = {}
        old = bl.get(msg.topic)
        if old is None:
            if self.heap.level >= CRITICAL:
                self.counters["heap_dropped"] += 1
                return
            if len(bl) >= self._backlog_cap():
                self.counters["slow_dropped"] += 1
                return
        elif old[0] is msg and old[1] >= qos:
            return
        elif old[1] > qos:
            qos = old[1]
        bl[msg.topic] = (msg, qos)

    def unsubscribe(self, s, pid, filters):
        for filt in filters:
            self.unsubscribe_filter(s, filt)
        s.conn.send(codec.unsuback(pid))  # [MQTT-3.10.4-4]

    def unsubscribe_filter(self, s, filt):
        """Remove one subscription if the session has it (no work, no
        allocation, for a filter it does not have)."""
        if filt in s.subs:
            del s.subs[filt]
            levels = topics.filter_levels(filt)
            if levels is not None:
                self.subs.remove(levels, s)
            st = self.store_for(s)
            if st is not None:
                st.unsub(s, filt)

    # --- time --------------------------------------------------------------------------

    def tick(self):
        """Once or more a second: keepalive [MQTT-3.1.2-24] and $SYS.
        The sessions are scanned in place, never copied (a copy would be
        an allocation the size of the sessions table at every tick, and
        one a stale word on the stack could keep alive: MicroPython's
        collector is conservative). What must be dropped is gathered
        first, since dropping changes the dict; that is rare."""
        up = self.now_ms()
        now = self._last_ticks
        late = None
        for s in self.sessions.values():
            conn = s.conn
            # last_rx_ms is in ticks; keepalive <= 65535 s * 1.5 fits in half
            # the ticks period
            if conn is not None and conn.keepalive_ms and \
                    ticks_diff(now, conn.last_rx_ms) > conn.keepalive_ms * 3 // 2:
                late = _gather(late, s)
        while late:
            s = late.pop()
            conn = s.conn
            if conn is not None:
                self.count("keepalive_timeouts")
                log.info("client %s keepalive timeout", s.client_id)
                self.detach(conn, False)
                conn.close()
        expiry_ms = self.cfg["session_expiry_s"] * 1000
        if expiry_ms:
            for s in self.sessions.values():
                if s.conn is None and up - s.last_seen_ms > expiry_ms:
                    late = _gather(late, s)
            while late:
                s = late.pop()
                if self.sessions.get(s.client_id) is s:
                    self.count("sessions_expired")
                    log.info("session %s expired", s.client_id)
                    self.drop_session(s)
        interval = self.cfg["sys_interval_s"]
        if interval and up >= self._next_sys_ms:
            self._next_sys_ms = up + interval * 1000
            sys_topics.publish_all(self)

    def uptime_s(self):
        return self.now_ms() // 1000


def _gather(found, item):
    """found (a list, made on first use) with item appended."""
    if found is None:
        found = []
    found.append(item)
    return found


def _send_publish(conn, head, msg):
    """A PUBLISH as two parts: its head and the message's own payload (a
    reference, never a copy)."""
    conn.send(head)
    if msg.payload:
        conn.send(msg.payload)


def _newer(a, b):
    """Session a was created after session b (serial; sid orders sessions
    loaded from the store, which all have serial 0)."""
    if a.serial != b.serial:
        return a.serial > b.serial
    return a.sid > b.sid



