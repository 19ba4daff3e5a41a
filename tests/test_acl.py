# midge.acl: mosquitto acl_file rules, decisions for write/read/subscribe.
#
# The decisions are table-driven: ACL_TEXT is one ACL file and
# ACL_DECISIONS the access decisions expected under it, as tuples
# (username, client_id, operation, topic_or_filter, expected) with operation
# 'write' (PUBLISH to a topic name), 'read' (delivery of a message on a topic
# name) or 'subscribe' (SUBSCRIBE to a filter). Other scripts may import
# both to print the table.
import os

from midge import acl
from midge.errors import ConfigError

ACL_TEXT = """\
# anonymous clients: the topic lines before the first user line
topic read public/#
topic write public/anon/in
topic deny public/internal/#

user alice
topic readwrite alice/#
topic deny alice/private
topic read shared/+/status
topic write inbox/alice

user bob
topic read #
topic deny secret/#
topic readwrite rooms/living room/temp

user admin
topic read $SYS/#
topic readwrite #

user sensor
topic write sensors/+/temp
topic read sensors/#
topic deny sensors/+/secret

user vault
topic deny #
topic readwrite $SYS/#

user nosys
topic read #
topic deny $SYS/#

user bob smith
topic read smith/#

# every client; %u username, %c client id
pattern readwrite users/%u/#
pattern deny users/%u/locked
pattern read %u/inbox/#
pattern read devices/%c/cmd
pattern write devices/%c/state
pattern write $SYS/broker/connection/%c/state
"""

W = "write"
R = "read"
S = "subscribe"

