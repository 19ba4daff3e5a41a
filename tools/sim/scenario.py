# Scenario files: loading and validation, nothing else.
#
# Contract: load(path, board=None, duration_s=None) returns a plain dict with
# every key of the schema below filled in (defaults applied, placeholders in
# topics not yet expanded) or raises ScenarioError whose message names the
# key by its path (e.g. "sensors[1].qos") and the allowed range. The CLI
# turns ScenarioError into exit status 2. Broker config overrides ([broker])
# are NOT checked here beyond being a table of scalars: midge validates them
# itself at start (exit 2 with its own message, which the simulator shows).
#
# The schema is data (FIELDS): the README's scenario reference is checked
# against it by tests/host/test_sim_scenario.py.
import json
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BOARDS_DIR = os.path.join(ROOT, "boards")


def midge_defaults():
    """midge's own config defaults (lib/midge/config.py, read only)."""
    import hostlib
    hostlib.midge_on_path()
    from midge.config import DEFAULTS
    return dict(DEFAULTS)


class ScenarioError(ValueError):
    pass


class F:
    """One key: kind is int, float, bool, str, choice, filters; lo/hi bound
    numbers (None: unbounded); choices for 'choice'."""

    def __init__(self, kind, default, lo=None, hi=None, choices=None, doc="", required=False, shown=None):
        """shown: the default as the README writes it, when it is not a value."""
        self.kind, self.default, self.lo, self.hi = kind, default, lo, hi
        self.choices, self.doc, self.required = choices, doc, required
        self.shown = "required" if required else shown

    def default_text(self):
        if self.shown is not None:
            return self.shown
        v = self.default
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, float):
            return "%g" % v
        if v == "":
            return '`""`'
        return "`%s`" % v if isinstance(v, str) else str(v)

    def allowed(self):
        """The allowed range as the README writes it."""
        if self.kind in ("int", "float"):
            hi = "" if self.hi is None else _num(self.hi)
            return "%s..%s" % (_num(self.lo), hi)
        if self.kind == "bool":
            return "true, false"
        if self.kind == "choice":
            return ", ".join(self.choices)
        if self.kind == "filters":
            return "list of topic filters"
        return "string"

    def check(self, path, v):
        k = self.kind
        if k == "bool":
            if not isinstance(v, bool):
                raise ScenarioError("%s: %r is not true or false" % (path, v))
            return v
        if k in ("int", "float"):
            ok = isinstance(v, int) and not isinstance(v, bool)
            if k == "float":
                ok = ok or isinstance(v, float)
            if not ok:
                raise ScenarioError("%s: %r is not %s (allowed %s)" % (
                    path, v, "an integer" if k == "int" else "a number", self.allowed()))
            if (self.lo is not None and v < self.lo) or (self.hi is not None and v > self.hi):
                raise ScenarioError("%s: %s is out of range (allowed %s)" % (path, v, self.allowed()))
            return float(v) if k == "float" else v
        if k == "choice":
            v = str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
            if v not in self.choices:
                raise ScenarioError("%s: %r is not one of %s" % (path, v, self.allowed()))
            return v
        if k == "filters":
            if not isinstance(v, list) or not v or not all(isinstance(x, str) for x in v):
                raise ScenarioError("%s: %r is not a non-empty list of topic filters" % (path, v))
            for i, x in enumerate(v):
                err = filter_error(x)
                if err:
                    raise ScenarioError("%s[%d]: %r %s" % (path, i, x, err))
            return list(v)
        if not isinstance(v, str):
            raise ScenarioError("%s: %r is not a string" % (path, v))
        return v


def _num(x):
    return ("%g" % x) if isinstance(x, float) else str(x)


MAX_COUNT = 200
MAX_DURATION = 3600

