# Configuration: one dict of defaults and one validating loader.
#
# Contract: load_config(overrides) returns a new dict holding every key of
# DEFAULTS. An unknown key, a value of the wrong type or a number outside its
# range raises ConfigError whose message names the key and the allowed range;
# callers stop start-up on it. Board profiles (boards/<name>/board.json) and
# the --config file are plain overrides of this same dict, applied in that
# order, so every key documented here can be set in either place.
#
# Sizes carry their unit in the name (_bytes, _ms, _s). Every cap that a
# client can push against is listed here together with what happens when it
# is hit; the broker counts each hit under $SYS/broker/counters/<counter>.
from .compat import const, unload, read_capped
from .errors import ConfigError  # noqa: F401  (raised here; importers take it from here too)

# A config file is about 1-2 KB; read_json refuses one past this size, and
# reads it in chunks (compat.read_capped), so it never holds more than twice
# the bytes of the file at once, whatever the file is (a device, a pipe).
_MAX_FILE_BYTES = const(16384)


# key: (default, minimum, maximum). A string default takes a string; for
# strings the "minimum" is a tuple of allowed values, or None for any string,
# and the "maximum" its longest length in UTF-8 bytes, or None.
SPEC = {
    # --- listener -----------------------------------------------------------
    "host": ("127.0.0.1", None, None),
    "port": (1883, 0, 65535),
    # Connections at once. One more is accepted and closed at once, without
    # reading anything (counter: clients_refused).
    "max_clients": (8, 1, 10000),
    # A socket that sends no complete CONNECT within this time is closed
    # (counter: connect_timeouts).
    "connect_timeout_ms": (5000, 100, 600000),
    # Connections the kernel (lwIP on a board) may hold waiting to be
    # accepted; 0: max_clients. MicroPython's own default is 5: a burst of
    # connects past it overflows the queue and the clients retry their SYN a
    # second later.
    "listen_backlog": (0, 0, 65535),
    # --- sessions -----------------------------------------------------------
    # Sessions kept, online and offline together. When full, a CONNECT for a
    # new client id evicts the least recently seen offline session (counter:
    # sessions_evicted); if every session is online it is refused with
    # CONNACK 3, server unavailable (counter: sessions_refused).
    "max_sessions": (16, 1, 100000),
    # Longest client id accepted; longer ones get CONNACK 2, identifier
    # rejected. MQTT 3.1.1 requires at least 23 [MQTT-3.1.3-5].
    "max_client_id_length": (64, 23, 65535),
    # Outbound QoS 1/2 messages awaiting PUBACK/PUBCOMP per session. Further
    # messages wait in the session queue (no counter: this is flow control).
    "max_inflight": (10, 1, 65535),
    # Inbound QoS 2 messages received but not yet released (PUBREL) per
    # session. A client that passes it is disconnected (counter:
    # inflight_in_exceeded); well-behaved clients keep far fewer.
    "max_inflight_in": (64, 1, 65535),
    # Messages waiting per session (offline, or inflight window full). When
    # either cap would be passed the OLDEST waiting message is dropped to
    # make room (counter: queue_dropped). QoS 0 messages are never queued
    # for an offline session (as mosquitto's default).
    "max_queued_messages": (32, 0, 1000000),
    "max_queued_bytes": (16384, 0, 1 << 30),
    # The same over ALL sessions, so that max_sessions x the per-session
    # caps need not fit the heap. Past either, the oldest message of the
    # receiving session makes room; if it has none queued, the new message
    # is dropped (counter: queue_dropped).
    "max_queued_total": (256, 0, 10000000),
    "max_queued_bytes_total": (65536, 0, 1 << 30),
    # Backpressure before dropping: while a CONNECTED subscriber's queue is
    # over half of either cap, the broker delays reading the next chunk
    # from other clients by up to this long (per read), so bursts slow the
    # publishers down instead of overflowing the queue. 0 turns it off.
    "backpressure_ms": (100, 0, 10000),
    # Filters per session. A filter past the cap gets SUBACK 0x80 (counter:
    # subscriptions_refused); re-subscribing an existing filter always works.
    "max_subscriptions": (16, 1, 100000),
    # Filters over all sessions, so that max_sessions x max_subscriptions
    # need not fit the heap (each costs a few hundred bytes of trie);
    # past it a new filter gets SUBACK 0x80 (counter: subscriptions_refused).
    "max_subscriptions_total": (128, 1, 10000000),
    # Topic filters in one SUBSCRIBE packet. Filters past it get SUBACK 0x80
    # without any work done for them (counter: subscriptions_refused); a
    # filter repeated in one packet is one subscription.
    "max_filters_per_packet": (16, 1, 65535),
    # --- messages and topics -------------------------------------------------
    # Whole packet, fixed header included. A larger packet closes the
    # connection as soon as its length field is read (counter:
    # oversize_packets); nothing past the header is buffered.
    "max_packet_size": (4096, 64, 268435460),
    # A topic name or filter longer (in UTF-8 bytes) or deeper (levels) than
    # this: a PUBLISH closes the connection, a SUBSCRIBE filter gets 0x80
    # (counter: topic_limit).
    "max_topic_length": (128, 1, 65535),
    "max_topic_levels": (8, 1, 1000),
    # MQTT 5 topic aliases per connection, each way: a client may set this
    # many (the broker's Topic Alias Maximum in CONNACK; an alias over it
    # closes the connection with DISCONNECT 0x94), and the broker uses at
    # most this many of the client's. Each costs a dict entry and keeps its
    # topic. 0: no aliases.
    "max_topic_aliases": (10, 0, 65535),
    # Longest keep alive a client may ask for, as mosquitto's max_keepalive;
    # 0: no limit (keep alive 0, never checked, allowed too). When set, an
    # MQTT 5 client asking for 0 or more gets this as Server Keep Alive in
    # CONNACK, and the broker checks it; an MQTT 3.1.1 client, which cannot
    # be told, is refused (CONNACK 2, identifier rejected, as mosquitto does).
    "max_keepalive_s": (0, 0, 65535),
    # MQTT 5 Response Information: sent in CONNACK to a client that asks for
    # it (Request Response Information 1), as the basis of the response
    # topics it may use (the broker gives it no other meaning). "": none is
    # sent, whatever the client asks. At most 255 bytes.
    "response_information": ("", None, 255),
    # --- retained messages ----------------------------------------------------
    # A retained message for a NEW topic that would pass either cap is not
    # stored (it is still delivered to current subscribers); replacing or
    # clearing an existing topic always works if the bytes fit (counter:
    # retained_refused). $SYS topics do not count against these caps.
    "max_retained_messages": (64, 0, 1000000),
    "max_retained_bytes": (16384, 0, 1 << 30),
    # --- slow consumers ---------------------------------------------------------
    # Bytes waiting to be written to one connection. Above it, QoS 0
    # messages for that client are dropped (counter: slow_dropped) and
    # QoS 1/2 messages wait in the session queue; retained messages for a new
    # subscription are fed in as the buffer drains.
    "max_outbound_bytes": (8192, 256, 1 << 30),
    # A write that cannot drain within this time closes the connection
    # (counter: slow_disconnects); its will is published.
    "write_timeout_ms": (10000, 100, 600000),
    # Replies (CONNACK, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK,
    # PINGRESP) are never dropped, so a client that sends requests without
    # reading the answers makes them pile up: a connection whose unsent
    # output passes max_outbound_bytes + max_packet_size + this is closed
    # (counter: output_overflows). Deliveries stop at max_outbound_bytes, and
    # one delivery is at most max_packet_size, so this is what replies get.
    "max_reply_bytes": (2048, 64, 1 << 30),
    # --- heap (MicroPython; ignored where free heap cannot be read) ------------
    # When free heap after a collection falls under this, the broker sheds
    # load in steps instead of letting MemoryError decide (README, "Heap
    # contract"): under it, CONNECTs that need a new session are refused
    # (counter: heap_refused) and QoS 0 messages for subscribers with unsent
    # output are dropped (counter: heap_dropped); under half of it, new
    # subscriptions and retained topics are refused too, new messages for
    # sessions that would have to queue them are dropped, and the oldest
    # queued messages of the largest queue go. 0 turns shedding off.
    "heap_reserve_bytes": (16384, 0, 1 << 30),
    # --- persistence (docs/STORE.md) -------------------------------------------
    # Directory of the flash store; "" keeps all state in memory only.
    "store_dir": ("", None, None),
    # Flash bytes the store may use. The log is compacted when it passes
    # half of this; if the compacted state is still over half, offline
    # persistent sessions are dropped, the one holding the most queued bytes
    # first, until it fits (counter: store_evicted).
    "store_max_bytes": (262144, 4096, 1 << 30),
    # Longest a record that backs no acknowledgement (a QoS 0 retained
    # update, a client's PUBACK) waits before it is written; retained
    # updates of one topic in that window are written once. Records behind
    # a PUBACK/PUBREC/SUBACK are written before the acknowledgement.
    "store_sync_ms": (1000, 0, 600000),
    # An offline persistent session unseen for this long is dropped
    # (counter: sessions_expired); 0 keeps sessions until evicted. The
    # clock restarts at boot (remaining time, not dates, is what a board can
    # keep).
    "session_expiry_s": (0, 0, 1 << 30),
    # --- $SYS and logging -------------------------------------------------------
    # Seconds between $SYS publications; 0 turns $SYS off.
    "sys_interval_s": (10, 0, 86400),
    "log_level": ("info", ("debug", "info", "warning", "error", "off"), None),
    # --- access (README, "Users, ACLs and TLS") --------------------------------------
    # Anonymous access (a CONNECT without a user name) on the main listener
    # (host, port); each entry of "listeners" has its own. Unset (null): allowed
    # on a loopback address when no password_file is set, refused otherwise;
    # a listener on any other address with neither a password file nor an
    # explicit allow_anonymous refuses to start (as mosquitto 2.0).
    "allow_anonymous": (None, None, None),
    # Users: lines "name:$pbkdf2-sha256$iterations$salt$hash" (tools/passwd).
    # "": no password file: a user name is taken as given, unchecked.
    "password_file": ("", None, None),
    # Access control (mosquitto's acl_file format); "": every client may
    # publish and subscribe everywhere. Once set, what it does not grant is
    # denied (counter: acl_denied).
    "acl_file": ("", None, None),
    # A failed login's refusing CONNACK is sent after this delay; a peer
    # address with auth_max_failures failed logins within auth_fail_window_s
    # is refused without a check until the window ends (counters:
    # auth_failures, auth_rate_limited).
    "auth_fail_delay_ms": (1000, 0, 60000),
    "auth_max_failures": (5, 1, 1000),
    "auth_fail_window_s": (60, 1, 86400),
    # Per-user quotas (0: none), so that one user's clients cannot take what
    # other users' sessions need: sessions one user may hold (a new one past
    # it evicts that user's own offline session, else CONNACK 0x97 / 3:
    # counter user_quota_refused), and messages and bytes waiting in that
    # user's queues (past it, the oldest message of that user's largest
    # queue makes room: queue_dropped). Anonymous clients count as one user.
    "max_sessions_per_user": (0, 0, 100000),
    "max_queued_per_user": (0, 0, 10000000),
    "max_queued_bytes_per_user": (0, 0, 1 << 30),
    # More listeners besides host/port: a list of objects {"host", "port",
    # "tls", "allow_anonymous"} (_check_listeners).
    "listeners": ([], None, None),
    # TLS listeners: the server certificate chain and its key (PEM files,
    # tools/mkcert), TLS connections at once (each costs mbedTLS buffers:
    # about 20 KB on an ESP32; one more is closed at once: tls_refused),
    # and the longest a TLS handshake may take (tls_handshake_timeouts).
    "tls_cert_file": ("", None, None),
    "tls_key_file": ("", None, None),
    "max_tls_clients": (2, 0, 10000),
    "tls_handshake_timeout_ms": (5000, 100, 600000),
}

