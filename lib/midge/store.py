# Flash persistence: a journal of state changes, one small file per commit,
# folded into a snapshot by write-to-temp + rename (atomic on littlefs and
# POSIX).
#
# Files (docs/STORE.md has the full format and the record table):
#   midge.snap  b"MIDG" | version 2 | 3 zero bytes | u32 base | u32 CRC-32 | records
#   midge.<N>   b"MIDJ" | version 2 | 3 zero bytes | u32 N | u32 base | u32 CRC-32 | records
#   record      u32 length (type + body) | u8 type | body | u32 CRC-32 of all before it
# Strings in a body are u16 length + bytes, payloads u32 length + bytes.
# Version 1 stores (a snapshot header without CRC, segments without header)
# are read and rewritten as version 2 by the compaction after loading.
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
# - Damage and heap while loading: storeload.py (open() runs it once and
#   drops its code again). Every record that can be read is kept, damaged
#   files are moved aside, never deleted, and every length read from flash
#   is checked against max_record_bytes before anything is allocated.
# - Errors name the path: a failed write is logged and raised
#   (StoreWriteError) with the file and the errno; a store that cannot be
#   opened raises StoreError with the path.
import binascii
import struct

from . import log
from .compat import const, OSFS, unload
from .message import Message
from .session import Session, AWAIT_ACK, AWAIT_COMP
from .topics import is_sys_reserved

# Every name here and in storeload.py that is not a private const (a
# function, attribute, argument or short string) is a qstr that stays in the
# heap for good, even after storeload's code is dropped, and qstrs come in
# pools: under the ESP32 budget (tools/store_heap.py) a first draft of the
# loader with ~50 new names opened a new 7.5 KB pool. So the store keeps to
# few names, and the header prefixes are literals: b"MIDG\x02\x00\x00\x00"
# (snapshot), b"MIDJ\x02\x00\x00\x00" (journal segment),
# b"MIDG\x01\x00\x00\x00" (a version 1 snapshot).
MAGIC = b"MIDG"
VERSION = 2

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
R_SUB5 = const(18)       # cid, filter, u32 grant: an MQTT 5 subscription with options
                         # and/or a subscription identifier (Broker._subscribe_filter)
R_EXPIRY = const(19)     # cid, u32: an MQTT 5 session's Session Expiry Interval
R_MSG5 = const(20)       # mid, topic, qos, u32 expiry left, props blob, payload: a message
                         # body with MQTT 5 properties or a Message Expiry Interval
R_RETAIN5 = const(21)    # topic, qos, u32 expiry left, props blob, payload: R_RETAIN, MQTT 5
R_WILL5 = const(22)      # cid, topic, qos, retain, u32 delay, u32 expiry, props blob, payload
R_QUEUE5 = const(23)     # cid, mid, qos, retain, sub ids: R_QUEUE under MQTT 5 subscription
                         # options (Retain As Published, subscription identifiers)
R_INFLIGHT5 = const(24)  # cid, mid, pid, qos, retain, sub ids: R_INFLIGHT with subscription ids
R_OWNER = const(25)      # cid, user name: the user whose client made the session (none: anonymous)
_NO_EXPIRY = const(0xFFFFFFFF)  # "no Message Expiry Interval" in the u32 expiry fields

_SNAP = "midge.snap"   # snapshot: header + records
_TMP = "midge.tmp"     # snapshot being written; renamed over _SNAP when complete
_SEG = "midge."        # + decimal sequence number: one journal segment per commit
_BUF_FLUSH_BYTES = const(2048)  # deferred records are written at this size at the latest
_MAX_SEGMENTS = const(256)      # compact after this many commits at the latest
_MIN_JOURNAL_BYTES = const(4096)  # ... and not before the journal holds this much
_MAX_RECORD_BYTES = const(4160)  # default cap of a record length: max_packet_size 4096 + 64


class StoreError(Exception):
    """A store that cannot be used (a newer midge's store, a directory that
    cannot be created or written): start-up stops. The message names the
    path."""


class StoreWriteError(OSError):
    """Records that back an acknowledgement could not be written: the
    connection layer must not send that acknowledgement (it closes the
    connection instead; the client resends, as QoS 1/2 lets it). The
    message names the file and the errno."""


