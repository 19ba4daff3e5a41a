# Per-client state that outlives a connection when clean session is 0.
#
# Ownership: the Broker creates, finds and drops sessions; a Connection
# points at its session while attached (session.conn is that connection,
# None while offline). Messages are shared references, never copied.
# inflight entry fields (a list per entry, mutated in place)
PID = 0
MSG = 1
QOS = 2
RETAIN = 3
STATE = 4
# STATE values
AWAIT_ACK = 0   # PUBLISH sent; waiting for PUBACK (QoS 1) or PUBREC (QoS 2)
AWAIT_COMP = 1  # PUBREL sent; waiting for PUBCOMP


class Session:
    sid = 0  # number in the store's records; set when first persisted

    def __init__(self, client_id, clean, now_ms):
        self.client_id = client_id
        self.clean = clean
        self.conn = None          # attached Connection, or None when offline
        self.last_seen_ms = now_ms  # Broker.now_ms() when last connected or detached
        self.subs = {}            # filter str -> granted qos
        self.will = None          # Message published on an unclean close
        self.inflight = []        # [pid, msg, qos, retain, state] in send order; len <= max_inflight
        self.queue = []            # (msg, qos) waiting to be sent, oldest first; pop(0) is a
                                  # memmove of at most max_queued_messages pointers
        self.queued_bytes = 0
        self.backlog = []         # (msg, qos) retained messages for new subscriptions
        self.backlog_pos = 0      # next backlog index to send
        self.in_qos2 = set()      # inbound QoS 2 pids received, PUBREL not yet [MQTT-4.3.3-2]
        self._next_pid = 1

    def next_pid(self):
        """A packet identifier not in use by an inflight message
        [MQTT-2.3.1-2]. The window is far smaller than 65535, so this ends."""
        pid = self._next_pid
        while True:
            if not self._pid_used(pid):
                break
            pid = pid + 1 if pid < 65535 else 1
        self._next_pid = pid + 1 if pid < 65535 else 1
        return pid

    def _pid_used(self, pid):
        for e in self.inflight:
            if e[PID] == pid:
                return True
        return False

    def find_inflight(self, pid):
        for e in self.inflight:
            if e[PID] == pid:
                return e
        return None

    def has_pending(self):
        return bool(self.queue) or self.backlog_pos < len(self.backlog)

    def clear_delivery_state(self):
        """Forget everything owed to the client (session discarded)."""
        self.inflight = []
        self.queue = []
        self.queued_bytes = 0
        self.backlog = []
        self.backlog_pos = 0
        self.in_qos2 = set()
