"""Fault injection: SIGKILL the broker at random moments, restart it on the
same store, and check that nothing acknowledged is lost.

One broker (MicroPython unix port, store with the default sync settings,
queue caps high enough that no cap drops anything) and one persistent
subscriber session (clean session 0, 'f/#' at QoS 1). Each round:

  1. restart the broker on the same store: it must start (the store loads)
     and log no traceback and no record that could not be applied;
  2. retained: for each 'f/r/<k>' and 'g/r/<k>' the retained value must be the latest
     PUBACKed update of that topic or a newer one that was sent but not
     (yet) acknowledged -- never an older one, never nothing once an update
     was acknowledged;
  3. the subscriber reconnects (session present must be 1) and either
     stays online, acknowledging, while the publisher runs, or first takes
     everything owed (up to a marker message) and goes offline again;
  4. a publisher sends a random number of QoS 1 publishes with sequence
     numbers on 'f/q' and QoS 1 retained updates on 'f/r/<n mod 5>' (and on
     'g/r/<n mod 5>', which no one subscribes to; some rounds send only
     these), a random number at a time in flight, recording every one it
     got a PUBACK for;
  5. SIGKILL after a random delay (sometimes also right after a restart,
     while the store is loading or compacting).

At the end the subscriber reconnects once more and takes everything owed:
every PUBACKed message must have reached it at least once (QoS 1:
duplicates allowed, counted), and first deliveries on 'f/q' must be in
sequence order. store_max_bytes is small enough that the log is also
compacted while running, and the live state (one round's queue) stays far
below half of it, so store_evicted never drops the session.

The markers (QoS 1 on 'f/mark', which 'f/#' matches) are the test's own
bookkeeping, not messages under test. The subscriber's PUBACK of a marker
backs no acknowledgement, so the store may write it up to store_sync_ms
later; a kill before that brings the marker again, with DUP, after the
restart (in any later round, online or draining). Every PUBLISH on 'f/mark'
is therefore recorded apart from the account and only checked to be a
marker the test published (anything else on 'f/mark' counts as a phantom).

The summary line (pytest -s shows it):
    fault injection: kills=K messages_acked=N lost=0 duplicates=D ...

Environment:
    MIDGE_FAULT_KILLS=N   rounds (default 25, under 10 s; about 0.25 s a round). A long soak:
                          MIDGE_FAULT_KILLS=1000 PYTHONPATH=lib:tests \\
                          .venv/bin/python -m pytest -s tests/host/test_store_faults.py
    MIDGE_FAULT_SEED=S    the random seed (printed in the summary) to replay a run
"""
import os
import random
import subprocess
import threading
import time

import pytest

import brokerproc
import mqttspec as m
from rawclient import Closed

KILLS = int(os.environ.get("MIDGE_FAULT_KILLS", "25"))
SEED = os.environ.get("MIDGE_FAULT_SEED")
RETAINED_TOPICS = 5
MARK_TOPIC = "f/mark"     # the markers of _drain: bookkeeping, kept out of the account
MAX_STREAM = 250          # messages per round at most (the offline queue of one round)
MAX_DELAY_S = 0.3         # kill delay after the stream starts
STARTUP_KILL_P = 0.15     # chance of an extra kill while the broker starts up

CONFIG = {
    # queue caps far above what a round produces: nothing is dropped by a cap
    "max_queued_messages": 1000000,
    "max_queued_bytes": 1 << 30,
    "max_queued_total": 10000000,
    "max_queued_bytes_total": 1 << 30,
    # compaction while running (the log passes 24 KB), live state < 16 KB
    "store_max_bytes": 49152,
    "sys_interval_s": 0,
}
HEAPSIZE = "1M"


