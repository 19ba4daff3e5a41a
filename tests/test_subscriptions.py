# midge.subscriptions: the topic trie (+, #, the '$' rule, overlapping
# filters, removal and pruning).
from midge.subscriptions import Subscriptions


class S:
    """Stands in for a Session: only identity and hashing matter."""

    def __init__(self, name):
        self.name = name


def _lv(s):
    return s.split("/")


def _match(trie, topic):
    out = {}
    trie.match(_lv(topic), out)
    return out


def _matches(filt, topic):
    t = Subscriptions()
    s = S("x")
    t.add(_lv(filt), s, 1)
    return s in _match(t, topic)


def test_exact_and_single_level_wildcard():
    assert _matches("a/b", "a/b")
    assert not _matches("a/b", "a/c")
    assert not _matches("a/b", "a/b/c")
    assert not _matches("a/b", "a")
    assert _matches("a/+", "a/b")
    assert _matches("a/+/c", "a/b/c")
    assert _matches("+/+", "a/b")
    assert _matches("+", "a")
    assert not _matches("+", "a/b")        # + is exactly one level
    assert not _matches("a/+", "a")
    assert not _matches("a/+", "a/b/c")
    assert _matches("a/+/b", "a//b")       # + matches an empty level
    assert _matches("+/a", "/a")           # [MQTT-4.7.1-3] "/finance" example
    assert _matches("/+", "/a")
    assert not _matches("+", "/a")


def test_multi_level_wildcard():
    assert _matches("#", "a")
    assert _matches("#", "a/b/c")
    assert _matches("#", "/")
    assert _matches("a/#", "a/b")
    assert _matches("a/#", "a/b/c/d")
    # 'sport/tennis/player1/#' matches 'sport/tennis/player1' [MQTT-4.7.1-2]
    assert _matches("a/#", "a")
    assert _matches("sport/tennis/player1/#", "sport/tennis/player1")
    assert _matches("a/b/#", "a/b/")
    assert not _matches("a/#", "b")
    assert not _matches("a/#", "ab")
    assert not _matches("a/b/#", "a")
    assert _matches("+/#", "a")
    assert _matches("+/#", "a/b/c")
    assert _matches("a/+/#", "a/b")


def test_dollar_topics():
    # wildcards in the first level do not match '$' topics [MQTT-4.7.2-1]
    assert not _matches("#", "$SYS/broker/uptime")
    assert not _matches("+/broker/uptime", "$SYS/broker/uptime")
    assert not _matches("+/#", "$SYS/x")
    assert not _matches("+", "$SYS")
    assert _matches("$SYS/#", "$SYS/broker/uptime")
    assert _matches("$SYS/#", "$SYS")
    assert _matches("$SYS/+/uptime", "$SYS/broker/uptime")
    assert _matches("$SYS/broker/uptime", "$SYS/broker/uptime")
    assert _matches("$other", "$other")
    # '$' only matters in the first level
    assert _matches("a/+", "a/$b")
    assert _matches("#", "a/$b")


def test_overlapping_subscriptions_highest_qos_once():
    t = Subscriptions()
    s1 = S("s1")
    s2 = S("s2")
    t.add(_lv("a/#"), s1, 0)
    t.add(_lv("a/b"), s1, 2)
    t.add(_lv("+/b"), s1, 1)
    t.add(_lv("#"), s1, 1)
    t.add(_lv("a/+"), s2, 1)
    t.add(_lv("a/b"), s2, 0)
    out = _match(t, "a/b")
    assert len(out) == 2
    assert out[s1] == 2
    assert out[s2] == 1
    out = _match(t, "a/c")
    assert out[s1] == 1 and out[s2] == 1


def test_add_replaces_qos_and_counts_filters():
    t = Subscriptions()
    s = S("s")
    assert t.add(_lv("a/b"), s, 0) is True
    assert t.count == 1
    assert t.add(_lv("a/b"), s, 2) is False  # same filter: QoS replaced [MQTT-3.8.4-3]
    assert t.count == 1
    assert _match(t, "a/b")[s] == 2
    assert t.add(_lv("a/#"), s, 1) is True
    assert t.add(_lv("a/b"), S("other"), 1) is True
    assert t.count == 3


def test_remove():
    t = Subscriptions()
    s1 = S("s1")
    s2 = S("s2")
    t.add(_lv("a/b"), s1, 1)
    t.add(_lv("a/b"), s2, 1)
    t.add(_lv("a/#"), s1, 0)
    assert t.remove(_lv("a/b"), s1) is True
    assert t.remove(_lv("a/b"), s1) is False  # already gone
    assert t.remove(_lv("x/y"), s1) is False  # never existed
    assert t.remove(_lv("a"), s1) is False    # a prefix node holds no subscription
    assert t.count == 2
    out = _match(t, "a/b")
    assert out[s1] == 0 and out[s2] == 1      # s1 still via a/#
    assert t.remove(_lv("a/#"), s1) is True
    assert s1 not in _match(t, "a/b")
    assert s2 in _match(t, "a/b")


def test_remove_prunes_empty_branches():
    t = Subscriptions()
    s = S("s")
    filters = ["a/b/c/d", "a/b/+", "a/#", "x", "+/+/+", "$SYS/#"]
    for f in filters:
        t.add(_lv(f), s, 1)
    assert t.count == len(filters)
    for f in filters:
        assert t.remove(_lv(f), s)
    assert t.count == 0
    assert t._root.children is None  # nothing left behind
    assert _match(t, "a/b/c/d") == {}


def test_prune_keeps_shared_prefix():
    t = Subscriptions()
    s = S("s")
    t.add(_lv("a/b/c"), s, 1)
    t.add(_lv("a/b"), s, 1)
    assert t.remove(_lv("a/b/c"), s)
    assert s in _match(t, "a/b")      # the inner node with a subscription survived
    assert t.remove(_lv("a/b"), s)
    assert t._root.children is None


def test_many_sessions_and_no_match():
    t = Subscriptions()
    sessions = [S(str(i)) for i in range(20)]
    for i in range(20):
        t.add(_lv("dev/%d/+" % i), sessions[i], i % 3)
        t.add(_lv("dev/+/all"), sessions[i], 0)
    out = _match(t, "dev/7/all")
    assert len(out) == 20
    assert out[sessions[7]] == 1
    out = _match(t, "dev/7/temp")
    assert list(out.keys()) == [sessions[7]]
    assert _match(t, "other/7/temp") == {}
    assert _match(t, "dev") == {}
