# Users, ACLs and quotas in the broker core (README, "Users, ACLs and
# TLS"): packets go in through handlers.handle and the QoS 0 fast path
# exactly as Connection._handle hands them over (test_forward.feed), and
# what clients receive is parsed with the independent mqttspec.
#
# BROKER_DECISIONS is the table of access decisions made through the broker
# (publish on the full and the fast path, subscribe, retained delivery,
# $SYS, takeover of another user's client id); tests/test_acl.py has the
# rule-level table (ACL_DECISIONS).
import mqttspec as m
from fakeconn import FakeConn, make_broker, publishes, payloads, Clock
from test_forward import feed
from midge import auth
from midge.acl import parse_acl

ITER = 2  # PBKDF2 iterations in these tests: the check, not its cost, is tested here

USERS = {"alice": "wonder", "bob": "builder", "sys": "admin"}

ACL_TEXT = """
# anonymous clients
topic read public/#

user alice
topic readwrite home/#
topic deny home/secret

user bob
topic write home/bob/+
topic read public/#

user sys
topic read $SYS/#
topic read #

pattern readwrite devices/%u/#
"""


def access_broker(clock=None, acl=True, **cfg):
    cfg.setdefault("sys_interval_s", 0)
    b = make_broker(clock, password_file="x", **cfg)  # (the file itself is loaded by the server)
    users = {}
    for name in USERS:
        users[name] = auth.hash_password(USERS[name], ITER)
    b.auth = auth.Authenticator(users)
    b.limiter = auth.FailureLimiter(b.cfg["auth_max_failures"], b.cfg["auth_fail_window_s"] * 1000, 8)
    if acl:
        b.acl = parse_acl(ACL_TEXT.split("\n"), "acl")
    return b


def login(b, cid, user=None, password=None, clean=True, will=None, peer="10.0.0.9:5000"):
    """(conn, CONNACK return code or None when it is held back)."""
    conn = FakeConn()
    conn.peer = peer
    pw = None if password is None else password.encode()
    kw = {}
    if will is not None:
        kw = {"will_topic": will, "will_payload": b"gone"}
    feed(b, conn, m.connect(cid, clean=clean, username=user, password=pw, **kw))
    pkts = conn.take()
    if not pkts:
        return conn, None
    assert pkts[0]["type"] == "connack"
    return conn, pkts[0]["rc"]


def user_conn(b, cid, user):
    conn, rc = login(b, cid, user, USERS.get(user) if user else None)
    assert rc == 0, (cid, user, rc)
    return conn


def leave(b, conn):
    """DISCONNECT, and the detach the connection layer then does."""
    feed(b, conn, m.disconnect())
    b.detach(conn, True)


def persistent(b, cid, user):
    """A clean session 0 client of `user`, connected."""
    conn, rc = login(b, cid, user, USERS[user], clean=False)
    assert rc == 0, rc
    return conn


def suback_code(b, conn, filt, pid=1):
    feed(b, conn, m.subscribe(pid, [(filt, 1)]))
    pkts = conn.take()
    assert pkts[0]["type"] == "suback"
    conn.out = b"".join(p["raw"] for p in pkts[1:])  # retained messages stay for the caller
    return pkts[0]["codes"][0]


# --- logins ----------------------------------------------------------------------

def test_good_and_bad_passwords():
    b = access_broker(acl=False)
    assert login(b, "c1", "alice", "wonder")[1] == 0
    for user, pw in (("alice", "wrong"), ("nobody", "x"), ("alice", None)):
        conn, rc = login(b, "c2", user, pw)
        assert rc is None  # held back: the connection sends it auth_fail_delay_ms later
        assert conn.reply_later[0] == 0x20 and conn.reply_later[3] == 4, conn.reply_later  # bad user name or password
        assert conn.reply_delay_ms == b.cfg["auth_fail_delay_ms"]
        assert conn.closing and conn.session is None
    assert b.counters["auth_failures"] == 3
    assert "c2" not in b.sessions


