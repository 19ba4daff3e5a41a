"""Host simulator: who is owed what, lost/duplicate counting, percentiles,
loss attribution, retained check and verdict (tools/sim/accounting.py,
tools/sim/verdict.py), on synthetic inputs. No sockets."""

from sim import accounting as A
from sim import verdict as V
from sim import payload, mqtt

LIMITS = {"min_heap_free_pct": 10.0, "max_latency_p99_ms": 0.0, "max_behind_pct": 1.0}


def msg(seq, t, qos=1, topic="s/0", accept=0.01, kind="data", retain=False, pub="s-0"):
    return {"key": "%s:%s:%d" % (kind, pub, seq), "pub": pub, "kind": kind, "seq": seq, "topic": topic,
            "qos": qos, "retain": retain, "t_send": t, "t_accept": None if accept is None else t + accept}


def period(t0, t1, t_sub=None, present=False, granted=(("s/#", 1),), end="graceful"):
    return {"t_start": t0, "t_sub": t_sub, "granted": [list(g) for g in granted] if t_sub is not None else [],
            "t_end": t1, "session_present": present, "end": end}


def rcpt(m, t, retain=False, qos=None, dup=False):
    return {"key": m["key"], "t": t, "qos": m["qos"] if qos is None else qos, "retain": retain, "dup": dup}


def sub(periods, receipts, clean=True, sid="d-0"):
    return {"id": sid, "clean": clean, "periods": periods, "receipts": receipts}


def run(messages, subs, t_end=100.0, grace=5.0, pending_cap=0):
    return A.account({"t_end": t_end, "grace_s": grace, "messages": messages, "subscribers": subs,
                      "pending_cap": pending_cap})


def test_topic_matching_and_effective_qos():
    assert A.topic_matches("a/+/c", "a/b/c") and A.topic_matches("a/#", "a") and A.topic_matches("#", "a/b")
    assert not A.topic_matches("a/+", "a/b/c") and not A.topic_matches("#", "$SYS/x")
    assert A.topic_matches("$SYS/#", "$SYS/broker/x")
    assert A.effective_qos([["a/#", 0], ["a/b", 2]], "a/b", 1) == 1
    assert A.effective_qos([["a/#", 0]], "a/b", 2) == 0
    assert A.effective_qos([["a/#", 0x80]], "a/b", 2) is None
    assert A.effective_qos([["x/#", 1]], "a/b", 2) is None


def test_connected_clean_subscriber_is_owed_everything_and_loss_is_counted():
    ms = [msg(i, 10.0 + i) for i in range(1, 6)]
    s = sub([period(1, None, t_sub=1.5)], [rcpt(m, m["t_send"] + 0.002) for m in ms[:4]])
    acc = run(ms, [s])
    q1 = acc["per_qos"]["1"]
    assert (q1["expected"], q1["delivered"], q1["lost"]) == (5, 4, 1)
    assert acc["lost_samples"][0]["key"] == ms[4]["key"]
    assert acc["subscribers"]["d-0"] == {"owed": 5, "delivered": 4, "lost": 1, "pending": 0, "duplicates": 0}
    assert abs(acc["latency_live_ms"]["p50"] - 2.0) < 1e-6


def test_clean_subscriber_offline_is_not_owed():
    # published while the clean subscriber was away, or before it subscribed
    ms = [msg(1, 5.0), msg(2, 20.0), msg(3, 30.0)]
    s = sub([period(6, 15, t_sub=6.1), period(25, None, t_sub=25.1)], [rcpt(ms[2], 30.01)])
    acc = run(ms, [s])
    assert acc["per_qos"]["1"]["expected"] == 1 and acc["per_qos"]["1"]["lost"] == 0


def test_clean_connection_ending_soon_after_the_ack_is_not_owed():
    # accepted at 10.01, the connection ended at 12 (< accept + grace 5): not owed
    m = msg(1, 10.0)
    assert run([m], [sub([period(1, 12, t_sub=1)], [])])["per_qos"]["1"]["expected"] == 0
    # ... but it is owed when the connection lasted past the grace period
    acc = run([m], [sub([period(1, 16, t_sub=1)], [])])
    assert acc["per_qos"]["1"]["lost"] == 1
    # ... or to the end of the run
    acc = run([m], [sub([period(1, None, t_sub=1)], [])], t_end=11.0)
    assert acc["per_qos"]["1"]["lost"] == 1


def test_persistent_subscriber_owed_while_offline_queued_latency():
    ms = [msg(1, 10.0), msg(2, 20.0)]
    periods = [period(1, 15, t_sub=1.1), period(25, None, present=True)]
    s = sub(periods, [rcpt(ms[0], 10.01), rcpt(ms[1], 25.1)], clean=False)
    acc = run(ms, [s])
    assert acc["per_qos"]["1"]["expected"] == 2 and acc["per_qos"]["1"]["delivered"] == 2
    assert acc["latency_live_ms"]["n"] == 1 and acc["latency_queued_ms"]["n"] == 1
    assert abs(acc["latency_queued_ms"]["max"] - 5100.0) < 1e-6


