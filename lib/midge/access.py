# The broker's side of users, ACLs and per-user quotas (README, "Users, ACLs
# and TLS"): logins with the failure limit, the session count of a user,
# queue accounts, and the ACL checks made at SUBSCRIBE and at CONNECT.
# Loaded by the broker only when a password file, an ACL file or a per-user
# quota is configured (its code is heap on a board running .mpy files);
# Broker.admit, the check of every PUBLISH, stays in broker.py (hot path).
# No I/O; the password file and the ACL are auth.py's and acl.py's.
from . import log, topics
from .session import Account

_SHARE = "$share/"


def login(b, conn, user, password):
    """Check a user name and password against the password file. A peer
    address with auth_max_failures failures within auth_fail_window_s is
    refused without a check (auth_rate_limited): a check costs real CPU on
    a board (about 0.1-0.2 s on an ESP32, during which the broker does
    nothing else). Neither the user name nor the password is logged."""
    lim = b.limiter
    host = peer_host(conn)
    now = b.clock()
    if lim is not None and lim.limited(host, now):
        b.count("auth_rate_limited")
        log.info("login from %s refused unchecked: too many failures", host)
        return False
    if b.auth.check(user, password):
        if lim is not None:
            lim.succeeded(host)
        return True
    if lim is not None:
        lim.failed(host, now)
    b.count("auth_failures")
    log.info("login from %s failed", host)
    return False


def connect_acl(b, c, cid, user):
    """At CONNECT, once the client id is known: the client's ACL (None
    without an ACL file), or False to refuse it (not authorized): its will
    topic is not writable for it (as mosquitto: counted acl_denied), or,
    with a password file, the session of that client id belongs to another
    user: no one else takes it over or reads what it holds
    (client_id_refused)."""
    acl = b.acl.for_client(user, cid) if b.acl is not None else None
    if acl is not None and c.will_topic is not None and topics.name_ok(c.will_topic) \
            and not acl.can_write(c.will_topic):
        b.count("acl_denied")
        log.info("client %s refused: its will topic is not writable for it", cid)
        return False
    s = b.sessions.get(cid)
    if s is not None and b.auth is not None and s.user != user:
        b.count("client_id_refused")
        log.info("client %s refused: the session belongs to another user", cid)
        return False
    return acl


def attach(b, s, acl, present):
    """A CONNECT was accepted for session s: it takes the client's ACL
    (a resumed session's subscriptions are checked again: the ACL may have
    changed since they were made) and its user's queue account."""
    if acl is not None or s.acl is not None:
        s.acl = acl
        if s.wcache is not None:
            s.wcache = None
        if present:
            recheck_subs(b, s)
    if b.accounts is not None and s.account is None:
        open_account(b, s)


def restored(b):
    """The store was loaded: every session gets its user's queue account,
    and its ACL (offline sessions keep receiving: their subscriptions must
    be what the ACL allows now)."""
    acl = b.acl
    for s in b.sessions.values():
        if b.accounts is not None:
            open_account(b, s)
        if acl is not None:
            s.acl = acl.for_client(s.user, s.client_id)
            recheck_subs(b, s)


def user_sessions(b, user):
    """Sessions of `user` (None: anonymous), online and offline."""
    n = 0
    for s in b.sessions.values():
        if s.user == user:
            n += 1
    return n


def open_account(b, s):
    """Give a session its user's queue account (per-user queue quotas),
    with what it already holds (a session loaded from the store). Accounts
    are kept per user name while one of its sessions exists, anonymous
    clients sharing one: at most max_sessions of them."""
    a = b.accounts.get(s.user)
    if a is None:
        a = b.accounts[s.user] = Account(s.user)
    s.account = a
    a.sessions += 1
    a.queued += len(s.queue)
    a.queued_bytes += s.queued_bytes


def close_account(b, s):
    """A session is dropped (its queue already left the account,
    Delivery.forget): the account goes with its user's last session, so
    user names that come and go (unchecked without a password file) leave
    nothing behind."""
    a = s.account
    s.account = None
    a.sessions -= 1
    if a.sessions <= 0 and b.accounts.get(a.user) is a:
        del b.accounts[a.user]


def may_subscribe(b, s, filt):
    """The ACL's word on a NEW subscription of session s (its acl is set):
    every topic the filter can match must be readable (acl.py
    can_subscribe), for a shared subscription the filter inside it. A
    malformed filter is not the ACL's to refuse: True, and the caller
    answers it as malformed."""
    inner = inner_filter(filt)
    if topics.filter_levels(inner) is None:
        return True
    if s.acl.can_subscribe(inner):
        return True
    b.count("acl_denied")
    return False


def recheck_subs(b, s):
    """Drop the subscriptions of a session that its ACL no longer allows
    (the ACL file may have changed since they were made): at CONNECT of a
    resumed session, and for every session loaded from the store."""
    acl = s.acl
    if acl is None:
        return
    gone = []
    for filt in s.subs:
        if not acl.can_subscribe(inner_filter(filt)):
            gone.append(filt)
    for filt in gone:
        b.count("acl_denied")
        log.info("client %s: subscription %s dropped, the ACL no longer allows it", s.client_id, filt)
        b.unsubscribe_filter(s, filt)


def inner_filter(filt):
    """The filter of a `$share/group/filter` subscription (what it reads),
    else filt itself. A malformed share name comes back whole: the ACL
    refuses it, or shared.subscribe does."""
    if filt.startswith(_SHARE):
        i = filt.find("/", len(_SHARE))
        if i > 0:
            return filt[i + 1:]
    return filt


def peer_host(conn):
    """The client's address without its port (failed logins are counted
    per address: a new port is a new connection, not a new guesser)."""
    peer = getattr(conn, "peer", "?")
    i = peer.rfind(":")
    return peer[:i] if i > 0 else peer
