# The broker core: sessions, connect/takeover/will, routing, flow control
# and the periodic tick. No sockets and no asyncio: it talks to connections
# only through this small interface, which tests implement with a fake:
#
#   conn.send(data)      queue bytes for the client (never blocks)
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
from . import codec, log
from .compat import const, ticks_ms, ticks_diff
from .message import Message
from .protocol import (
    CONNACK_ACCEPTED, CONNACK_ID_REJECTED, CONNACK_UNAVAILABLE, CONNACK_NOT_AUTHORIZED,
    SUBACK_FAILURE, ProtocolError, RC_TOPIC_NAME_INVALID,
)
from .retained import Retained
from .session import Session, PID, MSG, QOS, RETAIN, STATE, AWAIT_ACK, AWAIT_COMP
from .subscriptions import Subscriptions
from . import topics
from . import sys_topics  # imported up front: compiling it later needs heap a full broker may not have

VERSION = "0.1.0"

_PRESSURE_MAX_MS = const(5000)  # longest one session's full queue slows others

# $SYS counters, all published under $SYS/broker/counters/<name>.
COUNTERS = (
    "clients_refused", "connect_timeouts", "keepalive_timeouts", "malformed_packets",
    "oversize_packets", "sessions_evicted", "sessions_refused", "queue_dropped",
    "slow_dropped", "slow_disconnects", "retained_refused", "subscriptions_refused",
    "topic_limit", "sys_publish_dropped", "inflight_in_exceeded", "internal_errors",
    "sessions_expired", "store_evicted",
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
        # Output plumbing shared with the connection layer (connection.py):
        # connections with queued output, whether a read loop is handling a
        # chunk (it flushes at the end), whether a flush task is scheduled.
        self.dirty = []
        self.flush_hold = False
        self.flush_scheduled = False

    def count(self, name):
        self.counters[name] += 1

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
            if len(self.sessions) >= self.cfg["max_sessions"] and not self._evict_one():
                self.count("sessions_refused")
                conn.send(codec.connack(False, CONNACK_UNAVAILABLE))
                return False
            s = Session(cid, c.clean, now)
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
        s.clear_delivery_state()
        if self.sessions.get(s.client_id) is s:
            del self.sessions[s.client_id]

    def _evict_one(self):
        """max_sessions: drop the least recently seen offline session."""
        victim = None
        for s in self.sessions.values():
            if s.conn is None and (victim is None or s.last_seen_ms < victim.last_seen_ms):
                victim = s
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
            if not self.retained.set(levels, msg, exempt):
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
            self.deliver(s, msg, q if q < mq else mq)

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
        for s in route:
            c = s.conn
            if c is None:
                continue  # QoS 0 is not queued for offline sessions
            if c.room() <= 0:
                self.counters["slow_dropped"] += 1
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
            if conn.room() <= 0:
                self.counters["slow_dropped"] += 1
                return
            conn.send(msg.frame_qos0())
            self.msgs_out += 1
            return
        if (conn is not None and not s.queue and len(s.inflight) < self.max_inflight
                and conn.room() > 0):
            pid = self._send_new(s, msg, qos, False)
            st = self.store_for(s)
            if st is not None:
                st.inflight(s, msg, pid, qos, False)
        else:
            self._enqueue(s, msg, qos)

    def _send_new(self, s, msg, qos, retain):
        pid = s.next_pid()
        s.add_inflight([pid, msg, qos, retain, AWAIT_ACK])
        conn = s.conn
        conn.send(msg.packet(qos, retain, False, pid))
        self.msgs_out += 1
        return pid

    def _enqueue(self, s, msg, qos):
        """Queue a message for a session. Caps, all drop-oldest (counter
        queue_dropped): per session max_queued_messages/max_queued_bytes;
        over all sessions max_queued_total/max_queued_bytes_total, where
        the oldest message of THIS session makes room, and the new message
        is dropped if this session has nothing queued."""
        size = msg.size()
        if size > self.max_queued_bytes or self.max_queued == 0:
            self.count("queue_dropped")
            return
        st = self.store_for(s)
        while s.queue and (len(s.queue) >= self.max_queued or s.queued_bytes + size > self.max_queued_bytes
                     or self.queued_total >= self.max_queued_total
                     or self.queued_bytes_total + size > self.max_queued_bytes_total):
            self.dequeue(s)
            self.count("queue_dropped")
            if st is not None:
                st.drop(s)
        if (self.queued_total >= self.max_queued_total
                or self.queued_bytes_total + size > self.max_queued_bytes_total):
            self.count("queue_dropped")
            return
        s.add_queued((msg, qos))
        s.queued_bytes += size
        self.queued_total += 1
        self.queued_bytes_total += size
        if st is not None:
            st.queue(s, msg, qos)
        if s.conn is not None and s not in self.pressured and self._over_half(s):
            self.pressured[s] = self.uptime_ms

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
        bl = s.backlog
        while s.backlog_pos < len(bl) and conn.room() > 0:
            msg, qos = bl[s.backlog_pos]
            if qos and len(s.inflight) >= self.max_inflight:
                break
            bl[s.backlog_pos] = None  # release the reference
            s.backlog_pos += 1
            if qos:
                pid = self._send_new(s, msg, qos, True)
                st = self.store_for(s)
                if st is not None:
                    st.inflight(s, msg, pid, qos, True)
            else:
                conn.send(msg.packet(0, True, False, 0))
                self.msgs_out += 1
        if s.backlog_pos >= len(bl) and bl:
            s.backlog = ()
            s.backlog_pos = 0
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
        the original order [MQTT-4.4.0-1], then whatever is queued."""
        conn = s.conn
        for e in s.inflight:
            if e[STATE] == AWAIT_ACK:
                msg = e[MSG]
                conn.send(msg.packet(e[QOS], e[RETAIN], True, e[PID]))
                self.msgs_out += 1
            else:
                conn.send(codec.pubrel(e[PID]))
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

    def subscribe(self, s, pid, requests):
        """SUBSCRIBE: per-filter return codes in order [MQTT-3.8.4-5], SUBACK
        [MQTT-3.8.4-1], then retained messages for each accepted filter
        [MQTT-3.8.4-3]."""
        codes = []
        retained = []
        cfg = self.cfg
        for filt, qos in requests:
            levels = topics.filter_levels(filt)
            if levels is None:
                codes.append(SUBACK_FAILURE)
                continue
            if not topics.within_limits(filt, levels, cfg["max_topic_length"], cfg["max_topic_levels"]):
                self.count("topic_limit")
                codes.append(SUBACK_FAILURE)
                continue
            if filt not in s.subs and (len(s.subs) >= cfg["max_subscriptions"]
                                       or self.subs.count >= cfg["max_subscriptions_total"]):
                self.count("subscriptions_refused")
                codes.append(SUBACK_FAILURE)
                continue
            s.subs[filt] = qos
            self.subs.add(levels, s, qos)
            st = self.store_for(s)
            if st is not None:
                st.sub(s, filt, qos)
            codes.append(qos)
            found = []
            self.retained.match(levels, found)
            for msg in found:
                retained.append((msg, qos if qos < msg.qos else msg.qos))
        s.conn.send(codec.suback(pid, codes))
        if retained:
            if s.backlog_pos < len(s.backlog):
                s.backlog.extend(retained)
            else:
                s.backlog = retained
                s.backlog_pos = 0
            self.pump(s)

    def unsubscribe(self, s, pid, filters):
        for filt in filters:
            if filt in s.subs:
                del s.subs[filt]
                levels = topics.filter_levels(filt)
                if levels is not None:
                    self.subs.remove(levels, s)
                st = self.store_for(s)
                if st is not None:
                    st.unsub(s, filt)
        s.conn.send(codec.unsuback(pid))  # [MQTT-3.10.4-4]

    # --- time --------------------------------------------------------------------------

    def tick(self):
        """Once or more a second: keepalive [MQTT-3.1.2-24] and $SYS."""
        up = self.now_ms()
        now = self._last_ticks
        for s in list(self.sessions.values()):
            conn = s.conn
            if conn is None or not conn.keepalive_ms:
                continue
            # last_rx_ms is in ticks; keepalive <= 65535 s * 1.5 fits in half
            # the ticks period
            if ticks_diff(now, conn.last_rx_ms) > conn.keepalive_ms * 3 // 2:
                self.count("keepalive_timeouts")
                log.info("client %s keepalive timeout", s.client_id)
                self.detach(conn, False)
                conn.close()
        expiry_ms = self.cfg["session_expiry_s"] * 1000
        if expiry_ms:
            for s in list(self.sessions.values()):
                if s.conn is None and up - s.last_seen_ms > expiry_ms:
                    self.count("sessions_expired")
                    log.info("session %s expired", s.client_id)
                    self.drop_session(s)
        interval = self.cfg["sys_interval_s"]
        if interval and up >= self._next_sys_ms:
            self._next_sys_ms = up + interval * 1000
            sys_topics.publish_all(self)

    def uptime_s(self):
        return self.now_ms() // 1000