class Publisher(threading.Thread):
    """Sends `plan` [(topic, payload, retain)] at QoS 1 with up to `window`
    unacknowledged; appends each message to `sent` before sending it and to
    `acked` when its PUBACK arrives. Ends when done or the broker is gone."""

    def __init__(self, client, plan, window, sent, acked):
        threading.Thread.__init__(self, daemon=True)
        self.c = client
        self.plan = plan
        self.window = window
        self.sent = sent
        self.acked = acked
        self.error = None

    def run(self):
        try:
            self._run()
        except (Closed, OSError):
            pass
        except Exception as e:  # a malformed reply: report in the test
            self.error = e

    def _run(self):
        c = self.c
        waiting = {}
        i = 0
        while i < len(self.plan) or waiting:
            while i < len(self.plan) and len(waiting) < self.window:
                topic, payload, retain = self.plan[i]
                pid = c.pid()
                self.sent.append(self.plan[i])
                waiting[pid] = self.plan[i]
                i += 1
                if not c.send(m.publish(topic, payload, qos=1, retain=retain, pid=pid)):
                    return
            p = c.recv(3.0)
            if p is None:
                return
            if p["type"] == "puback" and p["pid"] in waiting:
                self.acked.append(waiting.pop(p["pid"]))


class Subscriber(threading.Thread):
    """Receives PUBLISHes on a connected raw client, acknowledges each at
    once, records (topic, payload, dup) in `received`, except those on
    MARK_TOPIC: markers (this round's or an older one resent after a kill)
    go to `markers` as (payload, dup), and `marked` is set when the payload
    `marker` arrives there. Ends when the connection closes or stop() is
    called."""

    def __init__(self, client, received, markers, marker=None):
        threading.Thread.__init__(self, daemon=True)
        self.c = client
        self.received = received
        self.markers = markers
        self.marker = marker
        self.marked = threading.Event()
        self.halt = threading.Event()
        self.error = None

    def stop(self):
        self.halt.set()
        self.join(5)

    def run(self):
        try:
            while not self.halt.is_set():
                p = self.c.recv(0.1)
                if p is None or p["type"] != "publish":
                    continue
                if p["qos"] == 1:
                    self.c.send(m.puback(p["pid"]))
                elif p["qos"] == 2:
                    raise AssertionError("QoS 2 delivery on a QoS 1 subscription: %r" % p)
                if p["topic"] == MARK_TOPIC:
                    self.markers.append((p["payload"], p["dup"]))
                    if p["payload"] == self.marker:
                        self.marked.set()
                else:
                    self.received.append((p["topic"], p["payload"], p["dup"]))
        except (Closed, OSError):
            pass
        except Exception as e:
            self.error = e


def _check_started(b, what):
    log = b.log()
    assert "listening on" in log, "%s: broker did not start:\n%s" % (what, b.log_tail())
    for bad in ("Traceback", "not applied", "internal error"):
        assert bad not in log, "%s: %r in the broker log:\n%s" % (what, bad, b.log_tail(40))
    return log.count("damaged")


def _retained_now(b):
    """topic -> payload of the retained 'f/r/+', 'g/r/+' messages (a clean client at
    QoS 0: the backlog is written right after the SUBACK, before the
    PINGRESP that follows)."""
    c = b.client("fcheck")
    assert c.subscribe([("f/r/+", 0), ("g/r/+", 0)]) == [0, 0]
    c.send(m.pingreq())
    assert c.wait_for("pingresp", 3.0) is not None, "no PINGRESP from the retained check"
    out = {}
    for p in c.pending:
        if p["type"] == "publish":
            assert p["retain"] == 1, p
            out[p["topic"]] = p["payload"]
    c.disconnect()
    return out


def _check_retained(history, acked_set, now, what):
    """history: topic -> [payload in send order]. The retained value must be
    the last acknowledged update of its topic or a later sent one."""
    for topic in sorted(set(history) | set(now)):
        updates = history.get(topic, [])
        last_acked = -1
        for i, payload in enumerate(updates):
            if (topic, payload, True) in acked_set:
                last_acked = i
        value = now.get(topic)
        if value is None:
            assert last_acked < 0, "%s: retained %s lost; last acknowledged update %r" % (
                what, topic, updates[last_acked])
            continue
        assert value in updates, "%s: retained %s = %r was never sent" % (what, topic, value)
        idx = updates.index(value)
        assert idx >= last_acked, (
            "%s: retained %s = %r (update #%d) is older than the acknowledged update #%d %r"
            % (what, topic, value, idx, last_acked, updates[last_acked]))


