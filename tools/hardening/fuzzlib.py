"""The case generator of tools/fuzz.py: pure functions, no sockets.

A case is one client session made from (seed, case number) alone: a valid
MQTT 3.1.1 script built with tools/mqttspec.py (the independent test
encoder, never midge's codec), then, in most cases, mutated. Everything a
case sends of its own is decided here by one RNG derived from the pair, so
make_case(seed, n) always returns the same bytes; only the split into
writes is timed at run time (the pauses are decided here too, but sleeping
is not exact). What a case sends in reply to what it receives (PUBACK,
PUBREC, PUBCOMP) follows an ack policy decided here and a second RNG of the
same pair, so a case replayed alone sends the same replies unless it had
received messages published by other cases running at the same time.
"""
import random

import mqttspec as m

# The broker config of a fuzz run (boards/<name>/board.json caps, then this).
FUZZ_CONFIG = {"sys_interval_s": 1}

SHARED_IDS = 12           # client ids fz0..fz11: takeovers, session reuse, evictions
LEVELS = ["fz", "a", "b", "c", "sensor", "temp", "x", "y", "0", "1", "é", "日本", "😀", "z-z"]
DOLLAR_ROOT = "$fz"       # a '$' topic the generator may retain ('#' does not match it)
INTERESTING = [0x00, 0x01, 0x02, 0x7F, 0x80, 0xFF, 0xFE, 0xC0, 0x3F, 0x10, 0x30, 0x32,
               0x34, 0x62, 0x82, 0xA2, 0xE0, 0x23, 0x2B, 0x24]


def case_rng(seed, number, stream="script"):
    """The RNG of one case (str seeds hash with SHA-512: stable everywhere)."""
    return random.Random("midge-fuzz:%d:%d:%s" % (seed, number, stream))


class Case:
    """One generated client session (see make_case)."""

    def __init__(self, seed, number):
        self.seed = seed
        self.number = number
        self.client_id = ""
        self.clean = True
        self.keepalive = 0
        self.protocol = 4
        self.will = None          # (topic, qos, retain)
        self.packets = []         # [(label, bytes)] after mutation, in send order
        self.writes = []          # [(bytes, pause_ms)]: the stream, split
        self.boundaries = set()   # stream offsets between two packets (replies go there)
        self.mutations = []       # descriptions, [] for an unmutated case
        self.read_mode = "normal" # normal | slow | never
        self.rcvbuf = None        # SO_RCVBUF before connect (slow readers)
        self.end = "disconnect"   # disconnect | shut | reset | idle
        self.ack_policy = "all"   # all | none | some | dup | wrongpid | late
        self.retained = []        # topics this case may have retained (cleanup)
        self.persistent = []      # client ids it connected with clean session 0 (cleanup)
        self.expect = None        # replies owed to an unmutated, in-limits case (fuzz.py checks)
        self.filters = []         # filters it subscribed to (unmutated: every delivery must match one)
        self.slowloris = False    # a partial CONNECT or nothing: the broker must close it itself

    def stream(self):
        return b"".join(p for _, p in self.packets)

    def literal(self):
        """The packets as a Python literal (a list of bytes)."""
        lines = ["["]
        for label, p in self.packets:
            lines.append("    %r,  # %s" % (p, label))
        lines.append("]")
        return "\n".join(lines)

    def summary(self):
        return ("case %d:%d id=%r clean=%d keepalive=%d proto=%d will=%r packets=%d bytes=%d "
                "writes=%d read=%s end=%s acks=%s mutations=%s" % (
                    self.seed, self.number, self.client_id, self.clean, self.keepalive,
                    self.protocol, self.will, len(self.packets), len(self.stream()),
                    len(self.writes), self.read_mode, self.end, self.ack_policy,
                    ",".join(self.mutations) or "none"))


# --- topics and filters -------------------------------------------------------------