ACL_DECISIONS = [
    # --- anonymous (username None): the rules before the first user line
    (None, "anon1", R, "public/news", True),
    (None, "anon1", R, "public", True),             # 'a/#' matches its parent 'a'
    (None, "anon1", W, "public/news", False),       # read only
    (None, "anon1", W, "public/anon/in", True),
    (None, "anon1", R, "public/anon/in", True),
    (None, "anon1", R, "public/internal/x", False),  # deny wins over 'read public/#'
    (None, "anon1", R, "public/internal", False),   # deny 'a/#' covers its parent
    (None, "anon1", W, "public/internal/x", False),
    (None, "anon1", S, "public/news/#", True),
    (None, "anon1", S, "public/#", False),          # overlaps the deny rule
    (None, "anon1", S, "public/+", False),          # matches public/internal
    (None, "anon1", S, "public/internal", False),
    (None, "anon1", S, "#", False),                 # not a subset of public/#
    (None, "anon1", R, "alice/x", False),           # a user's rules are not anonymous ones
    (None, "anon1", R, "users/anon1/x", False),     # %u patterns skip anonymous clients
    (None, "anon1", R, "devices/anon1/cmd", True),  # %c patterns apply to them
    (None, "anon1", W, "devices/anon1/state", True),
    (None, "anon1", R, "devices/anon1/state", False),
    (None, "anon1", R, "devices/anon2/cmd", False),
    (None, "anon1", R, "$SYS/broker/uptime", False),
    (None, "anon1", W, "$SYS/broker/connection/anon1/state", True),  # the pattern names $SYS
    (None, "anon1", W, "$SYS/broker/connection/anon2/state", False),
    # --- a user: readwrite, deny, read-only and write-only rules
    ("alice", "a1", W, "alice/x", True),
    ("alice", "a1", R, "alice/x", True),
    ("alice", "a1", R, "alice", True),
    ("alice", "a1", W, "alice/private", False),     # deny wins over readwrite alice/#
    ("alice", "a1", R, "alice/private", False),
    ("alice", "a1", W, "alice/private/sub", True),  # the deny rule has no wildcard
    ("alice", "a1", S, "alice/#", False),           # overlaps alice/private
    ("alice", "a1", S, "alice/+", False),
    ("alice", "a1", S, "alice/+/x", True),
    ("alice", "a1", S, "alice/public", True),
    ("alice", "a1", S, "alice", True),
    ("alice", "a1", R, "shared/kitchen/status", True),
    ("alice", "a1", W, "shared/kitchen/status", False),
    ("alice", "a1", R, "shared/kitchen", False),
    ("alice", "a1", R, "shared/kitchen/status/x", False),
    ("alice", "a1", S, "shared/+/status", True),
    ("alice", "a1", S, "shared/kitchen/status", True),
    ("alice", "a1", S, "shared/#", False),
    ("alice", "a1", S, "shared/+/+", False),
    ("alice", "a1", W, "inbox/alice", True),
    ("alice", "a1", R, "inbox/alice", False),       # write only
    ("alice", "a1", S, "inbox/alice", False),
    ("alice", "a1", R, "public/news", False),       # anonymous rules are not alice's
    ("alice", "a1", R, "bob/x", False),             # default deny
    ("alice", "a1", W, "users/alice/x", True),      # pattern %u
    ("alice", "a1", R, "users/alice/x", True),
    ("alice", "a1", W, "users/alice/locked", False),  # pattern deny wins over pattern grant
    ("alice", "a1", R, "users/bob/x", False),
    ("alice", "a1", S, "users/alice/#", False),
    ("alice", "a1", S, "users/alice/+/x", True),
    ("alice", "a1", R, "alice/inbox/x", True),
    ("alice", "a1", R, "devices/a1/cmd", True),     # pattern %c
    ("alice", "a1", R, "devices/a2/cmd", False),
    ("alice", "a1", R, "$SYS/broker/uptime", False),
    # --- 'read #': everything but '$' topics, minus the deny rule
    ("bob", "b1", R, "news/today", True),
    ("bob", "b1", R, "x", True),
    ("bob", "b1", W, "news/today", False),
    ("bob", "b1", R, "secret/x", False),
    ("bob", "b1", R, "secret", False),
    ("bob", "b1", R, "secretive", True),
    ("bob", "b1", S, "#", False),                   # overlaps secret/#
    ("bob", "b1", S, "+", False),                   # matches 'secret'
    ("bob", "b1", S, "+/weather", False),           # matches secret/weather
    ("bob", "b1", S, "news/#", True),
    ("bob", "b1", S, "news/+", True),
    ("bob", "b1", R, "$SYS/broker/uptime", False),  # '#' does not give $SYS [MQTT-4.7.2-1]
    ("bob", "b1", S, "$SYS/#", False),
    ("bob", "b1", S, "$SYS/broker/uptime", False),
    ("bob", "b1", R, "$other/x", False),
    ("bob", "b1", R, "rooms/living room/temp", True),  # a filter with a space
    ("bob", "b1", W, "rooms/living room/temp", True),
    ("bob", "b1", W, "rooms/living", False),
    ("bob", "b1", R, "bob/inbox/mail", True),       # pattern %u/inbox/#
    # --- $SYS only for a user whose rules name it
    ("admin", "ad", R, "$SYS/broker/uptime", True),
    ("admin", "ad", S, "$SYS/#", True),
    ("admin", "ad", S, "$SYS/broker/+", True),
    ("admin", "ad", S, "$SYS", True),
    ("admin", "ad", W, "$SYS/broker/uptime", False),  # readwrite # does not reach $SYS
    ("admin", "ad", S, "#", False),                 # the deny pattern: users/admin/locked
    ("admin", "ad", S, "+/+", True),
    ("admin", "ad", S, "users/admin/+/#", False),   # matches users/admin/locked
    ("admin", "ad", S, "users/admin/+/x/#", True),
    ("admin", "ad", S, "+/broker/#", True),
    ("admin", "ad", W, "any/thing", True),
    ("admin", "ad", R, "$other/x", False),
    # --- wildcard rules: subset and overlap
    ("sensor", "s1", W, "sensors/kitchen/temp", True),
    ("sensor", "s1", W, "sensors/kitchen/humidity", False),
    ("sensor", "s1", W, "sensors/kitchen/temp/x", False),
    ("sensor", "s1", R, "sensors/kitchen/temp", True),
    ("sensor", "s1", R, "sensors/kitchen/secret", False),
    ("sensor", "s1", W, "sensors/kitchen/secret", False),
    ("sensor", "s1", R, "sensors/kitchen/secret/x", True),
    ("sensor", "s1", S, "sensors/#", False),        # overlaps sensors/+/secret
    ("sensor", "s1", S, "sensors/+/temp", True),
    ("sensor", "s1", S, "sensors/kitchen/+", False),
    ("sensor", "s1", S, "sensors/kitchen/temp/#", True),
    ("sensor", "s1", S, "sensors", True),
    ("sensor", "s1", S, "sensors/+/+/+", True),
    ("sensor", "s1", S, "+/kitchen/temp", False),   # not a subset of sensors/#
    # --- 'deny #' does not reach '$' topics; '#' does not overlap 'deny $SYS/#'
    ("vault", "v1", R, "$SYS/broker/uptime", True),
    ("vault", "v1", W, "$SYS/x", True),
    ("vault", "v1", S, "$SYS/#", True),
    ("vault", "v1", R, "users/vault/x", False),     # deny # beats the %u pattern
    ("vault", "v1", S, "users/vault/#", False),
    ("nosys", "n1", S, "+", True),                  # '+' does not match the parent '$SYS'
    ("nosys", "n1", S, "+/+", True),
    ("nosys", "n1", S, "#", False),                 # only for users/nosys/locked
    ("nosys", "n1", R, "$SYS/x", False),
    ("nosys", "n1", S, "$SYS/x", False),
    # --- a username with a space
    ("bob smith", "bs", R, "smith/x", True),
    ("bob smith", "bs", R, "news/today", False),    # bob's rules are not his
    ("bob smith", "bs", R, "users/bob smith/x", True),
    # --- a user without a section: patterns only
    ("carol", "c1", R, "users/carol/x", True),
    ("carol", "c1", W, "users/carol/x", True),
    ("carol", "c1", R, "carol/inbox/y", True),
    ("carol", "c1", S, "users/carol/+/x", True),
    ("carol", "c1", R, "public/news", False),
    ("carol", "c1", R, "anything", False),
    # --- values that could leave their level: the pattern does not apply
    ("a/b", "c1", R, "users/a/b/x", False),
    ("a/b", "c1", R, "a/b/inbox/x", False),
    ("a/b", "c1", R, "devices/c1/cmd", True),       # %c patterns still apply
    ("+", "c1", S, "users/+/#", False),
    ("+", "c1", R, "users/x/y", False),
    ("#", "c1", R, "users/x", False),
    ("#", "c1", S, "users/#", False),
    ("", "c1", R, "users//x", False),               # an empty username names no one
    ("carol", "a/b", R, "devices/a/b/cmd", False),
    ("carol", "a/b", W, "$SYS/broker/connection/a/b/state", False),
    ("carol", "+", S, "devices/+/cmd", False),
    ("carol", "+", R, "devices/x/cmd", False),
    ("carol", "#", R, "devices/x/cmd", False),
    ("carol", "#", S, "devices/#", False),
    ("carol", "", R, "devices//cmd", False),
    # --- a '$' value must not make a pattern reach $SYS
    ("$SYS", "c1", R, "$SYS/inbox/x", False),       # pattern %u/inbox/#
    ("$SYS", "c1", S, "$SYS/inbox/#", False),
    ("$SYS", "c1", R, "users/$SYS/x", True),        # not the first level: harmless
    ("carol", "$SYS", R, "devices/$SYS/cmd", True),
    ("carol", "$SYS", W, "$SYS/broker/connection/$SYS/state", True),  # pattern starts with $SYS itself
    # --- substitution is one pass: a username holding "%c" stays literal
    ("x%cy", "c9", R, "users/x%cy/z", True),
    ("x%cy", "c9", R, "users/xc9y/z", False),
]


