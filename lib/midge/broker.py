# The broker core: sessions, connect/takeover/will, subscriptions, routing
# and the periodic tick; delivery and flow control are delivery.py's
# (self.flow). No sockets and no asyncio, and no protocol: what it decides
# (accept, refuse with a reason, grant, deliver) is turned into bytes by the
# connection's wire encoder (conn.wire: wire311.py, wire5.py). It talks to
# connections only through this small interface, which tests implement
# with a fake (tools/fakeconn.py):
#
#   conn.wire            the connection's wire encoder (set at CONNECT)
#   conn.send(data)      queue bytes for the client (never blocks, never
#                        raises: past max_unsent or on MemoryError the
#                        connection closes itself)
#   conn.room()          bytes that may still be queued before the
#                        max_outbound_bytes cap (<= 0: congested); the same
#                        as max_outbound - conn._out_bytes, which the QoS 0
#                        fast path reads directly
#   conn.close()         ask the connection to close (takeover, keepalive);
#                        it later calls Broker.detach(conn, graceful)
#   conn.session         the attached Session or None (set by the broker)
#   conn.state           protocol.AWAIT_CONNECT / ACTIVE / REFUSED / DETACHED
#                        (the broker moves it on connect, refusal, detach)
#   conn.keepalive_ms    0 = no keepalive; set by the broker on CONNECT
#   conn.last_rx_ms      ticks_ms of the last bytes received
#   conn.listener        the server.Listener it came in on (its anonymous
#                        setting), or absent/None: allow_anonymous applies
#   conn.peer            "host:port" of the client (failed-login bookkeeping)
#   conn.reply_later     set by the broker: a refusing CONNACK the connection
#                        sends reply_delay_ms later, then closes (failed logins)
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
from os import urandom
from binascii import hexlify

from . import log
from .compat import ticks_ms, ticks_diff
from .delivery import Delivery
from .message import Message, expiry_at
from .protocol import (
    SUBACK_FAILURE, ProtocolError, RC_TOPIC_NAME_INVALID, RC_PROTOCOL_ERROR, RC_CLIENT_ID_NOT_VALID,
    RC_SERVER_UNAVAILABLE, RC_NOT_AUTHORIZED, RC_QUOTA_EXCEEDED, RC_SESSION_TAKEN_OVER,
    RC_KEEPALIVE_TIMEOUT, RC_BAD_AUTH_METHOD, RC_BAD_CREDENTIALS, LEVEL_31,
    ACTIVE, REFUSED, DETACHED,
)
from .heap import HeapGuard, CRITICAL
from .retained import Retained
from .session import Session
from .subscriptions import Subscriptions
from . import topics
from . import sys_topics  # imported up front: compiling it later needs heap a full broker may not have

VERSION = "0.1.0"

_SHARE = "$share/"  # shared.PREFIX: shared.py is imported only once one is used

# $SYS counters, all published under $SYS/broker/counters/<name>. Those of
# a feature that is configured (listeners.FEATURE_COUNTERS: users, ACLs,
# TLS) join them at start-up; an unconfigured feature costs no $SYS topic
# (each is a retained message in the heap).
COUNTERS = (
    "clients_refused", "connect_timeouts", "keepalive_timeouts", "malformed_packets",
    "oversize_packets", "sessions_evicted", "sessions_refused", "queue_dropped",
    "slow_dropped", "slow_disconnects", "retained_refused", "subscriptions_refused",
    "topic_limit", "sys_publish_dropped", "inflight_in_exceeded", "internal_errors",
    "sessions_expired", "store_evicted", "output_overflows", "preconnect_closed",
    "memory_errors", "heap_low", "heap_refused", "heap_dropped",
    "oversize_dropped", "messages_expired",
)