def _kill_during_startup(b, rng, n):
    """Start the broker and SIGKILL it a few ms later, while it loads and
    compacts the store (or before it even got there)."""
    cmd, env = b.command()
    path = os.path.join(str(b.workdir), "startup-kill-%d.log" % n)
    with open(path, "wb") as f:
        proc = subprocess.Popen(cmd, cwd=brokerproc.REPO, env=env, stdin=subprocess.DEVNULL,
                                stdout=f, stderr=subprocess.STDOUT)
        time.sleep(rng.uniform(0.0, 0.03))
        proc.kill()
        proc.wait()
    b.old_logs.append(path)  # stop() checks it for tracebacks too


def _drain(b, sub_id, received, marks, what):
    """Reconnect the persistent subscriber and take everything owed, up to a
    marker published after the reconnect. `marks` is (markers published,
    markers received): the marker is added to the first before it is sent.
    Returns the connected client."""
    s = b.client(sub_id, clean=False)
    assert s.connack["session_present"] == 1, "%s: persistent session lost" % what
    marks_sent, marks_got = marks
    marker = b"mark-%d" % len(marks_sent)
    marks_sent.add(marker)
    t = Subscriber(s, received, marks_got, marker)
    t.start()
    mk = b.client("fmark")
    mk.publish(MARK_TOPIC, marker, qos=1)
    mk.disconnect()
    ok = t.marked.wait(15)
    t.stop()
    assert t.error is None, "%s: %r" % (what, t.error)
    assert ok, "%s: the marker did not arrive within 15 s" % what
    return s


