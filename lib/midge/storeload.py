# Loading the flash store (Store.open): read the snapshot and the journal
# after it into the broker, move damaged files aside, compact. Kept out of
# store.py because it runs once, at start: Store.open imports this module
# and drops it again (compat.unload), so its code does not hold heap while
# the broker runs. docs/STORE.md has the format; store.py the writer.
#
# Contracts (as store.py states them for the store as a whole):
# - Damage: every record that can be read is kept. A damaged record is
#   counted (damaged_records) and skipped; a file with damage is moved aside
#   to <name>.damaged (damaged_files), never deleted; a missing segment is
#   counted (missing_segments) and the later ones are still loaded. The one
#   thing deleted unread is the torn tail of the newest segment: a crash
#   during a commit, which backed no acknowledgement. Files that are not the
#   store's own are never touched.
# - Heap: one record at a time, every length read from flash checked against
#   max_record_bytes before anything is allocated for it, a message body kept
#   only while something refers to it, the directory read one name at a time.
import binascii
import struct

from . import log
from .compat import const, OSFS
from .message import Message, expiry_at
from .session import Session, AWAIT_ACK, AWAIT_COMP
from .store import (StoreError, MAGIC, VERSION, _errtext, R_RETAIN, R_SESSION, R_SESSION_DEL, R_SUB,
                    R_UNSUB, R_MSG, R_QUEUE, R_DROP, R_SEND, R_INFLIGHT, R_COMP, R_DONE, R_IN2_ADD,
                    R_IN2_DEL, R_WILL, R_WILL_DEL, R_INFLIGHT_COMP, R_SUB5, R_EXPIRY, R_MSG5, R_QUEUE5, R_INFLIGHT5, R_OWNER,
                    R_RETAIN5, R_WILL5)

_SNAP_HEAD = const(16)   # b"MIDG" | version | 3 zero | base | CRC of the 12 before
_SEG_HEAD = const(20)    # b"MIDJ" | version | 3 zero | seq | base | CRC of the 16 before
_V1_HEAD = const(12)     # b"MIDG" | 1 | 3 zero | base (no CRC); segments had no header
_SEG = "midge."          # + decimal sequence number: one journal segment per commit
_FAR = const(1024)       # 4 x the compaction limit: a segment number further above base is not the store's
_BATCH = const(32)       # names collected per directory pass when deleting or moving many files
_ASIDE_TRIES = const(100)  # <name>.damaged1 .. 100, then start-up stops

# what a file's load came to
_CLEAN = const(0)        # every record read
_TORN = const(1)         # the last record (or the header) runs past the end: a crash during a write
_DAMAGED = const(2)      # anything else wrong: the file is moved aside
_SEEN = const(1)         # st._segs[n - base]: segment n is present ...
_BAD = const(2)          # ... and damaged (moved aside)


def check_dir(path, fs=None):
    """Start-up check of store_dir: it exists or can be created, is a
    directory, and takes a new file (midge.probe is written and removed).
    Raises StoreError("store_dir <path>: <what is wrong>")."""
    fs = fs if fs is not None else OSFS()
    if fs.size(path) < 0:
        try:
            fs.mkdir(path)
        except OSError as e:
            raise StoreError("store_dir %s: cannot create: %s" % (path, _errtext(e)))
    if not fs.isdir(path):
        raise StoreError("store_dir %s: not a directory" % path)
    probe = path + "/midge.probe"
    try:
        f = fs.open(probe, "wb")
        try:
            f.write(b"probe")
            fs.sync(f)
        finally:
            f.close()
    except OSError as e:
        n = e.args[0] if e.args else 0
        if n == 30:
            t = "read-only (EROFS)"
        elif n == 28:
            t = "full (ENOSPC)"
        else:
            t = "cannot write %s: %s" % (probe, _errtext(e))
        raise StoreError("store_dir %s: %s" % (path, t))
    fs.remove(probe)


def _crc_ok(b, size):
    """The last 4 of the first `size` bytes of b are the CRC-32 of the rest."""
    return (len(b) >= size and binascii.crc32(b[:size - 4]) & 0xFFFFFFFF
            == struct.unpack_from(">I", b, size - 4)[0])


def _seg_num(name):
    """N of a journal segment name "midge.<N>" (N in canonical decimal: no
    sign, no leading zero, at most 10 digits), else -1."""
    if not name.startswith(_SEG):
        return -1
    num = name[len(_SEG):]
    if not num.isdigit() or len(num) > 10:
        return -1
    try:
        n = int(num)
    except ValueError:  # CPython: other Unicode digits
        return -1
    return n if str(n) == num else -1