# the keys of one entry of "listeners"
LISTENER_KEYS = ("host", "port", "tls", "allow_anonymous")
_MAX_LISTENERS = const(8)

DEFAULTS = {}
for _k in SPEC:
    DEFAULTS[_k] = SPEC[_k][0]


def _check(key, value):
    default, low, high = SPEC[key]
    if key == "listeners":
        return _check_listeners(value)
    if default is None or isinstance(default, bool):  # None: unset, or true/false
        if default is None and value is None:
            return None
        if not isinstance(value, bool):
            raise ConfigError("config key '%s': %r is not true or false" % (key, value))
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(
                "config key '%s': %r is not an integer (allowed %d..%d)" % (key, value, low, high))
        if value < low or value > high:
            raise ConfigError(
                "config key '%s': %d is out of range (allowed %d..%d)" % (key, value, low, high))
        return value
    if not isinstance(value, str):
        raise ConfigError("config key '%s': %r is not a string" % (key, value))
    if low is not None and value not in low:
        raise ConfigError(
            "config key '%s': %r is not one of %s" % (key, value, ", ".join(low)))
    if high is not None and len(value.encode()) > high:
        raise ConfigError(
            "config key '%s': %d bytes is too long (allowed 0..%d bytes)" % (key, len(value.encode()), high))
    return value


