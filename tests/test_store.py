# midge.store: the flash log, driven through a real Broker. Packets are
# built with tests/mqttspec.py and handed to handlers.handle as the
# connection layer does; broker.commit() is called where Connection calls
# it (after each handled chunk, after a detach) and where the server calls
# it (after each tick). A "crash" closes the store's file without writing
# what it buffered; a restart builds a NEW Broker + Store on the same
# directory and calls restore().
#
# Shared test: runs on CPython and MicroPython, so no tempfile/shutil/
# os.path; temporary directories are made under /tmp by hand.
import os
import time

import mqttspec as m
from fakeconn import Clock, FakeConn, frames
from midge import handlers, topics
from midge.broker import Broker
from midge.config import load_config
from midge.session import AWAIT_ACK, AWAIT_COMP
from midge.store import Store, StoreError

try:
    from time import ticks_ms
except ImportError:  # CPython
    def ticks_ms():
        return int(time.monotonic() * 1000)


HEADER = b"MIDG\x01\x00\x00\x00"

# --- temporary directories ---------------------------------------------------------

_seq = [0]


def mktemp():
    for _ in range(1000):
        _seq[0] += 1
        d = "/tmp/midge-test-store-%d-%d-%d" % (int(time.time()), ticks_ms() & 0xFFFFFF, _seq[0])
        try:
            os.mkdir(d)
            return d
        except OSError:
            pass  # exists (an earlier run): try the next counter
    raise OSError("cannot make a temporary directory under /tmp")


def _is_dir(path):
    try:
        return (os.stat(path)[0] & 0x4000) != 0
    except OSError:
        return False


def rmtree(d):
    try:
        names = os.listdir(d)
    except OSError:
        return
    for name in names:
        p = d + "/" + name
        if _is_dir(p):
            rmtree(p)
        else:
            os.remove(p)
    os.rmdir(d)


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def write_bytes(path, data):
    with open(path, "wb") as f:
        f.write(data)


def exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


class Env:
    """One store directory (plus scratch copies), a shared clock, and every
    Store opened on them; `with Env(...) as env:` closes and removes all."""

    def __init__(self, **over):
        self.over = over
        self.clock = Clock()
        self.dirs = []
        self.stores = []
        self.dir = self.newdir()
        self.log = self.dir + "/midge.log"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for st in self.stores:
            st.close()
        for d in self.dirs:
            rmtree(d)
        return False

    def newdir(self):
        d = mktemp()
        self.dirs.append(d)
        return d

    def cfg(self, extra=None):
        o = {"sys_interval_s": 0}
        o.update(self.over)
        if extra:
            o.update(extra)
        return load_config(o)

    def store(self, directory=None, **extra):
        cfg = self.cfg(extra)
        st = Store(directory or self.dir, max_bytes=cfg["store_max_bytes"],
                   sync_ms=cfg["store_sync_ms"])
        self.stores.append(st)
        return cfg, st

    def boot(self, directory=None, **extra):
        """A broker started on the directory, as server.py does it."""
        cfg, st = self.store(directory, **extra)
        b = Broker(cfg, self.clock, store=st)
        b.restore()
        return b

    def peek(self):
        """A broker loaded from a copy of the log as it is on disk right now
        (a crash at this instant), leaving the running store untouched."""
        d = self.newdir()
        write_bytes(d + "/midge.log", read_bytes(self.log))
        return self.boot(d)

    def size(self):
        return os.stat(self.log)[6]

    def settle(self, b):
        """Time passes (store_sync_ms) and the server ticks and commits."""
        self.clock.advance(self.cfg()["store_sync_ms"])
        b.tick()
        b.commit()


def crash(b):
    """The process dies: what the store buffered never reaches the file."""
    b.store.close()


# --- driving the broker as the connection layer does --------------------------------

def feed(b, conn, data):
    """Handle every packet of one read, then commit (Connection._read_loop);
    on DISCONNECT detach and commit (Connection.run)."""
    for first, start, end in frames(data):
        handlers.handle(b, conn, first, data, start, end)
        if conn.closing:
            break
    b.commit()
    if conn.closing:
        b.detach(conn, conn.graceful)
        b.commit()


def client(b, cid, clean=False, **kw):
    """CONNECT; returns (conn, session_present, packets after the CONNACK)."""
    conn = FakeConn()
    feed(b, conn, m.connect(cid, clean=clean, keepalive=0, **kw))
    pk = conn.take()
    assert pk and pk[0]["type"] == "connack" and pk[0]["rc"] == 0, pk
    return conn, pk[0]["session_present"], pk[1:]