def test_persistent_session_dropped_by_the_broker():
    m = msg(1, 20.0)
    periods = [period(1, 15, t_sub=1.1), period(25, None, present=False, t_sub=25.1)]
    acc = run([m], [sub(periods, [], clean=False)])
    q1 = acc["per_qos"]["1"]
    assert q1["lost"] == 1 and q1["lost_session"] == 1
    att = A.attribute_losses(acc, {"sessions_evicted": 1})
    assert att == {"lost": 1, "explained": {"sessions_evicted": 1}, "unexplained": 0}
    assert A.attribute_losses(acc, {})["unexplained"] == 1
    assert A.attribute_losses(acc, {}, restarted_without_store=True)["explained"] == {"restart_without_store": 1}


def test_persistent_subscriber_offline_at_the_end_has_pending_messages():
    ms = [msg(i, 10.0 + i) for i in range(1, 11)]
    s = sub([period(1, 5, t_sub=1.1)], [], clean=False)
    acc = run(ms, [s], t_end=30.0, pending_cap=4)
    q1 = acc["per_qos"]["1"]
    assert (q1["pending"], q1["lost"]) == (4, 6)  # the newest 4 still queued
    assert [x["key"] for x in acc["lost_samples"]] == [m["key"] for m in ms[:6]]


def test_qos0_may_be_lost_and_never_owed():
    ms = [msg(1, 10.0, qos=0), msg(2, 11.0, qos=1)]
    s = sub([period(1, None, t_sub=1, granted=(("s/#", 0),))], [rcpt(ms[0], 10.01, qos=0)])
    acc = run(ms, [s])
    assert acc["per_qos"]["0"]["expected"] == 2 and acc["per_qos"]["0"]["lost"] == 1  # QoS 1 downgraded
    assert acc["per_qos"]["1"]["expected"] == 0
    assert acc["subscribers"]["d-0"]["owed"] == 0
    assert A.attribute_losses(acc, {})["lost"] == 0


def test_qos0_not_expected_for_an_offline_persistent_session():
    ms = [msg(1, 10.0, qos=0), msg(2, 20.0, qos=0)]
    periods = [period(1, 15, t_sub=1.1, granted=(("s/#", 1),)), period(25, None, present=True)]
    acc = run(ms, [sub(periods, [rcpt(ms[0], 10.01)], clean=False)])
    assert acc["per_qos"]["0"]["expected"] == 1 and acc["per_qos"]["0"]["lost"] == 0


def test_duplicates_allowed_at_qos1_a_violation_at_qos2_retained_copies_apart():
    m1, m2 = msg(1, 10.0, qos=1), msg(2, 11.0, qos=2)
    s = sub([period(1, None, t_sub=1, granted=(("s/#", 2),))],
            [rcpt(m1, 10.01), rcpt(m1, 10.5, dup=True), rcpt(m2, 11.01), rcpt(m2, 11.2),
             rcpt(m1, 12.0, retain=True)])
    acc = run([m1, m2], [s])
    assert acc["per_qos"]["1"]["duplicates"] == 1 and acc["per_qos"]["2"]["duplicates"] == 1
    assert acc["dup_violations"] == [{"subscriber": "d-0", "key": m2["key"], "copies": 2}]
    assert acc["retained_copies"] == 1


def test_retained_copy_does_not_satisfy_an_owed_message():
    m = msg(1, 10.0)
    acc = run([m], [sub([period(1, None, t_sub=1)], [rcpt(m, 12.0, retain=True)])])
    assert acc["per_qos"]["1"]["lost"] == 1


def test_unaccepted_message_is_not_owed_but_counted_if_received():
    m = msg(1, 10.0, accept=None)
    acc = run([m], [sub([period(1, None, t_sub=1)], [rcpt(m, 10.1)])])
    assert acc["per_qos"]["1"]["expected"] == 0 and acc["per_qos"]["1"]["not_owed_received"] == 1


def test_will_is_owed_like_a_message():
    w = msg(3, 10.0, kind="will", topic="s/0/status")
    acc = run([w], [sub([period(1, None, t_sub=1)], [rcpt(w, 10.05)])])
    assert acc["per_qos"]["1"]["delivered"] == 1


def test_receipts_after_the_end_and_unknown_keys():
    m = msg(1, 10.0)
    s = sub([period(1, None, t_sub=1)], [rcpt(m, 120.0), {"key": "data:x:9", "t": 11, "qos": 1,
                                                          "retain": False, "dup": False}])
    acc = run([m], [s], t_end=100.0)
    assert acc["per_qos"]["1"]["lost"] == 1 and acc["unknown_receipts"] == 1