def _parse(text, name="test.acl"):
    return acl.parse_acl(text.split("\n"), name)


def _decide(rules, username, client_id, op, topic):
    c = rules.for_client(username, client_id)
    if op == "write":
        return c.can_write(topic)
    if op == "read":
        return c.can_read(topic)
    if op == "subscribe":
        return c.can_subscribe(topic)
    raise ValueError("bad operation %r" % op)


def test_decision_table():
    rules = _parse(ACL_TEXT)
    wrong = []
    for row in ACL_DECISIONS:
        username, client_id, op, topic, expected = row
        got = _decide(rules, username, client_id, op, topic)
        if got is not expected:
            wrong.append("%r: got %r" % (row, got))
        if op != "subscribe":
            # the caller's levels give the same answer as the topic
            c = rules.for_client(username, client_id)
            levels = topic.split("/")
            got2 = c.can_write(topic, levels) if op == "write" else c.can_read(topic, levels)
            if got2 is not expected:
                wrong.append("%r with levels: got %r" % (row, got2))
    assert not wrong, "%d of %d decisions wrong:\n  %s" % (len(wrong), len(ACL_DECISIONS), "\n  ".join(wrong))


def test_decision_table_is_well_formed():
    ops = ("write", "read", "subscribe")
    for row in ACL_DECISIONS:
        assert len(row) == 5 and row[2] in ops and row[4] in (True, False), row
    # every operation and both outcomes are covered
    for op in ops:
        assert any(r[2] == op and r[4] for r in ACL_DECISIONS), op
        assert any(r[2] == op and not r[4] for r in ACL_DECISIONS), op


