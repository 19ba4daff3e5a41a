# Start-up of the listeners (server.py imports this in Server.run and drops
# it once everything listens: its code is heap on a board running .mpy
# files): the listener plan from the config, anonymous access resolved, and
# the password and ACL files loaded into the broker, the TLS context, the
# listening sockets. Every refusal is a ConfigError naming the key
# (start-up exits 2; a board goes to setup mode).
# tools/deploy and tools/image run listener_plan on a board's settings
# before writing them, so they refuse what the board would.
from .compat import const, MICROPYTHON, listen_socket
from .errors import ConfigError
from . import log

_AUTH_PEERS = const(32)  # peer addresses whose failed logins are remembered (oldest forgotten)

# $SYS counters of the features a config may turn on (broker.COUNTERS has
# the rest): published only when the feature is configured (register_counters).
ACCESS_COUNTERS = ("anonymous_refused", "auth_failures", "auth_rate_limited", "acl_denied",
                   "client_id_refused", "user_quota_refused")
TLS_COUNTERS = ("tls_refused", "tls_handshake_timeouts")


def is_loopback(host):
    """True for an address only this machine can reach."""
    return host == "localhost" or host == "::1" or host.startswith("127.")


def listener_plan(cfg):
    """The listeners the config asks for, the main one first: tuples
    (name, host, port, tls, anonymous), anonymous access resolved (plain
    tuples: server.Listener is made from them, so nothing of this module
    outlives start-up). Raises
    ConfigError naming the key: a listener on a non-loopback address with
    allow_anonymous unset and no password_file (anyone on the network would
    get in without the operator saying so: as mosquitto 2.0, it refuses to
    start), a TLS listener without tls_cert_file/tls_key_file, two
    listeners on one address and port."""
    entries = [("host/port", cfg["host"], cfg["port"], False, cfg["allow_anonymous"])]
    lst = cfg["listeners"]
    for i in range(len(lst)):
        e = lst[i]
        entries.append(("listeners[%d]" % i, e["host"], e["port"], e["tls"], e["allow_anonymous"]))
    plan = []
    seen = {}
    for name, host, port, tls, anon in entries:
        key = "allow_anonymous" if name == "host/port" else name + ".allow_anonymous"
        if anon is None:
            if cfg["password_file"]:
                anon = False
            elif is_loopback(host):
                anon = True
            else:
                raise ConfigError(
                    "config key '%s': the listener %s on %s:%d is not on a loopback address and no "
                    "password_file is set: set %s true to let anyone on the network in, or set "
                    "password_file (tools/passwd makes one)" % (key, name, host, port, key))
        if tls and not (cfg["tls_cert_file"] and cfg["tls_key_file"]):
            raise ConfigError("config key 'tls_cert_file'/'tls_key_file': %s is a TLS listener and needs "
                              "both (tools/mkcert makes them)" % name)
        where = "%s:%d" % (host, port)
        if port and where in seen:
            raise ConfigError("config key '%s': %s is also %s" % (name, where, seen[where]))
        seen[where] = name
        plan.append((name, host, port, tls, anon))
    return plan


def register_counters(cfg, plan, broker):
    """Add the $SYS counters of the configured features to the broker's:
    ACCESS_COUNTERS once anything restricts access (a listener refusing
    anonymous clients, a password or ACL file, a per-user quota),
    TLS_COUNTERS with a TLS listener."""
    names = ()
    if (cfg["password_file"] or cfg["acl_file"] or cfg["max_sessions_per_user"] or cfg["max_queued_per_user"]
            or cfg["max_queued_bytes_per_user"] or not all(p[4] for p in plan)):
        names = ACCESS_COUNTERS
    if any(p[3] for p in plan):
        names = names + TLS_COUNTERS
    for name in names:
        broker.counters.setdefault(name, 0)


def load_access(cfg, broker):
    """Load the password file and the ACL file into the broker (auth.py and
    acl.py are imported only when their file is set); ConfigError naming
    the key."""
    path = cfg["password_file"]
    if path:
        from . import auth
        try:
            broker.auth = auth.Authenticator(auth.load_passwords(path))
        except ConfigError as e:
            raise ConfigError("config key 'password_file': %s" % e)
        broker.limiter = auth.FailureLimiter(cfg["auth_max_failures"], cfg["auth_fail_window_s"] * 1000,
                                             _AUTH_PEERS)
        log.info("password file %s: %d users", path, len(broker.auth.users))
    path = cfg["acl_file"]
    if path:
        from . import acl
        try:
            broker.acl = acl.load_acl(path)
        except ConfigError as e:
            raise ConfigError("config key 'acl_file': %s" % e)
        log.info("acl file %s loaded: what it does not grant is denied", path)


def start(server):
    """Server start-up before any client can connect: the listener plan
    (server.listeners, the main one first), the feature counters, the
    password and ACL files, the TLS certificate (tls.py is imported only
    for a TLS listener), then every listening socket. ConfigError names
    the key."""
    from .server import Listener
    cfg = server.cfg
    plan = listener_plan(cfg)
    for name, host, port, tls, anon in plan:
        server.listeners.append(Listener(name, host, port, tls, anon))
    register_counters(cfg, plan, server.broker)
    load_access(cfg, server.broker)
    if any(p[3] for p in plan):
        try:
            from . import tls
            server._tls = tls.context(cfg["tls_cert_file"], cfg["tls_key_file"])
        except (OSError, ValueError) as e:
            raise ConfigError("config key 'tls_cert_file'/'tls_key_file': cannot use %s and %s: %s"
                              % (cfg["tls_cert_file"], cfg["tls_key_file"], _errtext(e)))
    backlog = cfg["listen_backlog"] or cfg["max_clients"]
    for lst in server.listeners:
        try:
            lst.sock = listen_socket(lst.host, lst.port, backlog)
        except OSError as e:
            key = "host'/'port" if lst.name == "host/port" else lst.name
            raise ConfigError("config key '%s': cannot listen on %s:%d: %s"
                              % (key, lst.host, lst.port, _errtext(e)))
        if not MICROPYTHON:
            lst.port = lst.sock.getsockname()[1]  # config port 0: the one the system chose


def _errtext(e):
    """'[Errno 98] EADDRINUSE'-like text on both interpreters (MicroPython's
    OSError carries the number only, and its errno module names a few)."""
    code = e.args[0] if e.args else None
    if not isinstance(code, int) or len(e.args) > 1:
        return str(e)  # CPython: "[Errno 99] Cannot assign requested address"
    try:
        import errno
        name = errno.errorcode.get(code)
    except (ImportError, AttributeError):
        name = None
    return "[Errno %d] %s" % (code, name) if name else "[Errno %d]" % code