# keys shared by sensors and subscribers: how a client connects and comes and goes
CLIENT = {
    "name": F("str", None, doc="group name (letters, digits, - and _); client ids are NAME-0, NAME-1, ...", required=True),
    "count": F("int", 1, 1, MAX_COUNT, doc="clients in the group"),
    "mqtt_version": F("choice", "3.1.1", choices=("3.1.1", "5"), doc="protocol level 4 or 5"),
    "clean_session": F("bool", True, doc="false: a persistent session (MQTT 5: clean start 0, longest session expiry) that keeps subscriptions and queued QoS 1/2 messages while offline"),
    "keepalive_s": F("int", 30, 0, 65535, doc="CONNECT keepalive; the client pings every half of it"),
    "start_s": F("float", None, 0, MAX_DURATION, shown="0 / 1", doc="when the group connects (default 0 for subscribers, 1 for sensors, so subscriptions exist before the first reading)"),
    "sleep_every_s": F("float", 0.0, 0, MAX_DURATION, doc="offline cycle: every this many seconds (phase random per client) the client sends DISCONNECT and goes offline; 0 never"),
    "sleep_for_s": F("float", 0.0, 0, MAX_DURATION, doc="length of each offline period (less than sleep_every_s)"),
    "disconnect_every_s": F("float", 0.0, 0, MAX_DURATION, doc="mean seconds between random disconnects WITHOUT DISCONNECT (socket just closed, so the will fires); 0 never"),
    "reconnect_s": F("float", 1.0, 0.05, 600, doc="wait before reconnecting after a lost or closed connection or a refused CONNECT"),
    "will_topic": F("str", "", doc="will topic ({name}, {i}, {id} expand); empty: no will"),
    "will_qos": F("int", 1, 0, 2, doc="will QoS"),
    "will_retain": F("bool", False, doc="will retain flag"),
}

SENSOR = dict(CLIENT)
SENSOR.update({
    "topic": F("str", "sensors/{name}/{i}", doc="topic of the readings; {name} group, {i} index, {id} client id"),
    "interval_s": F("float", 1.0, 0.001, 3600, doc="seconds between readings"),
    "jitter_s": F("float", 0.0, 0, 3600, doc="each interval is interval_s +- a uniform random amount up to this (at most interval_s)"),
    "payload_bytes": F("int", 64, 16, 268435455, doc="payload size (16-byte header + filler); the whole PUBLISH must fit the board's max_packet_size"),
    "qos": F("int", 1, 0, 2, doc="QoS of the readings"),
    "retain": F("bool", False, doc="readings are retained"),
})

SUBSCRIBER = dict(CLIENT)
SUBSCRIBER.update({
    "filters": F("filters", None, doc="topic filters, wildcards allowed ({name}, {i}, {id} expand)", required=True),
    "qos": F("int", 1, 0, 2, doc="requested QoS of every filter"),
    "read_rate_msgs_s": F("float", 0.0, 0, 1000000, doc="slow consumer: messages processed per second, with a small socket receive buffer; 0 reads as fast as it can"),
    "pause_every_s": F("float", 0.0, 0, MAX_DURATION, doc="slow consumer: stop reading (still connected, small receive buffer) every this many seconds; 0 never"),
    "pause_for_s": F("float", 0.0, 0, MAX_DURATION, doc="length of each reading pause"),
})

FAULT = {
    "kind": F("choice", None, choices=("broker_restart", "stall"), doc="broker_restart: kill -9 and restart on the same port and store; stall: a client stops reading and writing (a network stall)", required=True),
    "at_s": F("float", None, 0, MAX_DURATION, doc="when, seconds from the start (before duration_s)", required=True),
    "down_s": F("float", 1.0, 0, 600, doc="broker_restart: seconds between the kill and the restart"),
    "for_s": F("float", 5.0, 0.1, MAX_DURATION, doc="stall: how long"),
    "client": F("str", "", doc="stall: a client id (display-0) or a group name (all of it); needed for stall"),
}

