# Which message was owed to which subscriber, and what arrived: pure
# functions over plain data (no sockets, no clock), unit-tested by
# tests/host/test_sim_accounting.py.
#
# Input (what record.Recorder.accounting_input() produces):
#   messages:    [{key, pub, kind ("data" | "will"), topic, qos, retain,
#                  t_send (first time on the wire), t_accept}]
#                t_accept: when the broker took responsibility: PUBACK for
#                QoS 1, PUBREC for QoS 2, the write for QoS 0, the abort for a
#                will (the restart for the will of a persistent session killed
#                with the broker); None: never accepted (nothing is owed).
#   subscribers: [{id, clean, periods: [{t_start, t_sub, granted, t_end,
#                  session_present, end}], receipts: [{key, t, qos, retain, dup}]}]
#                one period per accepted CONNECT (t_start: CONNACK); t_sub:
#                SUBACK time or None (session present, or never subscribed);
#                granted: [[filter, SUBACK code]]; end: why the period ended.
#   t_end:       end of the run (receipts after it are not counted)
#   grace_s:     see owed()
#   pending_cap: messages a persistent session can hold undelivered
#                (max_queued_messages + max_inflight); optional, default 0
#
# The promise (MQTT 3.1.1 section 4.3, midge's durability contract), per
# (message, subscriber) pair whose topic matches a granted filter, at the
# effective QoS = min(message QoS, highest granted QoS of matching filters):
#   QoS 0: nothing is owed ("expected" if the subscriber was subscribed and
#          connected when it was sent; a loss is allowed; QoS 0 is never
#          queued for an offline session).
#   QoS 1/2, persistent session (clean 0): owed when the session held the
#          subscription from before t_send until t_accept; owed across the
#          subscriber's offline periods and broker restarts (the store).
#          A session the broker dropped (CONNACK session present 0 on a
#          reconnect) ends the window: losses inside it are "session_lost".
#   QoS 1/2, clean session: owed when ONE connection was subscribed from
#          before t_send until t_accept + grace_s (or until the end of the
#          run): a clean session's queue dies with its connection, so a
#          message still in flight when the connection ended is not owed.
# A persistent subscriber that is offline at the end of the run (asleep, or
# refused by a cap) still has messages waiting in its session: of its owed
# messages not received, the newest pending_cap count as "pending", not lost
# (queues drop their oldest message first).
# Copies received with the retain flag are the retained value handed to a
# new subscription: they are counted apart and satisfy nothing.
# QoS 1 may arrive twice (a duplicate is reported, not a fault); a second
# copy at effective QoS 2 breaks exactly-once.


def topic_matches(flt, topic):
    """MQTT filter matching [MQTT-4.7.1]; filters starting with a wildcard
    do not match $-topics [MQTT-4.7.2-1]."""
    if topic.startswith("$") and flt[:1] in ("+", "#"):
        return False
    fl = flt.split("/")
    tl = topic.split("/")
    for i, f in enumerate(fl):
        if f == "#":
            return True
        if i >= len(tl):
            return False
        if f != "+" and f != tl[i]:
            return False
    return len(fl) == len(tl)


def effective_qos(granted, topic, msg_qos):
    """Outbound QoS of a message on `topic` for this subscription set, or
    None when no successfully granted filter matches."""
    best = None
    for flt, code in granted:
        if code <= 2 and topic_matches(flt, topic):
            best = code if best is None else max(best, code)
    return None if best is None else min(best, msg_qos)


def windows(sub, t_end):
    """When the broker held this subscriber's subscriptions:
    [{t_from, t_until, granted, persistent, end}]. Clean session: one per
    subscribed connection. Persistent: one per session lifetime, from the
    SUBACK that created it to the CONNECT that found it gone
    (end "session_lost") or the end of the run."""
    out = []
    if sub["clean"]:
        for p in sub["periods"]:
            if p.get("t_sub") is not None:
                out.append({"t_from": p["t_sub"], "t_until": min(p["t_end"] if p["t_end"] is not None else t_end, t_end),
                            "granted": p["granted"], "persistent": False, "end": p.get("end") or "end"})
        return out
    cur = None
    for p in sub["periods"]:
        if not p.get("session_present"):
            if cur is not None:
                cur["t_until"] = p["t_start"]
                cur["end"] = "session_lost"
                out.append(cur)
                cur = None
            if p.get("t_sub") is not None:
                cur = {"t_from": p["t_sub"], "t_until": t_end, "granted": p["granted"],
                       "persistent": True, "end": "end"}
    if cur is not None:
        out.append(cur)
    return out


