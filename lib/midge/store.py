# Flash persistence: a journal of state changes, one small file per commit,
# folded into a snapshot by write-to-temp + rename (atomic on littlefs and
# POSIX).
#
# Files (docs/STORE.md has the full format and the record table):
#   midge.snap  b"MIDG" + version byte + 3 zero bytes + u32 base | records
#   midge.<N>   records of commit N (N >= base)
#   record      u32 length (type + body) | u8 type | body | u32 CRC-32 of all before it
# Strings in a body are u16 length + bytes, payloads u32 length + bytes.
#
# Contracts:
# - Durability: records are buffered; Broker.commit() runs after every
#   chunk a connection handled and before every socket write, and writes
#   and syncs the buffer whenever it holds an urgent record, so a
#   PUBACK/PUBREC/SUBACK (or a PUBLISH/PUBREL whose sending is recorded)
#   leaves only after the state it stands for is durable. Records that back
#   nothing a client was told (QoS 0 retained updates, a client's PUBACK or
#   PUBCOMP, a queue drop) may wait up to store_sync_ms; retained updates of
#   one topic inside that window are coalesced into one record.
# - Crash safety: open() stops at the first record that is truncated or
#   fails its CRC (a torn last write), keeps everything before it, counts
#   it (damaged_records), deletes every segment it did not load and
#   compacts.
# - Heap: open() reads one record at a time and keeps a message body only
#   while something refers to it; no step holds a whole file.
import binascii
import struct

from . import log
from .compat import const, OSFS
from .message import Message
from .session import Session, AWAIT_ACK, AWAIT_COMP
from .topics import is_sys_reserved

MAGIC = b"MIDG"
VERSION = const(1)
_HEADER = b"MIDG\x01\x00\x00\x00"

# record types
R_RETAIN = const(1)      # topic, qos, payload (empty payload: cleared)
R_SESSION = const(2)     # sid, cid: a persistent session exists, numbered sid
R_SESSION_DEL = const(3)  # sid
R_SUB = const(4)         # cid, filter, qos
R_UNSUB = const(5)       # cid, filter
R_MSG = const(6)         # mid, topic, qos, payload: a message body, stored once
R_QUEUE = const(7)       # cid, mid, qos: appended to the session queue
R_DROP = const(8)        # cid: queue head dropped (cap)
R_SEND = const(9)        # cid, pid: queue head sent, now inflight
R_INFLIGHT = const(10)   # cid, mid, pid, qos, retain: sent directly, inflight
R_COMP = const(11)       # cid, pid: PUBREC received, awaiting PUBCOMP
R_DONE = const(12)       # cid, pid: inflight entry finished
R_IN2_ADD = const(13)    # cid, pid: inbound QoS 2 awaiting PUBREL
R_IN2_DEL = const(14)    # cid, pid
R_WILL = const(15)       # cid, topic, qos, retain, payload: connected with a will
R_WILL_DEL = const(16)   # cid
R_INFLIGHT_COMP = const(17)  # cid, pid: (snapshot) inflight awaiting PUBCOMP

_SNAP = "midge.snap"   # snapshot: header + base sequence number + records
_TMP = "midge.tmp"     # snapshot being written; renamed over _SNAP when complete
_SEG = "midge."        # + decimal sequence number: one journal segment per commit
_BUF_FLUSH_BYTES = const(2048)  # deferred records are written at this size at the latest
_MAX_SEGMENTS = const(256)      # compact after this many commits at the latest
_MIN_JOURNAL_BYTES = const(4096)  # ... and not before the journal holds this much


class StoreError(Exception):
    """A store that cannot be used (wrong magic or version): start-up stops."""


class StoreWriteError(OSError):
    """Records that back an acknowledgement could not be written: the
    connection layer must not send that acknowledgement (it closes the
    connection instead; the client resends, as QoS 1/2 lets it)."""


def _s16(b):
    return struct.pack(">H", len(b)) + b


def _b32(b):
    return struct.pack(">I", len(b)) + b