def test_subscribe_examples_from_the_brief():
    c = _parse("topic read a/#").for_client(None, "x")
    assert c.can_subscribe("a/+/c")
    assert not c.can_subscribe("#")
    assert c.can_subscribe("a")
    c = _parse("topic read a/#\ntopic deny a/secret").for_client(None, "x")
    assert not c.can_subscribe("a/#")
    assert c.can_subscribe("a/open")


def test_dollar_rule_in_subset_and_overlap():
    # [MQTT-4.7.2-1]: a wildcard first level matches no '$' topic
    c = _parse("topic read #\ntopic deny $SYS/#").for_client(None, "x")
    assert c.can_subscribe("#")           # '#' does not overlap deny $SYS/#
    assert not c.can_subscribe("$SYS/#")  # read # is not a superset of $SYS/#
    assert not c.can_read("$SYS/x")
    c = _parse("topic deny #\ntopic read $SYS/#\ntopic read a").for_client(None, "x")
    assert c.can_subscribe("$SYS/#")      # deny # does not overlap $SYS/...
    assert c.can_read("$SYS/x") and not c.can_read("a")
    c = _parse("topic read +/#").for_client(None, "x")
    assert c.can_subscribe("#") and c.can_subscribe("+") and not c.can_subscribe("$SYS")


def test_default_deny_and_no_rules():
    rules = _parse("user alice\ntopic read a")
    c = rules.for_client("bob", "b")  # no rules at all
    assert not c.can_write("a") and not c.can_read("a") and not c.can_subscribe("a")
    assert not c.can_subscribe("#")
    c = rules.for_client(None, "anon")
    assert not c.can_read("a")
    empty = _parse("# nothing but a comment\n\n")
    c = empty.for_client("alice", "a")
    assert not c.can_read("x") and not c.can_write("x") and not c.can_subscribe("x")


def test_default_access_is_readwrite():
    c = _parse("topic a/b").for_client(None, "x")
    assert c.can_read("a/b") and c.can_write("a/b") and c.can_subscribe("a/b")
    assert not c.can_read("a")


def test_malformed_filter_is_refused():
    c = _parse("topic read #").for_client(None, "x")
    for f in ("", "a/#/b", "a+", "a/b#"):
        assert not c.can_subscribe(f), f


def test_parse_layout():
    # leading blanks, comments after blanks, CRLF, tabs, repeated spaces,
    # a user named twice (its rules add up), keyword-only whitespace lines
    text = ("  # comment\r\n\t\r\n  topic  read   a/#  \r\nuser\tu1\r\ntopic\twrite\tw/1\r\n"
            "user u2\r\ntopic read x\r\nuser u1\r\ntopic read r/1\r\n")
    rules = _parse(text)
    c = rules.for_client("u1", "c")
    assert c.can_write("w/1") and not c.can_read("w/1")
    assert c.can_read("r/1") and not c.can_read("x") and not c.can_read("a/b")
    assert rules.for_client(None, "c").can_read("a/b")
    assert rules.for_client("u2", "c").can_read("x")
    # everything after the access word is the filter, inner spaces included
    c = _parse("topic read a b/ c").for_client(None, "x")
    assert c.can_read("a b/ c") and not c.can_read("a b/c")
    # keywords and access words are case-sensitive, as in mosquitto
    assert _error("Topic read a") is not None


def test_parse_bytes_lines():
    rules = acl.parse_acl([b"user \xc3\xa9", b"topic read caf\xc3\xa9/#"], "b.acl")
    assert rules.for_client("\u00e9", "x").can_read("caf\u00e9/1")