def owed(msg, win, grace_s, t_end):
    """Does this window make (msg, subscriber) a pair the broker must deliver
    (at least to be attempted for QoS 0)? See the module comment."""
    if msg["t_accept"] is None or win["t_from"] > msg["t_send"]:
        return False
    if win["persistent"]:
        return msg["t_accept"] <= win["t_until"]
    return win["t_until"] >= min(msg["t_accept"] + grace_s, t_end)


def connected_at(sub, t):
    for p in sub["periods"]:
        end = p["t_end"]
        if p["t_start"] <= t and (end is None or t <= end):
            return True
    return False


def percentiles(values, ps=(50, 90, 99)):
    """Nearest-rank percentiles {"p50": v, ..., "max": v, "n": n}; None
    values when empty."""
    out = {"n": len(values)}
    vs = sorted(values)
    for p in ps:
        if not vs:
            out["p%d" % p] = None
            continue
        rank = -(-p * len(vs) // 100)  # ceil(p/100 * n), at least 1
        out["p%d" % p] = vs[max(1, rank) - 1]
    out["max"] = vs[-1] if vs else None
    return out


def _blank():
    return {"expected": 0, "delivered": 0, "lost": 0, "lost_session": 0, "pending": 0,
            "duplicates": 0, "not_owed_received": 0}


def account(inp):
    """The whole accounting: see the module comment. Returns
    {per_qos: {"0"|"1"|"2": counts}, subscribers: {id: counts},
     latency_live_ms, latency_queued_ms: percentiles, retained_copies,
     unknown_receipts, lost_samples: [...], dup_violations: [...]}.
    per_qos counts: expected (QoS 0) / owed (QoS 1, 2) pairs, delivered,
    lost (owed, never received), pending (owed, still in the session of a
    subscriber offline at the end), lost_session (of lost: the subscriber's
    session was dropped by the broker), duplicates (extra live copies),
    not_owed_received (pairs received though not owed)."""
    t_end, grace = inp["t_end"], inp["grace_s"]
    pending_cap = inp.get("pending_cap", 0)
    msgs = {m["key"]: m for m in inp["messages"]}
    per_qos = {"0": _blank(), "1": _blank(), "2": _blank()}
    subs_out = {}
    lat_live, lat_queued = [], []
    lost_samples, dup_violations = [], []
    retained_copies = unknown = 0
    for sub in inp["subscribers"]:
        wins = windows(sub, t_end)
        copies = {}
        for r in sub["receipts"]:
            if r["t"] > t_end:
                continue
            if r["key"] not in msgs:
                unknown += 1
                continue
            if r["retain"]:
                retained_copies += 1
                continue
            copies.setdefault(r["key"], []).append(r["t"])
        s_out = {"owed": 0, "delivered": 0, "lost": 0, "pending": 0, "duplicates": 0}
        missing = []  # owed QoS 1/2 not received: (t_accept, key, m, q, win)
        for key, m in msgs.items():
            q = None
            win = None
            for w in wins:
                if owed(m, w, grace, t_end):
                    q = effective_qos(w["granted"], m["topic"], m["qos"])
                    if q is not None:
                        win = w
                        break
            got = copies.get(key)
            if q == 0 and win is not None and win["persistent"] and not connected_at(sub, m["t_send"]):
                win = None  # QoS 0 is not queued for an offline session
            if win is None:
                if got:
                    # received though not owed: still the right stream
                    per_qos[str(m["qos"])]["not_owed_received"] += 1
                continue
            c = per_qos[str(q)]
            c["expected"] += 1
            if q:
                s_out["owed"] += 1
            if got:
                c["delivered"] += 1
                first = min(got)
                lat = (first - m["t_send"]) * 1000.0
                (lat_live if connected_at(sub, m["t_send"]) else lat_queued).append(lat)
                if len(got) > 1:
                    c["duplicates"] += len(got) - 1
                    if q == 2:
                        dup_violations.append({"subscriber": sub["id"], "key": key, "copies": len(got)})
                if q:
                    s_out["delivered"] += 1
                    s_out["duplicates"] += len(got) - 1
            else:
                missing.append((m["t_accept"], key, m, q, win))
        offline_at_end = (not sub["clean"] and sub["periods"]
                          and sub["periods"][-1]["t_end"] is not None and sub["periods"][-1]["t_end"] < t_end)
        missing.sort(key=lambda x: x[0])
        n_pending = 0
        if offline_at_end:
            n_pending = min(pending_cap, sum(1 for x in missing if x[3] and x[4]["end"] == "end"))
        for t_acc, key, m, q, win in reversed(missing):
            c = per_qos[str(q)]
            if q and n_pending and win["end"] == "end":
                n_pending -= 1
                c["pending"] += 1
                s_out["pending"] += 1
                continue
            c["lost"] += 1
            if win["end"] == "session_lost":
                c["lost_session"] += 1
            if q:
                s_out["lost"] += 1
                if len(lost_samples) < 20:
                    lost_samples.append({"subscriber": sub["id"], "key": key, "topic": m["topic"],
                                         "qos": q, "t_send": round(m["t_send"], 3),
                                         "window_end": win["end"]})
        subs_out[sub["id"]] = s_out
    lost_samples.sort(key=lambda x: x["t_send"])
    return {"per_qos": per_qos, "subscribers": subs_out,
            "latency_live_ms": percentiles(lat_live), "latency_queued_ms": percentiles(lat_queued),
            "retained_copies": retained_copies, "unknown_receipts": unknown,
            "lost_samples": lost_samples, "dup_violations": dup_violations}


# Caps whose counter explains an owed message that never arrived.
QUEUE_LOSS_COUNTERS = ("queue_dropped", "heap_dropped")
SESSION_LOSS_COUNTERS = ("sessions_evicted", "store_evicted", "sessions_expired")


def attribute_losses(acc, counters, restarted_without_store=False):
    """Split the owed QoS 1/2 losses into those a cap (or a restart without
    a store) explains and the rest, which break the protocol's promise.
    counters: $SYS counter totals over the run. A cap counter explains at
    most as many losses as it counted.
    Returns {"lost": n, "explained": {cause: n}, "unexplained": n}."""
    lost_session = sum(acc["per_qos"][q]["lost_session"] for q in ("1", "2"))
    lost_other = sum(acc["per_qos"][q]["lost"] for q in ("1", "2")) - lost_session
    explained = {}
    left = 0
    # session dropped: eviction/expiry counters, or a restart with no store
    budget = sum(counters.get(c, 0) for c in SESSION_LOSS_COUNTERS)
    if lost_session:
        if budget:
            for c in SESSION_LOSS_COUNTERS:
                if counters.get(c, 0):
                    explained[c] = lost_session
                    break
        elif restarted_without_store:
            explained["restart_without_store"] = lost_session
        else:
            left += lost_session
    budget = sum(counters.get(c, 0) for c in QUEUE_LOSS_COUNTERS)
    n = min(lost_other, budget)
    if n:
        explained["queue_dropped"] = n
    left += lost_other - n
    return {"lost": lost_session + lost_other, "explained": explained, "unexplained": left}


def check_retained(messages, observed):
    """The retained value of each topic the sensors published retained at
    QoS 1/2 must be the last accepted one, or a later one that was sent but
    not yet acknowledged. observed: {topic: message key or None (no retained
    value)} as read by a fresh subscription after the run.
    Returns {"checked", "ok", "missing": [topic], "stale": [topic]}."""
    last_acc, sent = {}, {}
    for m in messages:
        if m["kind"] != "data" or not m["retain"]:
            continue
        sent.setdefault(m["topic"], {})[m["key"]] = m
        if m["qos"] and m["t_accept"] is not None:
            prev = last_acc.get(m["topic"])
            if prev is None or (m["pub"], m["seq"]) > (prev["pub"], prev["seq"]):
                last_acc[m["topic"]] = m
    res = {"checked": 0, "ok": 0, "missing": [], "stale": []}
    for topic, want in sorted(last_acc.items()):
        res["checked"] += 1
        key = observed.get(topic)
        got = sent[topic].get(key) if key else None
        if got is None:
            res["missing"].append(topic)
        elif got["pub"] == want["pub"] and got["seq"] < want["seq"]:
            res["stale"].append(topic)
        else:
            res["ok"] += 1
    return res