VERDICT = {
    "min_heap_free_pct": F("float", 10.0, 0, 100, doc="heap low-water mark (min $SYS heap/free) below this % of the budget makes the run DEGRADED"),
    "max_behind_pct": F("float", 1.0, 0, 100, doc="readings a connected sensor could not send on time (inflight window full, broker backpressure, stall) above this % of those due make the run DEGRADED"),
    "max_latency_p99_ms": F("float", 0.0, 0, 3600000, doc="p99 latency of live QoS 1/2 deliveries above this makes the run DEGRADED; 0 does not check"),
}

TOP = {
    "name": F("str", None, shown="file name", doc="scenario name (letters, digits, - and _): default the file name without .toml; names the output folder"),
    "description": F("str", "", doc="free text, shown in the report"),
    "board": F("str", "esp32", doc="board profile boards/BOARD/board.json: heap budget (-X heapsize=unix_heapsize) and caps; --board overrides"),
    "duration_s": F("float", 30.0, 1, MAX_DURATION, doc="seconds of publishing; --duration overrides"),
    "drain_s": F("float", 3.0, 0, 600, doc="seconds the subscribers keep reading after the sensors stop"),
    "seed": F("int", 1, 0, 2 ** 32 - 1, doc="seed of the random jitter, phases and disconnects"),
    "store": F("bool", True, doc="give the broker a flash store (store_dir in a temporary folder); needed for persistent sessions to survive broker_restart"),
    "grace_s": F("float", 5.0, 0, 600, doc="accounting: a QoS 1/2 message is owed to a clean-session subscriber only if its connection lasted this long after the PUBACK (or to the end of the run)"),
}
TABLES = {"broker": "broker config overrides (keys of lib/midge/config.py, checked by midge)",
          "verdict": VERDICT}
LISTS = {"sensors": SENSOR, "subscribers": SUBSCRIBER, "faults": FAULT}
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,40}$")


def filter_error(f):
    """Why f is not a valid MQTT topic filter, or None [MQTT-4.7.1]."""
    if not f:
        return "is empty"
    levels = f.split("/")
    for i, lv in enumerate(levels):
        if "#" in lv and (lv != "#" or i != len(levels) - 1):
            return "has '#' not as the whole last level"
        if "+" in lv and lv != "+":
            return "has '+' not as a whole level"
    return None


def boards():
    try:
        return sorted(d for d in os.listdir(BOARDS_DIR)
                      if os.path.isfile(os.path.join(BOARDS_DIR, d, "board.json")))
    except OSError:
        return []


def load_board(name):
    """boards/<name>/board.json as a dict; ScenarioError for an unknown board."""
    path = os.path.join(BOARDS_DIR, name, "board.json")
    if not _NAME_RE.match(name or "") or not os.path.isfile(path):
        raise ScenarioError("board: unknown board %r (allowed %s)" % (name, ", ".join(boards())))
    with open(path) as f:
        return json.load(f)


def heap_bytes(size):
    """'200k' / '1m' / '4096' -> bytes (the -X heapsize syntax)."""
    s = str(size).strip().lower()
    mult = {"k": 1024, "m": 1024 * 1024}.get(s[-1:], 1)
    return int(s[:-1] if mult > 1 else s) * mult


def _fill(path, spec, data):
    if not isinstance(data, dict):
        raise ScenarioError("%s: must be a table, not %r" % (path or "scenario", data))
    for key in data:
        if key not in spec:
            raise ScenarioError("%s: unknown key (allowed: %s)" % (
                _join(path, key), ", ".join(sorted(spec))))
    out = {}
    for key, f in spec.items():
        p = _join(path, key)
        if key in data:
            out[key] = f.check(p, data[key])
        elif f.required:
            raise ScenarioError("%s: missing (%s)" % (p, f.doc))
        else:
            out[key] = f.default
    return out


def _join(path, key):
    return "%s.%s" % (path, key) if path else key


def expand(template, name, i):
    """Topic/filter placeholders: {name} group, {i} index, {id} client id."""
    return template.replace("{name}", name).replace("{i}", str(i)).replace("{id}", "%s-%d" % (name, i))