def test_no_delay_configured_answers_at_once():
    b = access_broker(acl=False, auth_fail_delay_ms=0)
    assert login(b, "c", "alice", "nope")[1] == 4


def test_anonymous_refused_once_a_password_file_is_set_unless_allowed():
    b = access_broker(acl=False)
    assert login(b, "anon")[1] == 5
    assert b.counters["anonymous_refused"] == 1
    b = access_broker(acl=False, allow_anonymous=True)
    assert login(b, "anon")[1] == 0


def test_a_listener_decides_anonymous_access():
    class L:
        anonymous = False
    b = make_broker(allow_anonymous=True)
    conn = FakeConn()
    conn.listener = L()
    feed(b, conn, m.connect("a"))
    assert conn.take()[0]["rc"] == 5
    L.anonymous = True
    conn = FakeConn()
    conn.listener = L()
    feed(b, conn, m.connect("a"))
    assert conn.take()[0]["rc"] == 0


def test_without_a_password_file_a_user_name_is_taken_as_given():
    b = make_broker()
    conn = FakeConn()
    feed(b, conn, m.connect("c", username="whoever", password=b"anything"))
    assert conn.take()[0]["rc"] == 0
    assert b.sessions["c"].user == "whoever"
    b = make_broker(allow_anonymous=False)
    conn = FakeConn()
    feed(b, conn, m.connect("c", username="whoever", password=b"anything"))
    assert conn.take()[0]["rc"] == 5


def test_failed_logins_are_rate_limited_per_address():
    clock = Clock()
    b = access_broker(clock, acl=False, auth_fail_delay_ms=0, auth_max_failures=3, auth_fail_window_s=10)
    for i in range(3):
        assert login(b, "x", "alice", "bad", peer="10.0.0.7:%d" % (4000 + i))[1] == 4
    # the right password from that address is refused unchecked now
    assert login(b, "x", "alice", "wonder", peer="10.0.0.7:4100")[1] == 4
    assert b.counters["auth_rate_limited"] == 1 and b.counters["auth_failures"] == 3
    # another address is not affected
    assert login(b, "y", "alice", "wonder", peer="10.0.0.8:4000")[1] == 0
    clock.advance(10001)
    assert login(b, "x", "alice", "wonder", peer="10.0.0.7:4200")[1] == 0


def test_assigned_client_ids_are_random():
    b = make_broker(max_sessions=100)
    ids = set()
    for i in range(20):
        conn = FakeConn()
        feed(b, conn, m.connect("", clean=True))
        assert conn.take()[0]["rc"] == 0
        cid = conn.session.client_id
        assert cid.startswith("midge-") and len(cid) == 6 + 16
        int(cid[6:], 16)
        ids.add(cid[6:])
    assert len(ids) == 20
    # consecutive ids share no counter: not one differs from another by a small step
    nums = sorted(int(x, 16) for x in ids)
    assert min(nums[i + 1] - nums[i] for i in range(len(nums) - 1)) > 1000


# --- the table of decisions made through the broker ------------------------------

