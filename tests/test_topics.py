# midge.topics: topic name and filter rules, the '$' rule, size limits.
from midge import topics


def test_split():
    assert topics.split("a/b/c") == ["a", "b", "c"]
    assert topics.split("/") == ["", ""]
    assert topics.split("a//b") == ["a", "", "b"]
    assert topics.split("a") == ["a"]


def test_name_ok():
    for t in ("a", "a/b", "/", "/a", "a/", "a//b", "$SYS/x", "sport/tennis/player1", "\u00e9/\u20ac", " "):
        assert topics.name_ok(t), t
    # at least one character [MQTT-4.7.3-1]; no wildcards in names [MQTT-3.3.2-2]
    for t in ("", "+", "#", "a/+", "a/#", "a#", "a+b", "+/a", "sport/tennis#"):
        assert not topics.name_ok(t), t


def test_filter_levels_valid():
    cases = {
        "#": ["#"], "+": ["+"], "a/#": ["a", "#"], "+/+": ["+", "+"],
        "a/+/b": ["a", "+", "b"], "/": ["", ""], "/#": ["", "#"], "+/#": ["+", "#"],
        "$SYS/#": ["$SYS", "#"], "sport/tennis/player1": ["sport", "tennis", "player1"],
        "a//b": ["a", "", "b"],
    }
    for f in cases:
        assert topics.filter_levels(f) == cases[f], f


def test_filter_levels_invalid():
    # empty [MQTT-4.7.3-1]; '#' not last or not alone [MQTT-4.7.1-2];
    # '+' not alone in its level [MQTT-4.7.1-3]
    for f in ("", "a#", "#a", "a/#/b", "#/a", "##", "a/b#", "sport/tennis#",
              "a+", "+a", "a/b+/c", "++", "sport+", "+#", "a/+#"):
        assert topics.filter_levels(f) is None, f


def test_within_limits():
    assert topics.within_limits("a/b/c", ["a", "b", "c"], 5, 3)
    assert not topics.within_limits("a/b/cd", ["a", "b", "cd"], 5, 3)   # too long
    assert not topics.within_limits("a/b/c/d", ["a", "b", "c", "d"], 100, 3)  # too deep


def test_is_sys():
    assert topics.is_sys("$SYS/broker/uptime")
    assert topics.is_sys("$other")
    assert topics.is_sys("$")
    assert not topics.is_sys("SYS/$")
    assert not topics.is_sys("a/$SYS")
    assert not topics.is_sys("")


def test_is_sys_reserved():
    # $SYS/... belongs to the broker (client PUBLISH and wills are dropped)
    assert topics.is_sys_reserved("$SYS")
    assert topics.is_sys_reserved("$SYS/broker/uptime")
    assert topics.is_sys_reserved("$SYS/")
    assert not topics.is_sys_reserved("$SYSTEM/x")
    assert not topics.is_sys_reserved("$SY")
    assert not topics.is_sys_reserved("$app/x")
    assert not topics.is_sys_reserved("a/$SYS/x")
    assert not topics.is_sys_reserved("SYS/x")


def test_within_limits_counts_utf8_bytes():
    # config.py SPEC: max_topic_length is in UTF-8 bytes
    t = "\u00e9\u00e9\u00e9"  # 3 characters, 6 bytes
    assert topics.within_limits(t, [t], 6, 8)
    assert not topics.within_limits(t, [t], 5, 8)
    assert not topics.within_limits(t, [t], 3, 8)
