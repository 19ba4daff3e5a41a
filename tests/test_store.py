# midge.store: the flash store, driven through a real Broker. Packets are
# built with tools/mqttspec.py and handed to handlers.handle as the
# connection layer does; broker.commit() is called where Connection calls
# it (after each handled chunk, after a detach) and where the server calls
# it (after each tick). A "crash" drops what the store buffered without
# writing it; a restart builds a NEW Broker + Store on the same directory
# and calls restore().
#
# The store directory holds midge.snap (header with the base segment
# number and a CRC, then records) and journal segments midge.<N> (N >= base,
# one file per commit: a header with N, base and a CRC, then records);
# "the store files" below are those, and "the store's size" is their bytes
# together (what Store.size() reports). A damaged file is moved aside to
# <name>.damaged; "the store files" never include those.
#
# Shared test: runs on CPython and MicroPython, so no tempfile/shutil/
# os.path; temporary directories are made under /tmp by hand.
import binascii
import os
import struct
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


HEADER = b"MIDG\x02\x00\x00\x00"       # magic, version 2, 3 zero bytes
SEG_MAGIC = b"MIDJ\x02\x00\x00\x00"
SNAP = "midge.snap"
SNAP_HEAD = 16           # HEADER + u32 base segment number + u32 CRC-32
SEG_HEAD = 20            # SEG_MAGIC + u32 seq + u32 base + u32 CRC-32
R_RETAIN = 1             # record types (docs/STORE.md)
R_SESSION = 2
R_SUB = 4
R_MSG = 6
R_QUEUE = 7
EROFS = 30               # errno numbers (MicroPython's errno module lacks these names)
ENOSPC = 28

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


# --- the store files: midge.snap + journal segments midge.<N> -------------------------

def seg_name(n):
    return "midge.%d" % n


def seg_numbers(d):
    """Numbers of the journal segments in directory d, ascending."""
    found = []
    for name in os.listdir(d):
        num = name[6:]
        if name.startswith("midge.") and num.isdigit() and str(int(num)) == num:
            found.append(int(num))
    found.sort()
    return found


def store_names(d):
    """The store files in d: midge.snap (if any), then the segments in order."""
    names = [SNAP] if exists(d + "/" + SNAP) else []
    for n in seg_numbers(d):
        names.append(seg_name(n))
    return names


def store_files(d):
    """{name: bytes} of every store file in d (a picture of it on flash)."""
    out = {}
    for name in store_names(d):
        out[name] = read_bytes(d + "/" + name)
    return out


def write_files(d, files):
    for name in files:
        write_bytes(d + "/" + name, files[name])


def store_size(d):
    total = 0
    for name in store_names(d):
        total += os.stat(d + "/" + name)[6]
    return total


def store_data(d):
    """Every store file's bytes, snapshot first, segments in order."""
    return b"".join([read_bytes(d + "/" + name) for name in store_names(d)])


def crc32(b):
    return binascii.crc32(b) & 0xFFFFFFFF


def snap_header(base):
    """The version 2 snapshot header, written from docs/STORE.md."""
    h = HEADER + struct.pack(">I", base)
    return h + struct.pack(">I", crc32(h))


def seg_header(seq, base):
    h = SEG_MAGIC + struct.pack(">II", seq, base)
    return h + struct.pack(">I", crc32(h))


def record(rtype, body):
    """One record: u32 length (type + body), type, body, CRC-32 of all before."""
    head = struct.pack(">IB", len(body) + 1, rtype)
    return head + body + struct.pack(">I", crc32(head + body))


def snap_base(d):
    data = read_bytes(d + "/" + SNAP)
    assert data[:8] == HEADER, data[:16]
    assert struct.unpack(">I", data[12:16])[0] == crc32(data[:12]), data[:16]
    return struct.unpack(">I", data[8:12])[0]


def seg_check(d, n):
    """Segment n's header is valid (N = n); returns its base field."""
    data = read_bytes(d + "/" + seg_name(n))
    assert data[:8] == SEG_MAGIC and struct.unpack(">I", data[8:12])[0] == n, data[:20]
    assert struct.unpack(">I", data[16:20])[0] == crc32(data[:16]), data[:20]
    return struct.unpack(">I", data[12:16])[0]


def aside_names(d):
    """Names of the files moved aside in d (<name>.damaged[k]), sorted."""
    names = [n for n in os.listdir(d) if ".damaged" in n]
    names.sort()
    return names


def record_offsets(data, start):
    """Offsets of the records in data[start:]; they must fill it exactly."""
    offs = []
    p = start
    while p < len(data):
        offs.append(p)
        p += 4 + struct.unpack(">I", data[p:p + 4])[0] + 4
    assert p == len(data), (p, len(data))
    return offs


def only_snapshot(d, b=None, others=()):
    """After an open (or a compaction) the directory holds midge.snap alone
    (besides `others`: moved-aside or foreign files), its base is the next
    segment number, and Store.size() agrees."""
    skip = set(others)
    names = [n for n in os.listdir(d) if n not in skip]
    assert names == [SNAP], names
    if b is not None:
        assert snap_base(d) == b.store.seq == b.store.base, (snap_base(d), b.store.seq)
        assert b.store.size() == store_size(d), (b.store.size(), store_size(d))