# (user, action, topic or filter, expected)
#   publish   a QoS 0 PUBLISH, first on the full path, then on the fast path:
#             expected True = delivered (to a reader of everything), both times
#   publish1  a QoS 1 PUBLISH: delivered or not, and the PUBACK is sent either way
#   subscribe SUBSCRIBE: expected True = granted
#   retained  SUBSCRIBE to the filter while retained messages exist on
#             home/a, home/secret, public/x, devices/alice/t: expected is
#             the sorted topics delivered
#   takeover  CONNECT with the client id of alice's session: expected rc
BROKER_DECISIONS = [
    ("alice", "publish", "home/kitchen", True),
    ("alice", "publish", "home/secret", False),
    ("alice", "publish", "public/x", False),
    ("alice", "publish", "devices/alice/t", True),
    ("alice", "publish", "devices/bob/t", False),
    ("bob", "publish", "home/bob/door", True),
    ("bob", "publish", "home/bob/door/x", False),
    ("bob", "publish", "home/kitchen", False),
    (None, "publish", "public/x", False),
    ("alice", "publish1", "home/kitchen", True),
    ("alice", "publish1", "home/secret", False),
    ("alice", "subscribe", "home/#", False),          # meets the deny rule home/secret
    ("alice", "subscribe", "home/+/temp", True),
    ("alice", "subscribe", "home/kitchen", True),
    ("alice", "subscribe", "home/secret", False),
    ("alice", "subscribe", "#", False),
    ("alice", "subscribe", "$share/g/home/kitchen", True),
    ("alice", "subscribe", "$share/g/public/#", False),
    ("bob", "subscribe", "home/bob/+", False),          # write only
    ("bob", "subscribe", "public/#", True),
    (None, "subscribe", "public/#", True),
    (None, "subscribe", "devices/#", False),
    ("alice", "subscribe", "$SYS/#", False),
    ("sys", "subscribe", "$SYS/#", True),
    ("sys", "subscribe", "$SYS/broker/uptime", True),
    ("bob", "subscribe", "$SYS/broker/uptime", False),
    ("sys", "subscribe", "#", True),
    ("alice", "retained", "home/+", []),             # refused whole: it could match home/secret
    ("alice", "retained", "home/a", ["home/a"]),
    ("alice", "retained", "devices/alice/#", ["devices/alice/t"]),
    (None, "retained", "public/#", ["public/x"]),
    ("sys", "retained", "#", ["devices/alice/t", "home/a", "home/secret", "public/x"]),
    ("alice", "takeover", "", 0),
    ("bob", "takeover", "", 5),
    (None, "takeover", "", 5),
]


def _decide(user, action, topic):
    b = access_broker(allow_anonymous=True)
    n = [0]

    def conn_of(u):
        n[0] += 1
        return user_conn(b, "%s-%d" % (u or "anon", n[0]), u)

    if action in ("publish", "publish1"):
        reader = user_conn(b, "reader", "sys")
        assert suback_code(b, reader, "#") == 1
        p = conn_of(user)
        got = []
        if action == "publish":
            for i in range(2):
                feed(b, p, m.publish(topic, b"%d" % i))
                got.append(len(publishes(reader.take())) == 1)
            assert p.take() == []
            assert got[0] == got[1], got  # the full path and the fast path agree
        else:
            feed(b, p, m.publish(topic, b"q1", qos=1, pid=7))
            acks = p.take()
            assert acks[0]["type"] == "puback" and acks[0]["pid"] == 7  # acknowledged either way
            got.append(len(publishes(reader.take())) == 1)
        return got[0]
    if action == "subscribe":
        c = conn_of(user)
        code = suback_code(b, c, topic)
        assert code in (1, 0x80), code
        return code == 1
    if action == "retained":
        writer = user_conn(b, "writer", "alice")
        b.acl = None  # the messages are put in place without the ACL
        writer.session.acl = None
        for t in ("home/a", "home/secret", "public/x", "devices/alice/t"):
            feed(b, writer, m.publish(t, b"r", retain=True))
        b.acl = parse_acl(ACL_TEXT.split("\n"), "acl")
        c = conn_of(user)
        code = suback_code(b, c, topic)
        return sorted(x["topic"] for x in publishes(m.parse_all(c.out)[0])) if code != 0x80 else []
    if action == "takeover":
        owner = user_conn(b, "dev1", "alice")
        conn, rc = login(b, "dev1", user, USERS.get(user) if user else None)
        if rc == 0:
            assert owner.closed == 1 and b.sessions["dev1"].conn is conn
        else:
            assert owner.closed == 0 and b.sessions["dev1"].conn is owner
            assert b.counters["client_id_refused"] == 1
        return rc
    raise ValueError(action)


def test_broker_decisions_table():
    wrong = []
    for user, action, topic, expected in BROKER_DECISIONS:
        got = _decide(user, action, topic)
        if got != expected:
            wrong.append((user, action, topic, expected, got))
    assert not wrong, "decisions that differ from the table: %r" % wrong


