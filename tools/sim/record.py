# What happened during a run, in memory: every message a sensor put on the
# wire (and when the broker accepted it), every copy a subscriber received,
# every connection period, refused CONNECTs, faults and restarts. Written by
# the clients and the run; read by accounting (accounting_input()), the
# progress line and the report. Times are seconds since the run started
# (time.monotonic()).
import time


class Recorder:
    def __init__(self):
        self.t0 = time.monotonic()
        self.messages = {}        # key -> message dict (accounting.py input format)
        self.subscribers = {}     # client id -> {id, clean, periods, receipts}
        self.periods = {}         # client id -> [period] (every client, for the report)
        self.events = []          # [{t, kind, detail}]: faults, restarts, broker death
        self.refused = {}         # CONNACK code -> count; -1: closed before CONNACK
        self.sent_times = []      # times of first sends of sensor readings
        self.recv_times = []      # times of live receipts by subscribers
        self.skipped = 0          # readings not sent: the sensor was disconnected
        self.scheduled = 0        # readings due while connected
        self.behind = 0           # of those, skipped: the sensor could not keep its rate
        self.pending_wills = []   # wills of persistent sessions killed with the broker
        self.n_sent = 0
        self.n_recv = 0

    def now(self):
        return time.monotonic() - self.t0

    def event(self, kind, detail="", **extra):
        e = {"t": round(self.now(), 3), "kind": kind, "detail": detail}
        e.update(extra)
        self.events.append(e)

    # --- sensors -------------------------------------------------------------------

    def sent(self, key, pub, kind, seq, topic, qos, retain, t):
        """A message went on the wire (first time only counts)."""
        if key in self.messages:
            return
        self.messages[key] = {"key": key, "pub": pub, "kind": kind, "seq": seq, "topic": topic,
                              "qos": qos, "retain": retain, "t_send": t, "t_accept": None}
        if kind == "data":
            self.sent_times.append(t)
            self.n_sent += 1

    def accepted(self, key, t):
        m = self.messages.get(key)
        if m is not None and m["t_accept"] is None:
            m["t_accept"] = t

    def will(self, key, pub, seq, topic, qos, retain, t, accepted):
        """A connection with a will ended without DISCONNECT. accepted:
        True (the broker saw the close: owed), False (the broker closed it
        or a clean session died with the broker: not owed), "restart" (a
        persistent session killed with the broker: owed once it is back)."""
        self.sent(key, pub, "will", seq, topic, qos, retain, t)
        if accepted is True:
            self.accepted(key, t)
        elif accepted == "restart":
            self.pending_wills.append(key)

    def broker_up(self, t):
        for key in self.pending_wills:
            self.accepted(key, t)
        self.pending_wills = []

    # --- connections -----------------------------------------------------------------

    def add_subscriber(self, cid, clean):
        self.subscribers[cid] = {"id": cid, "clean": clean, "periods": [], "receipts": []}

    def period_start(self, cid, t, session_present):
        p = {"t_start": t, "t_sub": None, "granted": [], "t_end": None,
             "session_present": session_present, "end": None}
        self.periods.setdefault(cid, []).append(p)
        sub = self.subscribers.get(cid)
        if sub is not None:
            sub["periods"].append(p)
        return p

    def refused_connect(self, rc):
        self.refused[rc] = self.refused.get(rc, 0) + 1

    def receipt(self, cid, key, t, qos, retain, dup):
        sub = self.subscribers.get(cid)
        if sub is None:
            return
        sub["receipts"].append({"key": key, "t": t, "qos": qos, "retain": retain, "dup": dup})
        if not retain:
            self.recv_times.append(t)
            self.n_recv += 1

    def connected_now(self):
        return sum(1 for ps in self.periods.values() if ps and ps[-1]["t_end"] is None)

    # --- output ----------------------------------------------------------------------

    def accounting_input(self, t_end, grace_s):
        return {"t_end": t_end, "grace_s": grace_s, "messages": list(self.messages.values()),
                "subscribers": list(self.subscribers.values())}