def _check_listeners(value):
    """The "listeners" list, each entry checked by name (listeners[i].key):
    host a string, port 0..65535, tls and allow_anonymous true or false."""
    if not isinstance(value, list):
        raise ConfigError("config key 'listeners': %r is not a list of listener objects" % (value,))
    if len(value) > _MAX_LISTENERS:
        raise ConfigError("config key 'listeners': %d entries (allowed 0..%d)" % (len(value), _MAX_LISTENERS))
    out = []
    for i in range(len(value)):
        entry = value[i]
        name = "listeners[%d]" % i
        if not isinstance(entry, dict):
            raise ConfigError("config key '%s': %r is not an object {\"host\", \"port\", \"tls\", "
                              "\"allow_anonymous\"}" % (name, entry))
        for k in entry:
            if k not in LISTENER_KEYS:
                raise ConfigError("config key '%s': unknown key '%s' (allowed: %s)"
                                  % (name, k, ", ".join(LISTENER_KEYS)))
        if "port" not in entry:
            raise ConfigError("config key '%s.port' is missing (allowed 0..65535)" % name)
        port = entry["port"]
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigError("config key '%s.port': %r is out of range (allowed 0..65535)" % (name, port))
        host = entry.get("host", "127.0.0.1")
        if not isinstance(host, str) or not host:
            raise ConfigError("config key '%s.host': %r is not an address" % (name, host))
        tls = entry.get("tls", False)
        if tls is not True and tls is not False:
            raise ConfigError("config key '%s.tls': %r is not true or false" % (name, tls))
        anon = entry.get("allow_anonymous")
        if anon is not None and anon is not True and anon is not False:
            raise ConfigError("config key '%s.allow_anonymous': %r is not true or false" % (name, anon))
        out.append({"host": host, "port": port, "tls": tls, "allow_anonymous": anon})
    return out


