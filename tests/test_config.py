# midge.config: defaults, validation messages that name the key, types,
# layering and JSON files.
import os

from midge import config
from midge.config import ConfigError, load_config, read_json, DEFAULTS, SPEC


def _err(fn, *args):
    try:
        fn(*args)
    except ConfigError as e:
        return str(e)
    return None


def test_defaults():
    cfg = load_config()
    assert cfg == DEFAULTS
    for key in SPEC:
        assert key in cfg
    assert len(cfg) == len(SPEC)
    assert cfg["port"] == 1883
    assert cfg["host"] == "127.0.0.1"
    assert cfg["sys_interval_s"] == 10
    assert cfg["log_level"] == "info"
    assert cfg["allow_anonymous"] is None  # unset: loopback only (listeners.listener_plan)
    assert cfg["listeners"] == [] and cfg["password_file"] == "" and cfg["acl_file"] == ""
    # MQTT 3.1.1 requires at least 23-character client ids [MQTT-3.1.3-5]
    assert cfg["max_client_id_length"] >= 23


def test_defaults_within_their_own_ranges():
    for key in SPEC:
        default, low, high = SPEC[key]
        assert load_config({key: default})[key] == default, key
        if isinstance(default, int) and not isinstance(default, bool):
            assert low <= default <= high, key


def test_documented_counters_and_caps_keys_exist():
    for key in ("max_clients", "connect_timeout_ms", "max_sessions", "max_inflight",
                "max_queued_messages", "max_queued_bytes", "max_subscriptions",
                "max_packet_size", "max_topic_length", "max_topic_levels",
                "max_retained_messages", "max_retained_bytes", "max_outbound_bytes",
                "write_timeout_ms", "sys_interval_s"):
        assert key in SPEC, key


def test_load_config_returns_a_copy():
    cfg = load_config({"port": 1})
    cfg["max_clients"] = 12345
    assert DEFAULTS["max_clients"] != 12345
    assert DEFAULTS["port"] == 1883
    assert load_config()["max_clients"] == DEFAULTS["max_clients"]


def test_overrides_layered_later_wins():
    cfg = load_config({"port": 1000, "max_clients": 3}, None, {}, {"port": 2000})
    assert cfg["port"] == 2000
    assert cfg["max_clients"] == 3
    assert cfg["max_sessions"] == DEFAULTS["max_sessions"]


def test_unknown_key_named():
    msg = _err(load_config, {"max_cleints": 3})
    assert msg is not None and "max_cleints" in msg
    msg = _err(load_config, {"port": 1}, {"bogus_key": 1})
    assert msg is not None and "bogus_key" in msg


def test_out_of_range_names_key_and_range():
    msg = _err(load_config, {"max_clients": 0})
    assert msg is not None and "max_clients" in msg and "1" in msg and "10000" in msg
    msg = _err(load_config, {"port": 65536})
    assert msg is not None and "port" in msg and "65535" in msg
    msg = _err(load_config, {"max_client_id_length": 22})
    assert msg is not None and "max_client_id_length" in msg
    msg = _err(load_config, {"max_packet_size": 63})
    assert msg is not None and "max_packet_size" in msg
    msg = _err(load_config, {"sys_interval_s": -1})
    assert msg is not None and "sys_interval_s" in msg


def test_range_edges_accepted():
    for key in SPEC:
        default, low, high = SPEC[key]
        if isinstance(default, int) and not isinstance(default, bool):
            assert load_config({key: low})[key] == low, key
            assert load_config({key: high})[key] == high, key
            assert _err(load_config, {key: low - 1}) is not None, key
            assert _err(load_config, {key: high + 1}) is not None, key


def test_wrong_types():
    msg = _err(load_config, {"port": "1883"})
    assert msg is not None and "port" in msg
    msg = _err(load_config, {"max_clients": 2.5})
    assert msg is not None and "max_clients" in msg
    msg = _err(load_config, {"max_clients": True})  # a bool is not a number here
    assert msg is not None and "max_clients" in msg
    msg = _err(load_config, {"allow_anonymous": 1})
    assert msg is not None and "allow_anonymous" in msg
    msg = _err(load_config, {"allow_anonymous": "false"})
    assert msg is not None and "allow_anonymous" in msg
    msg = _err(load_config, {"host": 127})
    assert msg is not None and "host" in msg
    msg = _err(load_config, {"port": None})
    assert msg is not None and "port" in msg