def _level(rng):
    r = rng.random()
    if r < 0.85:
        return rng.choice(LEVELS)
    if r < 0.95:
        return "l%d" % rng.randrange(1000)
    if r < 0.98:
        return ""  # an empty level is valid ('a//b')
    return "L" * rng.randint(40, 140)  # long: some topics pass max_topic_length


def make_topic(rng):
    """A topic name (no wildcards); sometimes past max_topic_levels or
    max_topic_length, a '$' topic or a $SYS one (dropped by the broker)."""
    r = rng.random()
    if r < 0.8:
        root = "fz"
    elif r < 0.9:
        root = rng.choice(LEVELS)
    elif r < 0.95:
        root = DOLLAR_ROOT
    else:
        root = "$SYS"
    n = rng.choice((0, 1, 1, 2, 2, 2, 3, 3, 4)) if rng.random() < 0.97 else rng.randint(5, 11)
    t = "/".join([root] + [_level(rng) for _ in range(n)])
    return t


FIXED_FILTERS = ["#", "+", "+/+", "fz/#", "fz/+", "fz/+/+", "$SYS/#", "$SYS/broker/+",
                 "$SYS/broker/counters/#", "$SYS/broker/heap/alloc", DOLLAR_ROOT + "/#",
                 "+/a/#", "fz/a", "fz/a/b", "a/#"]
BAD_FILTERS = ["a/#/b", "a+", "#/", "fz/b#", "+a/b", "fz/##"]


def make_filter(rng):
    """A topic filter, usually valid; (filter, valid)."""
    r = rng.random()
    if r < 0.4:
        return rng.choice(FIXED_FILTERS), True
    if r < 0.95:
        levels = make_topic(rng).split("/")
        out = []
        for i, lv in enumerate(levels):
            x = rng.random()
            if x < 0.2:
                out.append("+")
            elif x < 0.3 and i == len(levels) - 1:
                out.append("#")
            else:
                out.append(lv)
        if rng.random() < 0.2 and out[-1] != "#":
            out.append("#")
        return "/".join(out), True
    return rng.choice(BAD_FILTERS), False


# MQTT filter matching for the fuzzer's own check (not midge's): the
# simulator's, written from the specification [MQTT-4.7.1], [MQTT-4.7.2-1].
from sim.accounting import topic_matches  # noqa: E402,F401


def _within_limits(s, max_length=128, max_levels=8):
    return len(s.encode("utf-8")) <= max_length and s.count("/") < max_levels


def has_controls(s):
    """A control character U+0001..U+001F or U+007F..U+009F: midge closes
    a connection that sends one in a topic, filter, client id, user name
    or will topic (README, "Protocol"), so nothing with one is stored."""
    return any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in s)