def subscribe(b, conn, filters, pid=1):
    feed(b, conn, m.subscribe(pid, filters))
    pk = conn.take()
    assert pk[0]["type"] == "suback" and pk[0]["pid"] == pid, pk
    return pk[0]["codes"]


def disconnect(b, conn):
    feed(b, conn, m.disconnect())
    assert conn.session is None


def lost(b, conn):
    """The socket closed without DISCONNECT (Connection.run)."""
    b.detach(conn, False)
    b.commit()


def publish(b, conn, topic, payload, qos=0, retain=False, pid=None, dup=False):
    """PUBLISH from a client; returns the packets it got back."""
    if qos and pid is None:
        pid = 1
    feed(b, conn, m.publish(topic, payload, qos, retain, dup, pid if qos else None))
    return conn.take()


def retained(b, topic):
    msg = b.retained.get(topics.split(topic))
    return None if msg is None else msg.payload


def queue_of(b, cid):
    return [(msg.payload, qos) for msg, qos in b.sessions[cid].queue]


def kinds(pkts):
    return [p["type"] for p in pkts]


def rec_size(topic, payload):
    """Bytes of one R_RETAIN record: length, type, topic, qos, payload, CRC."""
    return 4 + 1 + 2 + len(topic) + 1 + 4 + len(payload) + 4


# --- opening: fresh, version check -------------------------------------------------

def test_missing_dir_and_empty_file_start_fresh():
    with Env() as env:
        sub = env.dir + "/store"          # does not exist yet
        b = env.boot(sub)
        assert read_bytes(sub + "/midge.log") == HEADER
        assert b.sessions == {} and b.retained.count == 0
        assert b.store.damaged_records == 0
        # an empty file (a crash right after creating it) also starts fresh
        write_bytes(env.log, b"")
        b = env.boot()
        assert read_bytes(env.log) == HEADER
        assert b.sessions == {} and b.store.damaged_records == 0
        # and the fresh store works: state written now is there after a restart
        p, _, _ = client(b, "pub", clean=True)
        publish(b, p, "a", b"1", qos=1, retain=True)
        crash(b)
        assert retained(env.boot(), "a") == b"1"


def test_bad_magic_is_store_error():
    with Env() as env:
        data = b"MQTT\x01\x00\x00\x00" + b"\x00" * 20
        write_bytes(env.log, data)
        cfg, st = env.store()
        b = Broker(cfg, env.clock, store=st)
        try:
            b.restore()
            raised = None
        except StoreError as e:
            raised = e
        assert raised is not None
        text = str(raised)
        assert "magic" in text and env.log in text, text
        assert read_bytes(env.log) == data  # the unknown file is left alone


def test_wrong_version_is_store_error():
    with Env() as env:
        b = env.boot()
        p, _, _ = client(b, "pub", clean=True)
        publish(b, p, "a", b"1", qos=1, retain=True)
        crash(b)
        data = bytearray(read_bytes(env.log))
        assert bytes(data[:8]) == HEADER
        data[4] = 2
        data = bytes(data)
        write_bytes(env.log, data)
        try:
            env.boot()
            raised = None
        except StoreError as e:
            raised = e
        assert raised is not None
        text = str(raised)
        assert "version 2" in text and "version 1" in text and env.log in text, text
        assert read_bytes(env.log) == data


# --- round trips -----------------------------------------------------------------------

def test_retained_round_trip_set_replace_clear():
    with Env() as env:
        b = env.boot()
        p, _, _ = client(b, "pub", clean=True)
        publish(b, p, "s/a", b"a1", qos=0, retain=True)
        publish(b, p, "s/b", b"b1", qos=1, retain=True)
        publish(b, p, "s/c", b"c1", qos=2, retain=True, pid=5)
        feed(b, p, m.pubrel(5))
        publish(b, p, "s/a", b"a2", qos=0, retain=True)   # replace
        publish(b, p, "s/b", b"", qos=1, retain=True)     # clear
        publish(b, p, "s/d", b"d1", qos=1, retain=False)  # not retained
        env.settle(b)
        crash(b)

        b = env.boot()
        assert retained(b, "s/a") == b"a2"
        assert retained(b, "s/b") is None
        assert retained(b, "s/c") == b"c1"
        assert retained(b, "s/d") is None
        assert b.retained.count == 2
        assert b.retained.get(topics.split("s/c")).qos == 2
        # a new subscriber gets them with retain=1
        w, _, _ = client(b, "w", clean=True)
        feed(b, w, m.subscribe(1, [("s/#", 2)]))
        pk = w.take()
        got = {}
        for x in pk:
            if x["type"] == "publish":
                assert x["retain"] == 1
                got[x["topic"]] = (x["payload"], x["qos"])
        assert got == {"s/a": (b"a2", 0), "s/c": (b"c1", 2)}, got
        # and a second restart still has them (the compacted log is complete)
        crash(b)
        b = env.boot()
        assert retained(b, "s/a") == b"a2" and retained(b, "s/c") == b"c1"
        assert b.retained.count == 2