def _error(text, name="test.acl"):
    try:
        _parse(text, name)
    except ConfigError as e:
        return str(e)
    return None


# (file text, line number of the error, words the message must hold)
PARSE_ERRORS = [
    ("foo a/b", 1, "unknown keyword"),
    ("\n# comment\n  bar", 3, "unknown keyword"),
    ("Topic read a", 1, "unknown keyword"),
    ("topics read a", 1, "unknown keyword"),
    ("user", 1, "user without a name"),
    ("topic read a\nuser   \t", 2, "user without a name"),
    ("topic", 1, "without a topic filter"),
    ("pattern", 1, "without a topic filter"),
    ("topic read", 1, "without a topic filter"),
    ("user u\ntopic deny", 2, "without a topic filter"),
    ("pattern write", 1, "without a topic filter"),
    ("topic reed a/b", 1, "bad access word"),
    ("topic READ a/b", 1, "bad access word"),
    ("pattern rw %u/#", 1, "bad access word"),
    ("topic a/b c/d", 1, "bad access word"),
    ("topic read a/#/b", 1, "invalid topic filter"),
    ("topic read a#", 1, "invalid topic filter"),
    ("topic read #/a", 1, "invalid topic filter"),
    ("topic write a+/b", 1, "invalid topic filter"),
    ("topic sport/tennis#", 1, "invalid topic filter"),
    ("topic +a", 1, "invalid topic filter"),
    ("pattern read %u/#/x", 1, "invalid topic filter"),
    ("user u\n\n\ntopic read ok\ntopic deny a/++", 5, "invalid topic filter"),
]


def test_parse_errors():
    wrong = []
    for text, lineno, words in PARSE_ERRORS:
        msg = _error(text, "my.acl")
        if msg is None:
            wrong.append("%r: accepted" % text)
        elif not msg.startswith("acl file my.acl line %d: " % lineno) or words not in msg:
            wrong.append("%r: %r" % (text, msg))
    assert not wrong, "\n  ".join(wrong)


def test_parse_error_not_utf8():
    try:
        acl.parse_acl([b"topic read a", b"topic read \xff\xfe"], "x.acl")
    except ConfigError as e:
        assert str(e).startswith("acl file x.acl line 2: ") and "UTF-8" in str(e), str(e)
    else:
        assert False, "accepted"


_TMP = "/tmp/midge_test_acl_%d.acl"


def _write(n, data):
    path = _TMP % n
    with open(path, "wb") as f:
        f.write(data)
    return path


def _load_error(path):
    try:
        acl.load_acl(path)
    except ConfigError as e:
        return str(e)
    return None


def test_load_acl():
    path = _write(1, ACL_TEXT.encode())
    try:
        rules = acl.load_acl(path)
    finally:
        os.remove(path)
    for row in ACL_DECISIONS[:20]:
        assert _decide(rules, row[0], row[1], row[2], row[3]) is row[4], row


def test_load_acl_errors_name_the_file():
    path = _write(2, b"user u\r\ntopic read a\r\nnonsense\r\n")
    try:
        msg = _load_error(path)
    finally:
        os.remove(path)
    assert msg is not None and msg.startswith("acl file %s line 3: unknown keyword" % path), msg
    path = _write(3, b"topic read a\n\xc3(\n")
    try:
        msg = _load_error(path)
    finally:
        os.remove(path)
    assert msg is not None and msg.startswith("acl file %s line 2: " % path), msg


def test_load_acl_unreadable():
    missing = "/tmp/midge_test_acl_no_such_file.acl"
    msg = _load_error(missing)
    assert msg is not None and missing in msg and "cannot read" in msg, msg
    msg = _load_error("/tmp")  # a directory
    assert msg is not None and "/tmp" in msg, msg


def test_load_acl_size_cap():
    line = b"topic read " + b"x" * 52 + b"\n"  # 64 bytes
    assert len(line) == 64
    data = line * 256  # exactly 16384 bytes: accepted
    path = _write(4, data)
    try:
        rules = acl.load_acl(path)
    finally:
        os.remove(path)
    assert rules.for_client(None, "x").can_read("x" * 52)
    path = _write(5, data + b"#")  # one byte more: refused
    try:
        msg = _load_error(path)
    finally:
        os.remove(path)
    assert msg is not None and path in msg and "16384" in msg, msg