_WCACHE_MAX = 8  # topics whose write decision a session remembers (admit)


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
        self.v5_online = 0          # of them, on an MQTT 5 wire (the QoS 0 fast path
                                    # looks at each subscriber's wire only while this is > 0)
        self.subs = Subscriptions()
        self.routes = self.subs.routes  # the route cache, read by the QoS 0 fast path
        # Shared subscriptions (shared.py, loaded by the first one): share
        # name -> Group, and a trie of the groups' filters whose
        # "sessions" are the groups.
        self.groups = {}
        self.shared = Subscriptions()
        self.shared_members = 0     # memberships over all groups (count as subscriptions)
        self.retained = Retained(cfg["max_retained_messages"], cfg["max_retained_bytes"])
        self.counters = {}
        for name in COUNTERS:
            self.counters[name] = 0
        self.msgs_in = 0            # PUBLISH packets received
        self.msgs_out = 0           # PUBLISH packets sent
        self.bytes_in = 0           # maintained by the connection layer
        self.bytes_out = 0
        # Access (README, "Users, ACLs and TLS"), set by the server from
        # password_file and acl_file: auth.Authenticator and
        # auth.FailureLimiter, acl.Acl; None: not configured.
        self.auth = None
        self.limiter = None
        self.acl = None
        # username (None: anonymous) -> session.Account, only while a
        # per-user queue quota is set (else sessions have no account)
        self.accounts = {} if cfg["max_queued_per_user"] or cfg["max_queued_bytes_per_user"] else None
        self._next_sys_ms = 0      # uptime_ms of the next $SYS publication
        self.sys_count = 0         # $SYS topics in the last snapshot (sys_topics.py)
        # caps read once: the hot path does attribute lookups, not dict lookups
        self.max_topic_length = cfg["max_topic_length"]
        self.max_topic_levels = cfg["max_topic_levels"]
        self.max_outbound = cfg["max_outbound_bytes"]
        self.max_packet = cfg["max_packet_size"]
        # nothing may wait for one connection past this (Connection.send):
        # deliveries stop at max_outbound and are at most one packet each
        self.max_unsent = self.max_outbound + self.max_packet + cfg["max_reply_bytes"]
        self.heap = HeapGuard(cfg["heap_reserve_bytes"], cfg["max_packet_size"], self.count)
        self.flow = Delivery(self, cfg)
        self.heap.on_critical = self.flow.relieve_heap
        self._serial = 0            # creation order of sessions (Session.serial)
        # Output plumbing shared with the connection layer (connection.py):
        # connections with queued output, whether a read loop is handling a
        # chunk (it flushes at the end), whether a flush task is scheduled.
        self.dirty = []
        self.flush_hold = False
        self.flush_scheduled = False

    def count(self, name):
        """One more of counter `name` (a feature's counter that start-up did
        not register appears on its first use)."""
        c = self.counters
        c[name] = c.get(name, 0) + 1

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
            self._publish_will(will)
        for s in self.sessions.values():
            s.last_seen_ms = self.uptime_ms
        if self.acl is not None or self.accounts is not None:
            _access().restored(self)
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
        if filt.startswith(_SHARE):
            from . import shared
            sp = shared.parse(filt)
            if sp:
                s.subs[filt] = qos
                shared.join(self, s, filt, sp[1], qos)
            return
        levels = topics.filter_levels(filt)
        if levels is not None:
            s.subs[filt] = qos
            self.subs.add(levels, s, qos)

    def restore_unsub(self, s, filt):
        self.unsubscribe_filter(s, filt)

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
        CONNACK through conn.wire. Returns True when accepted; on refusal
        the caller closes the connection after the CONNACK is written
        [MQTT-3.2.2-5]."""
        now = self.now_ms()
        cid = c.client_id
        p = c.props  # MQTT 5 properties, None for 3.1 / 3.1.1
        if p is not None and p.auth_method is not None:
            return self._refuse(conn, RC_BAD_AUTH_METHOD)  # no enhanced authentication [MQTT-4.12.0-1]
        user = c.username
        if user is None or self.auth is None:
            if not self._anonymous_ok(conn):
                # without a password file a user name proves nothing: it
                # gets in where anonymous clients do (as mosquitto)
                self.count("anonymous_refused")
                return self._refuse(conn, RC_NOT_AUTHORIZED)
        elif not _access().login(self, conn, user, c.password):
            return self._refuse(conn, RC_BAD_CREDENTIALS, self.cfg["auth_fail_delay_ms"])
        keepalive = c.keepalive_s
        cap = self.cfg["max_keepalive_s"]
        if cap and (keepalive == 0 or keepalive > cap):
            if p is None:
                # 3.1.1 has no way to say it: refused, as mosquitto does
                log.info("client %s refused: keep alive %d s, max_keepalive_s is %d", cid, keepalive, cap)
                return self._refuse(conn, RC_CLIENT_ID_NOT_VALID)
            keepalive = conn.wire.server_keepalive_s = cap  # Server Keep Alive [MQTT-3.2.2-21]
        # When the session ends: at the close (`ends`), or after an expiry.
        # 3.1.1: clean session 1 ends with the connection; 0 persists for
        # session_expiry_s. MQTT 5: the Session Expiry Interval, at most
        # session_expiry_s when that is set [MQTT-3.1.2-11..12].
        expiry = -1
        if p is not None:
            expiry = p.session_expiry_s if p.session_expiry_s > 0 else 0
            cap = self.cfg["session_expiry_s"]
            if cap and expiry > cap:
                expiry = conn.wire.granted_expiry_s = cap  # stated in CONNACK
            ends = expiry == 0
        else:
            ends = c.clean
        if cid == "":
            if p is None and (not c.clean or c.level == LEVEL_31):
                return self._refuse(conn, RC_CLIENT_ID_NOT_VALID)  # [MQTT-3.1.3-8]; 3.1: 1..23 characters
            cid = self._assign_id()  # [MQTT-3.1.3-6], unpredictable
            if p is not None:
                conn.wire.assigned_id = cid  # [MQTT-3.2.2-16]
        elif len(cid) > self.cfg["max_client_id_length"] or (c.level == LEVEL_31 and len(cid) > 23):
            return self._refuse(conn, RC_CLIENT_ID_NOT_VALID)  # MQTT 3.1: 1 to 23 characters
        acl = None
        if self.acl is not None or self.auth is not None:
            # the will topic and the client id's owner (access.py)
            acl = _access().connect_acl(self, c, cid, user)
            if acl is False:
                return self._refuse(conn, RC_NOT_AUTHORIZED)
        will = None
        if c.will_topic is not None:
            self.check_name(c.will_topic)  # same rules as a PUBLISH topic
            will = Message(c.will_topic, c.will_payload, c.will_qos, c.will_retain)
            wp = c.will_props
            if wp is not None:
                if wp.fwd is not None:
                    will.props = wp.fwd
                if wp.expiry_s >= 0:
                    will.expiry_s = wp.expiry_s  # counted from when it is published
                if wp.will_delay_s:
                    will.delay_s = wp.will_delay_s
        s = self.sessions.get(cid)
        if s is not None and s.conn is not None:
            # Takeover [MQTT-3.1.4-2]: close the old connection. It did not
            # send DISCONNECT, so its will is published, except when a
            # persistent session is resumed (clean session 0 on both): the
            # device is back, and a will would report it offline.
            old = s.conn
            self.detach(old, not s.clean and not c.clean)
            self.kick(old, RC_SESSION_TAKEN_OVER)
            s = self.sessions.get(cid)  # a clean session was dropped by detach
        if s is not None and c.clean:
            self.drop_session(s)  # [MQTT-3.1.2-6]
            s = None
        present = s is not None
        if s is None:
            if self.heap.level:
                self.count("heap_refused")
                log.info("client %s refused: free heap under heap_reserve_bytes", cid)
                return self._refuse(conn, RC_SERVER_UNAVAILABLE)
            quota = self.cfg["max_sessions_per_user"]
            if quota and _access().user_sessions(self, user) >= quota and not self._evict_one(c.clean, user, True):
                self.count("user_quota_refused")
                log.info("client %s refused: max_sessions_per_user reached", cid)
                return self._refuse(conn, RC_QUOTA_EXCEEDED)
            if len(self.sessions) >= self.cfg["max_sessions"] and not self._evict_one(
                    c.clean, user, self.auth is not None):
                self.count("sessions_refused")
                return self._refuse(conn, RC_QUOTA_EXCEEDED)
            s = Session(cid, ends, now)
            self._serial += 1
            s.serial = self._serial
            if user is not None:
                s.user = user  # (before the store's SESSION record, which carries it)
            self.sessions[cid] = s
            st = self.store
            if st is not None and not ends:
                s.store = st  # the session's own handle: None for clean sessions
                st.session(s)
        elif ends and not s.clean:
            # an MQTT 5 client resumed a persistent session with Session
            # Expiry 0: it now ends with this connection
            s.clean = True
            st = s.store
            if st is not None and st.opened:
                st.session_del(s)
            s.store = None
        # (assigned only when they differ: an instance attribute costs a
        # 3.1.1 session heap it never needs)
        if s.expiry_s != expiry:
            s.expiry_s = expiry
            st = s.store
            if st is not None:
                st.expiry(s)
        window = p.receive_max if p is not None and p.receive_max < self.flow.max_inflight else 0
        if s.window != window:
            s.window = window
        if s.will_due_ms:
            s.will_due_ms = 0  # back before its will delay ran out: no will [MQTT-3.1.3-9]
        s.will = will
        if will is not None:
            st = s.store
            if st is not None:
                st.will(s, will)  # published after a restart if still set
        if acl is not None or s.acl is not None or self.accounts is not None:
            _access().attach(self, s, acl, present)
        s.conn = conn
        s.last_seen_ms = now
        conn.session = s
        conn.state = ACTIVE
        if conn.wire.v5:
            self.v5_online += 1
        conn.keepalive_ms = keepalive * 1000
        self.online += 1
        conn.send(conn.wire.connack(present, 0, self, s))  # [MQTT-3.2.2-1..3]
        if log.level <= log.INFO:
            log.info("client %s connected (clean=%d keepalive=%ds present=%d)",
                     cid, c.clean, keepalive, present)
        if present:
            self.flow.resend(s)
        return True

    def _refuse(self, conn, reason, delay_ms=0):
        """A refusing CONNACK (session present 0 [MQTT-3.2.2-4]); False.
        delay_ms: the connection sends it that much later (a failed login:
        each guess costs the guesser time)."""
        ack = conn.wire.connack(False, reason, self)
        if delay_ms:
            conn.reply_later = ack
            conn.reply_delay_ms = delay_ms
        else:
            conn.send(ack)
        conn.state = REFUSED
        return False

    # --- access: who may connect, and what they may touch ------------------------

    def _anonymous_ok(self, conn):
        """Anonymous access on the connection's listener (server.Listener,
        resolved by listeners.listener_plan); without one (tests), as
        allow_anonymous says, and when it is unset, unless a password file
        is set."""
        lst = getattr(conn, "listener", None)
        if lst is not None:
            return lst.anonymous
        anon = self.cfg["allow_anonymous"]
        return not self.cfg["password_file"] if anon is None else anon

    def kick(self, conn, reason):
        """Close a connection on the broker's initiative (takeover,
        keepalive): a DISCONNECT with the reason first where the protocol
        has one (MQTT 5), then close."""
        d = conn.wire.disconnect(reason)
        if d is not None:
            conn.send(d)
        conn.close()

    def set_expiry(self, s, expiry_s):
        """MQTT 5 DISCONNECT with a Session Expiry Interval: the session
        now ends at the close (0) or that long after. A session that was
        to end at the close may not be given one [MQTT-3.14.2-2]."""
        if s.clean and expiry_s:
            raise ProtocolError("session expiry set on DISCONNECT after 0 in CONNECT", RC_PROTOCOL_ERROR)
        cap = self.cfg["session_expiry_s"]
        s.expiry_s = cap if cap and expiry_s > cap else expiry_s
        st = s.store
        if st is not None and expiry_s:
            st.expiry(s)
        if not expiry_s and not s.clean:
            s.clean = True  # ends with this connection
            st = s.store
            if st is not None and st.opened:
                st.session_del(s)
            s.store = None

    def admit(self, s, topic_bytes):
        """A PUBLISH from session s to this topic arrived (either path:
        Delivery.receive, and the QoS 0 fast path in connection.py): count
        it and say whether s may publish there (acl_denied when not). The
        ONE authorisation point for publishing. Without an ACL file every
        client may publish everywhere; with one, the session's decisions
        for its last few topics are remembered (s.wcache, at most
        _WCACHE_MAX), so a sensor publishing to its topics pays one dict
        lookup per message, not a rule walk."""
        self.msgs_in += 1
        acl = s.acl
        if acl is None:
            return True
        cache = s.wcache
        ok = cache.get(topic_bytes) if cache is not None else None
        if ok is None:
            ok = acl.can_write(topic_bytes.decode())
            if cache is None:
                cache = s.wcache = {}
            elif len(cache) >= _WCACHE_MAX:
                cache.clear()
            cache[topic_bytes] = ok
        if not ok:
            self.count("acl_denied")
        return ok

    def detach(self, conn, graceful):
        """The connection is gone (or going). Idempotent. Publishes the
        will unless the client sent DISCONNECT [MQTT-3.1.2-8],
        [MQTT-3.14.4-3]; drops a clean session."""
        s = conn.session
        if s is None:
            return
        conn.session = None
        conn.state = DETACHED
        if s.conn is not conn:
            return
        s.conn = None
        self.online -= 1
        if conn.wire.v5:
            self.v5_online -= 1
        self.flow.pressured.pop(s, None)
        s.last_seen_ms = self.now_ms()
        will = s.will
        if will is not None and not graceful and will.delay_s and not s.clean:
            # MQTT 5 will delay: published when the delay ends or the
            # session does, whichever is first; not if the client returns
            s.will_due_ms = s.last_seen_ms + will.delay_s * 1000
            will = None
        else:
            s.will = None
        if will is not None:
            st = s.store
            if st is not None:
                st.will_del(s)
        if log.level <= log.INFO:
            log.info("client %s disconnected (%s)", s.client_id, "clean" if graceful else "unclean")
        if will is not None and not graceful:
            self._publish_will(will)
        if s.clean:
            self.drop_session(s)

    def _publish_will(self, will):
        if topics.is_sys_reserved(will.topic):
            self.count("sys_publish_dropped")
            return
        if will.expiry_s >= 0:
            will.expires_ms = expiry_at(self.uptime_ms, will.expiry_s)
        self.publish(will)

    def _will_due(self, s):
        """A delayed will's time came, or its session ends first."""
        will = s.will
        s.will = None
        s.will_due_ms = 0
        st = s.store
        if st is not None:
            st.will_del(s)
        if will is not None:
            self._publish_will(will)

    def _assign_id(self):
        """A client id no one can guess (os.urandom: 64 random bits)."""
        while True:
            cid = "midge-" + hexlify(urandom(8)).decode()
            if cid not in self.sessions:
                return cid

    def drop_session(self, s):
        """Forget a session and everything it holds."""
        if s.will_due_ms:
            self._will_due(s)  # the session ends before the will delay: publish now
        st = s.store
        if st is not None and st.opened:
            st.session_del(s)
        self.flow.forget(s)
        if s.account is not None:
            _access().close_account(self, s)
        left = None
        for filt in s.subs:
            if filt.startswith(_SHARE):
                from . import shared
                g = shared.leave(self, s, filt)
                if g is not None:
                    left = _gather(left, g)
            else:
                self.subs.remove(topics.split(filt), s)
        s.subs = {}
        if left is not None:
            shared.hand_over(self, s, left)
        s.will = None
        s.clear_delivery_state()  # (a dropped session may stay reachable for a while
        # from a deleted dict slot: MicroPython keeps the value; it holds nothing)
        if self.sessions.get(s.client_id) is s:
            del self.sessions[s.client_id]

    def _evict_one(self, for_clean, user=None, same_user=False):
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
        same_user: only sessions of `user` are candidates (users are
        authenticated: one user's clients never evict another user's
        sessions). True if a session was dropped."""
        idle = None
        held = None
        for s in self.sessions.values():
            if s.conn is not None or (same_user and s.user != user):
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

    def publish(self, msg, exempt=False, cache_route=False, origin=None):
        """Route one message: retained store, then every matching session
        once at the highest granted QoS, downgraded to the message's QoS
        [MQTT-3.8.4-6], [MQTT-3.3.5-1]. cache_route: the topic came from a
        client PUBLISH and passed check_name: its route is taken from, or
        left in, the route cache (Subscriptions.route), which the QoS 0
        fast path (connection.forward_qos0) uses too. origin: the
        publishing session (for No Local), or None. exempt: the broker's
        own $SYS message, routed with its retain flag and stored nowhere.

        A route maps a session to its grant (subscriptions.py): a plain
        QoS (0..2) for the common case, else MQTT 5 options and
        subscription identifiers, resolved by deliver_opts()."""
        route = self.routes.get(msg.topic_bytes) if cache_route else None
        if route is None or msg.retain:
            levels = topics.split(msg.topic)
        if msg.retain and not exempt:  # ($SYS is not held: sys_topics.match)
            if self.heap.level >= CRITICAL and msg.payload and self.retained.get(levels) is None:
                self.count("heap_refused")  # a new retained topic, heap short
            elif not self.retained.set(levels, msg):
                self.count("retained_refused")
            elif self.store is not None:
                self.store.retain(msg)
        hit = None
        plain = True  # every grant a plain QoS (a cached route always is)
        if route is None:
            route = {}
            self.subs.match(levels, route)
            for s in route:
                q = route[s]
                if type(q) is not int or q > 3:
                    plain = False
                    break
            if self.groups:
                hit = {}
                self.shared.match(levels, hit)
            # cached: only plain routes of topics no group matches (the
            # fast path knows neither options nor groups; a new group
            # empties the cache)
            if cache_route and plain and not hit:
                self.subs.cache_route(msg.topic_bytes, route)
        mq = msg.qos
        deliver = self.flow.deliver
        for s in route:
            q = route[s]
            try:
                if plain:
                    deliver(s, msg, q if q < mq else mq)
                elif type(q) is int and q < 4:
                    deliver(s, msg, q if q < mq else mq)
                else:
                    self.deliver_opts(s, msg, q, origin)
            except MemoryError:
                # this subscriber's queue or output needed the heap: the
                # message is lost for it, not the publisher's connection
                conn = s.conn
                if conn is not None:
                    conn.close()
                self.memory_error("out of memory delivering to client %s: message dropped for it"
                                  % s.client_id)
        if hit:
            from . import shared
            for g in hit:
                shared.deliver(self, g, msg)

    def deliver_opts(self, s, msg, grant, origin):
        """Deliver msg to s under MQTT 5 subscription options: `grant` is
        one packed grant or a tuple of them (overlapping subscriptions of
        one session: ONE copy, at the highest QoS of those that match
        [MQTT-3.3.5-1], with every subscription identifier [MQTT-3.3.4-3]).
        No Local: not to the publisher's own session [MQTT-3.8.3-3].
        Retain As Published: the retain flag as published [MQTT-3.3.1-12]."""
        grants = grant if type(grant) is tuple else (grant,)
        qos = -1
        rap = False
        sids = None
        for g in grants:
            if g & 4 and s is origin:
                continue
            if g & 3 > qos:
                qos = g & 3
            if g & 8:
                rap = True
            if g >> 4:
                sids = _gather(sids, g >> 4)
        if qos < 0:
            return
        mq = msg.qos
        self.flow.deliver(s, msg, qos if qos < mq else mq, msg.retain and rap, sids)

    # --- subscriptions ---------------------------------------------------------------

    def subscribe(self, s, pid, requests, extra=0, sub_id=0):
        """SUBSCRIBE: per-filter return codes in order [MQTT-3.8.4-5], SUBACK
        [MQTT-3.8.4-1], then retained messages for each accepted filter
        [MQTT-3.8.4-3]. requests: [(filter str, or None for one longer than
        max_topic_length, requested qos)]; extra: filters past
        max_filters_per_packet, refused unread. Bounded work: a filter is
        checked for length and depth before it is split, a filter repeated
        in the packet is one subscription, and the retained messages go to
        the session's backlog, which holds each topic once (_backlog_add).
        sub_id: the MQTT 5 Subscription Identifier of the packet (0: none),
        delivered with every message these subscriptions match."""
        codes = bytearray(len(requests) + extra)
        i = 0
        for filt, qos in requests:
            codes[i] = self._subscribe_filter(s, filt, qos, sub_id)
            i += 1
        for k in range(extra):
            self.count("subscriptions_refused")
            codes[i + k] = SUBACK_FAILURE
        conn = s.conn
        conn.send(conn.wire.suback(pid, codes))
        if s.backlog:
            self.flow.pump(s)

    def room_for_subscription(self, s):
        """May session s add a NEW filter (shared ones included)? No past
        max_subscriptions or max_subscriptions_total (subscriptions_refused)
        or while the heap is critical (heap_refused)."""
        cfg = self.cfg
        if (len(s.subs) >= cfg["max_subscriptions"]
                or self.subs.count + self.shared_members >= cfg["max_subscriptions_total"]):
            self.count("subscriptions_refused")
            return False
        if self.heap.level >= CRITICAL:
            self.count("heap_refused")
            return False
        return True

    def _subscribe_filter(self, s, filt, opts, sub_id=0):
        """One filter of a SUBSCRIBE: its return code. opts: the options
        byte (3.1.1: the requested QoS; MQTT 5 adds No Local (bit 2),
        Retain As Published (bit 3) and Retain Handling (bits 4-5)). The
        grant kept in the trie and s.subs is the QoS, No Local and Retain
        As Published bits where the options byte has them, and the
        subscription identifier from bit 4 up: a 3.1.1 grant is the QoS."""
        qos = opts & 3
        grant = (opts & 0x0F) | (sub_id << 4)
        if filt is None or len(filt) > self.max_topic_length or filt.count("/") >= self.max_topic_levels:
            self.count("topic_limit")
            return SUBACK_FAILURE
        acl = s.acl
        if acl is not None and filt not in s.subs and not _access().may_subscribe(self, s, filt):
            # (a filter the session has was allowed when made, and at connect)
            return RC_NOT_AUTHORIZED  # 0x80 in 3.1.1
        if filt.startswith(_SHARE):
            from . import shared  # loaded by the first shared subscription
            return shared.subscribe(self, s, filt, opts, grant)
        levels = topics.filter_levels(filt)
        if levels is None:
            return SUBACK_FAILURE
        if not topics.within_limits(filt, levels, self.max_topic_length, self.max_topic_levels):
            self.count("topic_limit")  # characters fit, UTF-8 bytes do not
            return SUBACK_FAILURE
        new = filt not in s.subs
        if new and not self.room_for_subscription(s):
            return SUBACK_FAILURE
        self.subs.add(levels, s, grant)
        s.subs[filt] = grant
        st = s.store
        if st is not None:
            st.sub(s, filt, grant)
        rh = opts >> 4
        if rh == 2 or (rh == 1 and not new):
            return qos  # retain handling: no retained messages (MQTT 5 section 3.8.3.1)
        found = []
        self.retained.match(levels, found)
        if levels[0] == "$SYS" and self.cfg["sys_interval_s"]:
            sys_topics.match(self, levels, found)  # (only such a filter matches $SYS [MQTT-4.7.2-1])
        add = self.flow.backlog_add
        for msg in found:
            if acl is not None and not acl.can_read(msg.topic):
                continue  # (a granted filter is within the read rules: this is the second lock)
            add(s, msg, qos if qos < msg.qos else msg.qos, sub_id)
        return qos

    def unsubscribe(self, s, pid, filters):
        codes = bytearray(len(filters))
        i = 0
        for filt in filters:
            if not self.unsubscribe_filter(s, filt):
                codes[i] = 0x11  # no subscription existed
            i += 1
        conn = s.conn
        conn.send(conn.wire.unsuback(pid, codes))  # [MQTT-3.10.4-4]

    def unsubscribe_filter(self, s, filt):
        """Remove one subscription if the session has it (no work, no
        allocation, for a filter it does not have). True if it had it."""
        if filt not in s.subs:
            return False
        del s.subs[filt]
        if filt.startswith(_SHARE):
            from . import shared
            shared.leave(self, s, filt)
        else:
            levels = topics.filter_levels(filt)
            if levels is not None:
                self.subs.remove(levels, s)
        st = s.store
        if st is not None:
            st.unsub(s, filt)
        return True

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
                self.kick(conn, RC_KEEPALIVE_TIMEOUT)
        expiry_ms = self.cfg["session_expiry_s"] * 1000
        for s in self.sessions.values():
            if s.conn is None:
                if s.will_due_ms and up >= s.will_due_ms:
                    self._will_due(s)
                e = s.expiry_s
                limit = e * 1000 if e > 0 else expiry_ms
                if limit and up - s.last_seen_ms > limit:
                    late = _gather(late, s)
        if late:
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


def _access():
    """access.py: the broker's side of users, ACLs and per-user quotas,
    loaded only when one is configured (its code is heap on a board)."""
    from . import access
    return access


def _newer(a, b):
    """Session a was created after session b (serial; sid orders sessions
    loaded from the store, which all have serial 0)."""
    if a.serial != b.serial:
        return a.serial > b.serial
    return a.sid > b.sid



