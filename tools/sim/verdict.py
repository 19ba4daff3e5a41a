# PASS / DEGRADED / FAIL from the accounting and the broker's own figures:
# pure, no I/O.
#
#   FAIL      a promise broken or the broker broken: an owed QoS 1/2 message
#             lost that no cap explains, a second copy at QoS 2, a retained
#             value lost or stale without a cap to explain it, a CONNECT
#             refused for a reason that is not a cap (e.g. MQTT 5 not spoken),
#             the broker died or logged a traceback, internal_errors or
#             malformed_packets counted (the simulated clients are well-formed).
#   DEGRADED  the broker kept its promises but a limit showed: a cap was hit
#             (its counter is named, with the first one to bite), a loss was
#             explained by a cap, the heap low-water mark fell under
#             min_heap_free_pct of the budget, keepalive timeouts or store
#             write errors, p99 latency over max_latency_p99_ms, sensors that
#             could not keep their rate (over max_behind_pct of readings).
#   PASS      none of the above.

# Counters of caps (README, configuration reference).
CAP_COUNTERS = (
    "clients_refused", "sessions_refused", "sessions_evicted", "queue_dropped", "slow_dropped",
    "slow_disconnects", "retained_refused", "subscriptions_refused", "topic_limit",
    "oversize_packets", "inflight_in_exceeded", "store_evicted", "sessions_expired",
    "connect_timeouts", "output_overflows", "preconnect_closed", "heap_low", "heap_refused",
    "heap_dropped",
)
BUG_COUNTERS = ("internal_errors", "malformed_packets")
# CONNACK codes a cap explains (3: server unavailable = max_sessions all online)
CAP_CONNACK = (3,)


def decide(facts, limits):
    """facts: {attribution, dup_violations, retained, counters, first_hits,
    heap: {budget, min_free, peak_alloc}, broker: {died, traceback},
    refused: {rc: n}, latency_p99_ms, sys_publish_dropped...};
    limits: the scenario's [verdict] table. Returns {verdict, reasons, notes}."""
    fail, degraded, notes = [], [], []
    counters = facts.get("counters", {})
    br = facts.get("broker", {})
    if br.get("died"):
        fail.append("the broker died during the run: %s" % br["died"])
    if br.get("traceback"):
        fail.append("the broker logged a traceback (internal error): %s" % br["traceback"])
    if br.get("start_failed"):
        fail.append("the broker did not come back after a restart: %s" % br["start_failed"])
    for c in BUG_COUNTERS:
        if counters.get(c):
            fail.append("$SYS counter %s = %d (a bug: the simulated clients are well-formed)" % (c, counters[c]))
    att = facts["attribution"]
    if att["unexplained"]:
        fail.append("%d owed QoS 1/2 deliveries lost with no cap to explain them" % att["unexplained"])
    for cause, n in sorted(att["explained"].items()):
        degraded.append("%d owed QoS 1/2 deliveries lost to %s" % (n, cause))
    if facts.get("dup_violations"):
        fail.append("%d QoS 2 messages delivered more than once" % len(facts["dup_violations"]))
    ret = facts.get("retained")
    if ret:
        bad = len(ret["missing"]) + len(ret["stale"])
        if bad:
            msg = "%d retained topics missing or stale after the run (%s)" % (
                bad, ", ".join((ret["missing"] + ret["stale"])[:3]))
            if counters.get("retained_refused") and not ret["stale"]:
                degraded.append(msg + ", retained_refused counted")
            else:
                fail.append(msg)
    for rc, n in sorted(facts.get("refused", {}).items()):
        rc = int(rc)
        if rc == 1:
            fail.append("%d CONNECTs refused with code 1: the broker does not speak that MQTT version" % n)
        elif rc not in CAP_CONNACK and rc >= 0:
            fail.append("%d CONNECTs refused with code %d" % (n, rc))
    hits = [(facts.get("first_hits", {}).get(c, 0.0), c) for c in CAP_COUNTERS if counters.get(c)]
    if hits:
        hits.sort()
        first = hits[0][1]
        degraded.append("caps hit: %s (first: %s at %.1f s)" % (
            ", ".join("%s=%d" % (c, counters[c]) for _, c in hits), first, hits[0][0]))
    if counters.get("memory_errors"):
        degraded.append("%d MemoryErrors struck past the heap reserve (each closed the connection "
                        "whose work caused it)" % counters["memory_errors"])
    if counters.get("keepalive_timeouts"):
        degraded.append("%d keepalive timeouts (clients silent for 1.5 x keepalive)" % counters["keepalive_timeouts"])
    if facts.get("store_errors"):
        degraded.append("%d store write errors" % facts["store_errors"])
    heap = facts.get("heap") or {}
    if heap.get("budget") and heap.get("min_free") is not None:
        pct = 100.0 * heap["min_free"] / heap["budget"]
        if pct < limits["min_heap_free_pct"]:
            degraded.append("heap low-water mark %d bytes free = %.1f%% of the %d-byte budget (limit %g%%)" % (
                heap["min_free"], pct, heap["budget"], limits["min_heap_free_pct"]))
    p99 = facts.get("latency_p99_ms")
    if limits.get("max_latency_p99_ms") and p99 is not None and p99 > limits["max_latency_p99_ms"]:
        degraded.append("p99 latency %.0f ms over %g ms" % (p99, limits["max_latency_p99_ms"]))
    due, behind = facts.get("scheduled", 0), facts.get("behind", 0)
    if due and 100.0 * behind / due > limits.get("max_behind_pct", 100):
        degraded.append("sensors could not keep their rate: %d of %d readings due not sent (%.1f%%; "
                        "inflight window full or broker backpressure)" % (behind, due, 100.0 * behind / due))
    if facts.get("qos0_lost"):
        notes.append("%d QoS 0 deliveries lost (allowed by QoS 0)" % facts["qos0_lost"])
    notes.extend(facts.get("notes", []))
    verdict = "FAIL" if fail else ("DEGRADED" if degraded else "PASS")
    return {"verdict": verdict, "reasons": fail + degraded, "notes": notes}