def test_percentiles_nearest_rank():
    p = A.percentiles(list(range(1, 101)))
    assert (p["p50"], p["p90"], p["p99"], p["max"], p["n"]) == (50, 90, 99, 100, 100)
    p = A.percentiles([7])
    assert p["p50"] == p["p99"] == p["max"] == 7
    assert A.percentiles([])["p50"] is None
    assert A.percentiles([3, 1, 2])["p50"] == 2


def test_queue_drops_explain_losses_up_to_their_count():
    acc = {"per_qos": {"1": {"lost": 5, "lost_session": 0}, "2": {"lost": 1, "lost_session": 0}}}
    assert A.attribute_losses(acc, {"queue_dropped": 4}) == {"lost": 6, "explained": {"queue_dropped": 4},
                                                             "unexplained": 2}


def test_retained_check():
    ms = [msg(1, 1.0, retain=True), msg(2, 2.0, retain=True), msg(3, 3.0, retain=True, accept=None),
          msg(1, 1.0, retain=True, topic="s/1", pub="s-1")]
    ok = A.check_retained(ms, {"s/0": ms[1]["key"], "s/1": ms[3]["key"]})
    assert ok == {"checked": 2, "ok": 2, "missing": [], "stale": []}
    later = A.check_retained(ms, {"s/0": ms[2]["key"], "s/1": ms[3]["key"]})  # sent, not yet acked: fine
    assert later["ok"] == 2
    bad = A.check_retained(ms, {"s/0": ms[0]["key"]})
    assert bad["stale"] == ["s/0"] and bad["missing"] == ["s/1"]


def facts(**kw):
    f = {"attribution": {"lost": 0, "explained": {}, "unexplained": 0}, "dup_violations": [],
         "retained": None, "counters": {}, "first_hits": {}, "heap": {"budget": 1000, "min_free": 500},
         "broker": {}, "refused": {}}
    f.update(kw)
    return f


def test_verdicts():
    assert V.decide(facts(), LIMITS)["verdict"] == "PASS"
    v = V.decide(facts(attribution={"lost": 2, "explained": {}, "unexplained": 2}), LIMITS)
    assert v["verdict"] == "FAIL" and "2 owed QoS 1/2" in v["reasons"][0]
    v = V.decide(facts(counters={"queue_dropped": 3, "clients_refused": 1},
                       first_hits={"queue_dropped": 4.0, "clients_refused": 9.0}), LIMITS)
    assert v["verdict"] == "DEGRADED" and "first: queue_dropped at 4.0 s" in v["reasons"][0]
    assert V.decide(facts(heap={"budget": 1000, "min_free": 50}), LIMITS)["verdict"] == "DEGRADED"
    assert V.decide(facts(counters={"internal_errors": 1}), LIMITS)["verdict"] == "FAIL"
    assert V.decide(facts(refused={"1": 2}), LIMITS)["verdict"] == "FAIL"       # MQTT version refused
    assert V.decide(facts(refused={"3": 2}), LIMITS)["verdict"] == "PASS"       # a cap: its counter decides
    assert V.decide(facts(dup_violations=[{}]), LIMITS)["verdict"] == "FAIL"
    assert V.decide(facts(scheduled=100, behind=5), LIMITS)["verdict"] == "DEGRADED"
    assert V.decide(facts(broker={"died": "exit status -9"}), LIMITS)["verdict"] == "FAIL"


def test_payload_header_round_trip():
    p = payload.encode("data", 7, 123456, 12.5, 64)
    assert len(p) == 64 and payload.decode(p) == ("data", 7, 123456, 12.5)
    assert payload.decode(b"midge 0.1.0") is None and payload.decode(b"x" * 20) is None


def test_mqtt_codec_round_trip():
    for version in (mqtt.V311, mqtt.V5):
        raw = mqtt.publish("a/b", b"xyz", 1, True, 9, False, version)
        (pkt,), used = mqtt.split(raw + b"\x30")  # a partial next packet stays
        assert used == len(raw) and pkt[0] == mqtt.PUBLISH
        p = mqtt.parse_publish(pkt[1], pkt[2], version)
        assert (p["topic"], p["qos"], p["retain"], p["pid"], p["payload"]) == ("a/b", 1, True, 9, b"xyz")
        assert mqtt.publish_size(3, 3, 1, version) == len(raw)
    assert mqtt.parse_connack(b"\x01\x00") == (True, 0)
    assert mqtt.parse_suback(b"\x00\x05\x00\x01\x80", mqtt.V5) == (5, [1, 0x80])