def test_a_denied_publish_is_not_delivered_on_the_fast_path():
    # The route of home/secret is cached by a publisher allowed to write
    # there; alice, denied, then publishes to the same topic through the
    # fast path (forward_qos0 handles it, as feed() counts) and nothing is
    # delivered.
    b = access_broker()
    reader = user_conn(b, "reader", "sys")
    assert suback_code(b, reader, "home/#") == 1
    writer = user_conn(b, "w", "alice")
    writer.session.acl = None  # an allowed writer fills the route cache
    assert feed(b, writer, m.publish("home/secret", b"ok")) == 0
    assert feed(b, writer, m.publish("home/secret", b"ok")) == 1
    assert payloads(reader.take()) == [b"ok", b"ok"]
    alice = user_conn(b, "a", "alice")
    denied = b.counters.get("acl_denied", 0)
    assert feed(b, alice, m.publish("home/secret", b"leak")) == 1  # the fast path took it...
    assert reader.take() == []                                    # ...and delivered nothing
    assert b.counters["acl_denied"] == denied + 1
    assert feed(b, alice, m.publish("home/kitchen", b"fine")) == 0
    assert feed(b, alice, m.publish("home/kitchen", b"fine")) == 1
    assert payloads(reader.take()) == [b"fine", b"fine"]


def test_will_topic_must_be_writable():
    b = access_broker()
    conn, rc = login(b, "w1", "alice", "wonder", will="home/secret")
    assert rc == 5 and b.counters["acl_denied"] == 1
    conn, rc = login(b, "w2", "alice", "wonder", will="home/alice/status")
    assert rc == 0


def test_resumed_session_loses_subscriptions_the_acl_no_longer_allows():
    b = access_broker()
    c = persistent(b, "keep", "alice")
    assert suback_code(b, c, "home/kitchen") == 1
    assert suback_code(b, c, "home/hall", 2) == 1
    leave(b, c)
    b.acl = parse_acl(ACL_TEXT.replace("topic readwrite home/#", "topic readwrite home/kitchen").split("\n"), "acl")
    persistent(b, "keep", "alice")
    assert sorted(b.sessions["keep"].subs) == ["home/kitchen"]


# --- quotas ---------------------------------------------------------------------

def test_one_users_clients_never_evict_another_users_sessions():
    b = access_broker(acl=False, max_sessions=3)
    for cid in ("b1", "b2"):
        leave(b, persistent(b, cid, "bob"))
    a = user_conn(b, "a1", "alice")
    # the table is full: alice's next client may not evict bob's offline sessions
    conn, rc = login(b, "a2", "alice", "wonder")
    assert rc == 3 and b.counters["sessions_refused"] == 1
    assert "b1" in b.sessions and "b2" in b.sessions
    # bob's own newcomer evicts one of bob's
    persistent(b, "b3", "bob")
    assert b.counters["sessions_evicted"] == 1 and ("b1" in b.sessions) != ("b2" in b.sessions)
    assert a.session is b.sessions["a1"]


def test_max_sessions_per_user():
    b = access_broker(acl=False, max_sessions_per_user=2)
    user_conn(b, "a1", "alice")
    a2 = persistent(b, "a2", "alice")
    conn, rc = login(b, "a3", "alice", "wonder")
    assert rc == 3 and b.counters["user_quota_refused"] == 1
    user_conn(b, "b1", "bob")  # bob has his own quota
    user_conn(b, "b2", "bob")
    # an offline session of alice's makes room for her next one
    leave(b, a2)
    user_conn(b, "a3", "alice")
    assert "a2" not in b.sessions and b.counters["sessions_evicted"] == 1


