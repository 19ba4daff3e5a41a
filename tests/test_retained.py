# midge.retained: the retained-message trie, its caps and matching.
from midge.message import Message
from midge.retained import Retained


def _lv(s):
    return s.split("/")


def _msg(topic, payload=b"v"):
    return Message(topic, payload, 1, True)


def _set(r, topic, payload=b"v", exempt=False):
    return r.set(_lv(topic), _msg(topic, payload), exempt)


def _found(r, filt):
    out = []
    r.match(_lv(filt), out)
    names = [m.topic for m in out]
    names.sort()  # topics are unique: no stable-sort assumption
    return names


def test_store_get_replace_clear():
    r = Retained(10, 1000)
    assert _set(r, "a/b", b"one")
    assert r.get(_lv("a/b")).payload == b"one"
    assert r.count == 1 and r.total == 1
    assert r.bytes == len("a/b") + 3
    assert _set(r, "a/b", b"second")       # replace
    assert r.get(_lv("a/b")).payload == b"second"
    assert r.count == 1
    assert r.bytes == len("a/b") + 6
    assert _set(r, "a/b", b"")             # empty payload clears [MQTT-3.3.1-10]
    assert r.get(_lv("a/b")) is None
    assert r.count == 0 and r.bytes == 0 and r.total == 0
    assert r.get(_lv("a")) is None


def test_clear_missing_topic_is_harmless():
    r = Retained(10, 1000)
    assert _set(r, "x/y", b"")
    assert r.count == 0 and r.get(_lv("x/y")) is None
    _set(r, "a/b/c")
    assert _set(r, "a/b", b"")            # an inner node without a message
    assert r.get(_lv("a/b/c")) is not None
    assert r.count == 1


def test_empty_payload_never_stored():
    # [MQTT-3.3.1-11]
    r = Retained(10, 1000)
    _set(r, "t", b"")
    assert r.total == 0
    assert _found(r, "#") == []


def test_count_cap():
    r = Retained(2, 1000)
    assert _set(r, "a")
    assert _set(r, "b")
    assert not _set(r, "c")             # new topic over the count cap
    assert r.get(_lv("c")) is None
    assert r.count == 2
    assert _set(r, "a", b"newer")       # replacing an existing topic works
    assert r.get(_lv("a")).payload == b"newer"
    assert _set(r, "b", b"")            # clearing always works
    assert _set(r, "c")                 # and frees a place
    assert r.count == 2


def test_bytes_cap():
    r = Retained(100, 10)
    assert _set(r, "a", b"123")          # 4 bytes (topic + payload)
    assert _set(r, "b", b"12345")        # 10 bytes in all
    assert r.bytes == 10
    assert not _set(r, "c", b"1")        # 12 > 10: new topic refused
    assert r.get(_lv("c")) is None
    assert not _set(r, "a", b"12345")    # a replacement that no longer fits
    assert r.get(_lv("a")).payload == b"123"
    assert r.bytes == 10
    assert _set(r, "a", b"1")            # a replacement that shrinks
    assert r.bytes == 8 and r.count == 2
    assert _set(r, "c", b"1")            # 10 again: fits now
    assert r.bytes == 10 and r.count == 3


def test_zero_caps_refuse_everything_but_exempt():
    r = Retained(0, 0)
    assert not _set(r, "a")
    assert r.total == 0
    assert _set(r, "$SYS/broker/uptime", b"5", exempt=True)
    assert r.get(_lv("$SYS/broker/uptime")).payload == b"5"


def test_exempt_not_counted():
    r = Retained(1, 100)
    assert _set(r, "$SYS/a", b"1", exempt=True)
    assert _set(r, "$SYS/b", b"2", exempt=True)
    assert r.count == 0 and r.bytes == 0 and r.total == 2
    assert _set(r, "x", b"y")            # the one counted place is still free
    assert r.count == 1 and r.total == 3
    assert _set(r, "$SYS/a", b"11", exempt=True)  # replace exempt
    assert r.total == 3
    assert _set(r, "$SYS/a", b"", exempt=True)    # clear exempt
    assert r.total == 2 and r.count == 1 and r.bytes == 2


def test_match_wildcards():
    r = Retained(100, 10000)
    for t in ("a", "a/b", "a/c", "a/b/c", "b/b", "/x", "$SYS/up", "$SYS/a/b", "x/$y"):
        _set(r, t)
    assert _found(r, "a/b") == ["a/b"]
    assert _found(r, "a/+") == ["a/b", "a/c"]
    assert _found(r, "+/b") == ["a/b", "b/b"]
    assert _found(r, "a/#") == ["a", "a/b", "a/b/c", "a/c"]  # 'a/#' matches 'a'
    assert _found(r, "a/b/#") == ["a/b", "a/b/c"]
    assert _found(r, "+") == ["a"]
    assert _found(r, "+/+/+") == ["a/b/c"]
    assert _found(r, "+/x") == ["/x"]
    assert _found(r, "x/+") == ["x/$y"]      # '$' only special in the first level
    assert _found(r, "nothing/#") == []
    assert _found(r, "a/b/c/d") == []


def test_match_dollar_rule():
    r = Retained(100, 10000)
    for t in ("a", "$SYS/up", "$SYS/a/b", "$x"):
        _set(r, t)
    # [MQTT-4.7.2-1]
    assert _found(r, "#") == ["a"]
    assert _found(r, "+") == ["a"]
    assert _found(r, "+/up") == []
    assert _found(r, "+/#") == ["a"]
    assert _found(r, "$SYS/#") == ["$SYS/a/b", "$SYS/up"]
    assert _found(r, "$SYS/+") == ["$SYS/up"]
    assert _found(r, "$x") == ["$x"]
    assert _found(r, "$x/#") == ["$x"]


def test_clear_prunes():
    r = Retained(100, 10000)
    for t in ("a/b/c", "a/b", "x"):
        _set(r, t)
    for t in ("a/b/c", "a/b", "x"):
        _set(r, t, b"")
    assert r.total == 0
    assert r._root.children is None
    assert _found(r, "#") == []