class _Reader:
    """Decodes the fields of one record body; a field that runs past the
    body raises (ValueError, IndexError, or struct.error on CPython): the
    loader counts that record as damaged."""

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
        v = bytes(self.b[self.p:self.p + n])  # at most the rest of the (capped) body
        if len(v) != n:
            raise ValueError("field runs past the record")
        self.p += n
        return v

    def s(self):
        return str(self.raw(self.u16()), "utf-8")

    def blob(self):
        return self.raw(self.u32())


def open_store(st, broker):
    """Load the snapshot and the journal after it into the broker, move
    damaged files aside, then compact. Called once, before the listener
    starts. Returns the wills of sessions that were connected. Raises
    StoreError (naming the path) when the store cannot be used."""
    fs = st.fs
    try:
        st._at = st.dir
        fs.mkdir(st.dir)
        if not fs.isdir(st.dir):
            raise StoreError("store_dir %s: not a directory" % st.dir)
        # a midge.tmp beside a midge.snap.damaged and no midge.snap is a
        # complete snapshot whose rename was cut off right after the
        # damaged snapshot went aside (see open's compact below): finish
        # it. Any other midge.tmp is a compaction cut off before its
        # rename: delete it.
        if (fs.size(st.snap) < 0 and fs.size(st.snap + ".damaged") >= 0
                and _crc_ok(_read_head(st, st.tmp, _SNAP_HEAD), _SNAP_HEAD)):
            st._at = st.tmp
            fs.rename(st.tmp, st.snap)
            log.warning("store: %s renamed to %s (cut off after moving a snapshot aside)",
                        st.tmp, st.snap)
        st._at = st.tmp
        fs.remove(st.tmp)
        wills = _load(st, broker)
    except OSError as e:
        raise StoreError("store %s: %s: %s" % (st.dir, st._at, _errtext(e)))
    st.opened = True
    return wills


def _load(st, broker):
    # the segment table first, while the heap is not yet cut up by the
    # loaded state: a 1 KB block may not be found after it
    st._segs = bytearray(_FAR + 1)
    msgs = {}
    online = {}
    # StoreError for a newer midge's store; skip = header bytes, 0: no snapshot
    base, skip, snap_bad = _load_snapshot(st, broker, msgs, online)
    if base < 0:
        base = _base_from_segments(st, )
    st.seq = _scan(st, base) + 1 if base >= 0 else 0
    if base >= 0:
        _load_journal(st, base, skip, broker, msgs, online)
    wills = []
    for s in online:
        if broker.sessions.get(s.client_id) is s:
            w = online[s]
            if w.delay_s:
                # an MQTT 5 will delay: owed from now, unless the client
                # comes back first (Broker.tick publishes it when due)
                s.will = w
                s.will_due_ms = broker.uptime_ms + w.delay_s * 1000
            else:
                wills.append(w)
    st._sids = {}
    msgs = online = None
    if base < 0:
        st.base = 0
    else:
        st.base = base
        if st.seq <= base:
            st.seq = base
    log.info("store %s: %d records loaded%s", st.dir, st._count,
             " (version 1: rewritten as version 2)" if skip == _V1_HEAD else "")
    end = st.seq

    def callback():
        # compact()'s step between the synced new snapshot and its rename:
        # damaged segments, segment files not read (no usable base: all;
        # no snapshot: those below base) and a damaged snapshot go aside
        for n in range(max(base, 0), end):
            if st._segs[n - base] & _BAD:
                _aside(st, st._seg(n))
        if base < 0 or skip == 0:
            _remove_stale(st, base, True)
        if snap_bad:
            _aside(st, st.snap)
    st.compact(broker, callback)  # a clean snapshot; deletes the segments loaded
    if base > 0 and skip:
        _remove_stale(st, base, False)  # left by a compaction that did not finish deleting
    st._segs = None
    if st.damaged_records or st.damaged_files or st.missing_segments:
        log.warning("store %s: %d damaged records, %d damaged files moved aside, %d missing "
                    "segments; all else was loaded", st.dir, st.damaged_records,
                    st.damaged_files, st.missing_segments)
    st._fit(broker)
    return wills


def _read_head(st, path, n):
    """The first n bytes of a file (fewer if it is shorter, b"" if it
    does not exist)."""
    st._at = path
    if st.fs.size(path) < 0:
        return b""
    f = st.fs.open(path, "rb")
    try:
        return f.read(n)
    finally:
        f.close()