def load_config(*overrides):
    """Merge override dicts over DEFAULTS, later ones winning; validate all."""
    cfg = dict(DEFAULTS)
    for layer in overrides:
        if not layer:
            continue
        for key in layer:
            if key not in SPEC:
                raise ConfigError("unknown config key '%s'" % key)
            cfg[key] = _check(key, layer[key])
    return cfg


def read_json(path):
    """Parse a JSON config file: one object of keys, parsed strictly and the
    same on both interpreters (jsonparse). An unreadable file, one larger
    than _MAX_FILE_BYTES, a syntax error (with its line and column), a
    document too big for the heap or a value that is not an object raise
    ConfigError naming the file. The parser's code is dropped again
    afterwards (it is heap on a board running .mpy files)."""
    from . import jsonparse
    try:
        text = read_capped(path, _MAX_FILE_BYTES)
        if text is not None:
            data = jsonparse.loads(text)
    except OSError as e:
        raise ConfigError("cannot read config file %s: %s" % (path, e))
    except ValueError as e:  # from jsonparse, with line and column
        raise ConfigError("config file %s is not valid JSON: %s" % (path, e))
    except MemoryError:  # a parsed value of many small parts, on a device
        text = None  # free the file's bytes before formatting the message
        raise ConfigError("config file %s: not enough memory to read it" % path)
    finally:
        jsonparse = None
        unload("midge.jsonparse")
    if text is None:
        raise ConfigError("config file %s is larger than %d bytes" % (path, _MAX_FILE_BYTES))
    if not isinstance(data, dict):
        raise ConfigError("config file %s must hold one JSON object" % path)
    return data