def _payload(rng):
    r = rng.random()
    if r < 0.1:
        n = 0
    elif r < 0.5:
        n = rng.randint(1, 16)
    elif r < 0.85:
        n = rng.randint(17, 256)
    elif r < 0.98:
        n = rng.randint(257, 1500)
    else:
        n = rng.randint(1500, 3900)
    if rng.random() < 0.5:
        return (bytes(rng.getrandbits(8) for _ in range(min(n, 64))) * (n // 64 + 1))[:n]
    return ((b"fz%d-" % rng.randrange(100000)) * (n // 6 + 1))[:n]


# --- the valid script ---------------------------------------------------------------

class _Script:
    def __init__(self, rng, case):
        self.rng = rng
        self.case = case
        self.packets = []
        self.pid = rng.randint(1, 65535)
        self.in_limits = True
        self.expect = {"connack": 0, "suback": [], "puback": [], "pubrec": [], "pubcomp": [],
                       "pingresp": 0, "filters": {}}  # filters: SUBSCRIBE pid -> its filters

    def next_pid(self):
        p = self.pid
        self.pid = p % 65535 + 1
        return p

    def add(self, label, data):
        self.packets.append([label, data])


def _connect(sc, case, rng):
    r = rng.random()
    if r < 0.4:
        cid = "fz%d" % rng.randrange(SHARED_IDS)
        sc.in_limits = False  # another case may take the session over
    elif r < 0.8:
        cid = "fzu-%d-%d" % (case.seed, case.number)
    elif r < 0.9:
        cid = ""
    elif r < 0.95:
        cid = "".join(rng.choice("abcé日😀-_/+#$") for _ in range(rng.randint(1, 23)))
        sc.in_limits = False  # short ones may be another case's id too
    else:
        cid = "fzlong-" + "x" * rng.randint(40, 70)  # some past max_client_id_length
        if len(cid) <= 64:
            sc.in_limits = False  # another case may have the same length
    clean = rng.random() < 0.55
    if cid == "" and rng.random() < 0.8:
        clean = True
    r = rng.random()
    if r < 0.3:
        keepalive = 0
    elif r < 0.7:
        keepalive = 60
    elif r < 0.75:
        keepalive = 65535
    elif r < 0.85:
        keepalive = rng.randint(1, 3)
    else:
        keepalive = rng.randint(10, 30)
    if 0 < keepalive < 10:
        sc.in_limits = False  # the broker may end it by keepalive
    r = rng.random()
    if r < 0.9:
        proto = ("MQTT", 4)
    elif r < 0.98:
        proto = ("MQIsdp", 3)
    else:
        proto = ("MQTT", 6)  # a level midge does not speak: CONNACK 1
    will = None
    kw = {}
    if rng.random() < 0.3:
        wt = make_topic(rng)
        if not _within_limits(wt):
            sc.in_limits = False
        will = (wt, rng.choice((0, 0, 1, 2)), rng.random() < 0.3)
        kw = dict(will_topic=wt, will_payload=_payload(rng)[:200], will_qos=will[1],
                  will_retain=will[2])
    if rng.random() < 0.1:
        kw["username"] = "u%d" % rng.randrange(100)
        if rng.random() < 0.5:
            kw["password"] = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 12)))
    case.client_id, case.clean, case.keepalive, case.protocol, case.will = cid, clean, keepalive, proto[1], will
    if cid and not clean:
        case.persistent.append(cid)
    if will is not None and will[2]:
        case.retained.append(will[0])
    if proto[1] == 6:
        sc.expect["connack"] = 1
    elif len(cid) > 64:  # past max_client_id_length (64, all boards)
        sc.expect["connack"] = 2
    elif cid == "" and not clean:
        sc.expect["connack"] = 2
    elif proto[1] == 3 and not 1 <= len(cid) <= 23:
        sc.expect["connack"] = 2  # MQTT 3.1: client ids of 1 to 23 characters
    sc.add("CONNECT", m.connect(cid, clean=clean, keepalive=keepalive, protocol_name=proto[0],
                                protocol_level=proto[1], **kw))


def _ops(sc, case, rng):
    n = rng.choice((0, 1, 2, 3, 3, 4, 5, 6, 8, 12))
    subscribed = []
    pending_rel = []
    for _ in range(n):
        r = rng.random()
        if r < 0.45:
            topic = make_topic(rng)
            qos = rng.choice((0, 0, 1, 1, 2))
            retain = rng.random() < 0.3
            payload = _payload(rng)
            if not _within_limits(topic):
                sc.in_limits = False
            if retain:
                case.retained.append(topic)
            pid = sc.next_pid() if qos else None
            pkt = m.publish(topic, payload, qos=qos, retain=retain, pid=pid)
            if len(pkt) > sc.max_packet:
                sc.in_limits = False  # closed: oversize_packets
            sc.add("PUBLISH q%d%s %r %dB" % (qos, " r" if retain else "", topic[:40], len(payload)), pkt)
            if qos == 1:
                sc.expect["puback"].append(pid)
            elif qos == 2:
                sc.expect["pubrec"].append(pid)
                if rng.random() < 0.85:
                    pending_rel.append(pid)
                if rng.random() < 0.1:  # resent before PUBREL: acknowledged, not delivered again
                    sc.add("PUBLISH q2 dup", m.publish(topic, payload, qos=2, retain=retain, dup=True, pid=pid))
                    sc.expect["pubrec"].append(pid)
        elif r < 0.6:
            filters = []
            for _ in range(rng.choice((1, 1, 1, 2, 3, 4))):
                flt, valid = make_filter(rng)
                # a filter past the topic caps or malformed gets 0x80 (README)
                filters.append((flt, rng.choice((0, 1, 2))))
            pid = sc.next_pid()
            sc.add("SUBSCRIBE %r" % (filters,), m.subscribe(pid, filters))
            sc.expect["suback"].append((pid, [q for _, q in filters]))
            sc.expect["filters"][pid] = [f for f, _ in filters]
            subscribed.extend(f for f, _ in filters)
            case.filters.extend(f for f, _ in filters)
        elif r < 0.67:
            pool = subscribed or [make_filter(rng)[0]]
            filters = [rng.choice(pool) for _ in range(rng.choice((1, 1, 2)))]
            if not all(_within_limits(f) and f not in BAD_FILTERS for f in filters):
                sc.in_limits = False
            sc.add("UNSUBSCRIBE %r" % (filters,), m.unsubscribe(sc.next_pid(), filters))
        elif r < 0.75:
            sc.add("PINGREQ", m.pingreq())
            sc.expect["pingresp"] += 1
        elif r < 0.83:
            # acknowledgements of guessed packet ids (the broker's ids start at 1)
            kind = rng.choice(("puback", "pubrec", "pubcomp", "pubrel"))
            pid = rng.randint(1, 10)
            sc.add("%s %d (guessed)" % (kind.upper(), pid), getattr(m, kind)(pid))
            if kind in ("puback", "pubrec"):
                # the guess may name a message in flight at the other QoS (a
                # PUBACK for a QoS 2 one, a PUBREC for a QoS 1 one): a
                # protocol error, the broker closes (issue 10)
                sc.in_limits = False
            if kind == "pubrel":
                sc.expect["pubcomp"].append(pid)
        elif pending_rel:
            pid = pending_rel.pop(0)
            sc.add("PUBREL %d" % pid, m.pubrel(pid))
            sc.expect["pubcomp"].append(pid)
        else:
            sc.add("PINGREQ", m.pingreq())
            sc.expect["pingresp"] += 1
    for pid in pending_rel:
        if rng.random() < 0.7:
            sc.add("PUBREL %d" % pid, m.pubrel(pid))
            sc.expect["pubcomp"].append(pid)


# --- mutations ---------------------------------------------------------------------

def _remaining_length_span(p):
    """(start, end) of the remaining length bytes of packet p, or None."""
    i = 1
    while i < len(p) and i < 5:
        if not p[i] & 0x80:
            return 1, i + 1
        i += 1
    return None


def _mutate_one(rng, packets):
    """Apply one random mutation to the packet list; returns its name."""
    if not packets:
        return "none"
    k = rng.randrange(len(packets))
    label, p = packets[k]
    p = bytearray(p)
    r = rng.random()
    if r < 0.16:
        for _ in range(rng.randint(1, 4)):
            if p:
                i = rng.randrange(len(p))
                p[i] ^= 1 << rng.randrange(8)
        name = "bitflip"
    elif r < 0.26:
        if p:
            p[rng.randrange(len(p))] = rng.choice(INTERESTING)
        name = "byte"
    elif r < 0.34:
        i = rng.randint(0, len(p))
        p[i:i] = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 16)))
        name = "insert"
    elif r < 0.42:
        if p:
            i = rng.randrange(len(p))
            del p[i:i + rng.randint(1, 8)]
        name = "delete"
    elif r < 0.48:
        p = p[:rng.randrange(len(p))] if p else p
        name = "truncate_packet"
    elif r < 0.53:
        # the stream ends inside this packet: everything after it is dropped
        p = p[:rng.randrange(len(p))] if p else p
        del packets[k + 1:]
        name = "truncate_stream"
    elif r < 0.6:
        packets.insert(rng.randint(k + 1, len(packets)), [label + " (copy)", bytes(p)])
        name = "duplicate"
    elif r < 0.67:
        j = rng.randrange(len(packets))
        packets[k], packets[j] = packets[j], packets[k]
        p = bytearray(packets[k][1])
        label = packets[k][0]
        name = "reorder"
    elif r < 0.77:
        span = _remaining_length_span(p)
        choice = rng.random()
        body = p[span[1]:] if span else p[2:]
        if choice < 0.3:
            # around max_packet_size of every board (the bytes must not depend on the board)
            new = m.encode_remaining_length(rng.choice((2047, 2048, 2049, 4095, 4096, 4097, 65536,
                                                        m.MAX_REMAINING_LENGTH,
                                                        rng.randint(2048, 1 << 24))))
        elif choice < 0.45:
            new = b"\xff\xff\xff\xff\x7f"  # five length bytes
        elif choice < 0.6:
            new = b"\x80\x80\x80\x00"      # a non-minimal zero
        else:
            # a little longer or shorter than the body
            new = m.encode_remaining_length(max(0, len(body) + rng.choice((-3, -2, -1, 1, 2, 5, 100))))
        p = bytearray(p[:1]) + bytearray(new) + body
        name = "length"
    elif r < 0.82:
        if p:
            p[0] = (p[0] & 0xF0) | rng.randrange(16)
        name = "flags"
    elif r < 0.87:
        if p:
            p[0] = (rng.randrange(16) << 4) | (p[0] & 0x0F)
        name = "type"
    elif r < 0.92:
        if len(p) >= 4:
            i = rng.randrange(2, len(p) - 1)
            v = rng.choice((0, 1, 0xFFFF, 0x7FFF, len(p), len(p) - i))
            p[i] = (v >> 8) & 0xFF
            p[i + 1] = v & 0xFF
        name = "u16"
    elif r < 0.96:
        junk = bytes([rng.getrandbits(8)]) + bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 20)))
        packets.insert(rng.randint(0, len(packets)), ["junk", junk])
        name = "junk"
    else:
        del packets[k]
        return "drop"
    packets[k] = [label + " [" + name + "]", bytes(p)]
    return name