def _load_snapshot(st, broker, msgs, online):
    """Check midge.snap's header and replay its records. Returns (base,
    header bytes, damaged): base -1 when the header is damaged (then it
    comes from the segment headers), header bytes 0 when there is no
    snapshot, 12 for version 1. A header with a valid CRC that this midge
    does not know (a newer version, another magic) raises StoreError:
    start-up stops rather than guess. A header whose CRC fails is damage,
    not a foreign version: its records are read all the same."""
    if st.fs.size(st.snap) < 0:
        return -1, 0, False
    b = _read_head(st, st.snap, _SNAP_HEAD)
    if _crc_ok(b, _SNAP_HEAD):
        if b[:4] != MAGIC:
            raise StoreError("%s is not a midge store (bad magic)" % st.snap)
        if b[4] != VERSION:
            raise StoreError("%s has store version %d; this midge reads versions 1 and %d"
                             % (st.snap, b[4], VERSION))
        base = struct.unpack_from(">I", b, 8)[0]
        skip = _SNAP_HEAD
    elif len(b) >= _V1_HEAD and b[:8] == b"MIDG\x01\x00\x00\x00" and not _crc_ok(
            b"MIDG\x02\x00\x00\x00" + b[8:], _SNAP_HEAD):
        # version 1 (and not a version 2 header whose version byte went bad)
        base = struct.unpack_from(">I", b, 8)[0]
        skip = _V1_HEAD
    else:
        log.warning("store: %s: header damaged (%s); its records are still read", st.snap,
                    "CRC mismatch" if b[:4] == MAGIC else "not a midge snapshot header")
        base = -1
        skip = _SNAP_HEAD
    # a snapshot is renamed into place whole: a record cut short is damage too
    res = _load_file(st, st.snap, skip, broker, msgs, online)
    return base, skip, base < 0 or res != _CLEAN


def _seg_head(st, b, i):
    """The base field of a valid version 2 header of segment i; -1 if the
    CRC, magic or number is wrong (damage). Raises StoreError for a valid
    header of another version (a newer midge's store)."""
    if not _crc_ok(b, _SEG_HEAD) or b[:4] != b"MIDJ":
        return -1
    if b[4] != VERSION:
        raise StoreError("%s has store version %d; this midge reads versions 1 and %d"
                         % (st._seg(i), b[4], VERSION))
    base = struct.unpack_from(">I", b, 12)[0]
    return base if struct.unpack_from(">I", b, 8)[0] == i and base <= i else -1


def _base_from_segments(st):
    """The snapshot is damaged or missing: its base is the highest base
    field among the valid segment headers; -1 if there is none (then no
    segment is replayed, and all are moved aside)."""
    best = -1
    files = 0
    for name in st.fs.scan(st.dir):
        i = _seg_num(name)
        if i >= 0:
            files += 1
            try:
                base = _seg_head(st, _read_head(st, st._seg(i), _SEG_HEAD), i)
            except OSError:
                base = -1
            if base > best:
                best = base
    if files and st.fs.size(st.snap) < 0:
        st.missing_segments += 1
        log.warning("store: %s is missing", st.snap)
    if files:
        log.warning("store: %d segments; the journal base from their headers: %d", files, best)
    return best


def _scan(st, base):
    """One pass over the directory, a name at a time: marks segments
    base..base+_FAR present in st._segs and returns the highest (-1:
    none). Numbers further above are not the store's: left alone."""
    highest = -1
    far = 0
    example = None
    for name in st.fs.scan(st.dir):
        i = _seg_num(name)
        if i < base:
            continue  # not a segment, or below base (see _remove_stale)
        if i - base > _FAR:
            far += 1
            example = name
            continue
        st._segs[i - base] = _SEEN
        if i > highest:
            highest = i
    if far:
        log.warning("store: %d file(s) like %s/%s far above the journal (base %d): "
                    "not the store's, left alone", far, st.dir, example, base)
    return highest


def _load_journal(st, base, skip, broker, msgs, online):
    """Replay segments base..seq-1 in order (`skip` 12: a version 1
    store, whose segments have no header). A missing one is a gap:
    counted, and the later ones are still loaded. A damaged one is
    marked _BAD (moved aside), except a torn newest segment: what a
    crash during a commit leaves (it backed no acknowledgement), deleted
    with the loaded ones. An empty file is a commit cut off between open
    and write: no damage."""
    for i in range(base, st.seq):
        path = st._seg(i)
        if not st._segs[i - base]:
            st.missing_segments += 1
            log.warning("store: %s missing (a gap in the journal)", path)
            continue
        try:
            res = _CLEAN
            if skip == _V1_HEAD:
                res = _load_file(st, path, 0, broker, msgs, online)
            elif st.fs.size(path):
                b = _read_head(st, path, _SEG_HEAD)
                if len(b) < _SEG_HEAD and b"MIDJ\x02\x00\x00\x00"[:len(b)] == b[:8]:
                    st.damaged_records += 1
                    res = _TORN  # the header cut short
                elif _seg_head(st, b, i) < 0:
                    log.warning("store: %s: header damaged", path)
                    res = _DAMAGED
                else:
                    res = _load_file(st, path, _SEG_HEAD, broker, msgs, online)
        except OSError as e:
            log.warning("store: %s: %s", path, _errtext(e))
            res = _DAMAGED
        if res == _TORN and i == st.seq - 1:
            log.warning("store: %s: torn last write (a crash during a commit) discarded", path)
        elif res:
            st._segs[i - base] = _BAD


