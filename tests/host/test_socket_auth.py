"""Users and ACLs over real sockets (README, "Users, ACLs and TLS"): the
broker runs under the MicroPython unix port with a device-like heap cap, and
real clients (paho-mqtt, mosquitto_pub, mosquitto_sub) log in with good and
bad passwords and meet the ACL. Also: start-up refuses a listener that would
let anyone on the network in unasked, and names bad listener entries."""
import json
import os
import subprocess
import time

import paho.mqtt.client as mqtt
import pytest

import brokerproc
from interop_util import PahoClient, MosqSub, mosquitto_pub, require_tool, wait_until
from midge import auth

USERS = {"alice": "wonder land", "bob": "builder", "sys": "s3cret"}

ACL = """\
topic read public/#

user alice
topic readwrite home/#
topic deny home/secret
topic read $SYS/broker/counters/#

user bob
topic write home/bob/+

user sys
topic read $SYS/#
topic read #
"""


def access_files(tmp_path, acl=True):
    pw = tmp_path / "passwd"
    with open(pw, "w") as f:
        for name in USERS:
            f.write("%s:%s\n" % (name, auth.hash_password(USERS[name])))  # the default iteration count
    cfg = {"password_file": str(pw), "auth_fail_delay_ms": 300, "sys_interval_s": 1}
    if acl:
        path = tmp_path / "acl"
        path.write_text(ACL)
        cfg["acl_file"] = str(path)
    return cfg


def paho(port, cid, user=None, password=None, protocol=None):
    c = PahoClient(port, client_id=cid, username=user, password=password, protocol=protocol)
    return c


def test_passwords_with_paho_and_mosquitto_clients(broker_factory, tmp_path):
    require_tool("mosquitto_pub")
    b = broker_factory(access_files(tmp_path, acl=False))
    # good password: paho and mosquitto_pub
    good = paho(b.port, "p-good", "alice", USERS["alice"])
    assert good.connect()[1] == "Success"
    sub = MosqSub(b.port, "t/#", qos=1, args=["-u", "bob", "-P", USERS["bob"]])
    sub.wait_subscribed()
    mosquitto_pub(b.port, "t/1", "hello", qos=1, args=["-u", "alice", "-P", USERS["alice"]])
    assert wait_until(lambda: b"t/1 hello" in sub.output, 5), sub.output
    # bad passwords: refused, late, and counted
    t0 = time.monotonic()
    res = mosquitto_pub(b.port, "t/1", "x", args=["-u", "alice", "-P", "wrong"], check=False)
    assert res.returncode != 0 and b"bad user name or password" in res.stderr.lower(), res.stderr
    assert time.monotonic() - t0 >= 0.25  # auth_fail_delay_ms 300
    res = mosquitto_pub(b.port, "t/1", "x", args=["-u", "mallory", "-P", "x"], check=False)
    assert res.returncode != 0 and b"bad user name or password" in res.stderr.lower(), res.stderr
    bad = paho(b.port, "p-bad", "alice", "WONDER LAND")
    session_present, rc = bad.connect(expect_success=False)
    assert rc == "Bad user name or password", rc
    bad.wait_lost()
    v5 = paho(b.port, "p-bad5", "bob", "nope", protocol=mqtt.MQTTv5)
    assert v5.connect(expect_success=False)[1] == "Bad user name or password"
    anon = paho(b.port, "p-anon")
    assert anon.connect(expect_success=False)[1] == "Not authorized"
    res = mosquitto_pub(b.port, "t/1", "x", check=False)
    assert res.returncode != 0 and b"not authori" in res.stderr.lower(), res.stderr
    # the counters on $SYS, read by a logged-in client
    good.subscribe("$SYS/broker/counters/+")
    def counter(name):
        values = [int(m.payload) for m in good.received if m.topic == "$SYS/broker/counters/" + name]
        assert values, name
        return values[-1]
    assert wait_until(lambda: any(m.topic.endswith("auth_failures") for m in good.received), 5)
    good.clear()  # then the whole next publication: both counters (they arrive in any order)
    assert wait_until(lambda: {"auth_failures", "anonymous_refused"} <= {m.topic.rsplit("/", 1)[-1]
                                                                       for m in good.received}, 5)
    assert counter("auth_failures") == 4
    assert counter("anonymous_refused") == 2
    # nothing of the credentials in the log
    log = open(b.logpath).read()
    for secret in ("wonder land", "WONDER LAND", "wrong", "mallory", "nope", "builder"):
        assert secret not in log, secret
    for c in (good, bad, v5, anon):
        c.close()
    sub.close()


def test_failed_logins_are_rate_limited(broker_factory, tmp_path):
    cfg = access_files(tmp_path, acl=False)
    cfg.update({"auth_fail_delay_ms": 0, "auth_max_failures": 3, "auth_fail_window_s": 60})
    b = broker_factory(cfg)
    for i in range(3):
        c = paho(b.port, "x%d" % i, "alice", "bad")
        assert c.connect(expect_success=False)[1] == "Bad user name or password"
        c.close()
    # the right password from the same address is now refused unchecked
    c = paho(b.port, "x9", "alice", USERS["alice"])
    assert c.connect(expect_success=False)[1] == "Bad user name or password"
    c.close()
    log = open(b.logpath).read()
    assert "refused unchecked" in log