def test_string_choices():
    for lvl in ("debug", "info", "warning", "error", "off"):
        assert load_config({"log_level": lvl})["log_level"] == lvl
    msg = _err(load_config, {"log_level": "verbose"})
    assert msg is not None and "log_level" in msg and "debug" in msg
    assert load_config({"host": "0.0.0.0"})["host"] == "0.0.0.0"
    assert load_config({"allow_anonymous": False})["allow_anonymous"] is False


def test_config_error_is_value_error():
    assert issubclass(ConfigError, ValueError)
    try:
        load_config({"nope": 1})
        assert False, "no error"
    except ValueError:
        pass


_TMP = "/tmp/midge_test_config_%d.json"


def _write(n, text):
    path = _TMP % n
    with open(path, "w") as f:
        f.write(text)
    return path


def test_read_json():
    path = _write(1, '{"port": 1999, "max_clients": 2}')
    try:
        data = read_json(path)
        assert data == {"port": 1999, "max_clients": 2}
        assert load_config(data)["port"] == 1999
    finally:
        os.remove(path)


def test_read_json_errors_name_the_file():
    path = _write(2, '{"port": ')
    try:
        msg = _err(read_json, path)
        assert msg is not None and path in msg
    finally:
        os.remove(path)
    path = _write(3, '[1, 2]')
    try:
        msg = _err(read_json, path)
        assert msg is not None and path in msg
    finally:
        os.remove(path)
    missing = "/tmp/midge_test_no_such_file.json"
    msg = _err(read_json, missing)
    assert msg is not None and missing in msg


def test_json_values_validated():
    path = _write(4, '{"allow_anonymous": false, "max_inflight": 0}')
    try:
        msg = _err(load_config, read_json(path))
        assert msg is not None and "max_inflight" in msg
    finally:
        os.remove(path)
    assert config.SPEC is SPEC


def test_backpressure_ms():
    assert load_config()["backpressure_ms"] == 100
    assert load_config({"backpressure_ms": 0})["backpressure_ms"] == 0
    msg = _err(load_config, {"backpressure_ms": 10001})
    assert msg is not None and "backpressure_ms" in msg


def test_read_json_is_strict_and_names_file_and_position():
    # MicroPython's json took this; both interpreters refuse it now.
    path = _write(5, '{"max_clients": 5,}')
    try:
        msg = _err(read_json, path)
        assert msg is not None and path in msg, msg
        assert "line 1 column 18: trailing comma" in msg, msg
    finally:
        os.remove(path)
    for n, text in ((6, '{"port": 1883} // local'), (7, "{'port': 1883}"),
                    (8, '{"port": 01883}'), (9, '{"port": NaN}'), (10, "")):
        path = _write(n, text)
        try:
            msg = _err(read_json, path)
            assert msg is not None and path in msg and "line 1 column" in msg, (text, msg)
        finally:
            os.remove(path)


def test_read_json_size_cap():
    cap = 16384
    body = '{"port": 1999}'
    path = _write(11, body + " " * (cap - len(body)))  # exactly the cap: read
    try:
        assert read_json(path) == {"port": 1999}
    finally:
        os.remove(path)
    path = _write(12, body + " " * (cap + 1 - len(body)))  # one byte more: refused
    try:
        msg = _err(read_json, path)
        assert msg is not None and path in msg and "16384" in msg, msg
    finally:
        os.remove(path)


def test_read_json_not_a_file_or_not_utf8():
    msg = _err(read_json, "/tmp")  # a directory
    assert msg is not None and "/tmp" in msg, msg
    path = _TMP % 13
    with open(path, "wb") as f:
        f.write(b'{"host": "\xed\xa0\x80"}')  # a surrogate in UTF-8: not UTF-8
    try:
        msg = _err(read_json, path)
        assert msg is not None and path in msg and "invalid UTF-8" in msg, msg
    finally:
        os.remove(path)


def test_string_length_cap_names_key_and_limit():
    assert load_config({"response_information": "r" * 255})["response_information"] == "r" * 255
    msg = _err(load_config, {"response_information": "r" * 256})
    assert msg is not None and "response_information" in msg and "255" in msg
    # the limit is in UTF-8 bytes: 128 two-byte characters are 256 bytes
    assert _err(load_config, {"response_information": "\u00e9" * 128}) is not None
