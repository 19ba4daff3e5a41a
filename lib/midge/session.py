# Per-client state that outlives a connection when clean session is 0.
#
# Ownership: the Broker creates, finds and drops sessions; a Connection
# points at its session while attached (session.conn is that connection,
# None while offline). Messages are shared references, never copied.
from .compat import const

# inflight entry fields (a list per entry, mutated in place); const: inlined
# where used in this module (delivery.py has its own private copies)
PID = const(0)
MSG = const(1)
QOS = const(2)
RETAIN = const(3)
STATE = const(4)
# STATE values
AWAIT_ACK = const(0)   # PUBLISH sent; waiting for PUBACK (QoS 1) or PUBREC (QoS 2)
AWAIT_COMP = const(1)  # PUBREL sent; waiting for PUBCOMP


class Session:
    # Class defaults: an idle session pays instance heap only for what it
    # has. The containers are the shared empty tuple until first used (the
    # add_*/drop_* methods below), and return to it when emptied.
    sid = 0               # number in the store's records; set when first persisted
    store = None          # the Store that persists this session (clean session 0 and a
                          # store configured), else None: every change to persisted state
                          # goes through this handle
    conn = None           # attached Connection, or None when offline
    will = None           # Message published on an unclean close
    inflight = ()         # [pid, msg, qos, retain, state] in send order; len <= max_inflight
    queue = ()            # (msg, qos) waiting to be sent, oldest first; pop(0) is a
                          # memmove of at most max_queued_messages pointers
    queued_bytes = 0
    backlog = None        # retained messages for new subscriptions, not yet sent: a dict
                          # topic -> (msg, qos), so a topic waits once however often it
                          # matched; at most Broker._backlog_cap() entries
    resend = 0            # after a reconnect: the last `resend` inflight entries still
                          # wait to be sent again (DUP PUBLISH or PUBREL), oldest first
    in_qos2 = ()          # inbound QoS 2 pids received, PUBREL not yet [MQTT-4.3.3-2]
    serial = 0            # creation order (Broker); 0 for sessions loaded from the store,
                          # which were all created before any new one (sid orders those)
    window = 0            # MQTT 5: the client's Receive Maximum when under max_inflight
                          # (0: max_inflight is the window)
    expiry_s = -1         # MQTT 5: Session Expiry Interval granted (-1: session_expiry_s applies)
    will_due_ms = 0       # MQTT 5: Broker.uptime_ms when a delayed will is published (0: none)
    user = None           # the user name its client logged in with (None: anonymous); with a
                          # password file, only that user's clients may use this client id
    acl = None            # acl.ClientAcl of its client while an ACL file is set, else None
    wcache = None         # topic bytes -> may publish (Broker.admit), with an ACL only
    account = None        # Account of its user, only while a per-user queue quota is set
    _next_pid = 1

    def __init__(self, client_id, clean, now_ms):
        self.client_id = client_id
        self.clean = clean
        self.last_seen_ms = now_ms  # Broker.now_ms() when last connected or detached
        self.subs = {}            # filter str -> granted qos

    def add_inflight(self, entry):
        if self.inflight:
            self.inflight.append(entry)
        else:
            self.inflight = [entry]

    def drop_inflight(self, entry):
        """Remove this entry (found by identity: entries compare equal by
        value, which is slower and not what is meant). An entry that was
        still waiting to be resent needs no resend any more."""
        inf = self.inflight
        for i in range(len(inf)):
            if inf[i] is entry:
                if i >= len(inf) - self.resend:
                    self.resend -= 1
                del inf[i]
                break
        if not inf:
            self.inflight = ()

    def add_queued(self, item):
        if self.queue:
            self.queue.append(item)
        else:
            self.queue = [item]

    def pop_queued(self):
        q = self.queue
        item = q.pop(0)
        if not q:
            self.queue = ()
        return item

    def add_in_qos2(self, pid):
        if self.in_qos2:
            self.in_qos2.add(pid)
        else:
            self.in_qos2 = {pid}

    def drop_in_qos2(self, pid):
        q = self.in_qos2
        if pid in q:
            q.discard(pid)
            if not q:
                self.in_qos2 = ()

    def next_pid(self):
        """A packet identifier not in use by an inflight message
        [MQTT-2.3.1-2]. The window is far smaller than 65535, so this ends."""
        pid = self._next_pid
        inf = self.inflight
        used = True
        while used:
            used = False
            for e in inf:
                if e[PID] == pid:
                    used = True
                    pid = pid + 1 if pid < 65535 else 1
                    break
        self._next_pid = pid + 1 if pid < 65535 else 1
        return pid

    def find_inflight(self, pid):
        for e in self.inflight:
            if e[PID] == pid:
                return e
        return None

    def has_pending(self):
        """Something waits for room on the wire: resends, backlog, queue."""
        return bool(self.queue) or bool(self.backlog) or self.resend > 0

    def clear_delivery_state(self):
        """Forget everything owed to the client (session discarded)."""
        self.inflight = ()
        self.resend = 0
        self.queue = ()
        self.queued_bytes = 0
        self.backlog = None
        self.in_qos2 = ()

    def holds_messages(self):
        """Anything acknowledged to a publisher or in flight: what evicting
        this session would destroy."""
        return bool(self.queue) or bool(self.inflight) or bool(self.in_qos2)


class Account:
    """What one user's sessions hold in their queues, for the per-user
    queue quotas (max_queued_per_user, max_queued_bytes_per_user); kept by
    Delivery beside the all-session totals."""

    def __init__(self, user):
        self.user = user      # user name, None for anonymous clients
        self.sessions = 0     # sessions holding this account
        self.queued = 0       # messages queued over the user's sessions
        self.queued_bytes = 0