def _split(rng, case, stream, bounds):
    """The stream as [(bytes, pause_ms)]; the pauses are small."""
    r = rng.random()
    cuts = set()
    if r < 0.15:
        mode = "single"
    elif r < 0.45:
        mode = "per_packet"
        cuts = set(bounds)
    elif r < 0.9:
        mode = "random"
        for _ in range(rng.randint(1, 20)):
            if stream:
                cuts.add(rng.randrange(1, len(stream) + 1))
        if rng.random() < 0.5:
            cuts |= set(bounds)
    else:
        mode = "bytewise"
        for i in range(1, min(len(stream), rng.randint(2, 40))):
            cuts.add(i)
    cuts = sorted(c for c in cuts if 0 < c < len(stream))
    writes = []
    prev = 0
    slow = rng.random() < 0.1
    for c in cuts + [len(stream)]:
        if c <= prev:
            continue
        if mode == "bytewise":
            pause = rng.choice((0, 0, 1, 2))
        elif slow:
            pause = rng.randint(20, 150)
        else:
            pause = rng.choice((0, 0, 0, 1, 2, 5, 10, 20))
        writes.append((stream[prev:c], pause))
        prev = c
    return mode, writes


def make_case(seed, number, max_packet=4096):
    """The case (seed, number): script, mutations, split, modes. The bytes
    depend on (seed, number) alone; max_packet (the board's
    max_packet_size) only decides whether an unmutated case is within the
    caps, so that its replies are checked."""
    rng = case_rng(seed, number)
    case = Case(seed, number)
    sc = _Script(rng, case)
    sc.max_packet = max_packet
    slowloris = rng.random() < 0.005
    _connect(sc, case, rng)
    if slowloris:
        # a partial CONNECT (or nothing) and silence: connect_timeout_ms
        p = sc.packets[0][1]
        sc.packets = [["CONNECT (partial, then silence)", p[:rng.randrange(len(p))]]]
        case.slowloris = True
        case.end = "idle"
        case.mutations.append("slowloris")
    else:
        _ops(sc, case, rng)
        r = rng.random()
        if r < 0.5:
            sc.add("DISCONNECT", m.disconnect())
            case.end = "disconnect"
        elif r < 0.77:
            case.end = "shut"
        elif r < 0.98:
            case.end = "reset"
        else:
            case.end = "idle"  # only a short keepalive or no session ends it (else shut)
        if rng.random() >= 0.25:
            for _ in range(rng.choice((1, 1, 1, 2, 2, 3))):
                case.mutations.append(_mutate_one(rng, sc.packets))
    packets = [(lb, bytes(p)) for lb, p in sc.packets]
    case.packets = packets
    if not case.mutations and sc.in_limits:
        case.expect = sc.expect
    stream = case.stream()
    bounds = []
    off = 0
    for _, p in packets:
        off += len(p)
        bounds.append(off)
    case.boundaries = set([0] + bounds)
    mode, case.writes = _split(rng, case, stream, bounds)
    case.split = mode
    r = rng.random()
    if r < 0.7:
        case.read_mode = "normal"
    elif r < 0.85:
        case.read_mode = "slow"
        case.rcvbuf = rng.choice((2048, 4096, 8192))
    else:
        case.read_mode = "never"
        if rng.random() < 0.5:
            case.rcvbuf = 4096
    r = rng.random()
    if r < 0.6:
        case.ack_policy = "all"
    elif r < 0.7:
        case.ack_policy = "none"
    elif r < 0.85:
        case.ack_policy = "some"
    elif r < 0.9:
        case.ack_policy = "dup"
    elif r < 0.95:
        case.ack_policy = "wrongpid"
        case.expect = None  # (a wrong id may be in flight at the other QoS: closed, as above)
    else:
        case.ack_policy = "late"
    case.quiet_ms = rng.choice((20, 30, 50, 80, 150))
    return case