def test_sys_retained_not_persisted():
    with Env(sys_interval_s=1) as env:
        b = env.boot()
        env.clock.advance(1000)
        b.tick()
        assert retained(b, "$SYS/broker/version") is not None
        env.settle(b)
        crash(b)
        b = env.boot()
        assert retained(b, "$SYS/broker/version") is None  # only the next tick sets it


def test_retained_dollar_topic_round_trip():
    # '$' topics other than $SYS are ordinary retained topics for clients
    with Env() as env:
        b = env.boot()
        p, _, _ = client(b, "pub", clean=True)
        publish(b, p, "$app/x", b"d1", qos=1, retain=True)
        publish(b, p, "app/x", b"n1", qos=1, retain=True)
        crash(b)
        b = env.boot()
        assert retained(b, "$app/x") == b"d1" and retained(b, "app/x") == b"n1"
        crash(b)
        b = env.boot()  # loaded from the log compacted by the first restart
        assert retained(b, "app/x") == b"n1"
        assert retained(b, "$app/x") == b"d1", "retained $app/x lost by compaction"


def test_persistent_session_subscriptions_round_trip():
    with Env() as env:
        b = env.boot()
        c, present, _ = client(b, "dev")
        assert present == 0
        codes = subscribe(b, c, [("x/+", 1), ("y/#", 2), ("z", 0), ("gone", 2)])
        assert codes == [1, 2, 0, 2]
        feed(b, c, m.unsubscribe(2, ["gone"]))
        assert kinds(c.take()) == ["unsuback"]
        disconnect(b, c)
        env.settle(b)
        crash(b)

        b = env.boot()
        assert list(b.sessions.keys()) == ["dev"]
        s = b.sessions["dev"]
        assert not s.clean and s.conn is None
        assert s.subs == {"x/+": 1, "y/#": 2, "z": 0}
        assert b.subs.count == 3
        # the index routes again, at the granted QoS
        p, _, _ = client(b, "pub", clean=True)
        publish(b, p, "x/a", b"one", qos=2, pid=9)   # granted 1
        feed(b, p, m.pubrel(9))
        publish(b, p, "y/a/b", b"two", qos=2, pid=10)  # granted 2
        feed(b, p, m.pubrel(10))
        publish(b, p, "z", b"three", qos=1)           # granted 0: not queued offline
        publish(b, p, "gone", b"four", qos=1)         # unsubscribed
        assert queue_of(b, "dev") == [(b"one", 1), (b"two", 2)]
        c, present, pk = client(b, "dev")
        assert present == 1
        assert [(x["payload"], x["qos"]) for x in pk] == [(b"one", 1), (b"two", 2)]


def test_queued_messages_round_trip_in_order():
    with Env() as env:
        b = env.boot()
        s, _, _ = client(b, "sub")
        subscribe(b, s, [("q/#", 2)])
        disconnect(b, s)
        p, _, _ = client(b, "pub", clean=True)
        publish(b, p, "q/1", b"m1", qos=1)
        publish(b, p, "q/0", b"m0", qos=0)   # QoS 0 is not queued offline
        publish(b, p, "q/2", b"m2", qos=2, pid=2)
        feed(b, p, m.pubrel(2))
        publish(b, p, "q/3", b"m3", qos=1)
        publish(b, p, "q/4", b"m4", qos=2, pid=3)
        feed(b, p, m.pubrel(3))
        expect = [(b"m1", 1), (b"m2", 2), (b"m3", 1), (b"m4", 2)]
        assert queue_of(b, "sub") == expect
        crash(b)  # QoS 1/2 were acknowledged: durable without waiting

        b = env.boot()
        assert queue_of(b, "sub") == expect
        assert b.queued_total == 4
        assert b.queued_bytes_total == sum(len(pl) + 3 for pl, q in expect)
        s, present, pk = client(b, "sub")
        assert present == 1
        pubs = [x for x in pk if x["type"] == "publish"]
        assert [(x["topic"], x["payload"], x["qos"], x["dup"]) for x in pubs] == [
            ("q/1", b"m1", 1, 0), ("q/2", b"m2", 2, 0), ("q/3", b"m3", 1, 0), ("q/4", b"m4", 2, 0)]
        assert b.queued_total == 0


