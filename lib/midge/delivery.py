# Delivery and flow control: everything between "this session gets message
# M at QoS q" and the PUBLISH on its wire, and the QoS handshakes in both
# directions. No sockets, no asyncio; one instance per broker
# (Broker.flow).
#
#   outbound  deliver() sends at once while the inflight window
#             (max_inflight) and the connection's output (conn.room()) have
#             room, else queues (_enqueue, capped per session and over all
#             sessions, drop-oldest); pump() moves resends, the retained
#             backlog and the queue onto the wire as room frees;
#             puback/pubrec/pubcomp close the window [MQTT-4.3].
#   inbound   receive() is a client's PUBLISH after decoding: authorised
#             (Broker.admit), exactly-once for QoS 2 (in_qos2 until PUBREL
#             [MQTT-4.3.3-2]), routed (Broker.publish), acknowledged.
#   heap      relieve_heap() / make_room() give heap back by dropping the
#             oldest queued messages of the largest queues (heap_dropped).
#
# What goes on the wire is the connection's wire encoder's business
# (wire311.py, wire5.py): this module decides, `conn.wire` writes.
# Every persisted change goes to the session's own store handle
# (`s.store`: the Store for a persistent session, None otherwise).
from . import log
from .compat import const
from .heap import CRITICAL
from .protocol import ProtocolError, RC_RECEIVE_MAXIMUM_EXCEEDED, RC_PROTOCOL_ERROR
from . import topics

# Inflight entry fields and states (session.py) and acknowledgement first
# bytes (wire311.py), as private constants: the compiler inlines them here,
# where an imported name would be a global lookup per use on the QoS 1/2
# paths (tests/test_delivery_constants.py checks they agree).
_PID = const(0)
_MSG = const(1)
_QOS = const(2)
_RETAIN = const(3)
_STATE = const(4)
_AWAIT_ACK = const(0)
_AWAIT_COMP = const(1)
_PUBACK = const(0x40)
_PUBREC = const(0x50)
_PUBREL = const(0x62)
_PUBCOMP = const(0x70)

_PRESSURE_MAX_MS = const(5000)  # longest one session's full queue slows others
_RELIEF_BATCH = const(8)        # queued messages dropped per heap check while CRITICAL
_ROOM_MAX = const(64)           # queued messages make_room() drops at most