def _load_file(st, path, pos, broker, msgs, online):
    """Replay the records of one file after its `pos` header bytes, one
    record in memory at a time. A record with a bad CRC, or one that
    does not apply (it refers to a session or message whose record was
    lost), is counted as damaged and skipped; a length outside
    1..max_record_bytes stops the file before anything is allocated for
    it; a record that runs past the end is a torn write. Returns
    _CLEAN, _TORN (only the last record cut, nothing else wrong) or
    _DAMAGED."""
    fs = st.fs
    st._at = path
    total = fs.size(path)
    f = fs.open(path, "rb")
    res = _CLEAN
    try:
        if len(f.read(pos)) != pos:
            return _DAMAGED
        while pos < total:
            hdr = f.read(5)
            n = struct.unpack_from(">I", hdr, 0)[0] if len(hdr) == 5 else 0
            why = None
            skip = False  # True: the length is plausible, go on after this record
            if len(hdr) == 5 and (n < 1 or n > st.max_record_bytes):
                why = "length %d over the cap" % n  # nothing allocated for it; the rest is lost
            elif len(hdr) < 5 or pos + 8 + n > total:
                why = "runs past the end"
                if not res:
                    res = _TORN
            else:
                body = f.read(n - 1)
                crc = f.read(4)
                if len(crc) != 4:
                    why = "the file shrank"
                elif (binascii.crc32(body, binascii.crc32(hdr)) & 0xFFFFFFFF
                      != struct.unpack_from(">I", crc, 0)[0]):
                    why = "CRC mismatch"
                    skip = True
            if why is not None:
                st.damaged_records += 1
                log.warning("store: %s: damaged record at byte %d (%s)", path, pos, why)
                if not skip:
                    return res if res == _TORN else _DAMAGED
                res = _DAMAGED
            else:
                try:
                    _apply(st, broker, hdr[4], _Reader(body), msgs, online)
                    st._count += 1
                except MemoryError:
                    raise
                except Exception as e:  # loading goes on, never stops at a record
                    st.damaged_records += 1
                    log.warning("store: record at byte %d of %s (type %d) not applied: %r",
                                pos, path, hdr[4], e)
            body = None
            pos += 8 + n
    finally:
        f.close()
    return res


def _aside(st, path):
    """Rename a damaged file to <path>.damaged (a name no segment
    pattern matches), or .damaged<k> if that exists; never over an
    existing file, never deleted."""
    fs = st.fs
    new = path + ".damaged"
    k = 0
    while fs.size(new) >= 0:
        k += 1
        if k > _ASIDE_TRIES:
            raise StoreError("%s: cannot move it aside: %s1 .. %d exist" % (path, new, _ASIDE_TRIES))
        new = path + ".damaged" + str(k)
    st._at = path
    fs.rename(path, new)
    st.damaged_files += 1
    log.warning("store: %s damaged: moved aside to %s", path, new)


def _remove_stale(st, base, force):
    """Delete (or, force=True, move aside) every segment file numbered
    below `base` (every one for -1). The directory is not changed while
    it is read: each pass collects at most _BATCH numbers, then acts on
    them; it stops when a pass finds no more, or removed none of its
    batch (a file that cannot be removed)."""
    fs = st.fs
    while True:
        batch = []
        more = False
        for name in fs.scan(st.dir):
            i = _seg_num(name)
            if i >= 0 and (base < 0 or i < base):
                if len(batch) < _BATCH:
                    batch.append(i)
                else:
                    more = True
        gone = 0
        for i in batch:
            path = st._seg(i)
            if force:
                _aside(st, path)
            else:
                st._at = path
                fs.remove(path)
            if fs.size(path) < 0:
                gone += 1
        if not more or not gone:
            return