def test_outbound_await_ack_resent_with_dup_after_restart():
    with Env(max_inflight=2) as env:
        b = env.boot()
        s, _, _ = client(b, "sub")
        subscribe(b, s, [("t/#", 2)])
        p, _, _ = client(b, "pub", clean=True)
        publish(b, p, "t/1", b"m1", qos=1)
        publish(b, p, "t/2", b"m2", qos=2, pid=2)
        feed(b, p, m.pubrel(2))
        publish(b, p, "t/3", b"m3", qos=1)   # window full: queued
        sent = [x for x in s.take() if x["type"] == "publish"]
        assert [x["payload"] for x in sent] == [b"m1", b"m2"]
        pid1, pid2 = sent[0]["pid"], sent[1]["pid"]
        feed(b, s, m.puback(pid1))           # m1 done; m3 leaves the queue
        sent = [x for x in s.take() if x["type"] == "publish"]
        assert [x["payload"] for x in sent] == [b"m3"]
        pid3 = sent[0]["pid"]
        env.settle(b)
        crash(b)  # "sub" was connected: nothing detached

        b = env.boot()
        st = b.sessions["sub"]
        assert st.conn is None and st.queue == []
        assert [(e[0], e[1].payload, e[2], e[4]) for e in st.inflight] == [
            (pid2, b"m2", 2, AWAIT_ACK), (pid3, b"m3", 1, AWAIT_ACK)]
        s, present, pk = client(b, "sub")
        assert present == 1
        assert [(x["type"], x["pid"], x["payload"], x["qos"], x["dup"]) for x in pk] == [
            ("publish", pid2, b"m2", 2, 1), ("publish", pid3, b"m3", 1, 1)]  # [MQTT-3.3.1-1]
        # acknowledging them finishes the session's delivery state
        feed(b, s, m.puback(pid3) + m.pubrec(pid2))
        assert kinds(s.take()) == ["pubrel"]
        feed(b, s, m.pubcomp(pid2))
        assert st.inflight == []


def test_outbound_await_comp_pubrel_resent_after_restart():
    with Env() as env:
        b = env.boot()
        s, _, _ = client(b, "sub")
        subscribe(b, s, [("t", 2)])
        p, _, _ = client(b, "pub", clean=True)
        publish(b, p, "t", b"exactly-once", qos=2, pid=4)
        feed(b, p, m.pubrel(4))
        pk = s.take()
        assert kinds(pk) == ["publish"]
        pid = pk[0]["pid"]
        feed(b, s, m.pubrec(pid))
        assert [(x["type"], x["pid"]) for x in s.take()] == [("pubrel", pid)]
        env.settle(b)
        crash(b)

        b = env.boot()
        st = b.sessions["sub"]
        assert [(e[0], e[2], e[4]) for e in st.inflight] == [(pid, 2, AWAIT_COMP)]
        s, present, pk = client(b, "sub")
        assert present == 1
        assert [(x["type"], x["pid"]) for x in pk] == [("pubrel", pid)]  # no PUBLISH again
        feed(b, s, m.pubcomp(pid))
        assert b.sessions["sub"].inflight == []
        disconnect(b, s)
        env.settle(b)
        crash(b)

        b = env.boot()
        assert b.sessions["sub"].inflight == []
        s, present, pk = client(b, "sub")
        assert present == 1 and pk == []


def test_inbound_qos2_state_round_trip():
    with Env() as env:
        b = env.boot()
        w, _, _ = client(b, "w")
        subscribe(b, w, [("in/#", 2)])
        disconnect(b, w)
        p, _, _ = client(b, "pub")
        pk = publish(b, p, "in/x", b"once", qos=2, pid=7)
        assert [(x["type"], x["pid"]) for x in pk] == [("pubrec", 7)]
        crash(b)  # PUBREC was sent: durable without waiting

        b = env.boot()
        assert b.sessions["pub"].in_qos2 == set([7])
        assert queue_of(b, "w") == [(b"once", 2)]
        p, present, pk = client(b, "pub")
        assert present == 1 and pk == []
        # the client did not see the PUBREC: it resends the PUBLISH
        pk = publish(b, p, "in/x", b"once", qos=2, pid=7, dup=True)
        assert [(x["type"], x["pid"]) for x in pk] == [("pubrec", 7)]
        assert queue_of(b, "w") == [(b"once", 2)]  # not delivered twice [MQTT-4.3.3-2]
        feed(b, p, m.pubrel(7))
        assert [(x["type"], x["pid"]) for x in p.take()] == [("pubcomp", 7)]
        assert b.sessions["pub"].in_qos2 == set()
        env.settle(b)
        crash(b)

        b = env.boot()
        assert b.sessions["pub"].in_qos2 == set()
        p, _, _ = client(b, "pub")
        publish(b, p, "in/x", b"next", qos=2, pid=7)  # pid 7 is free again
        assert queue_of(b, "w") == [(b"once", 2), (b"next", 2)]