class Delivery:
    def __init__(self, broker, cfg):
        self.broker = broker
        self.counters = broker.counters
        self.heap = broker.heap
        # caps read once: the hot path does attribute lookups, not dict lookups
        self.max_inflight = cfg["max_inflight"]
        self.max_inflight_in = cfg["max_inflight_in"]
        self.max_queued = cfg["max_queued_messages"]
        self.max_queued_bytes = cfg["max_queued_bytes"]
        self.max_queued_total = cfg["max_queued_total"]
        self.max_queued_bytes_total = cfg["max_queued_bytes_total"]
        self.max_outbound = cfg["max_outbound_bytes"]
        # per-user quotas (0 in the config: none, a cap no queue reaches)
        self.max_queued_user = cfg["max_queued_per_user"] or 1 << 62
        self.max_queued_bytes_user = cfg["max_queued_bytes_per_user"] or 1 << 62
        self.queued_total = 0        # messages queued over all sessions
        self.queued_bytes_total = 0  # their size() over all sessions
        # Connected sessions whose queue is over half a cap -> Broker.uptime_ms
        # when they got there. While one is here (for at most
        # _PRESSURE_MAX_MS), other connections pause between packets
        # (backpressure_ms).
        self.pressured = {}

    def count(self, name):
        self.counters[name] += 1

    # --- inbound ------------------------------------------------------------------

    def receive(self, conn, s, msg, pid):
        """A client's PUBLISH, decoded and its topic checked: authorise,
        route, acknowledge. QoS 2 is delivered once per packet id until
        PUBREL [MQTT-4.3.3-2]: a resend before PUBREL is acknowledged, not
        delivered again."""
        b = self.broker
        qos = msg.qos
        if qos == 2:
            if pid in s.in_qos2:
                conn.send(conn.wire.ack(_PUBREC, pid))
                return
            if len(s.in_qos2) >= self.max_inflight_in:
                raise ProtocolError("too many QoS 2 messages awaiting PUBREL",
                                    RC_RECEIVE_MAXIMUM_EXCEEDED, "inflight_in_exceeded")
        reason = 0
        tb = msg.topic_bytes
        if b.admit(s, tb):
            if tb[0] == 0x24 and topics.is_sys_reserved(msg.topic):  # "$..." (topics are never empty here)
                self.count("sys_publish_dropped")
            else:
                b.publish(msg, False, True, s)
        else:
            reason = 0x87  # not authorised: acknowledged, not delivered
        if qos == 1:
            conn.send(conn.wire.ack(_PUBACK, pid, reason))  # [MQTT-4.3.2-2]
        elif qos == 2:
            s.add_in_qos2(pid)
            st = s.store
            if st is not None:
                st.in2_add(s, pid)
            conn.send(conn.wire.ack(_PUBREC, pid, reason))  # [MQTT-4.3.3-2]

    def pubrel(self, conn, s, pid):
        """Release an inbound QoS 2 packet id; PUBCOMP either way
        [MQTT-4.3.3-2], with reason 0x92 (packet identifier not found) for
        one it does not hold (MQTT 5; 3.1.1 has no reason)."""
        reason = 0
        if pid in s.in_qos2:
            s.drop_in_qos2(pid)
            st = s.store
            if st is not None:
                st.in2_del(s, pid)
        else:
            reason = 0x92
        conn.send(conn.wire.ack(_PUBCOMP, pid, reason))

    # --- outbound -----------------------------------------------------------------

    def deliver(self, s, msg, qos, retain=False, sids=None):
        """Send a live message to one session or queue it: retain 0
        [MQTT-3.3.1-9] unless an MQTT 5 subscription keeps it as published
        (`retain`); `sids`: the subscription identifiers to send with it
        (MQTT 5), or None."""
        conn = s.conn
        if qos == 0:
            if conn is None:
                return  # QoS 0 is not queued for offline sessions
            if conn.room() <= (self.max_outbound - 1 if self.heap.level else 0):
                self.drop_qos0(conn)
                return
            b = self.broker
            if retain or sids is not None:
                head = self._head(conn, msg, 0, retain, False, 0, sids)
            else:
                head = conn.wire.publish_head0(msg, b.uptime_ms)
            if head is None:
                self.counters["oversize_dropped"] += 1  # over the client's Maximum Packet Size
                return
            conn.send(head)
            if msg.payload:
                conn.send(msg.payload)
            b.msgs_out += 1
            return
        if (conn is not None and not s.queue and not s.resend
                and len(s.inflight) < (s.window or self.max_inflight) and conn.room() > 0):
            pid = self._send_new(s, msg, qos, retain, sids)
            st = s.store
            if pid and st is not None:
                st.inflight(s, msg, pid, qos, retain, sids)
        else:
            self._enqueue(s, msg, qos, retain, sids)

    def drop_qos0(self, conn):
        """A QoS 0 message not sent to a congested subscriber: over
        max_outbound_bytes (slow_dropped), or with any output unsent while
        the heap is short (heap_dropped)."""
        if conn.room() <= 0:
            self.counters["slow_dropped"] += 1
        else:
            self.counters["heap_dropped"] += 1

    def _send_new(self, s, msg, qos, retain, sids=None):
        """Send msg with a new packet id in the window; the packet id, or
        0 when the client's Maximum Packet Size refused it (dropped for
        this client, oversize_dropped: nothing enters the window)."""
        pid = s.next_pid()
        conn = s.conn
        # _head() and _send_publish() inline: this runs for every QoS 1 and
        # 2 delivery (docs/DESIGN.md, "Hot paths")
        wire = conn.wire
        b = self.broker
        try:
            head = wire.publish_head(msg, qos, retain, False, pid, sids, b.uptime_ms)  # before any state changes
        except MemoryError:
            if not self.make_room():
                raise
            head = wire.publish_head(msg, qos, retain, False, pid, sids, b.uptime_ms)
        if head is None:
            self.counters["oversize_dropped"] += 1
            return 0
        # (the subscription identifiers, if any, ride along for a resend)
        s.add_inflight([pid, msg, qos, retain, _AWAIT_ACK] if sids is None else
                       [pid, msg, qos, retain, _AWAIT_ACK, sids])
        conn.send(head)
        if msg.payload:
            conn.send(msg.payload)
        b.msgs_out += 1
        return pid

    def _head(self, conn, msg, qos, retain, dup, pid, sids=None):
        """The head of a PUBLISH from the connection's wire, in one new
        small buffer; if the heap has no block for it, make_room() and try
        once more (a second MemoryError is the caller's)."""
        wire = conn.wire
        now = self.broker.uptime_ms
        try:
            return wire.publish_head(msg, qos, retain, dup, pid, sids, now)
        except MemoryError:
            if not self.make_room():
                raise
            return wire.publish_head(msg, qos, retain, dup, pid, sids, now)

    def pump(self, s):
        """Move waiting messages onto the wire while the inflight window
        and the connection's outbound buffer allow: resends first, then
        retained messages for new subscriptions, then the session queue.
        Called after CONNECT, SUBSCRIBE, PUBACK/PUBCOMP and when a
        connection drains."""
        conn = s.conn
        if conn is None:
            return
        inf = s.inflight
        while s.resend and conn.room() > 0:
            e = inf[len(inf) - s.resend]
            s.resend -= 1
            if e[_STATE] == _AWAIT_ACK:
                head = self._head(conn, e[_MSG], e[_QOS], e[_RETAIN], True, e[_PID],
                                  e[5] if len(e) > 5 else None)  # DUP [MQTT-3.3.1-1]
                if head is None:  # a new connection with a smaller Maximum Packet Size
                    self.counters["oversize_dropped"] += 1
                    s.drop_inflight(e)
                    st = s.store
                    if st is not None:
                        st.done(s, e[_PID])
                    inf = s.inflight
                    continue
                _send_publish(conn, head, e[_MSG])
                self.broker.msgs_out += 1
            else:
                conn.send(conn.wire.ack(_PUBREL, e[_PID]))
        if s.resend:
            return  # in order [MQTT-4.4.0-1]: nothing new before the resends
        window = s.window or self.max_inflight
        now = self.broker.uptime_ms
        bl = s.backlog
        while bl and conn.room() > 0:
            topic, entry = bl.popitem()
            msg = entry[0]
            qos = entry[1]
            sids = (entry[2],) if len(entry) > 2 else None  # the new subscription's identifier
            if msg.expires_ms and now > msg.expires_ms:
                self.counters["messages_expired"] += 1
                continue
            if qos and len(s.inflight) >= window:
                bl[topic] = entry  # window full: back until a PUBACK
                break
            if qos:
                pid = self._send_new(s, msg, qos, True, sids)
                st = s.store
                if pid and st is not None:
                    st.inflight(s, msg, pid, qos, True, sids)
            else:
                head = self._head(conn, msg, 0, True, False, 0, sids)
                if head is None:
                    self.counters["oversize_dropped"] += 1
                    continue
                _send_publish(conn, head, msg)
                self.broker.msgs_out += 1
        if bl is not None and not bl:
            s.backlog = None
        q = s.queue
        st = s.store
        while q and len(s.inflight) < window and conn.room() > 0:
            entry = self.dequeue(s)
            msg = entry[0]
            if msg.expires_ms and now > msg.expires_ms:
                pid = 0  # not delivered once expired [MQTT-3.3.2-5]
                self.counters["messages_expired"] += 1
            elif len(entry) > 2:  # (msg, qos, retain, sids): MQTT 5 options
                pid = self._send_new(s, msg, entry[1], entry[2], entry[3])
            else:
                pid = self._send_new(s, msg, entry[1], False)
            if st is not None:
                if pid:
                    st.send(s, pid)
                else:
                    st.drop(s)
            q = s.queue
        if s in self.pressured and not self._over_half(s):
            del self.pressured[s]

    def resend(self, s):
        """Reconnect of a persistent session: unacknowledged PUBLISH again
        with DUP [MQTT-3.3.1-1], PUBREL again for those awaiting PUBCOMP, in
        the original order [MQTT-4.4.0-1], then whatever is queued. pump()
        sends them as the connection's output has room (up to max_inflight
        packets of max_packet_size each would otherwise go at once)."""
        s.resend = len(s.inflight)
        self.pump(s)

    # --- acknowledgements from the client ------------------------------------

    def _finished(self, s, e, pid):
        """An inflight entry is done (PUBACK, PUBCOMP, or a refusing MQTT 5
        PUBREC): out of the window and the store, and the window refilled."""
        s.drop_inflight(e)
        st = s.store
        if st is not None:
            st.done(s, pid)
        self.pump(s)

    def puback(self, s, pid):
        e = s.find_inflight(pid)
        if e is not None and e[_QOS] == 2:
            raise ProtocolError("PUBACK for a QoS 2 packet id", RC_PROTOCOL_ERROR)
        if e is not None:
            self._finished(s, e, pid)

    def pubrec(self, s, pid):
        conn = s.conn
        e = s.find_inflight(pid)
        if conn.wire.ack_reason >= 0x80:
            # MQTT 5: the client refused the message; the exchange ends
            # here, no PUBREL (MQTT 5 section 4.3.3)
            if e is not None and e[_STATE] == _AWAIT_ACK:
                self._finished(s, e, pid)
            return
        if e is not None and e[_QOS] == 1:
            raise ProtocolError("PUBREC for a QoS 1 packet id", RC_PROTOCOL_ERROR)
        if e is not None and e[_STATE] == _AWAIT_ACK:
            # (if still waiting for its resend, it is now resent as a PUBREL:
            # one more, which the client answers with PUBCOMP again)
            e[_STATE] = _AWAIT_COMP
            e[_MSG] = None  # the message itself is no longer needed [MQTT-4.3.3-1]
            st = s.store
            if st is not None:
                st.comp(s, pid)
        # PUBREL either way; MQTT 5: 0x92 for a packet id not in flight
        conn.send(conn.wire.ack(_PUBREL, pid, 0 if e is not None else 0x92))

    def pubcomp(self, s, pid):
        e = s.find_inflight(pid)
        if e is not None and e[_STATE] == _AWAIT_COMP:
            self._finished(s, e, pid)

    # --- the retained backlog of new subscriptions -----------------------------

    def backlog_cap(self):
        """Topics one session's retained backlog may hold: every retained
        topic the caps allow, plus the broker's own $SYS set."""
        b = self.broker
        return b.retained.max_messages + b.sys_count

    def backlog_add(self, s, msg, qos, sub_id=0):
        """Queue a retained message for a new subscription, at most once
        per topic (the newest message and the highest QoS win), at most
        backlog_cap() topics (past it: slow_dropped; the client is not
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
            if len(bl) >= self.backlog_cap():
                self.counters["slow_dropped"] += 1
                return
        elif old[0] is msg and old[1] >= qos:
            return
        elif old[1] > qos:
            qos = old[1]
        bl[msg.topic] = (msg, qos) if not sub_id else (msg, qos, sub_id)

    # --- the queue and its caps ----------------------------------------------------

    def _enqueue(self, s, msg, qos, retain=False, sids=None):
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
        a = s.account
        if a is not None:
            # the user's quota: the largest queue among that user's
            # sessions makes room (never another user's)
            if size > self.max_queued_bytes_user:
                self.count("queue_dropped")
                return
            while a.queued >= self.max_queued_user or a.queued_bytes + size > self.max_queued_bytes_user:
                victim = self._largest_queue(s, a.queued >= self.max_queued_user, a)
                if victim is None:
                    self.count("queue_dropped")
                    return
                self._drop_oldest(victim)
        while (self.queued_total >= self.max_queued_total
               or self.queued_bytes_total + size > self.max_queued_bytes_total):
            victim = self._largest_queue(s, self.queued_total >= self.max_queued_total)
            if victim is None:
                self.count("queue_dropped")  # the total cap is 0
                return
            self._drop_oldest(victim)
        self.restore_queue(s, msg, qos, retain, sids)
        st = s.store
        if st is not None:
            st.queue(s, msg, qos, retain, sids)
        if s.conn is not None and s not in self.pressured and self._over_half(s):
            self.pressured[s] = self.broker.uptime_ms

    def restore_queue(self, s, msg, qos, retain=False, sids=None):
        """Append to a session's queue, keeping the totals (the store's
        loader calls this directly: no caps, no record). An entry is
        (msg, qos), or (msg, qos, retain, sids) under MQTT 5 options."""
        s.add_queued((msg, qos) if not retain and sids is None else (msg, qos, retain, sids))
        size = msg.size()
        s.queued_bytes += size
        self.queued_total += 1
        self.queued_bytes_total += size
        a = s.account
        if a is not None:
            a.queued += 1
            a.queued_bytes += size

    def _drop_oldest(self, s):
        self.dequeue(s)
        self.count("queue_dropped")
        st = s.store
        if st is not None:
            st.drop(s)

    def dequeue(self, s):
        """Oldest queued (msg, qos) of a session, keeping the totals."""
        entry = s.pop_queued()
        size = entry[0].size()
        s.queued_bytes -= size
        self.queued_total -= 1
        self.queued_bytes_total -= size
        a = s.account
        if a is not None:
            a.queued -= 1
            a.queued_bytes -= size
        return entry

    def forget(self, s):
        """A session is dropped: its queue leaves the totals and it no
        longer slows anyone."""
        self.pressured.pop(s, None)
        self.queued_total -= len(s.queue)
        self.queued_bytes_total -= s.queued_bytes
        a = s.account
        if a is not None:
            a.queued -= len(s.queue)
            a.queued_bytes -= s.queued_bytes

    def _largest_queue(self, own, by_count, account=None):
        """The session holding the most queued messages (by_count) or
        bytes, `own` (the receiving session, or None) when it ties for the
        most, or None if nothing is queued; with `account`, only among that
        user's sessions. A scan of the sessions, done only when an
        all-session or per-user cap is hit or the heap is critical."""
        best = own
        most = 0 if own is None else len(own.queue) if by_count else own.queued_bytes
        for s in self.broker.sessions.values():
            if account is not None and s.account is not account:
                continue
            n = len(s.queue) if by_count else s.queued_bytes
            if n > most:
                best = s
                most = n
        return best if most else None

    # --- backpressure -----------------------------------------------------------------

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
        limit = self.broker.uptime_ms - _PRESSURE_MAX_MS
        for s in p:
            if s is not own and p[s] >= limit:
                return True
        return False

    # --- heap -------------------------------------------------------------------------

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
        st = victim.store
        if st is not None:
            st.drop(victim)
        return True

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


def _send_publish(conn, head, msg):
    """A PUBLISH as two parts: its head and the message's own payload (a
    reference, never a copy)."""
    conn.send(head)
    if msg.payload:
        conn.send(msg.payload)