def validate(data, default_name="scenario", board=None, duration_s=None):
    """Raw parsed data -> the filled-in scenario dict (see module comment)."""
    if not isinstance(data, dict):
        raise ScenarioError("scenario: must be a table")
    top = {}
    for key in data:
        if key not in TOP and key not in TABLES and key not in LISTS:
            raise ScenarioError("%s: unknown key (allowed: %s)" % (
                key, ", ".join(sorted(list(TOP) + list(TABLES) + list(LISTS)))))
        if key in TOP:
            top[key] = data[key]
    sc = _fill("", TOP, top)
    if board is not None:
        sc["board"] = board
    if duration_s is not None:
        sc["duration_s"] = TOP["duration_s"].check("--duration", duration_s)
    if sc["name"] is None:
        sc["name"] = default_name
    if not _NAME_RE.match(sc["name"]):
        raise ScenarioError("name: %r must be 1..40 letters, digits, - or _" % sc["name"])
    sc["board_info"] = load_board(sc["board"])
    broker = data.get("broker", {})
    if not isinstance(broker, dict):
        raise ScenarioError("broker: must be a table of midge config keys")
    for k, v in broker.items():
        if isinstance(v, (dict, list)):
            raise ScenarioError("broker.%s: must be a number, string or boolean" % k)
        if k in ("host", "port", "store_dir"):
            raise ScenarioError("broker.%s: set by the simulator (127.0.0.1, a free port, a temporary store)" % k)
    if broker.get("sys_interval_s", 1) == 0:
        raise ScenarioError("broker.sys_interval_s: the simulator reads $SYS (allowed 1..86400)")
    sc["broker"] = dict(broker)
    sc["verdict"] = _fill("verdict", VERDICT, data.get("verdict", {}))
    for key, spec in LISTS.items():
        items = data.get(key, [])
        if not isinstance(items, list):
            raise ScenarioError("%s: must be an array of tables ([[%s]])" % (key, key))
        sc[key] = [_fill("%s[%d]" % (key, i), spec, it) for i, it in enumerate(items)]
    _cross_checks(sc)
    return sc


def effective_caps(sc):
    """Broker config as midge will see it, as far as the simulator needs it:
    board config, then [broker] overrides (raw; midge validates)."""
    caps = midge_defaults()
    caps.update(sc["board_info"].get("config", {}))
    caps.update(sc["broker"])
    return caps