class _Reader:
    """Decodes the fields of one record body."""

    def __init__(self, body):
        self.b = body
        self.p = 0

    def u8(self):
        v = self.b[self.p]
        self.p += 1
        return v

    def u16(self):
        v = (self.b[self.p] << 8) | self.b[self.p + 1]
        self.p += 2
        return v

    def u32(self):
        v = struct.unpack_from(">I", self.b, self.p)[0]
        self.p += 4
        return v

    def raw(self, n):
        v = bytes(self.b[self.p:self.p + n])
        if len(v) != n:
            raise ValueError("field runs past the record")
        self.p += n
        return v

    def s(self):
        return str(self.raw(self.u16()), "utf-8")

    def blob(self):
        return self.raw(self.u32())


class Store:
    def __init__(self, directory, fs=None, max_bytes=262144, sync_ms=1000):
        self.dir = directory
        self.fs = fs if fs is not None else OSFS()
        self.max_bytes = max_bytes      # store_max_bytes
        self.sync_ms = sync_ms          # store_sync_ms
        self.snap = directory + "/" + _SNAP
        self.tmp = directory + "/" + _TMP
        self.gen = 1                    # snapshot generation; bumps on compaction
        self._next_mid = 1
        self._next_sid = 1
        self._sids = {}                 # sid -> Session, while loading
        self.base = 0                   # first journal segment after the snapshot
        self.seq = 0                    # next journal segment to write
        self._snap_size = 0             # bytes in the snapshot file
        self._journal = 0               # bytes in journal segments base..seq-1
        self._buf = bytearray()         # encoded records not yet written
        self._retain = {}               # topic -> (qos, payload): coalesced retained updates
        self._urgent = False            # something acknowledged waits in the buffer
        self._since_ms = -1             # broker ms of the oldest unwritten record
        # figures for $SYS and the wear report
        self.bytes_written = 0
        self.commits = 0
        self.compactions = 0
        self.damaged_records = 0
        self.errors = 0
        self.opened = False             # False while loading: replay writes no records
        self._resync = False            # a write failed: flash must be rewritten from memory

    # --- recording (called by the broker as state changes) ---------------------

    def _rec(self, rtype, body, urgent=True):
        """Buffer one record. Urgent records (the default) are written
        before the next byte goes out to any client (Broker.commit is
        called before every socket write); the others may wait up to
        store_sync_ms: they back nothing a client was told."""
        if urgent:
            self._urgent = True
        n = len(body) + 1
        head = struct.pack(">IB", n, rtype)
        crc = binascii.crc32(body, binascii.crc32(head))
        buf = self._buf
        buf.extend(head)
        buf.extend(body)
        buf.extend(struct.pack(">I", crc & 0xFFFFFFFF))

    def _sid(self, s):
        """The session's number in records: 4 bytes instead of its client
        id, so that a commit stays small enough for littlefs to keep it
        inline (a queued 64-byte message: about 110 bytes in all)."""
        return struct.pack(">I", s.sid)

    def _msg_ref(self, msg, fresh=False):
        """mid of a message, writing its body once per log generation.
        `fresh` writes it again under a new mid: a retained message can be
        referenced again long after its earlier references were all
        released, and loading forgets a body nobody refers to any more."""
        if msg.store_gen != self.gen or fresh:
            if msg.store_gen == 0 or fresh:
                msg.mid = self._next_mid
                self._next_mid += 1
            msg.store_gen = self.gen
            self._rec(R_MSG, struct.pack(">I", msg.mid) + _s16(msg.topic_bytes)
                      + bytes((msg.qos,)) + _b32(msg.payload))
        return msg.mid

    def retain(self, topic, qos, payload):
        """Retained updates are coalesced per topic until written; a QoS 1/2
        one is urgent (its PUBACK/PUBREC waits for it)."""
        self._retain[topic] = (qos, payload)
        if qos:
            self._urgent = True

    def session(self, s):
        if not s.sid:
            s.sid = self._next_sid
            self._next_sid += 1
        self._rec(R_SESSION, self._sid(s) + _s16(s.client_id.encode()))

    def session_del(self, s):
        self._rec(R_SESSION_DEL, self._sid(s))

    def sub(self, s, filt, qos):
        self._rec(R_SUB, self._sid(s) + _s16(filt.encode()) + bytes((qos,)))

    def unsub(self, s, filt):
        self._rec(R_UNSUB, self._sid(s) + _s16(filt.encode()))

    def queue(self, s, msg, qos):
        mid = self._msg_ref(msg)
        self._rec(R_QUEUE, self._sid(s) + struct.pack(">IB", mid, qos))

    def drop(self, s):
        self._rec(R_DROP, self._sid(s), False)

    def send(self, s, pid):
        self._rec(R_SEND, self._sid(s) + struct.pack(">H", pid))

    def inflight(self, s, msg, pid, qos, retain):
        mid = self._msg_ref(msg, retain)  # retain: sent from the retained store
        self._rec(R_INFLIGHT, self._sid(s) + struct.pack(">IHBB", mid, pid, qos, 1 if retain else 0))

    def comp(self, s, pid):
        self._rec(R_COMP, self._sid(s) + struct.pack(">H", pid))

    def done(self, s, pid):
        # lost in a crash: the message is resent (QoS 1 allows it) or its
        # PUBREL is (QoS 2: the client answers PUBCOMP again)
        self._rec(R_DONE, self._sid(s) + struct.pack(">H", pid), False)

    def in2_add(self, s, pid):
        self._rec(R_IN2_ADD, self._sid(s) + struct.pack(">H", pid))

    def in2_del(self, s, pid):
        self._rec(R_IN2_DEL, self._sid(s) + struct.pack(">H", pid))

    def will(self, s, msg):
        self._rec(R_WILL, self._sid(s) + _s16(msg.topic_bytes) + bytes((msg.qos, 1 if msg.retain else 0))
                  + _b32(msg.payload))

    def will_del(self, s):
        self._rec(R_WILL_DEL, self._sid(s))


    # --- writing -------------------------------------------------------------------

    def pending(self):
        return bool(self._buf) or bool(self._retain)

    def commit(self, broker, now_ms):
        """Write and sync buffered records if one backs an acknowledgement,
        the oldest waited store_sync_ms, or the buffer is large. Then
        compact if the log passed half of store_max_bytes."""
        if not self._buf and not self._retain:
            self._urgent = False
            return
        if self._since_ms < 0:
            self._since_ms = now_ms
        if not (self._urgent or now_ms - self._since_ms >= self.sync_ms
                or len(self._buf) >= _BUF_FLUSH_BYTES):
            return
        self._flush_retain()
        if self._resync:
            self._recover(broker)
            return
        data = self._buf
        try:
            # one new small file per commit: littlefs keeps a file of up to
            # its inline size (128 bytes on the boards) inside the directory's
            # metadata log, where a commit costs a metadata append; appending
            # to a synced file would copy and erase its last block every time
            # (measured: tools/wear.py)
            f = self.fs.open(self._seg(self.seq), "wb")
            try:
                f.write(data)
                self.fs.sync(f)
            finally:
                f.close()
            self.seq += 1
            self._journal += len(data)
            self.bytes_written += len(data)
            self.commits += 1
        except OSError as e:
            self._failed(e)  # raises StoreWriteError if an acknowledgement waits on it
        self._buf = bytearray()
        self._urgent = False
        self._since_ms = -1
        # compact when the journal has grown as large as the snapshot (so a
        # compaction costs no more flash than the commits it folds in), or
        # holds many files, or the store passes half of store_max_bytes
        j = self._journal
        if ((j >= self._snap_size and j >= _MIN_JOURNAL_BYTES)
                or self.seq - self.base >= _MAX_SEGMENTS
                or self._snap_size + j > self.max_bytes // 2):
            self.compact(broker)
            self._fit(broker)

    def _failed(self, e):
        """A write failed (flash full or failing). Memory keeps the state;
        the flash no longer matches it, so the next commit rewrites it by
        compaction instead of appending. If the buffer backed an
        acknowledgement, StoreWriteError tells the caller not to send it."""
        self.errors += 1
        self._resync = True
        urgent = self._urgent
        self._buf = bytearray()
        self._urgent = False
        self._since_ms = -1
        log.error("store write failed: %s", e)
        if urgent:
            raise StoreWriteError("store write failed: %s" % e)

    def _recover(self, broker):
        """After a failed write: a compaction makes the flash match memory."""
        self._buf = bytearray()
        self._retain = {}
        try:
            self.compact(broker)
            self._resync = False
        except OSError as e:
            self._failed(e)
        self._urgent = False
        self._since_ms = -1

    def _seg(self, seq):
        return self.dir + "/" + _SEG + str(seq)

    def size(self):
        """Bytes the store holds on flash (snapshot + journal)."""
        return self._snap_size + self._journal

    def _fit(self, broker):
        """store_max_bytes: while the compacted log is still over half of
        it, drop the least recently seen offline persistent session."""
        while self._snap_size > self.max_bytes // 2:
            victim = None
            for s in broker.sessions.values():
                if not s.clean and s.conn is None and (
                        victim is None or s.last_seen_ms < victim.last_seen_ms):
                    victim = s
            if victim is None:
                log.warning("store: live state of %d bytes is over half of store_max_bytes", self._snap_size)
                return
            broker.count("store_evicted")
            log.info("store full: session %s dropped", victim.client_id)
            broker.drop_session(victim)
            self.compact(broker)

    def _flush_retain(self):
        r = self._retain
        for topic in r:
            qos, payload = r[topic]
            # urgency was decided when the update came in (retain())
            self._rec(R_RETAIN, _s16(topic.encode()) + bytes((qos,)) + _b32(payload), False)
        self._retain = {}

    # --- compaction ----------------------------------------------------------------

    def compact(self, broker):
        """Write the live state as a new snapshot (covering every journal
        segment so far), rename it over the old one, then delete those
        segments. A crash before the rename leaves the old snapshot and the
        journal; after it, the new snapshot, whose base number says which
        leftover segments to ignore."""
        self.gen += 1
        self._buf = bytearray()
        self._retain = {}
        fs = self.fs
        f = fs.open(self.tmp, "wb")
        written = 0
        try:
            head = _HEADER + struct.pack(">I", self.seq)
            f.write(head)
            written += len(head)
            for part in self._snapshot(broker):
                f.write(part)
                written += len(part)
            fs.sync(f)
        finally:
            f.close()
        fs.rename(self.tmp, self.snap)
        for k in range(self.base, self.seq):
            fs.remove(self._seg(k))
        self.base = self.seq
        self._journal = 0
        self._snap_size = written
        self.bytes_written += written
        self.compactions += 1
        self._urgent = False  # the snapshot's own records are written
        self._since_ms = -1
        log.info("store compacted: %d bytes", written)

    def _snapshot(self, broker):
        """Yield the live state as encoded records, one at a time: the
        snapshot is never built in memory, and no buffer grows (a growing
        buffer needs ever larger free blocks in a fragmented device heap)."""
        found = []
        broker.retained.all(found)
        for msg in found:
            if is_sys_reserved(msg.topic):
                continue  # $SYS is the broker's own, rebuilt at start
            self._rec(R_RETAIN, _s16(msg.topic_bytes) + bytes((msg.qos,)) + _b32(msg.payload))
            yield self._take()
        found = None
        for s in list(broker.sessions.values()):
            if s.clean:
                continue
            self.session(s)
            yield self._take()
            for filt in s.subs:
                self.sub(s, filt, s.subs[filt])
                yield self._take()
            if s.will is not None:
                self.will(s, s.will)
                yield self._take()
            for e in s.inflight:
                if e[4] == AWAIT_COMP:
                    self._rec(R_INFLIGHT_COMP, self._sid(s) + struct.pack(">H", e[0]))
                else:
                    self.inflight(s, e[1], e[0], e[2], e[3])
                yield self._take()
            for msg, qos in s.queue:
                self.queue(s, msg, qos)
                yield self._take()
            for pid in s.in_qos2:
                self.in2_add(s, pid)
                yield self._take()

    def _take(self):
        b = self._buf
        self._buf = bytearray()
        return b

    # --- loading -------------------------------------------------------------------

    def open(self, broker):
        """Load the snapshot and the journal after it into the broker, then
        compact. Called once, before the listener starts."""
        fs = self.fs
        fs.mkdir(self.dir)
        fs.remove(self.tmp)  # a compaction that did not reach its rename
        wills = []
        if fs.size(self.snap) >= 0:
            msgs = {}
            online = {}
            ok, records = self._load_snapshot(broker, msgs, online)
            base = self.base
            seq = base
            while ok and fs.size(self._seg(seq)) >= 0:
                ok, n = self._load_file(self._seg(seq), 0, broker, msgs, online)
                records += n
                seq += 1
            if not ok:
                self.damaged_records += 1
                log.warning("store: damaged record discarded (torn or corrupt write); "
                            "state restored up to it")
            log.info("store %s: %d records loaded", self.dir, records)
            for s in online:
                if broker.sessions.get(s.client_id) is s:
                    wills.append(online[s])
            self._sids = {}
            self._remove_stale(base, seq)
            self.seq = seq
            self.compact(broker)  # a clean snapshot; deletes the journal
            self._fit(broker)
        else:
            self._remove_stale(0, 0)  # segments without a snapshot are not state
            self.compact(broker)  # a new store, created by rename like any other
        self.opened = True
        return wills

    def _remove_stale(self, first, end):
        """Delete every journal segment outside [first, end): left by a
        compaction that did not finish deleting, or after a damaged or
        missing segment, so no later open can mistake it for state."""
        fs = self.fs
        for name in fs.listdir(self.dir):
            num = name[len(_SEG):]
            if name.startswith(_SEG) and num.isdigit():
                n = int(num)
                if n < first or n >= end:
                    fs.remove(self.dir + "/" + name)

    def _load_snapshot(self, broker, msgs, online):
        """Check the header, read the base segment number, replay records."""
        f = self.fs.open(self.snap, "rb")
        try:
            head = f.read(12)
        finally:
            f.close()
        if len(head) < 5 or head[:4] != MAGIC:
            raise StoreError("%s is not a midge store (bad magic)" % self.snap)
        if head[4] != VERSION:
            raise StoreError("%s has store version %d; this midge reads version %d"
                             % (self.snap, head[4], VERSION))
        if len(head) < 12:
            raise StoreError("%s: header cut short" % self.snap)
        self.base = struct.unpack_from(">I", head, 8)[0]
        return self._load_file(self.snap, 12, broker, msgs, online)

    def _load_file(self, path, skip, broker, msgs, online):
        """Replay the records of one file, one record in memory at a time.
        Returns (True if the file ended cleanly, records applied)."""
        fs = self.fs
        total = fs.size(path)
        f = fs.open(path, "rb")
        count = 0
        try:
            if skip:
                f.read(skip)
            pos = skip
            while pos < total:
                hdr = f.read(5)
                if len(hdr) < 5:
                    return False, count
                n, rtype = struct.unpack(">IB", hdr)
                if n < 1 or pos + 4 + n + 4 > total:
                    return False, count  # torn: length runs past the end
                body = f.read(n - 1)
                crc = f.read(4)
                if len(body) != n - 1 or len(crc) != 4:
                    return False, count
                if binascii.crc32(body, binascii.crc32(hdr)) & 0xFFFFFFFF != struct.unpack(">I", crc)[0]:
                    return False, count
                try:
                    self._apply(broker, rtype, _Reader(body), msgs, online)
                except (ValueError, IndexError, KeyError, UnicodeError) as e:
                    log.warning("store: record %d of %s (type %d) not applied: %r", count, path, rtype, e)
                    return False, count
                pos += 4 + n + 4
                count += 1
        finally:
            f.close()
        return True, count

    def _apply(self, broker, rtype, r, msgs, online):
        if rtype == R_RETAIN:
            topic = r.s()
            qos = r.u8()
            payload = r.blob()
            broker.restore_retained(Message(topic, payload, qos, True))
            return
        if rtype == R_MSG:
            mid = r.u32()
            topic = r.s()
            qos = r.u8()
            msg = Message(topic, r.blob(), qos, False)
            msg.mid = mid
            msg.store_gen = self.gen
            msgs[mid] = [msg, 0]  # [message, references from queues and inflight windows]
            if mid >= self._next_mid:
                self._next_mid = mid + 1
            return
        sid = r.u32()
        if rtype == R_SESSION:
            cid = r.s()
            s = broker.sessions.get(cid)
            if s is None:
                s = broker.sessions[cid] = Session(cid, False, broker.now_ms())
            s.sid = sid
            self._sids[sid] = s
            if sid >= self._next_sid:
                self._next_sid = sid + 1
            return
        s = self._sids[sid]
        if rtype == R_SESSION_DEL:
            for msg, qos in s.queue:
                _unref(msgs, msg)
            for e in s.inflight:
                _unref(msgs, e[1])
            broker.drop_session(s)
            del self._sids[sid]
            online.pop(s, None)
        elif rtype == R_SUB:
            filt = r.s()
            broker.restore_sub(s, filt, r.u8())
        elif rtype == R_UNSUB:
            broker.restore_unsub(s, r.s())
        elif rtype == R_QUEUE:
            msg = _ref(msgs, r.u32())
            broker.restore_queue(s, msg, r.u8())
        elif rtype == R_DROP:
            msg, qos = broker.dequeue(s)
            _unref(msgs, msg)
        elif rtype == R_SEND:
            msg, qos = broker.dequeue(s)
            s.add_inflight([r.u16(), msg, qos, False, AWAIT_ACK])
        elif rtype == R_INFLIGHT:
            msg = _ref(msgs, r.u32())
            pid = r.u16()
            qos = r.u8()
            s.add_inflight([pid, msg, qos, bool(r.u8()), AWAIT_ACK])
        elif rtype == R_INFLIGHT_COMP:
            s.add_inflight([r.u16(), None, 2, False, AWAIT_COMP])
        elif rtype == R_COMP:
            e = s.find_inflight(r.u16())
            if e is not None:
                e[4] = AWAIT_COMP
                _unref(msgs, e[1])
                e[1] = None
        elif rtype == R_DONE:
            e = s.find_inflight(r.u16())
            if e is not None:
                s.drop_inflight(e)
                _unref(msgs, e[1])
        elif rtype == R_IN2_ADD:
            s.add_in_qos2(r.u16())
        elif rtype == R_IN2_DEL:
            s.drop_in_qos2(r.u16())
        elif rtype == R_WILL:
            topic = r.s()
            qos = r.u8()
            retain = bool(r.u8())
            online[s] = Message(topic, r.blob(), qos, retain)
        elif rtype == R_WILL_DEL:
            online.pop(s, None)
        else:
            raise ValueError("unknown record type %d" % rtype)

    def close(self):
        """Nothing stays open between commits; kept for the broker's stop."""


# Loading keeps a message body only while a queue or inflight window refers
# to it, so a log full of delivered messages loads in the heap of the live
# state, not of everything the log ever held.

def _ref(msgs, mid):
    e = msgs[mid]
    e[1] += 1
    return e[0]


def _unref(msgs, msg):
    if msg is None:
        return
    e = msgs.get(msg.mid)
    if e is not None:
        e[1] -= 1
        if e[1] <= 0:
            del msgs[msg.mid]