def test_max_queued_per_user_drops_only_that_users_messages():
    b = access_broker(acl=False, max_queued_per_user=3, max_queued_total=100)
    offline = {}
    for cid, user in (("a1", "alice"), ("a2", "alice"), ("b1", "bob")):
        conn = persistent(b, cid, user)
        assert suback_code(b, conn, "q/#") == 1
        leave(b, conn)
        offline[cid] = b.sessions[cid]
    p = user_conn(b, "p", "alice")
    for i in range(4):
        feed(b, p, m.publish("q/%d" % i, b"m%d" % i, qos=1, pid=i + 1))
    a = b.accounts["alice"]
    assert a.queued == 3  # alice's two sessions hold at most 3 between them
    assert len(offline["a1"].queue) + len(offline["a2"].queue) == 3
    # bob's quota is his own: alice's messages took none of it
    assert len(offline["b1"].queue) == 3 and b.accounts["bob"].queued == 3
    assert [e[0].payload for e in offline["b1"].queue] == [b"m1", b"m2", b"m3"]
    assert b.counters["queue_dropped"] == 5 + 1
    total = 0
    for s in b.sessions.values():
        total += len(s.queue)
    assert total == b.flow.queued_total == 6
    # dropping a session returns what it held to its user's account
    b.drop_session(offline["a1"])
    assert a.queued == len(offline["a2"].queue)


# --- MQTT 5 reason codes -------------------------------------------------------------

def test_mqtt5_reason_codes_for_refusals():
    import mqtt5spec as m5
    from test_v5 import take5, sub5

    def connect5(b, cid, user, pw):
        conn = FakeConn()
        conn.peer = "10.1.1.1:1"
        feed(b, conn, m5.connect(cid, keepalive=0, username=user, password=None if pw is None else pw.encode()))
        return conn

    b = access_broker(auth_fail_delay_ms=0)
    conn = connect5(b, "bad", "alice", "nope")
    assert take5(conn)[0]["rc"] == 0x86  # bad user name or password
    conn = connect5(b, "anon", None, None)
    assert take5(conn)[0]["rc"] == 0x87  # not authorized
    conn = connect5(b, "a5", "alice", "wonder")
    assert take5(conn)[0]["rc"] == 0
    assert sub5(b, conn, "public/#", 1) == 0x87
    assert sub5(b, conn, "home/kitchen", 1, pid=2) == 1
    feed(b, conn, m5.publish("home/secret", b"x", qos=1, pid=5))
    ack = take5(conn)[0]
    assert ack["type"] == "puback" and ack["pid"] == 5 and ack["reason"] == 0x87
    feed(b, conn, m5.publish("home/secret", b"x", qos=2, pid=6))
    ack = take5(conn)[0]
    assert ack["type"] == "pubrec" and ack["pid"] == 6 and ack["reason"] == 0x87
    feed(b, conn, m5.publish("home/kitchen", b"y", qos=1, pid=7))
    pk = take5(conn)
    assert [p["type"] for p in pk] == ["publish", "puback"] and pk[1]["reason"] == 0
    thief = connect5(b, "a5", "bob", "builder")
    assert take5(thief)[0]["rc"] == 0x87


# --- the owner of a session survives a restart (store record 25, OWNER) -----------------

def test_session_owner_survives_restart_and_compaction():
    from test_store import Env, crash
    from midge.broker import Broker

    def boot(env):
        cfg, st = env.store(password_file="x", auth_fail_delay_ms=0)
        b = Broker(cfg, env.clock, store=st)
        b.auth = auth.Authenticator(dict((u, auth.hash_password(USERS[u], ITER)) for u in USERS))
        b.acl = parse_acl(ACL_TEXT.split("\n"), "acl")
        b.restore()
        return b

    with Env() as env:
        b = boot(env)
        c = persistent(b, "dev", "alice")
        assert suback_code(b, c, "home/kitchen") == 1
        leave(b, c)
        b.commit()
        crash(b)
        for compact in (False, True):
            b = boot(env)
            s = b.sessions["dev"]
            assert s.user == "alice" and "home/kitchen" in s.subs
            assert s.acl is not None  # offline sessions are held to the ACL from the start
            conn, rc = login(b, "dev", "bob", USERS["bob"], clean=False)
            assert rc == 5 and b.counters["client_id_refused"] == 1
            conn, rc = login(b, "dev", None, None, clean=False)
            assert rc == 5  # (anonymous: refused before the owner check)
            c = persistent(b, "dev", "alice")
            leave(b, c)
            if not compact:
                b.store.compact(b)  # the next boot reads the owner from the snapshot
            b.commit()
            crash(b)