def test_will_of_connected_session_published_after_restart():
    with Env() as env:
        b = env.boot()
        w, _, _ = client(b, "watch")
        subscribe(b, w, [("status/#", 1)])
        disconnect(b, w)
        dev, _, _ = client(b, "dev", will_topic="status/dev", will_payload=b"dev-lost",
                           will_qos=1, will_retain=True)
        ok, _, _ = client(b, "ok", will_topic="status/ok", will_payload=b"ok-lost", will_qos=1)
        disconnect(b, ok)                      # DISCONNECT: will discarded
        gone, _, _ = client(b, "gone", will_topic="status/gone", will_payload=b"gone-lost",
                            will_qos=1)
        lost(b, gone)                          # published now, before the crash
        assert queue_of(b, "watch") == [(b"gone-lost", 1)]
        env.settle(b)
        crash(b)                               # "dev" still connected

        b = env.boot()
        assert queue_of(b, "watch") == [(b"gone-lost", 1), (b"dev-lost", 1)]
        assert retained(b, "status/dev") == b"dev-lost"
        assert retained(b, "status/ok") is None and retained(b, "status/gone") is None
        assert b.sessions["dev"].will is None and b.sessions["dev"].conn is None
        env.settle(b)
        crash(b)

        b = env.boot()  # the will is published once, not at every start
        assert queue_of(b, "watch") == [(b"gone-lost", 1), (b"dev-lost", 1)]
        assert retained(b, "status/dev") == b"dev-lost"


def test_will_published_at_restart_survives_an_immediate_second_crash():
    with Env() as env:
        b = env.boot()
        w, _, _ = client(b, "watch")
        subscribe(b, w, [("status/#", 1)])
        disconnect(b, w)
        client(b, "dev", will_topic="status/dev", will_payload=b"dev-lost", will_qos=1,
               will_retain=True)
        env.settle(b)
        crash(b)
        b = env.boot()
        assert queue_of(b, "watch") == [(b"dev-lost", 1)]
        crash(b)  # dies again before store_sync_ms has passed
        b = env.boot()
        # the will was published by the first restart: it is owed to "watch"
        assert queue_of(b, "watch") == [(b"dev-lost", 1)], queue_of(b, "watch")
        assert retained(b, "status/dev") == b"dev-lost"


def test_clean_sessions_not_persisted():
    with Env() as env:
        b = env.boot()
        size0 = env.size()
        c, _, _ = client(b, "clean-client-7f3a", clean=True, will_topic="w/c",
                         will_payload=b"x", will_qos=1)
        subscribe(b, c, [("t/#", 1)])
        p, _, _ = client(b, "clean-pub-9c1d", clean=True)
        publish(b, p, "t/1", b"m", qos=1)          # inflight to the clean session
        publish(b, p, "t/2", b"n", qos=2, pid=3)   # inbound QoS 2 state of a clean session
        assert len(b.sessions["clean-client-7f3a"].inflight) == 2
        assert b.sessions["clean-pub-9c1d"].in_qos2 == set([3])
        env.settle(b)
        assert env.size() == size0  # nothing of either session was written
        data = read_bytes(env.log)
        assert b"clean-client-7f3a" not in data and b"clean-pub-9c1d" not in data
        crash(b)
        b = env.boot()
        assert b.sessions == {} and b.subs.count == 0 and b.queued_total == 0


def test_deleted_session_stays_deleted():
    with Env() as env:
        b = env.boot()
        c, _, _ = client(b, "dev")
        subscribe(b, c, [("t", 1)])
        disconnect(b, c)
        p, _, _ = client(b, "pub", clean=True)
        publish(b, p, "t", b"queued", qos=1)
        assert queue_of(b, "dev") == [(b"queued", 1)]
        c, present, pk = client(b, "dev", clean=True)  # discards the session [MQTT-3.1.2-6]
        assert present == 0 and pk == []
        disconnect(b, c)
        assert "dev" not in b.sessions
        env.settle(b)
        crash(b)

        b = env.boot()
        assert "dev" not in b.sessions
        assert b.subs.count == 0 and b.queued_total == 0
        crash(b)
        b = env.boot()
        assert "dev" not in b.sessions
        c, present, pk = client(b, "dev")
        assert present == 0 and pk == [] and b.sessions["dev"].subs == {}


# --- the durability rule ---------------------------------------------------------------