class Env:
    """One store directory (plus scratch copies), a shared clock, and every
    Store opened on them; `with Env(...) as env:` closes and removes all."""

    def __init__(self, **over):
        self.over = over
        self.clock = Clock()
        self.dirs = []
        self.stores = []
        self.dir = self.newdir()
        self.snap = self.dir + "/" + SNAP

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

    def store(self, directory=None, fs=None, max_record_bytes=4160, **extra):
        cfg = self.cfg(extra)
        st = Store(directory or self.dir, fs=fs, max_bytes=cfg["store_max_bytes"],
                   sync_ms=cfg["store_sync_ms"], max_record_bytes=max_record_bytes)
        self.stores.append(st)
        return cfg, st

    def boot(self, directory=None, fs=None, **extra):
        """A broker started on the directory, as server.py does it."""
        cfg, st = self.store(directory, fs, **extra)
        b = Broker(cfg, self.clock, store=st)
        b.restore()
        return b

    def peek(self):
        """A broker loaded from a copy of the store files (snapshot and every
        segment) as they are on disk right now (a crash at this instant),
        leaving the running store untouched."""
        d = self.newdir()
        write_files(d, store_files(self.dir))
        return self.boot(d)

    def size(self, d=None):
        """Bytes of the store files (midge.snap + every midge.<N>)."""
        return store_size(d or self.dir)

    def segments(self, d=None):
        return seg_numbers(d or self.dir)

    def data(self, d=None):
        return store_data(d or self.dir)

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
    """Handle every packet of one read, then commit (Connection._handle);
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


def seg_size(topic, payload):
    """Bytes of a segment holding one R_RETAIN record."""
    return SEG_HEAD + rec_size(topic, payload)


# --- opening: fresh, version check -------------------------------------------------

def test_missing_dir_and_empty_dir_start_fresh():
    with Env() as env:
        sub = env.newdir() + "/store"     # does not exist yet
        b = env.boot(sub)
        only_snapshot(sub, b)
        assert read_bytes(sub + "/" + SNAP) == snap_header(0)  # base 0
        assert b.sessions == {} and b.retained.count == 0
        st = b.store
        assert st.damaged_records == 0 and st.damaged_files == 0 and st.missing_segments == 0
        # an existing but empty directory also starts fresh
        b = env.boot()
        only_snapshot(env.dir, b)
        assert read_bytes(env.snap) == snap_header(0)
        assert b.sessions == {} and b.store.damaged_records == 0
        # an empty segment (a crash right after creating a commit's file) is
        # no damage and holds nothing; it is removed like any loaded segment
        write_bytes(env.dir + "/" + seg_name(snap_base(env.dir)), b"")
        b = env.boot()
        only_snapshot(env.dir, b)
        assert b.sessions == {} and b.retained.count == 0
        assert b.store.damaged_records == 0
        # and the fresh store works: state written now is there after a restart
        p, _, _ = client(b, "pub", clean=True)
        publish(b, p, "a", b"1", qos=1, retain=True)
        crash(b)
        assert retained(env.boot(), "a") == b"1"


def test_lost_snapshot_journal_replayed_from_segment_headers():
    # midge.snap deleted: the segments still say which snapshot they follow
    # (their base field): they are replayed from there, what applies is
    # loaded, the loss is counted, and nothing unread is deleted
    with Env() as env:
        b = env.boot()
        crash(b)                          # snapshot with base 0, no segments
        b = env.boot()
        p, _, _ = client(b, "pub", clean=True)
        publish(b, p, "r", b"kept", qos=1, retain=True)
        c, _, _ = client(b, "dev")
        subscribe(b, c, [("g", 1)])
        publish(b, p, "g", b"queued", qos=1)   # dev is online: sent, inflight
        crash(b)
        segs = env.segments()
        assert len(segs) >= 3 and segs[0] == snap_base(env.dir), segs
        for n in segs:
            assert seg_check(env.dir, n) == segs[0]
        os.remove(env.snap)
        b = env.boot()
        assert retained(b, "r") == b"kept"
        assert b.sessions["dev"].subs == {"g": 1}
        assert [e[1].payload for e in b.sessions["dev"].inflight] == [b"queued"]
        assert b.store.missing_segments == 1 and b.store.damaged_files == 0
        only_snapshot(env.dir, b)
        crash(b)
        b = env.boot()
        assert retained(b, "r") == b"kept" and b.store.missing_segments == 0
        # segments without a usable header (version 1 ones, or garbage) and
        # no snapshot: none is replayed, and none is deleted
        crash(b)
        os.remove(env.snap)
        write_bytes(env.dir + "/" + seg_name(7), record(R_RETAIN, b"\x00\x01x\x01\x00\x00\x00\x01y"))
        write_bytes(env.dir + "/" + seg_name(9), b"garbage")
        b = env.boot()
        assert b.retained.count == 0 and b.sessions == {}
        assert b.store.damaged_files == 2, b.store.damaged_files
        assert aside_names(env.dir) == ["midge.7.damaged", "midge.9.damaged"]
        assert read_bytes(env.dir + "/midge.9.damaged") == b"garbage"
        only_snapshot(env.dir, b, aside_names(env.dir))


def _restore_error(env):
    cfg, st = env.store()
    b = Broker(cfg, env.clock, store=st)
    try:
        b.restore()
    except StoreError as e:
        return str(e)
    return None


def test_foreign_magic_with_valid_crc_is_store_error():
    # a header of this layout whose CRC matches but whose magic is not
    # midge's: some other program's file, left alone
    with Env() as env:
        h = b"MQTT\x02\x00\x00\x00" + struct.pack(">I", 0)
        data = h + struct.pack(">I", crc32(h)) + b"\x00" * 20
        write_bytes(env.snap, data)
        text = _restore_error(env)
        assert text is not None and "magic" in text and env.snap in text, text
        assert read_bytes(env.snap) == data
        assert os.listdir(env.dir) == [SNAP]


def test_garbage_snapshot_is_moved_aside_and_the_store_rebuilt():
    # wrong magic and wrong CRC: not a header at all; the file is kept as
    # midge.snap.damaged and the store is rebuilt from what can be read
    with Env() as env:
        data = b"MQTT\x01\x00\x00\x00" + b"\x00" * 20
        write_bytes(env.snap, data)
        b = env.boot()
        assert b.sessions == {} and b.retained.count == 0
        assert b.store.damaged_files == 1
        assert read_bytes(env.snap + ".damaged") == data
        only_snapshot(env.dir, b, ["midge.snap.damaged"])
        crash(b)
        b = env.boot()
        assert b.store.damaged_files == 0 and b.store.damaged_records == 0


def test_newer_version_is_store_error():
    # a valid header (CRC matches) of a version this midge does not know: a
    # newer midge's store; start-up stops and nothing is touched
    with Env() as env:
        b = env.boot()
        p, _, _ = client(b, "pub", clean=True)
        publish(b, p, "a", b"1", qos=1, retain=True)
        crash(b)
        files = store_files(env.dir)
        assert len(files) == 2, list(files.keys())   # the snapshot and one segment
        for name, magic, size in ((SNAP, HEADER, SNAP_HEAD), (seg_name(env.segments()[0]), SEG_MAGIC, SEG_HEAD)):
            data = bytearray(files[name])
            assert bytes(data[:8]) == magic
            data[4] = 3
            data[size - 4:size] = struct.pack(">I", crc32(bytes(data[:size - 4])))
            write_files(env.dir, files)
            write_bytes(env.dir + "/" + name, bytes(data))
            text = _restore_error(env)
            assert text is not None, name
            assert "version 3" in text and "version" in text and (env.dir + "/" + name) in text, text
            # nothing is touched: not the snapshot, not its journal, no midge.tmp
            now = store_files(env.dir)
            assert now[name] == bytes(data)
            del now[name]
            assert [now[k] == files[k] for k in now] == [True]
            names = os.listdir(env.dir)
            names.sort()
            expect = list(files.keys())
            expect.sort()
            assert names == expect, names


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
        assert retained(b, "$SYS/broker/version") is None  # published, held nowhere (sys_topics.match)
        env.settle(b)
        crash(b)
        b = env.boot()
        assert retained(b, "$SYS/broker/version") is None
        assert b.retained.total == 0


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
        assert b.flow.queued_total == 4
        assert b.flow.queued_bytes_total == sum(len(pl) + 3 for pl, q in expect)
        s, present, pk = client(b, "sub")
        assert present == 1
        pubs = [x for x in pk if x["type"] == "publish"]
        assert [(x["topic"], x["payload"], x["qos"], x["dup"]) for x in pubs] == [
            ("q/1", b"m1", 1, 0), ("q/2", b"m2", 2, 0), ("q/3", b"m3", 1, 0), ("q/4", b"m4", 2, 0)]
        assert b.flow.queued_total == 0


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
        assert st.conn is None and len(st.queue) == 0
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
        assert len(st.inflight) == 0


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
        assert len(b.sessions["sub"].inflight) == 0
        disconnect(b, s)
        env.settle(b)
        crash(b)

        b = env.boot()
        assert len(b.sessions["sub"].inflight) == 0
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
        assert len(b.sessions["pub"].in_qos2) == 0
        env.settle(b)
        crash(b)

        b = env.boot()
        assert len(b.sessions["pub"].in_qos2) == 0
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
        segs0 = env.segments()
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
        assert env.segments() == segs0  # not even an empty commit
        data = env.data()
        assert b"clean-client-7f3a" not in data and b"clean-pub-9c1d" not in data
        crash(b)
        b = env.boot()
        assert b.sessions == {} and b.subs.count == 0 and b.flow.queued_total == 0


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
        assert b.subs.count == 0 and b.flow.queued_total == 0
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
        segs0 = env.segments()
        feed(b, s, m.subscribe(1, [("t", 1)]))
        assert kinds(s.take()) == ["suback"]
        assert env.size() > size0           # session + subscription behind the SUBACK
        assert len(env.segments()) == len(segs0) + 1, (segs0, env.segments())
        assert env.size() == b.store.size()
        assert env.peek().sessions["sub"].subs == {"t": 1}
        disconnect(b, s)

        p, _, _ = client(b, "pub", clean=True)
        size1 = env.size()
        segs1 = env.segments()
        data = m.publish("t", b"must-survive", 1, False, False, 3)
        for first, start, end in frames(data):
            handlers.handle(b, p, first, data, start, end)
        # the PUBACK is queued on the connection but not written yet...
        assert [(x["type"], x["pid"]) for x in m.parse_all(p.out)[0]] == [("puback", 3)]
        assert env.size() == size1          # ...and neither is the record
        assert env.segments() == segs1
        b.commit()                          # the connection commits before writing replies
        assert env.size() > size1
        segs = env.segments()
        assert segs[:-1] == segs1 and segs[-1] > segs1[-1], (segs1, segs)  # one new segment
        assert b"must-survive" in read_bytes(env.dir + "/" + seg_name(segs[-1]))
        assert env.size() == b.store.size()
        assert queue_of(env.peek(), "sub") == [(b"must-survive", 1)]


def test_qos0_retained_waits_for_sync_ms_and_coalesces():
    with Env(store_sync_ms=1000) as env:
        b = env.boot()
        p, _, _ = client(b, "pub", clean=True)
        size0 = env.size()
        segs0 = env.segments()
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
        assert env.segments() == segs0
        assert retained(env.peek(), "sensor") is None
        env.clock.advance(1)                 # store_sync_ms reached
        b.tick()
        b.commit()
        # three updates, one commit of one record: the last value
        segs = env.segments()
        assert len(segs) == len(segs0) + 1 and segs[:-1] == segs0, (segs0, segs)
        seg = read_bytes(env.dir + "/" + seg_name(segs[-1]))
        assert len(seg) == seg_size("sensor", b"v3-last"), seg
        assert env.size() - size0 == seg_size("sensor", b"v3-last"), (env.size(), size0)
        data = env.data()
        assert b"v3-last" in data and b"v1" not in data and b"v2" not in data
        assert retained(env.peek(), "sensor") == b"v3-last"
        # nothing pending: later commits write nothing
        env.clock.advance(5000)
        b.tick()
        b.commit()
        assert env.size() - size0 == seg_size("sensor", b"v3-last")
        assert env.segments() == segs


def test_ack_with_nothing_to_write_does_not_flush_later_qos0_retained():
    # A SUBSCRIBE or QoS 1 PUBLISH of a clean session asks for an urgent
    # commit but buffers no record; that request must not make the next
    # (non-urgent) QoS 0 retained update skip its store_sync_ms window.
    with Env(store_sync_ms=1000) as env:
        b = env.boot()
        p, _, _ = client(b, "pub", clean=True)
        publish(b, p, "flag", b"on", qos=1, retain=True)   # urgent, written
        size0 = env.size()
        segs0 = env.segments()
        feed(b, p, m.subscribe(2, [("nothing/here", 1)]))  # urgent, nothing to write
        publish(b, p, "nobody/listens", b"x", qos=1)       # urgent, nothing to write
        assert env.size() == size0
        assert env.segments() == segs0                     # no empty segment either
        publish(b, p, "sensor", b"v1", qos=0, retain=True)
        publish(b, p, "sensor", b"v2", qos=0, retain=True)
        assert env.size() == size0, "QoS 0 retained update written before store_sync_ms"
        assert env.segments() == segs0
        env.settle(b)
        assert env.size() - size0 == seg_size("sensor", b"v2")
        assert len(env.segments()) == len(segs0) + 1


# --- damage --------------------------------------------------------------------------------
#
# What a crash leaves (a torn last write of the newest segment) is dropped
# and counted; every other damage is counted, the file moved aside to
# <name>.damaged byte for byte, and everything else that can be read is
# loaded.

def _two_retained(env):
    """A store whose journal ends in two segments, R_RETAIN a then R_RETAIN
    b, after a persistent session written before them. Returns (the store
    files, the name of the last segment (b alone), the store's size before
    it)."""
    b = env.boot()
    c, _, _ = client(b, "dev")
    subscribe(b, c, [("x/#", 1)])
    disconnect(b, c)
    p, _, _ = client(b, "pub", clean=True)
    publish(b, p, "a", b"first", qos=1, retain=True)
    last = env.size()
    segs = env.segments()
    publish(b, p, "b", b"second", qos=1, retain=True)
    crash(b)
    files = store_files(env.dir)
    now = env.segments()
    assert now[:-1] == segs and now[-1] == segs[-1] + 1, (segs, now)
    name = seg_name(now[-1])
    assert len(files[name]) == seg_size("b", b"second")
    assert env.size() - last == seg_size("b", b"second")
    return files, name, last


def _check_state_before_last(b):
    assert retained(b, "a") == b"first"
    assert retained(b, "b") is None
    assert b.sessions["dev"].subs == {"x/#": 1}


def test_damaged_last_segment_is_moved_aside():
    # a flipped byte anywhere in the newest segment: not what a crash leaves
    # (unless the length now runs past the end of the file), so the file is
    # kept aside, byte for byte
    with Env() as env:
        files, name, last = _two_retained(env)
        seg = files[name]
        for i in range(len(seg)):
            d = env.newdir()
            bad = bytearray(seg)
            bad[i] ^= 0x5A
            write_files(d, files)
            write_bytes(d + "/" + name, bytes(bad))
            b = env.boot(d)
            st = b.store
            _check_state_before_last(b)
            if exists(d + "/" + name + ".damaged"):
                assert st.damaged_files == 1, i
                assert read_bytes(d + "/" + name + ".damaged") == bytes(bad), i
                assert st.damaged_records == (0 if i < SEG_HEAD else 1), (i, st.damaged_records)
            else:   # the low byte of the length: runs past the end, a torn write
                assert i == SEG_HEAD + 3 and st.damaged_records == 1 and st.damaged_files == 0, i
            crash(b)
            aside = aside_names(d)
            only_snapshot(d, b, aside)          # rewritten without the damage
            assert store_size(d) <= last, (i, store_size(d), last)
            b = env.boot(d)
            assert b.store.damaged_records == 0 and b.store.damaged_files == 0, i
            _check_state_before_last(b)
            assert aside_names(d) == aside      # never read again, never deleted
            crash(b)
            rmtree(d)
        # the undamaged store loads completely
        b = env.boot()
        assert b.store.damaged_records == 0
        assert retained(b, "b") == b"second" and retained(b, "a") == b"first"


def test_torn_write_at_every_offset_of_last_record():
    # what a crash during a commit leaves: the newest segment cut anywhere
    # (in its header or its record) is dropped and counted, not kept aside
    with Env() as env:
        files, name, last = _two_retained(env)
        seg = files[name]
        for cut in range(len(seg)):         # 0: the file was created, nothing written
            d = env.newdir()
            write_files(d, files)
            write_bytes(d + "/" + name, seg[:cut])
            b = env.boot(d)
            # a whole header and no record is no damage either
            assert b.store.damaged_records == (0 if cut in (0, SEG_HEAD) else 1), cut
            assert b.store.damaged_files == 0 and b.store.missing_segments == 0, cut
            _check_state_before_last(b)
            crash(b)
            only_snapshot(d, b)
            b = env.boot(d)
            assert b.store.damaged_records == 0, cut
            _check_state_before_last(b)
            crash(b)
            rmtree(d)


def _three_in_snapshot(env):
    """A snapshot of RETAIN a | SESSION dev | SUB x/# and a journal
    segment after it (RETAIN b). Returns (the store files, offset of the
    snapshot's last record)."""
    b = env.boot()
    c, _, _ = client(b, "dev")
    subscribe(b, c, [("x/#", 1)])
    disconnect(b, c)
    p, _, _ = client(b, "pub", clean=True)
    publish(b, p, "a", b"first", qos=1, retain=True)
    crash(b)
    b = env.boot()                          # the open compacts all of it into the snapshot
    only_snapshot(env.dir, b)
    p, _, _ = client(b, "pub", clean=True)
    publish(b, p, "b", b"second", qos=1, retain=True)
    crash(b)
    files = store_files(env.dir)
    assert len(files) == 2, list(files.keys())
    snap = files[SNAP]
    offs = record_offsets(snap, SNAP_HEAD)
    assert [snap[o + 4] for o in offs] == [R_RETAIN, R_SESSION, R_SUB], [snap[o + 4] for o in offs]
    assert b"x/#" in snap[offs[-1]:]
    return files, offs[-1]


def test_damaged_snapshot_record_is_counted_and_the_journal_still_applies():
    # bit rot in the snapshot's last record: the state before it is kept,
    # the journal after it is applied, the snapshot is kept aside
    with Env() as env:
        files, last = _three_in_snapshot(env)
        snap = files[SNAP]

        def check(b, with_sub):
            assert retained(b, "a") == b"first"
            assert b.sessions["dev"].subs == ({"x/#": 1} if with_sub else {})
            assert retained(b, "b") == b"second"
            assert b.retained.count == 2 and list(b.sessions.keys()) == ["dev"]

        damaged = []
        for i in range(last, len(snap)):    # flip every byte of the last record
            bad = bytearray(snap)
            bad[i] ^= 0x5A
            damaged.append(bytes(bad))
        for cut in range(last + 1, len(snap)):  # a snapshot cut short inside its last record
            damaged.append(snap[:cut])
        for bad in damaged:
            d = env.newdir()
            write_files(d, files)
            write_bytes(d + "/" + SNAP, bad)
            b = env.boot(d)
            check(b, False)
            assert b.store.damaged_records >= 1 and b.store.damaged_files == 1
            assert read_bytes(d + "/" + SNAP + ".damaged") == bad
            crash(b)
            only_snapshot(d, b, ["midge.snap.damaged"])
            b = env.boot(d)
            check(b, False)
            assert b.store.damaged_records == 0 and b.store.damaged_files == 0
            crash(b)
            rmtree(d)
        # cut at the record boundary: no damage at all
        d = env.newdir()
        write_files(d, files)
        write_bytes(d + "/" + SNAP, snap[:last])
        b = env.boot(d)
        check(b, False)
        assert b.store.damaged_records == 0 and b.store.damaged_files == 0
        only_snapshot(d, b)
        # the undamaged snapshot + journal load completely
        b = env.boot()
        check(b, True)


def test_damaged_middle_segment_is_moved_aside_and_later_ones_load():
    with Env() as env:
        b = env.boot()
        c, _, _ = client(b, "dev")
        subscribe(b, c, [("x/#", 1)])
        disconnect(b, c)
        p, _, _ = client(b, "pub", clean=True)
        publish(b, p, "a", b"first", qos=1, retain=True)
        n = env.segments()[-1] + 1          # the segment that will be damaged
        publish(b, p, "b", b"second", qos=1, retain=True)
        publish(b, p, "c", b"third", qos=1, retain=True)
        publish(b, p, "d", b"fourth", qos=1, retain=True)
        crash(b)
        assert env.segments()[-3:] == [n, n + 1, n + 2], (n, env.segments())
        files = store_files(env.dir)
        seg = files[seg_name(n)]
        assert len(seg) == seg_size("b", b"second")

        def check(b):
            _check_state_before_last(b)
            assert retained(b, "c") == b"third" and retained(b, "d") == b"fourth"
            assert b.retained.count == 3

        damaged = []
        for i in range(len(seg)):           # a flipped byte anywhere in segment n
            bad = bytearray(seg)
            bad[i] ^= 0x5A
            damaged.append(bytes(bad))
        for cut in range(1, len(seg)):      # or segment n cut (not the newest: damage)
            if cut != SEG_HEAD:             # (a header alone reads as an empty commit)
                damaged.append(seg[:cut])
        for bad in damaged:
            d = env.newdir()
            write_files(d, files)
            write_bytes(d + "/" + seg_name(n), bad)
            b = env.boot(d)
            check(b)
            assert b.store.damaged_files == 1 and b.store.missing_segments == 0
            assert read_bytes(d + "/" + seg_name(n) + ".damaged") == bad
            crash(b)
            only_snapshot(d, b, [seg_name(n) + ".damaged"])
            b = env.boot(d)
            assert b.store.damaged_records == 0 and b.store.damaged_files == 0
            check(b)
            # new commits reuse no old name or content
            p, _, _ = client(b, "pub", clean=True)
            publish(b, p, "e", b"fifth", qos=1, retain=True)
            publish(b, p, "f", b"sixth", qos=1, retain=True)
            crash(b)
            b = env.boot(d)
            assert b.store.damaged_records == 0 and b.store.damaged_files == 0
            _check_state_before_last(b)
            assert retained(b, "c") == b"third" and retained(b, "d") == b"fourth"
            assert retained(b, "e") == b"fifth" and retained(b, "f") == b"sixth"
            assert read_bytes(d + "/" + seg_name(n) + ".damaged") == bad
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
        counts = [len(env.segments())]
        payload = b""
        for i in range(60):
            payload = (b"%03d" % i) * 33            # 99 bytes
            publish(b, p, "sensor", payload, qos=0, retain=True)
            sizes.append(env.size())
            counts.append(len(env.segments()))
            assert sizes[-1] == b.store.size(), (i, sizes[-1], b.store.size())
            assert "midge.tmp" not in os.listdir(env.dir)
        st = b.store
        assert st.compactions > 0
        drops = [i for i in range(1, len(sizes)) if sizes[i] < sizes[i - 1]]
        assert drops, sizes                          # compaction shrank the store
        for i in drops:
            assert counts[i] == 0, (i, counts)       # ... into the snapshot alone
        assert max(counts) <= 64, counts
        assert max(sizes) <= 2048 + rec_size("sensor", payload), sizes
        assert env.size() <= 2048
        names = os.listdir(env.dir)
        assert "midge.tmp" not in names, names
        # nothing but the snapshot and the segments after its base
        assert env.segments() == list(range(snap_base(env.dir), st.seq)), (env.segments(), st.seq)
        assert len(names) == 1 + len(env.segments()), names
        crash(b)

        b = env.boot()
        assert retained(b, "sensor") == payload
        assert retained(b, "other") == b"o"
        assert b.retained.count == 2
        assert b.sessions["keep"].subs == {"k/#": 1, "other": 0}
        assert queue_of(b, "keep") == [(b"q1", 1), (b"q2", 1)]
        assert b.store.damaged_records == 0
        assert "midge.tmp" not in os.listdir(env.dir)
        only_snapshot(env.dir, b)


def test_many_small_commits_keep_the_journal_bounded():
    # the default (large) store_max_bytes: tiny commits alone must not grow
    # the number of segment files without end
    most = 256   # store.py _MAX_SEGMENTS (a const, not importable on MicroPython)
    with Env() as env:
        b = env.boot()
        p, _, _ = client(b, "pub", clean=True)
        counts = []
        for i in range(600):
            publish(b, p, "s", b"%d" % (i % 10), qos=1, retain=True)   # one commit each
            counts.append(len(env.segments()))
            assert env.size() == b.store.size()
        assert b.store.compactions > 0
        assert max(counts) <= most, max(counts)
        assert env.size() < 8192, env.size()
        crash(b)
        b = env.boot()
        assert retained(b, "s") == b"9" and b.retained.count == 1
        assert b.store.damaged_records == 0
        only_snapshot(env.dir, b)


def test_crash_after_snapshot_rename_leaves_old_segments_below_base():
    # compact() renames the new snapshot over the old one, then deletes the
    # segments it covers (lowest first); a crash in between leaves some of
    # them, numbered below the new base: they are not read, and are removed
    with Env() as env:
        b = env.boot()
        s, _, _ = client(b, "sub")
        subscribe(b, s, [("q/#", 1)])
        disconnect(b, s)
        p, _, _ = client(b, "pub", clean=True)
        publish(b, p, "q/1", b"m1", qos=1)
        publish(b, p, "r", b"old", qos=1, retain=True)
        publish(b, p, "gone", b"x", qos=1, retain=True)
        publish(b, p, "gone", b"", qos=1, retain=True)  # cleared again
        crash(b)
        old = store_files(env.dir)
        old_segs = env.segments()
        assert len(old_segs) >= 4, old_segs
        b = env.boot()                      # its open compacts
        only_snapshot(env.dir, b)
        base = snap_base(env.dir)
        assert base == old_segs[-1] + 1, (base, old_segs)
        after_rename = store_files(env.dir)
        p, _, _ = client(b, "pub", clean=True)
        publish(b, p, "r", b"new", qos=1, retain=True)
        publish(b, p, "q/2", b"m2", qos=1)
        c, _, _ = client(b, "sub2")
        subscribe(b, c, [("z", 1)])
        disconnect(b, c)
        crash(b)
        later = store_files(env.dir)        # snapshot + journal written after it
        assert len(later) > 1

        def check(b, with_later):
            assert b.store.damaged_records == 0
            assert retained(b, "gone") is None
            if with_later:
                assert retained(b, "r") == b"new"
                assert queue_of(b, "sub") == [(b"m1", 1), (b"m2", 1)], queue_of(b, "sub")
                assert b.sessions["sub2"].subs == {"z": 1}
            else:
                assert retained(b, "r") == b"old"
                assert queue_of(b, "sub") == [(b"m1", 1)], queue_of(b, "sub")
                assert "sub2" not in b.sessions
            assert b.retained.count == 1
            assert b.sessions["sub"].subs == {"q/#": 1}

        for now in (after_rename, later):
            for k in range(len(old_segs)):  # old_segs[:k] were deleted before the crash
                d = env.newdir()
                write_files(d, now)
                for n in old_segs[k:]:
                    write_bytes(d + "/" + seg_name(n), old[seg_name(n)])
                b = env.boot(d)
                check(b, now is later)
                crash(b)
                only_snapshot(d, b)         # the leftovers are gone
                b = env.boot(d)
                check(b, now is later)
                crash(b)
                rmtree(d)


def test_leftover_tmp_ignored_and_removed_on_open():
    with Env() as env:
        # a complete but never renamed snapshot of OTHER state
        od = env.newdir()
        b = env.boot(od)
        p, _, _ = client(b, "pub", clean=True)
        publish(b, p, "from-tmp", b"must-not-load", qos=1, retain=True)
        crash(b)
        env.boot(od)                        # its open compacts: the record is in midge.snap
        other = read_bytes(od + "/" + SNAP)
        assert b"must-not-load" in other
        b = env.boot()
        c, _, _ = client(b, "dev")
        subscribe(b, c, [("t", 1)])
        p, _, _ = client(b, "pub", clean=True)
        publish(b, p, "real", b"kept", qos=1, retain=True)
        crash(b)
        assert env.segments()               # a snapshot and its journal
        write_bytes(env.dir + "/midge.tmp", other)
        b = env.boot()
        assert "midge.tmp" not in os.listdir(env.dir)
        assert retained(b, "real") == b"kept"
        assert retained(b, "from-tmp") is None
        assert b.sessions["dev"].subs == {"t": 1}
        only_snapshot(env.dir, b)
        crash(b)
        # a torn (half-written) tmp as well
        write_bytes(env.dir + "/midge.tmp", other[:13])
        b = env.boot()
        assert "midge.tmp" not in os.listdir(env.dir)
        assert retained(b, "real") == b"kept" and b.store.damaged_records == 0
        only_snapshot(env.dir, b)
        crash(b)
        # a tmp without a snapshot: nothing is loaded from it, and it is removed
        os.remove(env.snap)
        write_bytes(env.dir + "/midge.tmp", other)
        b = env.boot()
        assert "midge.tmp" not in os.listdir(env.dir)
        assert retained(b, "from-tmp") is None and b.sessions == {}
        only_snapshot(env.dir, b)
        assert read_bytes(env.snap) == snap_header(0)


# --- caps ---------------------------------------------------------------------------------------

def test_store_max_bytes_drops_the_offline_session_holding_the_most():
    # round-robin publishes keep a's queue the largest (or tied: then the
    # least recently seen goes, a again)
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
        assert b.flow.queued_total == len(b.sessions["b"].queue) + len(b.sessions["c"].queue)
        qb = queue_of(b, "b")
        qc = queue_of(b, "c")
        assert qb and qc
        crash(b)
        b = env.boot()
        names = list(b.sessions.keys())
        names.sort()
        assert names == ["b", "c", "online"], names
        assert queue_of(b, "b") == qb and queue_of(b, "c") == qc


def test_store_max_bytes_drops_the_hoarder_not_an_older_small_session():
    with Env(store_max_bytes=4096) as env:
        b = env.boot()
        v, _, _ = client(b, "victim")        # seen least recently, holds a few
        subscribe(b, v, [("v", 1)])
        disconnect(b, v)
        env.clock.advance(1000)
        h, _, _ = client(b, "hoarder")
        subscribe(b, h, [("#", 1)])
        disconnect(b, h)
        p, _, _ = client(b, "pub", clean=True)
        publish(b, p, "v", b"owed", qos=1)
        n = 0
        while b.counters["store_evicted"] == 0 and n < 60:
            publish(b, p, "noise", (b"%d" % n) * 150, qos=1)
            n += 1
        assert b.counters["store_evicted"] == 1
        assert "hoarder" not in b.sessions and queue_of(b, "victim") == [(b"owed", 1)]


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
        assert len(b.sessions["pub"].in_qos2) == 0, b.sessions["pub"].in_qos2
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
        assert len(b.sessions["sub"].inflight) == 0 and len(b.sessions["sub"].queue) == 0
        crash(b)                              # within store_sync_ms
        b = env.boot()
        s, present, pk = client(b, "sub")
        assert present == 1
        # a PUBREL again is fine (the PUBCOMP may be lost); the message is not
        assert [(x["payload"], x["dup"]) for x in pk if x["type"] == "publish"] == [], pk
        assert len(b.sessions["sub"].queue) == 0


# --- a failing flash ---------------------------------------------------------------------

class FailingFS:
    """The platform filesystem, with writes refused while `fail` is set: a
    full (ENOSPC) or read-only (EROFS) flash. Like MicroPython's, the
    OSError carries only the errno number. A refused remove is silent, as
    OSFS.remove is."""

    def __init__(self, err=ENOSPC):
        from midge.compat import OSFS
        self.real = OSFS()
        self.err = err
        self.fail = False

    def open(self, path, mode):
        if self.fail and ("w" in mode or "a" in mode or "+" in mode):
            raise OSError(self.err)
        return self.real.open(path, mode)

    def rename(self, src, dst):
        if self.fail:
            raise OSError(self.err)
        self.real.rename(src, dst)

    def remove(self, path):
        if not self.fail:
            self.real.remove(path)

    def mkdir(self, path):
        if self.fail:
            raise OSError(self.err)
        self.real.mkdir(path)

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_failed_write_raises_before_the_ack_and_is_repaired_by_compaction():
    from midge.store import StoreWriteError
    with Env() as env:
        cfg = env.cfg()
        fs = FailingFS()
        b = env.boot(fs=fs)
        st = b.store
        p, _, _ = client(b, "pub", clean=True)
        publish(b, p, "a", b"1", qos=1, retain=True)
        fs.fail = True
        conn = p
        feed_err = None
        m_bytes = m.publish("b", b"2", 1, True, False, 2)
        for first, start, end in frames(m_bytes):
            handlers.handle(b, conn, first, m_bytes, start, end)
        try:
            b.commit()
        except StoreWriteError as e:
            feed_err = e
        assert feed_err is not None        # the PUBACK queued for "b" must not be sent
        assert st.errors == 1
        assert retained(b, "b") == b"2"    # memory keeps the state
        # a QoS 0 update while the flash still fails: no acknowledgement, no error raised
        publish(b, p, "c", b"3", qos=0, retain=True)
        env.clock.advance(cfg["store_sync_ms"])
        b.tick()
        try:
            b.commit()
        except StoreWriteError:
            assert False, "nothing acknowledged waited on that write"
        assert st.errors >= 2
        fs.fail = False
        publish(b, p, "d", b"4", qos=1, retain=True)  # the next commit rewrites the store
        crash(b)
        b2 = env.boot()
        for topic, value in (("a", b"1"), ("b", b"2"), ("c", b"3"), ("d", b"4")):
            assert retained(b2, topic) == value, topic
        assert b2.store.damaged_records == 0


def test_connection_does_not_send_an_ack_the_store_could_not_write():
    # through midge.connection: the PUBACK of a publish whose record failed
    # to write never reaches the client, and the connection is closed
    from midge.connection import Connection
    from test_connection import FakeReader, FakeWriter, run
    with Env() as env:
        fs = FailingFS()
        b = env.boot(fs=fs)
        st = b.store
        fs.fail = True
        data = [m.connect("pub", clean=True, keepalive=0) + m.publish("t", b"x", 1, True, False, 7)]
        w = FakeWriter()
        run(Connection(b, FakeReader(data), w).run())
        types = [p["type"] for p in w.packets()]
        assert "puback" not in types, types
        assert st.errors >= 1


# --- integrity: format version 2 ------------------------------------------------------------
#
# Each case checks that nothing readable is lost (the sessions, queued and
# retained messages loaded are counted) and that no file the store could
# not read was deleted (it is moved aside to <name>.damaged, or, when it
# is not the store's own, left as it was).

def seg_records(data, start=SEG_HEAD):
    """[(type, body)] of the records in data[start:] (they must fill it)."""
    out = []
    for o in record_offsets(data, start):
        n = struct.unpack(">I", data[o:o + 4])[0]
        out.append((data[o + 4], data[o + 5:o + 4 + n]))
    return out


def s16(b):
    return struct.pack(">H", len(b)) + b


def b32(b):
    return struct.pack(">I", len(b)) + b


def retain_body(topic, qos, payload):
    return s16(topic) + bytes((qos,)) + b32(payload)


RETAINED = ["val-%02d" % i for i in range(20)]   # payloads of r/00 .. r/19
QUEUED = ["msg-%02d" % i for i in range(12)]     # payloads queued for "dev" (q/00 ..)


def _fill(env, n_retained=20, n_queued=12):
    """A store with a persistent session "dev" (subscribed to q/#, offline)
    that has n_queued QoS 1 messages queued, and n_retained retained
    messages; every PUBLISH is its own commit (segment), interleaved."""
    b = env.boot()
    c, _, _ = client(b, "dev")
    subscribe(b, c, [("q/#", 1)])
    disconnect(b, c)
    p, _, _ = client(b, "pub", clean=True)
    for i in range(max(n_retained, n_queued)):
        if i < n_retained:
            publish(b, p, "r/%02d" % i, RETAINED[i].encode(), qos=1, retain=True)
        if i < n_queued:
            publish(b, p, "q/%02d" % i, QUEUED[i].encode(), qos=1)
    return b


def _content(b):
    """(retained payloads sorted, queued payloads of "dev" in order, or None
    without the session) as str."""
    found = []
    b.retained.all(found)
    vals = [m.payload.decode() for m in found]
    vals.sort()
    s = b.sessions.get("dev")
    q = None if s is None else [msg.payload.decode() for msg, qos in s.queue]
    return vals, q


def _boot_st(env, d, **kw):
    """(broker, store) booted on directory d."""
    b = env.boot(d, **kw)
    return b, b.store


def test_missing_middle_segment_keeps_every_later_record():
    # one journal file deleted: what it held is lost, counted as a gap;
    # everything in later files that can apply is loaded
    with Env() as env:
        b = _fill(env)
        crash(b)
        files = store_files(env.dir)
        segs = env.segments()
        assert len(segs) >= 32, segs
        for k in segs[:-1]:             # the newest missing is just an older store
            d = env.newdir()
            name = seg_name(k)
            gone = files[name]
            write_files(d, files)
            os.remove(d + "/" + name)
            b, st = _boot_st(env, d)
            vals, q = _content(b)
            lost_session = any(t == R_SESSION for t, body in seg_records(gone))
            want_r = [v for v in RETAINED if v.encode() not in gone]
            want_r.sort()
            assert vals == want_r, (k, vals)
            if lost_session:
                # the later records of "dev" refer to it: each is counted
                assert q is None and st.damaged_records > 0, (k, q)
            else:
                assert q == [v for v in QUEUED if v.encode() not in gone], (k, q)
                assert st.damaged_records == 0, (k, st.damaged_records)
            assert st.missing_segments == 1 and st.damaged_files == 0, k
            crash(b)
            only_snapshot(d, b)          # every segment was read, then compacted
            b, st = _boot_st(env, d)
            assert _content(b) == (vals, q) and st.missing_segments == 0, k
            crash(b)
            rmtree(d)
        b = env.boot()
        assert _content(b) == (sorted(RETAINED), QUEUED)


def _snap_and_journal(env):
    """_fill compacted into the snapshot, then two more commits (a retained
    update, a queued message) in the journal. Returns the store files."""
    b = _fill(env, 5, 4)
    crash(b)
    b = env.boot()                          # compacts: all of it in midge.snap
    p, _, _ = client(b, "pub", clean=True)
    publish(b, p, "r/%02d" % 5, RETAINED[5].encode(), qos=1, retain=True)
    publish(b, p, "q/%02d" % 4, QUEUED[4].encode(), qos=1)
    crash(b)
    files = store_files(env.dir)
    assert len(files) == 3, list(files.keys())
    return files


def test_flipped_byte_in_snapshot_header():
    # each of its 16 bytes, the base field included: the header is damage
    # (not a foreign version), its records are read all the same, base comes
    # from the segment headers, and the file is kept aside
    with Env() as env:
        files = _snap_and_journal(env)
        full = (RETAINED[:6], QUEUED[:5])
        cases = []
        for i in range(SNAP_HEAD):
            for mask in (0x01, 0x5A, 0xFF):
                cases.append((i, mask))
        cases.append((4, 0x03))             # version 2 -> 1: not read as a version 1 store
        for i, mask in cases:
            d = env.newdir()
            bad = bytearray(files[SNAP])
            bad[i] ^= mask
            write_files(d, files)
            write_bytes(d + "/" + SNAP, bytes(bad))
            b, st = _boot_st(env, d)
            assert _content(b) == full, (i, mask, _content(b))
            assert st.damaged_files == 1 and st.damaged_records == 0, (i, mask)
            assert read_bytes(d + "/midge.snap.damaged") == bytes(bad)
            crash(b)
            only_snapshot(d, b, ["midge.snap.damaged"])
            b, st = _boot_st(env, d)
            assert _content(b) == full and st.damaged_files == 0
            crash(b)
            rmtree(d)
        # a damaged header and no journal at all: the records still load
        want = (RETAINED[:5], QUEUED[:4])
        for i in range(SNAP_HEAD):
            d = env.newdir()
            bad = bytearray(files[SNAP])
            bad[i] ^= 0x5A
            write_bytes(d + "/" + SNAP, bytes(bad))
            b, st = _boot_st(env, d)
            assert _content(b) == want, (i, _content(b))
            assert st.damaged_files == 1
            crash(b)
            only_snapshot(d, b, ["midge.snap.damaged"])
            rmtree(d)


def test_flipped_byte_in_segment_header():
    # a damaged header (or one that names another segment): the file is
    # kept aside unread; every other file loads
    with Env() as env:
        files = _snap_and_journal(env)
        segs = [n for n in env.segments()]
        assert len(segs) == 2
        for n, lost in ((segs[0], (RETAINED[:5], QUEUED[:5])), (segs[1], (RETAINED[:6], QUEUED[:4]))):
            name = seg_name(n)
            variants = []
            for i in range(SEG_HEAD):
                bad = bytearray(files[name])
                bad[i] ^= 0x5A
                variants.append(bytes(bad))
            other = seg_name(segs[1] if n == segs[0] else segs[0])
            variants.append(files[other])   # a valid header of another segment
            for bad in variants:
                d = env.newdir()
                write_files(d, files)
                write_bytes(d + "/" + name, bad)
                b, st = _boot_st(env, d)
                assert _content(b) == lost, (n, _content(b))
                assert st.damaged_files == 1 and st.missing_segments == 0
                assert read_bytes(d + "/" + name + ".damaged") == bad
                crash(b)
                only_snapshot(d, b, [name + ".damaged"])
                rmtree(d)


def test_giant_record_length_is_damage_not_an_allocation():
    # a length field of 200 MB (or 4 GB) must be refused before anything
    # is allocated for it (the MicroPython run has a 2 MB heap)
    with Env() as env:
        files = _snap_and_journal(env)
        segs = env.segments()
        base = snap_base(env.dir)
        full = (RETAINED[:6], QUEUED[:5])
        for giant in (200 * 1000 * 1000, 0xFFFFFFFF, 4160 + 1):
            head = struct.pack(">IB", giant, R_RETAIN) + b"x" * 40
            # as the newest segment: damage, not a torn write (over the cap)
            d = env.newdir()
            write_files(d, files)
            n = segs[-1] + 1
            write_bytes(d + "/" + seg_name(n), seg_header(n, base) + head)
            b, st = _boot_st(env, d)
            assert _content(b) == full and st.damaged_records == 1 and st.damaged_files == 1
            assert exists(d + "/" + seg_name(n) + ".damaged")
            crash(b)
            rmtree(d)
            # after the snapshot's records (they and the journal load), and
            # in the middle of a segment (the records before it load)
            for name in (SNAP, seg_name(segs[0])):
                d = env.newdir()
                write_files(d, files)
                write_bytes(d + "/" + name, files[name] + head)
                b, st = _boot_st(env, d)
                assert _content(b) == full and st.damaged_records == 1 and st.damaged_files == 1, name
                crash(b)
                rmtree(d)
        # the cap is max_record_bytes: a real record above it is refused too
        d = env.newdir()
        write_files(d, files)
        b, st = _boot_st(env, d, max_record_bytes=16)
        assert st.damaged_records >= 1 and st.damaged_files >= 1
        crash(b)
        rmtree(d)


def test_damaged_record_in_the_middle_of_snapshot_and_segment():
    with Env() as env:
        # the snapshot: RETAIN r/00..r/04, then the session; damage r/02
        files = _snap_and_journal(env)
        snap = files[SNAP]
        offs = record_offsets(snap, SNAP_HEAD)
        i = snap.index(RETAINED[2].encode())
        assert offs[1] < i < offs[-1]
        bad = bytearray(snap)
        bad[i] ^= 0x5A                       # a payload byte: the CRC fails
        d = env.newdir()
        write_files(d, files)
        write_bytes(d + "/" + SNAP, bytes(bad))
        b, st = _boot_st(env, d)
        want_r = [v for v in RETAINED[:6] if v != RETAINED[2]]
        assert _content(b) == (want_r, QUEUED[:5]), _content(b)
        assert st.damaged_records == 1 and st.damaged_files == 1
        assert read_bytes(d + "/midge.snap.damaged") == bytes(bad)
        crash(b)
        only_snapshot(d, b, ["midge.snap.damaged"])
        rmtree(d)
        # a segment of three records (one SUBSCRIBE), damaged in the middle
        # one; as the newest segment and followed by another
        b = env.boot()
        c, _, _ = client(b, "dev")
        feed(b, c, m.subscribe(9, [("f/1", 1), ("f/2", 1), ("f/3", 1)]))
        n = env.segments()[-1]
        data = read_bytes(env.dir + "/" + seg_name(n))
        assert [t for t, body in seg_records(data)] == [R_SUB, R_SUB, R_SUB], seg_records(data)
        p, _, _ = client(b, "pub", clean=True)
        publish(b, p, "late", b"after", qos=1, retain=True)
        crash(b)
        files = store_files(env.dir)
        i = data.index(b"f/2") + 2
        bad = bytearray(data)
        bad[i] ^= 0x5A
        for newest in (True, False):
            d = env.newdir()
            write_files(d, files)
            if newest:
                os.remove(d + "/" + seg_name(n + 1))
            write_bytes(d + "/" + seg_name(n), bytes(bad))
            b, st = _boot_st(env, d)
            assert b.sessions["dev"].subs == {"q/#": 1, "f/1": 1, "f/3": 1}, b.sessions["dev"].subs
            assert retained(b, "late") == (None if newest else b"after")
            want_r = RETAINED[:6] + ([] if newest else ["after"])
            want_r.sort()
            assert _content(b)[0] == want_r
            dev = b.sessions["dev"]   # it connected: its queue went out, awaiting PUBACK
            assert [e[1].payload.decode() for e in dev.inflight] == QUEUED[:5]
            assert st.damaged_records == 1 and st.damaged_files == 1
            assert read_bytes(d + "/" + seg_name(n) + ".damaged") == bytes(bad)
            crash(b)
            rmtree(d)


class ScanCountingFS:
    """The platform filesystem; counts directory passes and names read."""

    def __init__(self):
        from midge.compat import OSFS
        self.real = OSFS()
        self.passes = 0
        self.names = 0

    def scan(self, path):
        self.passes += 1
        for name in self.real.scan(path):
            self.names += 1
            yield name

    def __getattr__(self, name):   # no listdir: OSFS has none
        return getattr(self.real, name)


def test_thousands_of_stray_files_are_left_alone():
    # names that are not the store's (not midge.snap, midge.tmp or
    # midge.<N>, or a segment number far above the journal): never loaded,
    # never deleted, read one at a time
    with Env() as env:
        b = _fill(env, 5, 4)
        crash(b)
        patterns = ("stray-%d.txt", "midge.%d.bak", "midge.0%d", "midge.%da", "midge.snap.%d",
                    "MIDGE.%d", "midge.-%d", "midge.%d" )
        strays = []
        t0 = ticks_ms()
        i = 0
        while len(strays) < 2000:
            pat = patterns[i % len(patterns)]
            name = pat % (i if pat != "midge.%d" else 1000000 + i)
            write_bytes(env.dir + "/" + name, name.encode())
            strays.append(name)
            i += 1
            if ticks_ms() - t0 > 5000:      # a slow filesystem: test with what was made
                break
        print("stray files:", len(strays))
        fs = ScanCountingFS()
        b = env.boot(fs=fs)
        assert _content(b) == (RETAINED[:5], QUEUED[:4])
        st = b.store
        assert st.damaged_files == 0 and st.damaged_records == 0 and st.missing_segments == 0
        assert fs.passes <= 2, fs.passes     # no pass per file
        crash(b)
        only_snapshot(env.dir, None, strays)
        assert snap_base(env.dir) == st.seq == st.base
        for name in strays:
            assert read_bytes(env.dir + "/" + name) == name.encode(), name
        b = env.boot(fs=ScanCountingFS())
        assert _content(b) == (RETAINED[:5], QUEUED[:4])
        crash(b)
        only_snapshot(env.dir, None, strays)


def test_read_only_and_full_flash_refuse_writes_and_lose_nothing():
    from midge.store import StoreWriteError
    for err, errname in ((EROFS, "EROFS"), (ENOSPC, "ENOSPC")):
        with Env() as env:
            fs = FailingFS(err)
            b = env.boot(fs=fs)
            c, _, _ = client(b, "dev")
            subscribe(b, c, [("q/#", 1)])
            disconnect(b, c)
            p, _, _ = client(b, "pub", clean=True)
            publish(b, p, "a", b"1", qos=1, retain=True)
            publish(b, p, "q/1", b"m1", qos=1)
            before = store_files(env.dir)
            names = os.listdir(env.dir)
            fs.fail = True
            texts = []
            for topic, payload, retain in (("b", b"2", True), ("q/2", b"m2", False)):
                data = m.publish(topic, payload, 1, retain, False, 7)
                for first, start, end in frames(data):
                    handlers.handle(b, p, first, data, start, end)
                try:
                    b.commit()
                    texts.append(None)
                except StoreWriteError as e:
                    texts.append(str(e))
            # the first names the segment it could not write, the second the
            # snapshot the recovery could not write; both the errno
            assert texts[0] is not None and (env.dir + "/midge.") in texts[0] and errname in texts[0], texts
            assert texts[1] is not None and (env.dir + "/midge.tmp") in texts[1] and errname in texts[1], texts
            assert b.store.errors == 2
            # memory keeps the state; nothing on flash changed or went away
            assert retained(b, "b") == b"2" and queue_of(b, "dev") == [(b"m1", 1), (b"m2", 1)]
            assert store_files(env.dir) == before
            now = os.listdir(env.dir)
            now.sort()
            names.sort()
            assert now == names, (now, names)
            # the flash works again: the next commit rewrites the store
            fs.fail = False
            publish(b, p, "c", b"3", qos=1, retain=True)
            crash(b)
            b = env.boot()
            for topic, value in (("a", b"1"), ("b", b"2"), ("c", b"3")):
                assert retained(b, topic) == value, (errname, topic)
            assert queue_of(b, "dev") == [(b"m1", 1), (b"m2", 1)]
            assert b.store.damaged_records == 0 and b.store.damaged_files == 0


def test_check_dir_names_the_path_and_the_problem():
    from midge.storeload import check_dir

    def err(path, fs=None):
        try:
            check_dir(path, fs)
        except StoreError as e:
            return str(e)
        return None

    with Env() as env:
        d = env.newdir()
        assert err(d) is None and os.listdir(d) == []   # the probe is gone again
        assert err(d + "/new") is None and _is_dir(d + "/new")
        text = err(d + "/missing/child")
        assert text == "store_dir %s/missing/child: cannot create: [Errno 2] ENOENT" % d, text
        write_bytes(d + "/file", b"x")
        text = err(d + "/file")
        assert text == "store_dir %s/file: not a directory" % d, text
        text = err(d + "/file/sub")
        assert text is not None and (d + "/file/sub") in text and "ENOTDIR" in text, text
        for code, what in ((EROFS, "read-only (EROFS)"), (ENOSPC, "full (ENOSPC)"),
                           (13, "cannot write %s/midge.probe: [Errno 13] EACCES" % d)):
            fs = FailingFS(code)
            fs.fail = True
            text = err(d, fs)
            assert text == "store_dir %s: %s" % (d, what), text
        # Store.open says the same kind of thing, with the path
        for path, part in ((d + "/file", "not a directory"), (d + "/missing/child", "ENOENT")):
            cfg, st = env.store(path)
            try:
                Broker(cfg, env.clock, store=st).restore()
                text = None
            except StoreError as e:
                text = str(e)
            assert text is not None and path in text and part in text, text
        assert read_bytes(d + "/file") == b"x"


def test_version_1_store_loaded_and_rewritten_as_version_2():
    with Env() as env:
        sid = struct.pack(">I", 1)
        v1_snap = (b"MIDG\x01\x00\x00\x00" + struct.pack(">I", 5)
                   + record(R_RETAIN, retain_body(b"a", 1, b"one"))
                   + record(R_SESSION, sid + s16(b"dev"))
                   + record(R_SUB, sid + s16(b"x/#") + b"\x01")
                   + record(R_MSG, struct.pack(">I", 1) + s16(b"x/1") + b"\x01" + b32(b"m1"))
                   + record(R_QUEUE, sid + struct.pack(">IB", 1, 1)))
        files = {
            SNAP: v1_snap,
            seg_name(4): record(R_RETAIN, retain_body(b"old", 1, b"below base")),  # left by a compaction
            seg_name(5): record(R_RETAIN, retain_body(b"b", 1, b"two")),
            seg_name(6): (record(R_MSG, struct.pack(">I", 2) + s16(b"x/2") + b"\x01" + b32(b"m2"))
                          + record(R_QUEUE, sid + struct.pack(">IB", 2, 1))),
        }
        for torn in (False, True):
            d = env.newdir()
            write_files(d, files)
            if torn:       # a version 1 torn last write: dropped and counted, as ever
                write_bytes(d + "/" + seg_name(7), record(R_RETAIN, retain_body(b"c", 1, b"three"))[:9])
            b, st = _boot_st(env, d)
            assert retained(b, "a") == b"one" and retained(b, "b") == b"two"
            assert retained(b, "old") is None and b.retained.count == 2
            assert b.sessions["dev"].subs == {"x/#": 1}
            assert queue_of(b, "dev") == [(b"m1", 1), (b"m2", 1)]
            assert st.damaged_records == (1 if torn else 0) and st.damaged_files == 0
            crash(b)
            only_snapshot(d, b)
            assert snap_base(d) == (8 if torn else 7)   # a version 2 header
            b, st = _boot_st(env, d)
            assert queue_of(b, "dev") == [(b"m1", 1), (b"m2", 1)] and b.retained.count == 2
            p, _, _ = client(b, "pub", clean=True)
            publish(b, p, "x/3", b"m3", qos=1)
            crash(b)
            n = env.segments(d)[-1]
            assert seg_check(d, n) == snap_base(d)      # a version 2 segment
            b, st = _boot_st(env, d)
            assert queue_of(b, "dev") == [(b"m1", 1), (b"m2", 1), (b"m3", 1)]
            assert st.damaged_records == 0
            crash(b)
            rmtree(d)


def test_segment_far_above_base_is_left_alone():
    with Env() as env:
        b = env.boot()
        p, _, _ = client(b, "pub", clean=True)
        publish(b, p, "a", b"1", qos=1, retain=True)
        crash(b)
        base = snap_base(env.dir)
        far = base + 4 * 256 + 1
        name = seg_name(far)
        data = seg_header(far, base) + record(R_RETAIN, retain_body(b"far", 1, b"no"))
        write_bytes(env.dir + "/" + name, data)
        b, st = _boot_st(env, env.dir)
        assert retained(b, "a") == b"1" and retained(b, "far") is None
        assert st.missing_segments == 0 and st.damaged_files == 0
        crash(b)
        only_snapshot(env.dir, None, [name])
        assert snap_base(env.dir) == st.seq == st.base < far
        assert read_bytes(env.dir + "/" + name) == data


def test_interrupted_move_aside_of_the_snapshot_is_finished():
    # compact(aside) syncs the new snapshot as midge.tmp, moves the damaged
    # midge.snap aside, then renames: a crash between the two renames
    # leaves midge.tmp, midge.snap.damaged and no midge.snap
    with Env() as env:
        _snap_and_journal(env)
        b = env.boot()
        crash(b)
        good = read_bytes(env.snap)
        os.rename(env.snap, env.snap + ".damaged")
        write_bytes(env.dir + "/midge.tmp", good)
        b, st = _boot_st(env, env.dir)
        assert _content(b) == (RETAINED[:6], QUEUED[:5])
        assert st.missing_segments == 0 and st.damaged_files == 0
        crash(b)
        only_snapshot(env.dir, b, ["midge.snap.damaged"])


def test_aside_name_taken_gets_a_number():
    with Env() as env:
        b = env.boot()
        crash(b)
        for k in range(3):
            write_bytes(env.snap, b"junk %d" % k)
            b, st = _boot_st(env, env.dir)
            assert st.damaged_files == 1
            crash(b)
        assert aside_names(env.dir) == ["midge.snap.damaged", "midge.snap.damaged1", "midge.snap.damaged2"]
        assert read_bytes(env.snap + ".damaged2") == b"junk 2"


def test_mark_resync_rewrites_the_store_at_the_next_commit():
    with Env() as env:
        b = env.boot()
        p, _, _ = client(b, "pub", clean=True)
        publish(b, p, "a", b"1", qos=1, retain=True)
        assert env.segments()
        n = b.store.compactions
        b.store.mark_resync()
        b.commit()
        assert b.store.compactions == n + 1
        only_snapshot(env.dir, b)
        b.commit()
        assert b.store.compactions == n + 1


def test_sys_topics_show_store_damage():
    from midge.sys_topics import snapshot
    with Env() as env:
        b = _fill(env, 3, 3)
        crash(b)
        segs = env.segments()
        os.remove(env.dir + "/" + seg_name(segs[-2]))
        write_bytes(env.dir + "/" + seg_name(segs[-3]), b"junk")
        b = env.boot()
        vals = dict(snapshot(b))
        assert vals["$SYS/broker/store/missing_segments"] == "1", vals
        assert vals["$SYS/broker/store/damaged_files"] == "1", vals
        assert "$SYS/broker/store/damaged_records" in vals