def test_for_client_shared_per_user():
    rules = _parse("user alice\ntopic read a/#\npattern readwrite users/%u/#")
    a1 = rules.for_client("alice", "one")
    a2 = rules.for_client("alice", "two")
    assert a1 is a2
    assert rules.for_client(None, "x") is rules.for_client(None, "y")
    assert rules.for_client("bob", "x") is not a1
    assert rules.for_client("bob", "x").can_read("users/bob/1")
    # past the cache cap the answers stay right (the cache only shares)
    for i in range(200):
        c = rules.for_client("u%d" % i, "c")
        assert c.can_read("users/u%d/x" % i) and not c.can_read("users/u%d/x" % (i + 1))
    assert rules.for_client("alice", "three").can_read("a/b")


def test_for_client_not_shared_with_client_id_patterns():
    rules = _parse("user alice\ntopic read a/#\npattern read devices/%c/#")
    a1 = rules.for_client("alice", "one")
    a2 = rules.for_client("alice", "two")
    assert a1 is not a2
    assert a1.can_read("devices/one/x") and not a1.can_read("devices/two/x")
    assert a2.can_read("devices/two/x") and a2.can_read("a/b")


def test_checks_allocate_nothing_with_levels():
    try:
        import micropython
    except ImportError:
        return  # CPython: nothing to prove
    c = _parse(ACL_TEXT).for_client("sensor", "s1")
    yes = "sensors/kitchen/temp".split("/")
    no = "sensors/kitchen/secret".split("/")
    sys_ = "$SYS/x".split("/")
    results = [None, None, None]
    micropython.heap_lock()
    try:
        results[0] = c.can_write("", yes)
        results[1] = c.can_read("", no)
        results[2] = c.can_read("", sys_)
    finally:
        micropython.heap_unlock()
    assert results == [True, False, False], results


# ---- subset and overlap against brute force -----------------------------------
# Filters of up to 3 levels from a small alphabet, checked against every
# topic of up to 4 levels over the same names plus one no filter uses ("z",
# standing for every other name): exact for filters this short.
_FILTER_LEVELS = ("a", "$s", "+", "#")
_TOPIC_LEVELS = ("a", "$s", "", "z")


def _oracle_match(filt, topic):
    """An independent matcher: filt and topic are lists of levels."""
    if filt[0] in ("+", "#") and topic[0][:1] == "$":
        return False  # [MQTT-4.7.2-1]
    return _oracle_rest(filt, topic)


def _oracle_rest(filt, topic):
    if not filt:
        return not topic
    if filt[0] == "#":
        return True
    if not topic:
        return False
    if filt[0] != "+" and filt[0] != topic[0]:
        return False
    return _oracle_rest(filt[1:], topic[1:])


def _all(levels, depth):
    out = [[x] for x in levels]
    last = out
    for _ in range(depth - 1):
        last = [t + [x] for t in last for x in levels]
        out = out + last
    return out


def test_subset_and_overlap_brute_force():
    filters = [f for f in _all(_FILTER_LEVELS, 3) if "#" not in f[:-1]]
    topic_list = _all(_TOPIC_LEVELS, 4)
    matched = [[t for t in topic_list if _oracle_match(f, t)] for f in filters]
    wrong = []
    for i in range(len(filters)):
        rule = tuple(filters[i])
        for j in range(len(filters)):
            filt = filters[j]
            # filt's topics all matched by rule
            covers = True
            for t in matched[j]:
                if not _oracle_match(filters[i], t):
                    covers = False
                    break
            overlaps = False
            for t in matched[j]:
                if _oracle_match(filters[i], t):
                    overlaps = True
                    break
            if acl._covers(rule, filt) != covers:
                wrong.append("covers(%s, %s) should be %s" % ("/".join(rule), "/".join(filt), covers))
            if acl._overlaps(rule, filt) != overlaps:
                wrong.append("overlaps(%s, %s) should be %s" % ("/".join(rule), "/".join(filt), overlaps))
        for t in topic_list:
            if acl._matches(rule, t) != _oracle_match(filters[i], t):
                wrong.append("matches(%s, %s)" % ("/".join(rule), "/".join(t)))
    assert not wrong, "%d wrong:\n  %s" % (len(wrong), "\n  ".join(wrong[:30]))