def test_acknowledged_state_is_in_the_file_before_the_ack():
    # a long store_sync_ms: only the durability rule makes anything written
    with Env(store_sync_ms=600000) as env:
        b = env.boot()
        s, _, _ = client(b, "sub")
        size0 = env.size()
        feed(b, s, m.subscribe(1, [("t", 1)]))
        assert kinds(s.take()) == ["suback"]
        assert env.size() > size0           # session + subscription behind the SUBACK
        assert env.peek().sessions["sub"].subs == {"t": 1}
        disconnect(b, s)

        p, _, _ = client(b, "pub", clean=True)
        size1 = env.size()
        data = m.publish("t", b"must-survive", 1, False, False, 3)
        for first, start, end in frames(data):
            handlers.handle(b, p, first, data, start, end)
        # the PUBACK is queued on the connection but not written yet...
        assert [(x["type"], x["pid"]) for x in m.parse_all(p.out)[0]] == [("puback", 3)]
        assert env.size() == size1          # ...and neither is the record
        b.commit()                          # the connection commits before writing replies
        assert env.size() > size1
        assert b"must-survive" in read_bytes(env.log)
        assert queue_of(env.peek(), "sub") == [(b"must-survive", 1)]


def test_qos0_retained_waits_for_sync_ms_and_coalesces():
    with Env(store_sync_ms=1000) as env:
        b = env.boot()
        p, _, _ = client(b, "pub", clean=True)
        size0 = env.size()
        publish(b, p, "sensor", b"v1", qos=0, retain=True)
        env.clock.advance(400)
        publish(b, p, "sensor", b"v2", qos=0, retain=True)
        env.clock.advance(400)
        b.tick()
        b.commit()
        publish(b, p, "sensor", b"v3-last", qos=0, retain=True)
        env.clock.advance(199)               # 999 ms since the first update
        b.tick()
        b.commit()
        assert env.size() == size0           # not written yet
        assert retained(env.peek(), "sensor") is None
        env.clock.advance(1)                 # store_sync_ms reached
        b.tick()
        b.commit()
        # three updates, one record: the last value
        assert env.size() - size0 == rec_size("sensor", b"v3-last"), (env.size(), size0)
        data = read_bytes(env.log)
        assert b"v3-last" in data and b"v1" not in data and b"v2" not in data
        assert retained(env.peek(), "sensor") == b"v3-last"
        # nothing pending: later commits write nothing
        env.clock.advance(5000)
        b.tick()
        b.commit()
        assert env.size() - size0 == rec_size("sensor", b"v3-last")


def test_ack_with_nothing_to_write_does_not_flush_later_qos0_retained():
    # A SUBSCRIBE or QoS 1 PUBLISH of a clean session asks for an urgent
    # commit but buffers no record; that request must not make the next
    # (non-urgent) QoS 0 retained update skip its store_sync_ms window.
    with Env(store_sync_ms=1000) as env:
        b = env.boot()
        p, _, _ = client(b, "pub", clean=True)
        publish(b, p, "flag", b"on", qos=1, retain=True)   # urgent, written
        size0 = env.size()
        feed(b, p, m.subscribe(2, [("nothing/here", 1)]))  # urgent, nothing to write
        publish(b, p, "nobody/listens", b"x", qos=1)       # urgent, nothing to write
        assert env.size() == size0
        publish(b, p, "sensor", b"v1", qos=0, retain=True)
        publish(b, p, "sensor", b"v2", qos=0, retain=True)
        assert env.size() == size0, "QoS 0 retained update written before store_sync_ms"
        env.settle(b)
        assert env.size() - size0 == rec_size("sensor", b"v2")


# --- damage --------------------------------------------------------------------------------

def _two_retained(env):
    """A log of header + R_RETAIN a + R_RETAIN b, plus a persistent session
    written before them. Returns (log bytes, offset of the last record)."""
    b = env.boot()
    c, _, _ = client(b, "dev")
    subscribe(b, c, [("x/#", 1)])
    disconnect(b, c)
    p, _, _ = client(b, "pub", clean=True)
    publish(b, p, "a", b"first", qos=1, retain=True)
    last = env.size()
    publish(b, p, "b", b"second", qos=1, retain=True)
    crash(b)
    data = read_bytes(env.log)
    assert len(data) - last == rec_size("b", b"second")
    return data, last


def _check_state_before_last(b):
    assert retained(b, "a") == b"first"
    assert retained(b, "b") is None
    assert b.sessions["dev"].subs == {"x/#": 1}