def _apply(st, broker, rtype, r, msgs, online):
    if rtype == R_RETAIN or rtype == R_RETAIN5:
        topic = r.s()
        qos = r.u8()
        if rtype == R_RETAIN5:
            left = r.u32()
            props = r.blob()
        payload = r.blob()
        msg = Message(topic, payload, qos, True)
        if rtype == R_RETAIN5:
            _v5(broker, msg, left, props)
        broker.restore_retained(msg)
        return
    if rtype == R_MSG or rtype == R_MSG5:
        mid = r.u32()
        topic = r.s()
        qos = r.u8()
        if rtype == R_MSG5:
            left = r.u32()
            props = r.blob()
        msg = Message(topic, r.blob(), qos, False)
        if rtype == R_MSG5:
            _v5(broker, msg, left, props)
        msg.mid = mid
        msg.store_gen = st.gen
        msgs[mid] = [msg, 0]  # [message, references from queues and inflight windows]
        if mid >= st._next_mid:
            st._next_mid = mid + 1
        return
    sid = r.u32()
    if rtype == R_SESSION:
        cid = r.s()
        s = broker.sessions.get(cid)
        if s is None:
            s = broker.sessions[cid] = Session(cid, False, broker.now_ms())
            s.store = st
        s.sid = sid
        st._sids[sid] = s
        if sid >= st._next_sid:
            st._next_sid = sid + 1
        return
    s = st._sids[sid]
    if rtype == R_SESSION_DEL:
        for e in s.queue:
            _unref(msgs, e[0])
        for e in s.inflight:
            _unref(msgs, e[1])
        broker.drop_session(s)
        del st._sids[sid]
        online.pop(s, None)
    elif rtype == R_SUB:
        filt = r.s()
        broker.restore_sub(s, filt, r.u8())
    elif rtype == R_SUB5:
        filt = r.s()
        broker.restore_sub(s, filt, r.u32())
    elif rtype == R_UNSUB:
        broker.restore_unsub(s, r.s())
    elif rtype == R_QUEUE or rtype == R_QUEUE5:
        msg = _ref(msgs, r.u32())
        qos = r.u8()
        if rtype == R_QUEUE5:
            retain = bool(r.u8())
            broker.flow.restore_queue(s, msg, qos, retain, _read_ids(r))
        else:
            broker.flow.restore_queue(s, msg, qos)
    elif rtype == R_DROP:
        _unref(msgs, broker.flow.dequeue(s)[0])
    elif rtype == R_SEND:
        # the queue head, with its options if any (as Delivery.pump sends it)
        e = broker.flow.dequeue(s)
        if len(e) > 2 and e[3] is not None:
            s.add_inflight([r.u16(), e[0], e[1], e[2], AWAIT_ACK, e[3]])
        else:
            s.add_inflight([r.u16(), e[0], e[1], len(e) > 2 and e[2], AWAIT_ACK])
    elif rtype == R_INFLIGHT or rtype == R_INFLIGHT5:
        msg = _ref(msgs, r.u32())
        pid = r.u16()
        qos = r.u8()
        retain = bool(r.u8())
        if rtype == R_INFLIGHT5:
            s.add_inflight([pid, msg, qos, retain, AWAIT_ACK, _read_ids(r)])
        else:
            s.add_inflight([pid, msg, qos, retain, AWAIT_ACK])
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
    elif rtype == R_WILL or rtype == R_WILL5:
        topic = r.s()
        qos = r.u8()
        retain = bool(r.u8())
        if rtype == R_WILL5:
            delay = r.u32()
            expiry = r.u32()
            props = r.blob()
        will = online[s] = Message(topic, r.blob(), qos, retain)
        if rtype == R_WILL5:
            if props:
                will.props = props
            if expiry != 0xFFFFFFFF:
                will.expiry_s = expiry
            if delay:
                will.delay_s = delay
    elif rtype == R_EXPIRY:
        s.expiry_s = r.u32()
    elif rtype == R_OWNER:
        s.user = r.s()
    elif rtype == R_WILL_DEL:
        online.pop(s, None)
    else:
        raise ValueError("unknown record type %d" % rtype)


# Loading keeps a message body only while a queue or inflight window refers
# to it, so a log full of delivered messages loads in the heap of the live
# state, not of everything the log ever held.

def _v5(broker, msg, left, props):
    """The MQTT 5 parts of a stored message: its forwarded properties and
    the expiry it had left when written (0xFFFFFFFF: none)."""
    if props:
        msg.props = props
    if left != 0xFFFFFFFF:
        msg.expires_ms = expiry_at(broker.uptime_ms, left)


def _read_ids(r):
    """Subscription identifiers (store._ids) as a tuple."""
    return tuple(r.u32() for i in range(r.u16()))


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