def test_acl_with_paho_and_mosquitto_clients(broker_factory, tmp_path):
    require_tool("mosquitto_sub")
    b = broker_factory(access_files(tmp_path))
    everything = MosqSub(b.port, ["#", "$SYS/broker/uptime"], qos=1, args=["-u", "sys", "-P", USERS["sys"]])
    everything.wait_subscribed()
    assert everything.granted == [1, 1]
    # subscribe: 3.1.1 gets 0x80, MQTT 5 gets 0x87 (not authorized)
    a = paho(b.port, "alice-311", "alice", USERS["alice"])
    assert a.connect()[1] == "Success"
    assert [int(x) for x in a.subscribe("home/#", qos=1)] == [0x80]         # meets deny home/secret
    assert [int(x) for x in a.subscribe("home/kitchen", qos=1)] == [1]
    assert [int(x) for x in a.subscribe("$SYS/#", qos=0)] == [0x80]
    a5 = paho(b.port, "alice-5", "alice", USERS["alice"], protocol=mqtt.MQTTv5)
    assert a5.connect()[1] == "Success"
    assert [int(x) for x in a5.subscribe("public/#", qos=1)] == [0x87]
    # publish: a denied QoS 1 publish is acknowledged (MQTT 5: PUBACK 0x87) and not delivered
    info = a5.publish("home/secret", b"leak", qos=1)
    assert info.rc == 0
    a5.publish("home/kitchen", b"ok5", qos=1)
    mosquitto_pub(b.port, "home/secret", "leak2", qos=0, args=["-u", "alice", "-P", USERS["alice"]])
    mosquitto_pub(b.port, "home/bob/door", "open", qos=1, args=["-u", "bob", "-P", USERS["bob"]])
    mosquitto_pub(b.port, "home/kitchen", "bob-denied", qos=1, args=["-u", "bob", "-P", USERS["bob"]])
    mosquitto_pub(b.port, "home/kitchen", "end", qos=1, args=["-u", "alice", "-P", USERS["alice"]])
    assert wait_until(lambda: b"home/kitchen end" in everything.output, 5), everything.output
    got = [x for x in everything.output if not x.startswith(b"$SYS")]
    assert got == [b"home/kitchen ok5", b"home/bob/door open", b"home/kitchen end"], got
    assert a.wait_messages(2) and [m[1] for m in a.messages] == [b"ok5", b"end"]
    # retained delivery: alice's new subscription gets only what she may read
    mosquitto_pub(b.port, "home/hall", "r1", qos=1, retain=True, args=["-u", "alice", "-P", USERS["alice"]])
    r = paho(b.port, "alice-r", "alice", USERS["alice"])
    assert r.connect()[1] == "Success"
    assert [int(x) for x in r.subscribe("home/+", qos=1)] == [0x80]
    assert [int(x) for x in r.subscribe("home/hall", qos=1)] == [1]
    assert r.wait_messages(1) and r.messages[0][1] == b"r1"
    # a client id belongs to its user: bob cannot take over alice's
    thief = paho(b.port, "alice-311", "bob", USERS["bob"])
    assert thief.connect(expect_success=False)[1] == "Not authorized"
    a.publish("home/kitchen", b"still here", qos=1)  # alice's connection survived
    for c in (a, a5, r, thief):
        c.close()
    everything.close()


# --- start-up -----------------------------------------------------------------------

def _run(args, cfg, tmp_path, timeout=15):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    try:
        cmd, env = brokerproc.midge_command(brokerproc.interpreter(), args + ["--config", str(path)], "400k")
    except brokerproc.BrokerError as e:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(str(e))
        pytest.skip(str(e))
    return subprocess.run(cmd, env=env, cwd=brokerproc.REPO, capture_output=True, text=True, timeout=timeout)


def test_anonymous_listener_off_loopback_refuses_to_start(tmp_path):
    port = str(brokerproc.free_port())
    r = _run(["--host", "0.0.0.0", "--port", port], {}, tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "'allow_anonymous'" in r.stderr and "0.0.0.0" in r.stderr and "password_file" in r.stderr, r.stderr
    assert "listening on" not in r.stdout
    r = _run(["--port", port], {"listeners": [{"host": "0.0.0.0", "port": 0}]}, tmp_path)
    assert r.returncode == 2 and "'listeners[0].allow_anonymous'" in r.stderr, r.stderr


@pytest.mark.parametrize("entry, words", [
    ({"port": 70000}, "'listeners[0].port'"),
    ({"host": "127.0.0.1"}, "'listeners[0].port' is missing"),
    ({"port": 1, "tls": "yes"}, "'listeners[0].tls'"),
    ({"port": 1, "allow_anonymous": 1}, "'listeners[0].allow_anonymous'"),
    ({"port": 1, "bind": "x"}, "unknown key 'bind'"),
    ({"port": 1, "tls": True}, "'tls_cert_file'"),
])
def test_bad_listener_entries_are_named(tmp_path, entry, words):
    r = _run(["--port", str(brokerproc.free_port())], {"listeners": [entry]}, tmp_path)
    assert r.returncode == 2 and words in r.stderr, r.stderr


def test_bad_password_and_acl_files_are_named(tmp_path):
    bad = tmp_path / "passwd"
    bad.write_text("alice\n")
    r = _run(["--port", str(brokerproc.free_port())], {"password_file": str(bad)}, tmp_path)
    assert r.returncode == 2 and "'password_file'" in r.stderr and "line 1" in r.stderr, r.stderr
    acl = tmp_path / "acl"
    acl.write_text("topic sometimes a/b\n")
    r = _run(["--port", str(brokerproc.free_port())], {"acl_file": str(acl)}, tmp_path)
    assert r.returncode == 2 and "'acl_file'" in r.stderr and "line 1" in r.stderr, r.stderr
    r = _run(["--port", str(brokerproc.free_port())], {"acl_file": str(tmp_path / "missing")}, tmp_path)
    assert r.returncode == 2 and "'acl_file'" in r.stderr, r.stderr