def test_checksum_failure_discards_last_record():
    with Env() as env:
        data, last = _two_retained(env)
        for i in range(last, len(data)):    # every byte of the last record
            d = env.newdir()
            bad = bytearray(data)
            bad[i] ^= 0x5A
            write_bytes(d + "/midge.log", bytes(bad))
            b = env.boot(d)
            assert b.store.damaged_records == 1, i
            _check_state_before_last(b)
            crash(b)
            assert os.stat(d + "/midge.log")[6] <= last  # rewritten without the damage
            b = env.boot(d)
            assert b.store.damaged_records == 0, i
            _check_state_before_last(b)
            crash(b)
            rmtree(d)
        # the undamaged log loads completely
        b = env.boot()
        assert b.store.damaged_records == 0
        assert retained(b, "b") == b"second" and retained(b, "a") == b"first"


def test_torn_write_at_every_offset_of_last_record():
    with Env() as env:
        data, last = _two_retained(env)
        for cut in range(last, len(data)):
            d = env.newdir()
            write_bytes(d + "/midge.log", data[:cut])
            b = env.boot(d)
            assert b.store.damaged_records == (0 if cut == last else 1), cut
            _check_state_before_last(b)
            crash(b)
            b = env.boot(d)
            assert b.store.damaged_records == 0, cut
            _check_state_before_last(b)
            crash(b)
            rmtree(d)


# --- compaction ------------------------------------------------------------------------------

def test_compaction_keeps_state_and_bounds_the_log():
    with Env(store_max_bytes=4096, store_sync_ms=0) as env:
        b = env.boot()
        s, _, _ = client(b, "keep")
        subscribe(b, s, [("k/#", 1), ("other", 0)])
        disconnect(b, s)
        p, _, _ = client(b, "pub", clean=True)
        publish(b, p, "k/1", b"q1", qos=1)
        publish(b, p, "k/2", b"q2", qos=1)
        publish(b, p, "other", b"o", qos=0, retain=True)
        sizes = [env.size()]
        payload = b""
        for i in range(60):
            payload = (b"%03d" % i) * 33            # 99 bytes
            publish(b, p, "sensor", payload, qos=0, retain=True)
            sizes.append(env.size())
        st = b.store
        assert st.compactions > 0
        drops = [i for i in range(1, len(sizes)) if sizes[i] < sizes[i - 1]]
        assert drops, sizes                          # compaction shrank the file
        assert max(sizes) <= 2048 + rec_size("sensor", payload), sizes
        assert env.size() <= 2048
        names = os.listdir(env.dir)
        assert "midge.tmp" not in names, names
        crash(b)

        b = env.boot()
        assert retained(b, "sensor") == payload
        assert retained(b, "other") == b"o"
        assert b.retained.count == 2
        assert b.sessions["keep"].subs == {"k/#": 1, "other": 0}
        assert queue_of(b, "keep") == [(b"q1", 1), (b"q2", 1)]
        assert b.store.damaged_records == 0
        assert "midge.tmp" not in os.listdir(env.dir)


def test_leftover_tmp_ignored_and_removed_on_open():
    with Env() as env:
        # a complete but never renamed snapshot of OTHER state
        b = env.boot(env.newdir())
        p, _, _ = client(b, "pub", clean=True)
        publish(b, p, "from-tmp", b"must-not-load", qos=1, retain=True)
        other = b.store.path
        crash(b)
        b = env.boot()
        c, _, _ = client(b, "dev")
        subscribe(b, c, [("t", 1)])
        p, _, _ = client(b, "pub", clean=True)
        publish(b, p, "real", b"kept", qos=1, retain=True)
        crash(b)
        write_bytes(env.dir + "/midge.tmp", read_bytes(other))
        b = env.boot()
        assert "midge.tmp" not in os.listdir(env.dir)
        assert retained(b, "real") == b"kept"
        assert retained(b, "from-tmp") is None
        assert b.sessions["dev"].subs == {"t": 1}
        crash(b)
        # a torn (half-written) tmp as well
        write_bytes(env.dir + "/midge.tmp", read_bytes(other)[:13])
        b = env.boot()
        assert "midge.tmp" not in os.listdir(env.dir)
        assert retained(b, "real") == b"kept" and b.store.damaged_records == 0
        crash(b)
        # a tmp without a log: nothing is loaded from it, and it is removed
        os.remove(env.log)
        write_bytes(env.dir + "/midge.tmp", read_bytes(other))
        b = env.boot()
        assert "midge.tmp" not in os.listdir(env.dir)
        assert retained(b, "from-tmp") is None and b.sessions == {}
        assert read_bytes(env.log) == HEADER


# --- caps ---------------------------------------------------------------------------------------