def _errtext(e):
    """'[Errno 28] ENOSPC' for an OSError on either interpreter: MicroPython's
    OSError carries only the number, and its errno.errorcode lacks the three
    names in the string below (20, 28, 30: the same numbers on Linux and in
    MicroPython's py/mperrno.h); other exceptions as str()."""
    n = e.args[0] if e.args else None
    if not isinstance(n, int):
        return str(e)
    t = " 20 ENOTDIR 28 ENOSPC 30 EROFS "
    key = " " + str(n) + " "
    i = t.find(key)
    if i >= 0:
        i += len(key)
        t = t[i:t.index(" ", i)]
    else:
        try:
            import errno
            t = errno.errorcode.get(n, "?")
        except ImportError:
            t = "?"
    return "[Errno %d] %s" % (n, t)


def _s16(b):
    return struct.pack(">H", len(b)) + b


def _b32(b):
    return struct.pack(">I", len(b)) + b


def _ids(sids):
    """Subscription identifiers: u16 count, then a u32 each."""
    return struct.pack(">H", len(sids)) + b"".join(struct.pack(">I", i) for i in sids)


class Store:
    def __init__(self, directory, fs=None, max_bytes=262144, sync_ms=1000,
                 max_record_bytes=_MAX_RECORD_BYTES):
        self.dir = directory
        self.fs = fs if fs is not None else OSFS()
        self.max_bytes = max_bytes      # store_max_bytes
        self.sync_ms = sync_ms          # store_sync_ms
        # a record length read from flash above this is damage, never an
        # allocation (server.py passes max_packet_size + 64)
        self.max_record_bytes = max_record_bytes
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
        self._retain = {}               # topic -> Message: coalesced retained updates
        self._broker = None             # set by open(): its uptime_ms dates message expiry
        self._urgent = False            # something acknowledged waits in the buffer
        self._since_ms = -1             # broker ms of the oldest unwritten record
        self._at = directory            # path of the file operation under way (for messages)
        # figures for $SYS and the wear report
        self.bytes_written = 0
        self.commits = 0
        self.compactions = 0
        self.damaged_records = 0        # records not loaded: bad CRC or length, torn, not applicable
        self.damaged_files = 0          # files moved aside to <name>.damaged
        self.missing_segments = 0       # gaps in the journal (and a missing midge.snap)
        self.errors = 0
        self.opened = False             # False while loading: replay writes no records
        self._resync = False            # flash must be rewritten from memory
        self._count = 0                 # records applied while loading
        self._segs = None               # while loading: state of segments base.. (storeload)

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
        inline (a queued 64-byte message: about 110 bytes of records, 130
        with the segment header)."""
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
            p = msg.props
            if p is None and not msg.expires_ms:
                self._rec(R_MSG, struct.pack(">I", msg.mid) + _s16(msg.topic_bytes)
                          + bytes((msg.qos,)) + _b32(msg.payload))
            else:
                self._rec(R_MSG5, struct.pack(">I", msg.mid) + _s16(msg.topic_bytes) + bytes((msg.qos,))
                          + struct.pack(">I", self._expiry_left(msg)) + _b32(p or b"") + _b32(msg.payload))
        return msg.mid

    def retain(self, msg):
        """Retained updates are coalesced per topic until written; a QoS 1/2
        one is urgent (its PUBACK/PUBREC waits for it)."""
        self._retain[msg.topic] = msg
        if msg.qos:
            self._urgent = True

    def _expiry_left(self, msg):
        """Seconds a message has left (persisted as what is left, not as a
        time: the clock restarts at boot), or _NO_EXPIRY."""
        e = msg.expires_ms
        if not e:
            return _NO_EXPIRY
        left = (e - self.uptime_ms()) // 1000
        return left if left > 0 else 0

    def _retain_rec(self, msg, urgent=True):
        p = msg.props
        if p is None and not msg.expires_ms:
            self._rec(R_RETAIN, _s16(msg.topic_bytes) + bytes((msg.qos,)) + _b32(msg.payload), urgent)
        else:
            self._rec(R_RETAIN5, _s16(msg.topic_bytes) + bytes((msg.qos,))
                      + struct.pack(">I", self._expiry_left(msg)) + _b32(p or b"") + _b32(msg.payload),
                      urgent)

    def uptime_ms(self):
        b = self._broker
        return b.uptime_ms if b is not None else 0

    def expiry(self, s):
        """An MQTT 5 session's Session Expiry Interval (s.expiry_s)."""
        if s.expiry_s >= 0:
            self._rec(R_EXPIRY, self._sid(s) + struct.pack(">I", s.expiry_s))

    def session(self, s):
        if not s.sid:
            s.sid = self._next_sid
            self._next_sid += 1
        self._rec(R_SESSION, self._sid(s) + _s16(s.client_id.encode()))
        if s.user is not None:
            self._rec(R_OWNER, self._sid(s) + _s16(s.user.encode()))

    def session_del(self, s):
        self._rec(R_SESSION_DEL, self._sid(s))

    def sub(self, s, filt, grant):
        """grant: the QoS (0..2; an R_SUB as ever), or an MQTT 5 grant with
        options and a subscription identifier (R_SUB5, four bytes)."""
        if grant < 4:
            self._rec(R_SUB, self._sid(s) + _s16(filt.encode()) + bytes((grant,)))
        else:
            self._rec(R_SUB5, self._sid(s) + _s16(filt.encode()) + struct.pack(">I", grant))

    def unsub(self, s, filt):
        self._rec(R_UNSUB, self._sid(s) + _s16(filt.encode()))

    def queue(self, s, msg, qos, retain=False, sids=None):
        """A queue entry (Delivery.restore_queue): R_QUEUE, or R_QUEUE5
        when MQTT 5 options came with it (the retain flag as published, the
        subscription identifiers)."""
        mid = self._msg_ref(msg)
        if not retain and sids is None:
            self._rec(R_QUEUE, self._sid(s) + struct.pack(">IB", mid, qos))
        else:
            self._rec(R_QUEUE5, self._sid(s) + struct.pack(">IBB", mid, qos, 1 if retain else 0)
                      + _ids(sids or ()))

    def drop(self, s):
        self._rec(R_DROP, self._sid(s), False)

    def send(self, s, pid):
        self._rec(R_SEND, self._sid(s) + struct.pack(">H", pid))

    def inflight(self, s, msg, pid, qos, retain, sids=None):
        mid = self._msg_ref(msg, retain)  # retain: sent from the retained store
        body = self._sid(s) + struct.pack(">IHBB", mid, pid, qos, 1 if retain else 0)
        if sids is None:
            self._rec(R_INFLIGHT, body)
        else:
            self._rec(R_INFLIGHT5, body + _ids(sids))

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
        p = msg.props
        head = self._sid(s) + _s16(msg.topic_bytes) + bytes((msg.qos, 1 if msg.retain else 0))
        if p is None and msg.expiry_s < 0 and not msg.delay_s:
            self._rec(R_WILL, head + _b32(msg.payload))
        else:
            self._rec(R_WILL5, head + struct.pack(">II", msg.delay_s,
                                                  msg.expiry_s if msg.expiry_s >= 0 else _NO_EXPIRY)
                      + _b32(p or b"") + _b32(msg.payload))

    def will_del(self, s):
        self._rec(R_WILL_DEL, self._sid(s))

    def mark_resync(self):
        """Memory no longer matches flash (e.g. a MemoryError struck between
        a state change and its record): the next commit rewrites the store
        from memory by compaction (urgent: before anything more leaves)."""
        self._resync = True
        self._urgent = True

    # --- writing -------------------------------------------------------------------

    def pending(self):
        return bool(self._buf) or bool(self._retain)

    def commit(self, broker, now_ms):
        """Write and sync buffered records if one backs an acknowledgement,
        the oldest waited store_sync_ms, or the buffer is large. Then
        compact if the log passed half of store_max_bytes."""
        if not self._buf and not self._retain and not (self._resync and self._urgent):
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
        # one new small file per commit, header + records in one write and
        # one sync: littlefs keeps a file of up to its inline size (128 bytes
        # on the boards) inside the directory's metadata log, where a commit
        # costs a metadata append; appending to a synced file would copy and
        # erase its last block every time (measured: tools/wear.py)
        data = self._buf
        head = b"MIDJ\x02\x00\x00\x00" + struct.pack(">I", self.seq) + struct.pack(">I", self.base)
        data[0:0] = head + struct.pack(">I", binascii.crc32(head) & 0xFFFFFFFF)
        try:
            self._at = self._seg(self.seq)
            f = self.fs.open(self._at, "wb")
            try:
                f.write(data)
                self.fs.sync(f)
            finally:
                f.close()
        except OSError as e:
            self._failed(e)  # raises StoreWriteError if an acknowledgement waits on it
            return
        self.seq += 1
        self._journal += len(data)
        self.bytes_written += len(data)
        self.commits += 1
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
            try:
                self.compact(broker)
                self._fit(broker)
            except OSError as e:
                self._failed(e)  # the commit itself is durable: nothing is raised

    def _failed(self, e):
        """A write failed (flash full or failing). Memory keeps the state;
        the flash no longer matches it, so the next commit rewrites it by
        compaction instead of appending. If the buffer backed an
        acknowledgement, StoreWriteError tells the caller not to send it.
        Nothing on flash is deleted here."""
        self.errors += 1
        self._resync = True
        urgent = self._urgent
        self._buf = bytearray()
        self._urgent = False
        self._since_ms = -1
        msg = "store write failed: %s: %s" % (self._at, _errtext(e))
        log.error(msg)
        if urgent:
            raise StoreWriteError(msg)

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
        it, drop an offline persistent session: the one holding the most
        queued bytes (whoever fills the flash pays, README "Fair caps"), or
        if none holds any, the least recently seen."""
        while self._snap_size > self.max_bytes // 2:
            victim = None
            for s in broker.sessions.values():
                if not s.clean and s.conn is None and (
                        victim is None or s.queued_bytes > victim.queued_bytes
                        or (s.queued_bytes == victim.queued_bytes and s.last_seen_ms < victim.last_seen_ms)):
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
            # urgency was decided when the update came in (retain())
            self._retain_rec(r[topic], False)
        self._retain = {}

    # --- compaction ----------------------------------------------------------------

    def compact(self, broker, callback=None):
        """Write the live state as a new snapshot (covering every journal
        segment so far), rename it over the old one, then delete those
        segments. A crash before the rename leaves the old snapshot and the
        journal; after it, the new snapshot, whose base number says which
        leftover segments to ignore. `callback()` (loading only) runs once
        the new snapshot is synced and before the rename: it moves damaged
        files aside, so none of them is deleted by the loop below."""
        self.gen += 1
        self._buf = bytearray()
        self._retain = {}
        fs = self.fs
        self._at = self.tmp
        written = 0
        try:
            f = fs.open(self.tmp, "wb")
            try:
                head = b"MIDG\x02\x00\x00\x00" + struct.pack(">I", self.seq)
                head += struct.pack(">I", binascii.crc32(head) & 0xFFFFFFFF)
                f.write(head)
                written = len(head)
                for part in self._snapshot(broker):
                    f.write(part)
                    written += len(part)
                fs.sync(f)
            finally:
                f.close()
        except OSError:
            fs.remove(self.tmp)  # a partial snapshot of our own: free its space
            raise
        if callback is not None:
            callback()
        self._at = self.snap
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
            self._retain_rec(msg)
            yield self._take()
        found = None
        for s in list(broker.sessions.values()):
            if s.clean:
                continue
            self.session(s)
            self.expiry(s)
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
                    self.inflight(s, e[1], e[0], e[2], e[3], e[5] if len(e) > 5 else None)
                yield self._take()
            for e in s.queue:
                if len(e) > 2:  # (msg, qos, retain, sids): MQTT 5 options
                    self.queue(s, e[0], e[1], e[2], e[3])
                else:
                    self.queue(s, e[0], e[1])
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
        """Load the snapshot and the journal after it into the broker, move
        damaged files aside, then compact (storeload.py). Called once, before
        the listener starts. Returns the wills of sessions that were
        connected. Raises StoreError (naming the path) when the store cannot
        be used. The loader's code is dropped again afterwards: a board
        needs its heap for the clients."""
        from . import storeload
        self._broker = broker
        try:
            wills = storeload.open_store(self, broker)
        finally:
            unload("midge.storeload")
        self.opened = True
        return wills

    def close(self):
        """Nothing stays open between commits; kept for the broker's stop."""