@pytest.mark.timeout(90 + 4 * KILLS)
def test_sigkill_at_random_moments_loses_nothing_acknowledged(broker_factory, tmp_path):
    seed = int(SEED) if SEED else random.randrange(1 << 30)
    rng = random.Random(seed)
    cfg = dict(CONFIG)
    cfg["store_dir"] = str(tmp_path / "store")
    b = broker_factory(cfg, heapsize=HEAPSIZE)
    sub_id = "fsub"
    s = b.client(sub_id, clean=False)
    assert s.subscribe([("f/#", 1)]) == [1]
    s.disconnect()

    received = []            # (topic, payload, dup) at the subscriber, in order, markers apart
    marks = (set(), [])      # markers published by _drain, (payload, dup) of those received
    sent = []                # (topic, payload, retain) in send order
    acked = []               # the PUBACKed ones
    history = {}             # retained topic -> [payload in send order]
    seq = 0                  # sequence number of the f/q messages
    n = 0
    rounds_online = 0
    startup_kills = 0
    damaged_loads = 0
    t0 = time.monotonic()

    for rnd in range(KILLS):
        what = "round %d (seed %d)" % (rnd, seed)
        damaged_loads += _check_started(b, what)
        acked_set = set((t, p, True) for t, p, r in acked if r)
        _check_retained(history, acked_set, _retained_now(b), what)

        online = rng.random() < 0.5
        if online:
            rounds_online += 1
            s = b.client(sub_id, clean=False)
            assert s.connack["session_present"] == 1, "%s: persistent session lost" % what
            sub = Subscriber(s, received, marks[1])
            sub.start()
        else:
            _drain(b, sub_id, received, marks, what).disconnect()
            sub = None

        plan = []
        only_g = rng.random() < 0.2      # a round of unsubscribed retained updates only
        for _ in range(rng.randint(1, MAX_STREAM)):
            n += 1                       # message number over the whole run
            x = 0.95 if only_g else rng.random()
            if x < 0.8:
                seq += 1
                plan.append(("f/q", b"q:%d" % seq, False))
            else:
                # f/r/* also reach the subscriber; g/r/* reach no one, so
                # only the retained record itself backs their PUBACK
                topic = "%s/r/%d" % ("f" if x < 0.9 else "g", n % RETAINED_TOPICS)
                payload = b"r:%d" % n
                history.setdefault(topic, []).append(payload)
                plan.append((topic, payload, True))
        pub = Publisher(b.client("fpub"), plan, rng.randint(1, 16), sent, acked)
        pub.start()
        time.sleep(rng.uniform(0, MAX_DELAY_S))
        b.sigkill()
        pub.join(10)
        assert not pub.is_alive(), "%s: publisher still running after the kill" % what
        assert pub.error is None, "%s: publisher: %r" % (what, pub.error)
        if sub is not None:
            sub.stop()
            assert sub.error is None, "%s: subscriber: %r" % (what, sub.error)
        # The retained history holds what was sent: drop the planned
        # updates the kill kept from being sent.
        sent_set = set(sent)
        for topic in history:
            history[topic] = [p for p in history[topic] if (topic, p, True) in sent_set]

        if rng.random() < STARTUP_KILL_P:
            startup_kills += 1
            _kill_during_startup(b, rng, rnd)
        try:
            b.restart()
        except brokerproc.BrokerError as e:
            pytest.fail("%s: the broker did not start on its store: %s" % (what, e))

    what = "final (seed %d)" % seed
    damaged_loads += _check_started(b, what)
    acked_set = set((t, p, True) for t, p, r in acked if r)
    _check_retained(history, acked_set, _retained_now(b), what)
    _drain(b, sub_id, received, marks, what).disconnect()

    # --- the account -----------------------------------------------------------------
    got = {}
    for topic, payload, dup in received:
        got[(topic, payload)] = got.get((topic, payload), 0) + 1
    sent_keys = set((t, p) for t, p, r in sent if t.startswith("f/"))
    owed = [(t, p) for t, p, r in acked if t.startswith("f/")]   # g/r/*: no subscriber
    phantom = [k for k in got if k not in sent_keys]
    # a marker is bookkeeping, but one the test never published is a phantom too
    phantom += [(MARK_TOPIC, p) for p in sorted(set(p for p, dup in marks[1]) - marks[0])]
    marker_resends = len(marks[1]) - len(set(p for p, dup in marks[1]))
    lost = [k for k in owed if k not in got]
    duplicates = sum(c - 1 for c in got.values())
    delivered_unacked = len([k for k in got if k in sent_keys]) - len(set(owed))
    # first deliveries on f/q must follow the publish order
    last = 0
    reordered = 0
    seen = set()
    for topic, payload, dup in received:
        if topic != "f/q" or payload in seen:
            continue
        seen.add(payload)
        n = int(payload.split(b":")[1])
        if n < last:
            reordered += 1
        last = max(last, n)
    compactions = 0
    for path in b.old_logs + [b.logpath]:
        try:
            with open(path, "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except OSError:
            continue
        # every load ends with one compaction; more mean compaction while running
        compactions += max(0, text.count("store compacted") - 1)
    print("\nfault injection: kills=%d messages_acked=%d lost=%d duplicates=%d "
          "(seed=%d sent=%d delivered_unacked=%d reordered=%d rounds_online=%d "
          "startup_kills=%d damaged_loads=%d running_compactions=%d marker_resends=%d %.1fs)"
          % (KILLS + startup_kills, len(acked), len(lost), duplicates, seed, len(sent),
             max(delivered_unacked, 0), reordered, rounds_online, startup_kills, damaged_loads,
             compactions, marker_resends, time.monotonic() - t0))
    assert not phantom, "delivered but never sent: %r" % phantom[:10]
    assert not lost, "%d PUBACKed messages never delivered (seed %d), first: %r" % (
        len(lost), seed, lost[:10])
    assert reordered == 0, "%d first deliveries on f/q out of sequence order (seed %d)" % (
        reordered, seed)