def test_store_max_bytes_drops_least_recently_seen_offline_session():
    with Env(store_max_bytes=4096) as env:
        b = env.boot()
        on, _, _ = client(b, "online")      # connected first: the oldest, but online
        subscribe(b, on, [("nothing", 1)])
        for cid in ("a", "b", "c"):         # "a" is seen least recently
            env.clock.advance(1000)
            c, _, _ = client(b, cid)
            subscribe(b, c, [("t/" + cid, 1)])
            disconnect(b, c)
        p, _, _ = client(b, "pub", clean=True)
        n = 0
        while b.counters["store_evicted"] == 0 and n < 60:
            cid = ("a", "b", "c")[n % 3]
            publish(b, p, "t/" + cid, (b"%d" % n) * 150, qos=1)
            n += 1
        assert b.counters["store_evicted"] == 1, (n, env.size())
        assert "a" not in b.sessions
        assert "b" in b.sessions and "c" in b.sessions and "online" in b.sessions
        assert env.size() <= 2048
        assert b.queued_total == len(b.sessions["b"].queue) + len(b.sessions["c"].queue)
        qb = queue_of(b, "b")
        qc = queue_of(b, "c")
        assert qb and qc
        crash(b)
        b = env.boot()
        names = list(b.sessions.keys())
        names.sort()
        assert names == ["b", "c", "online"], names
        assert queue_of(b, "b") == qb and queue_of(b, "c") == qc


def test_session_expiry_drops_offline_sessions_and_persists():
    with Env(session_expiry_s=10) as env:
        b = env.boot()
        on, _, _ = client(b, "online")
        subscribe(b, on, [("t", 1)])
        old, _, _ = client(b, "old")
        subscribe(b, old, [("t", 1)])
        disconnect(b, old)
        env.clock.advance(5000)
        young, _, _ = client(b, "young")
        subscribe(b, young, [("t", 1)])
        disconnect(b, young)
        env.clock.advance(5000)             # "old" unseen for exactly 10 s
        b.tick()
        b.commit()
        assert "old" in b.sessions and b.counters["sessions_expired"] == 0
        env.clock.advance(1)
        b.tick()
        b.commit()
        assert "old" not in b.sessions and b.counters["sessions_expired"] == 1
        assert "young" in b.sessions and "online" in b.sessions
        assert b.subs.count == 2
        env.settle(b)
        crash(b)

        b = env.boot()
        names = list(b.sessions.keys())
        names.sort()
        assert names == ["online", "young"], names
        assert b.subs.count == 2


# --- suspected gaps in the durability rule --------------------------------------------------

def test_qos2_release_durable_before_pubcomp():
    # After PUBCOMP the client may reuse the packet id. If the broker still
    # holds it as "awaiting PUBREL" after a crash, the new message is taken
    # for a resend and never delivered.
    with Env(store_sync_ms=1000) as env:
        b = env.boot()
        w, _, _ = client(b, "w")
        subscribe(b, w, [("in", 2)])
        disconnect(b, w)
        p, _, _ = client(b, "pub")
        publish(b, p, "in", b"first", qos=2, pid=7)
        feed(b, p, m.pubrel(7))
        assert [(x["type"], x["pid"]) for x in p.take()] == [("pubcomp", 7)]
        crash(b)                              # within store_sync_ms of the PUBCOMP
        b = env.boot()
        assert b.sessions["pub"].in_qos2 == set(), b.sessions["pub"].in_qos2
        p, _, _ = client(b, "pub")
        pk = publish(b, p, "in", b"second", qos=2, pid=7)
        assert kinds(pk) == ["pubrec"]
        assert queue_of(b, "w") == [(b"first", 2), (b"second", 2)], queue_of(b, "w")


def test_completed_outbound_qos2_not_delivered_again_after_crash():
    # A QoS 2 message whose PUBLISH/PUBREC/PUBREL/PUBCOMP exchange finished
    # must not reach the client a second time as a new message.
    with Env(store_sync_ms=1000) as env:
        b = env.boot()
        s, _, _ = client(b, "sub")
        subscribe(b, s, [("t", 2)])
        disconnect(b, s)
        p, _, _ = client(b, "pub", clean=True)
        publish(b, p, "t", b"once", qos=2, pid=1)
        feed(b, p, m.pubrel(1))
        s, present, pk = client(b, "sub")     # queued message sent now
        assert present == 1 and kinds(pk) == ["publish"]
        pid = pk[0]["pid"]
        feed(b, s, m.pubrec(pid))
        assert kinds(s.take()) == ["pubrel"]
        feed(b, s, m.pubcomp(pid))
        assert b.sessions["sub"].inflight == [] and b.sessions["sub"].queue == []
        crash(b)                              # within store_sync_ms
        b = env.boot()
        s, present, pk = client(b, "sub")
        assert present == 1
        # a PUBREL again is fine (the PUBCOMP may be lost); the message is not
        assert [(x["payload"], x["dup"]) for x in pk if x["type"] == "publish"] == [], pk
        assert b.sessions["sub"].queue == []