def effects(case):
    """What the case's bytes may leave in the broker, read back from the
    stream with the independent decoder (mutations included): the topics
    of retained PUBLISHes and retained wills, and the client id of a clean
    session 0 CONNECT. Parsing stops at the first packet the decoder
    rejects (the broker closes the connection there too)."""
    retained, ids = [], []
    data = case.stream()
    first = True
    while data:
        try:
            pkt, used = m.parse(data)
        except Exception:
            break
        if pkt is None:
            break
        data = data[used:]
        if pkt["type"] == "publish":
            if has_controls(pkt["topic"]):
                break  # closed here
            if pkt["retain"]:
                retained.append(pkt["topic"])
        elif pkt["type"] == "connect" and first:
            if any(x is not None and has_controls(x) for x in
                   (pkt["client_id"], pkt["will_topic"], pkt.get("username"))):
                break  # refused: closed without a session or a will
            if pkt["will_topic"] is not None and pkt["will_retain"]:
                retained.append(pkt["will_topic"])
            if not pkt["clean"] and pkt["client_id"]:
                ids.append(pkt["client_id"])
        first = False
    return retained, ids


def ack_replies(case, pkt, rng):
    """What the case sends back for one received packet (a list of bytes):
    PUBACK for QoS 1, PUBREC for QoS 2, PUBCOMP for a PUBREL, as the ack
    policy says."""
    t = pkt["type"]
    if t == "publish" and pkt["qos"]:
        reply = m.puback if pkt["qos"] == 1 else m.pubrec
    elif t == "pubrel":
        reply = m.pubcomp
    else:
        return []
    pid = pkt["pid"]
    pol = case.ack_policy
    if pol == "none":
        return []
    if pol == "some" and rng.random() < 0.5:
        return []
    if pol == "wrongpid" and rng.random() < 0.5:
        pid = pid % 65535 + 1
    out = [reply(pid)]
    if pol == "dup" and rng.random() < 0.5:
        out.append(reply(pid))
    return out