def _cross_checks(sc):
    if not sc["sensors"] and not sc["subscribers"]:
        raise ScenarioError("scenario: needs at least one [[sensors]] or [[subscribers]] group")
    names = {}
    total = 0
    for kind in ("sensors", "subscribers"):
        for i, g in enumerate(sc[kind]):
            path = "%s[%d]" % (kind, i)
            if not _NAME_RE.match(g["name"]):
                raise ScenarioError("%s.name: %r must be 1..40 letters, digits, - or _" % (path, g["name"]))
            if g["name"] in names:
                raise ScenarioError("%s.name: %r is also the name of %s" % (path, g["name"], names[g["name"]]))
            names[g["name"]] = path
            total += g["count"]
            if g["start_s"] is None:
                g["start_s"] = 1.0 if kind == "sensors" else 0.0
            if g["start_s"] >= sc["duration_s"]:
                raise ScenarioError("%s.start_s: %s is not before duration_s %s" % (path, g["start_s"], sc["duration_s"]))
            if g["sleep_every_s"] and not 0 < g["sleep_for_s"] < g["sleep_every_s"]:
                raise ScenarioError("%s.sleep_for_s: %s must be above 0 and below sleep_every_s %s" % (
                    path, g["sleep_for_s"], g["sleep_every_s"]))
            if g["sleep_for_s"] and not g["sleep_every_s"]:
                raise ScenarioError("%s.sleep_for_s: needs sleep_every_s" % path)
            if g["will_topic"] and ("+" in g["will_topic"] or "#" in g["will_topic"]):
                raise ScenarioError("%s.will_topic: %r has a wildcard" % (path, g["will_topic"]))
    if total > MAX_COUNT:
        raise ScenarioError("scenario: %d clients in all (allowed 1..%d)" % (total, MAX_COUNT))
    caps = effective_caps(sc)
    max_packet = caps["max_packet_size"]
    for i, g in enumerate(sc["sensors"]):
        path = "sensors[%d]" % i
        if not g["topic"] or "+" in g["topic"] or "#" in g["topic"]:
            raise ScenarioError("%s.topic: %r must be a topic name without wildcards" % (path, g["topic"]))
        if g["jitter_s"] > g["interval_s"]:
            raise ScenarioError("%s.jitter_s: %s is above interval_s (allowed 0..%s)" % (
                path, g["jitter_s"], _num(g["interval_s"])))
        longest = max(len(expand(g["topic"], g["name"], j).encode()) for j in range(g["count"]))
        version = 5 if g["mqtt_version"] == "5" else 4
        from .mqtt import publish_size
        size = publish_size(longest, g["payload_bytes"], g["qos"], version)
        if size > max_packet:
            limit = g["payload_bytes"] - (size - max_packet)
            raise ScenarioError(
                "%s.payload_bytes: %d makes a %d-byte PUBLISH, over max_packet_size %d of board %s "
                "(allowed 16..%d with this topic)" % (path, g["payload_bytes"], size, max_packet,
                                                      sc["board"], limit))
    for i, g in enumerate(sc["subscribers"]):
        path = "subscribers[%d]" % i
        if g["pause_every_s"] and not 0 < g["pause_for_s"] < g["pause_every_s"]:
            raise ScenarioError("%s.pause_for_s: %s must be above 0 and below pause_every_s %s" % (
                path, g["pause_for_s"], g["pause_every_s"]))
    ids = set()
    for kind in ("sensors", "subscribers"):
        for g in sc[kind]:
            ids.update("%s-%d" % (g["name"], j) for j in range(g["count"]))
    for i, f in enumerate(sc["faults"]):
        path = "faults[%d]" % i
        if f["at_s"] >= sc["duration_s"]:
            raise ScenarioError("%s.at_s: %s is not before duration_s %s" % (path, f["at_s"], sc["duration_s"]))
        if f["kind"] == "stall":
            if f["client"] not in ids and f["client"] not in names:
                raise ScenarioError("%s.client: %r is no client id or group name (have: %s)" % (
                    path, f["client"], ", ".join(sorted(names))))
        elif f["client"]:
            raise ScenarioError("%s.client: only for kind = \"stall\"" % path)


def load(path, board=None, duration_s=None):
    """Read and validate a scenario file (.toml, or .json)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ScenarioError("cannot read scenario %s: %s" % (path, e))
    base = os.path.splitext(os.path.basename(path))[0]
    try:
        if path.endswith(".json"):
            data = json.loads(raw)
        else:
            import tomllib
            data = tomllib.loads(raw.decode("utf-8"))
    except ValueError as e:
        raise ScenarioError("%s: not valid %s: %s" % (path, "JSON" if path.endswith(".json") else "TOML", e))
    return validate(data, base, board, duration_s)


def reference_rows():
    """(section, key, default text, allowed, doc) for every key, for the
    README; the keys shared by sensors and subscribers once."""
    rows = []
    for key, f in TOP.items():
        rows.append(("top level", key, f.default_text(), f.allowed(), f.doc))
    for key, f in VERDICT.items():
        rows.append(("[verdict]", key, f.default_text(), f.allowed(), f.doc))
    for key, f in CLIENT.items():
        rows.append(("[[sensors]], [[subscribers]]", key, f.default_text(), f.allowed(), f.doc))
    for section, spec in (("[[sensors]]", SENSOR), ("[[subscribers]]", SUBSCRIBER), ("[[faults]]", FAULT)):
        for key, f in spec.items():
            if spec is FAULT or key not in CLIENT:
                rows.append((section, key, f.default_text(), f.allowed(), f.doc))
    return rows
