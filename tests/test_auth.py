# midge.auth: PBKDF2-HMAC-SHA256 against published vectors (both the
# interpreter's path and the pure one), the stored form, password files and
# their error messages, the Authenticator, and the FailureLimiter with an
# injected clock. Iteration counts stay small: the pure PBKDF2 is slow.
import binascii
import os
import sys

from midge import auth
from midge.auth import (pbkdf2_sha256, hash_password, verify, load_passwords,
                        Authenticator, FailureLimiter, ITERATIONS)
from midge.errors import ConfigError


def _hex(b):
    return binascii.hexlify(b).decode()


# (password, salt, iterations, dklen, hex): RFC 7914 section 11 (the 64-byte
# one), the widely published "password"/"salt" set, and two computed once
# with CPython's hashlib.pbkdf2_hmac (OpenSSL) for keys longer than a block
# and empty.
_VECTORS = (
    (b"password", b"salt", 1, 32,
     "120fb6cffcf8b32c43e7225256c4f837a86548c92ccc35480805987cb70be17b"),
    (b"password", b"salt", 2, 32,
     "ae4d0c95af6b46d32d0adff928f06dd02a303f8ef3c251dfd6e2d85a95474c43"),
    (b"password", b"salt", 4096, 32,
     "c5e478d59288c841aa530db6845c4c8d962893a001ce4e11a4963873aa98134a"),
    (b"passwordPASSWORDpassword", b"saltSALTsaltSALTsaltSALTsaltSALTsalt", 4096, 40,
     "348c89dbcbd32b2f32d814b8116e84cf2b17347ebc1800181c4e2a1fb8dd53e1c635518c7dac47e9"),
    (b"passwd", b"salt", 1, 64,
     "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc"
     "49ca9cccf179b645991664b39d77ef317c71b845b1e30bd509112041d3a19783"),
    (b"x" * 100, b"salt", 3, 32,
     "59bfa49750dd5462ce38370a1e7abe0736ff334cf1c2f0d84f23a03435d660d1"),
    (b"", b"salt", 2, 32,
     "62384466264daadc4144018c6bd864648272b34da8980d31521ffcce92ae003b"),
)


def test_pbkdf2_vectors():
    for password, salt, n, dklen, want in _VECTORS:
        assert _hex(pbkdf2_sha256(password, salt, n, dklen)) == want, (password, n, dklen)


def test_pure_pbkdf2_vectors():
    # The MicroPython path, tested on CPython too.
    for password, salt, n, dklen, want in _VECTORS:
        assert _hex(auth._pbkdf2_py(password, salt, n, dklen)) == want, (password, n, dklen)
    assert auth._pbkdf2_py(bytearray(b"password"), b"salt", 2, 32) == \
        pbkdf2_sha256(b"password", b"salt", 2)
    assert len(auth._pbkdf2_py(b"p", b"s", 2, 33)) == 33
    assert auth._pbkdf2_py(b"p", b"s", 2, 33)[:32] == auth._pbkdf2_py(b"p", b"s", 2, 32)


def test_pbkdf2_refuses_bad_arguments():
    for n, dklen in ((0, 32), (-1, 32), (1, 0)):
        try:
            pbkdf2_sha256(b"p", b"s", n, dklen)
            assert False, (n, dklen)
        except ValueError:
            pass


def test_iterations_default_in_range():
    assert 1 <= ITERATIONS <= 10000000


def test_hash_password_format_and_round_trip():
    enc = hash_password("s3cret", 3, b"0123456789abcdef")
    parts = enc.split("$")
    assert parts[0] == "" and parts[1] == "pbkdf2-sha256" and parts[2] == "3"
    assert binascii.a2b_base64(parts[3]) == b"0123456789abcdef"
    assert binascii.a2b_base64(parts[4]) == pbkdf2_sha256(b"s3cret", b"0123456789abcdef", 3)
    assert "\n" not in enc and ":" not in enc
    assert verify(enc, b"s3cret")
    assert not verify(enc, b"s3cret ")
    assert not verify(enc, b"S3cret")
    assert not verify(enc, b"")
    # same salt, same result; a random salt differs each time
    assert hash_password("s3cret", 3, b"0123456789abcdef") == enc
    a = hash_password("s3cret", 2)
    b = hash_password("s3cret", 2)
    assert a != b and verify(a, b"s3cret") and verify(b, b"s3cret")
    assert len(binascii.a2b_base64(a.split("$")[3])) == 16
    # UTF-8 passwords; bytes accepted too
    enc = hash_password("p\u00e4ss", 2, b"salt")
    assert verify(enc, "p\u00e4ss".encode())
    assert hash_password(b"p\xc3\xa4ss", 2, b"salt") == enc


def test_hash_password_refuses_bad_arguments():
    for n, salt in ((0, b"s"), (10000001, b"s"), (1, b""), (1, bytes(65))):
        try:
            hash_password("p", n, salt)
            assert False, (n, salt)
        except ValueError:
            pass


def test_verify_malformed_is_false():
    good = hash_password("pw", 2, b"saltsalt")
    assert verify(good, b"pw")
    p = good.split("$")
    bad = (
        "", "$", "pw", good[1:], good + "$", good + "=",
        "$pbkdf2-sha512$2$%s$%s" % (p[3], p[4]),          # unknown scheme
        "$pbkdf2-sha256$0$%s$%s" % (p[3], p[4]),          # iterations 0
        "$pbkdf2-sha256$02$%s$%s" % (p[3], p[4]),         # leading zero
        "$pbkdf2-sha256$+2$%s$%s" % (p[3], p[4]),
        "$pbkdf2-sha256$ 2$%s$%s" % (p[3], p[4]),
        "$pbkdf2-sha256$\u0662$%s$%s" % (p[3], p[4]),     # Arabic-Indic 2
        "$pbkdf2-sha256$10000001$%s$%s" % (p[3], p[4]),   # above the cap
        "$pbkdf2-sha256$$%s$%s" % (p[3], p[4]),
        "$pbkdf2-sha256$2$$%s" % p[4],                    # empty salt
        "$pbkdf2-sha256$2$%s$" % p[3],                    # empty hash
        "$pbkdf2-sha256$2$%s!$%s" % (p[3], p[4]),         # not base64
        "$pbkdf2-sha256$2$%s$%s" % (p[3], p[4][:-4]),     # hash too short
        "$pbkdf2-sha256$2$%s$%s" % (p[3], p[4].rstrip("=")),  # unpadded
        "$pbkdf2-sha256$2$%s$%s" % (p[3], p[4][:20] + " " + p[4][20:]),
        "$pbkdf2-sha256$2$%s$%sAAAA" % (p[3], p[4]),      # 35 bytes
    )
    for enc in bad:
        assert not verify(enc, b"pw"), enc
    assert not verify(None, b"pw")
    assert not verify(good.encode(), b"pw")


_TMP = "/tmp/midge_test_auth_%s_%d.passwd"


def _write(n, text):
    path = _TMP % (sys.implementation.name, n)
    with open(path, "wb") as f:
        f.write(text.encode() if isinstance(text, str) else text)
    return path


def _load_err(path):
    try:
        load_passwords(path)
    except ConfigError as e:
        return str(e)
    return None


def test_load_passwords():
    a = hash_password("apw", 2, b"salt-a")
    b = hash_password("bpw", 3, b"salt-b")
    text = "# users\n\nalice:%s\r\n   \n  # indented comment\nbob:%s  \n\u00e9ve x:%s" % (a, b, a)
    path = _write(1, text)
    try:
        users = load_passwords(path)
    finally:
        os.remove(path)
    assert users == {"alice": a, "bob": b, "\u00e9ve x": a}
    path = _write(2, "")
    try:
        assert load_passwords(path) == {}
    finally:
        os.remove(path)


def test_load_passwords_errors_name_file_and_line():
    good = hash_password("pw", 2, b"salt")
    cases = (
        ("ok:%s\nno colon here\n" % good, 2, "':'"),
        ("# c\n:%s\n" % good, 2, "empty user"),
        ("a\tb:%s\n" % good, 1, "control"),
        ("a:%s\nb:%s\na:%s\n" % (good, good, good), 3, "twice"),
        ("a:$pbkdf2-sha512$2$c2FsdA==$%s\n" % good.split("$")[4], 1, "scheme"),
        ("a:$pbkdf2-sha256$0$c2FsdA==$%s\n" % good.split("$")[4], 1, "iterations"),
        ("a:$pbkdf2-sha256$99999999$c2FsdA==$%s\n" % good.split("$")[4], 1, "iterations"),
        ("a:$pbkdf2-sha256$2$c2Fsd!==$%s\n" % good.split("$")[4], 1, "base64"),
        ("a:$pbkdf2-sha256$2$c2FsdA==$c2FsdA==\n", 1, "32 bytes"),
        ("a:plaintext\n", 1, "expected"),
        (b"a:" + good.encode() + b"\n\xff\xfe:x\n", 2, "UTF-8"),
    )
    for i, (text, line, what) in enumerate(cases):
        path = _write(10 + i, text)
        try:
            msg = _load_err(path)
        finally:
            os.remove(path)
        assert msg is not None, text
        assert msg.startswith("password file %s line %d: " % (path, line)), msg
        assert what in msg, msg


def test_load_passwords_file_errors():
    missing = "/tmp/midge_test_auth_no_such_file"
    msg = _load_err(missing)
    assert msg is not None and msg.startswith("password file %s" % missing), msg
    good = "u:" + hash_password("pw", 1, b"salt") + "\n"
    path = _write(40, good[:-1] + "\n" + "#" * (65536 - len(good)) + "\n")  # 65537 bytes
    try:
        msg = _load_err(path)
        assert msg is not None and path in msg and "65536" in msg, msg
    finally:
        os.remove(path)
    path = _write(41, good + "#" * (65536 - len(good) - 1) + "\n")  # exactly 65536
    try:
        assert load_passwords(path) == {"u": good[2:-1]}
    finally:
        os.remove(path)


def test_authenticator_check():
    users = {"alice": hash_password("apw", 2, b"salt-a"),
             "bob": hash_password("", 3, b"salt-b")}
    a = Authenticator(users)
    assert a.check("alice", b"apw")
    assert not a.check("alice", b"apw2")
    assert not a.check("alice", b"")
    assert not a.check("alice", None)
    assert a.check("bob", b"")        # an empty password is a password
    assert not a.check("bob", None)   # none at all is not
    assert not a.check("carol", b"apw")
    assert not a.check("carol", None)
    assert not a.check("", b"apw")
    assert not a.check(None, b"apw")
    assert not a.check(None, None)


def test_authenticator_dummy_costs_the_common_iteration_count():
    users = {"a": hash_password("x", 5, b"s"), "b": hash_password("x", 5, b"s"),
             "c": hash_password("x", 2, b"s")}
    dummy = Authenticator(users)._dummy
    assert auth._parse(dummy)[0] == 5
    assert not verify(dummy, b"") and not verify(dummy, b"x")
    users = {"a": hash_password("x", 2, b"s"), "b": hash_password("x", 7, b"s")}
    assert auth._parse(Authenticator(users)._dummy)[0] == 7   # a tie: the larger
    assert auth._parse(Authenticator({})._dummy)[0] == ITERATIONS
    assert not Authenticator({}).check("anyone", b"pw")


def test_authenticator_unknown_user_runs_one_pbkdf2():
    calls = []
    real = auth.pbkdf2_sha256

    def counting(password, salt, iterations, dklen=32):
        calls.append(iterations)
        return real(password, salt, iterations, dklen)

    a = Authenticator({"alice": hash_password("apw", 4, b"salt")})
    auth.pbkdf2_sha256 = counting
    try:
        for user, pw in (("alice", b"apw"), ("alice", b"no"), ("alice", None),
                         ("zed", b"apw"), ("zed", None), (None, None)):
            del calls[:]
            a.check(user, pw)
            assert calls == [4], (user, pw, calls)
    finally:
        auth.pbkdf2_sha256 = real


def test_limiter_counts_within_window():
    lim = FailureLimiter(3, 1000, 10)
    assert not lim.limited("1.2.3.4", 0)
    lim.failed("1.2.3.4", 0)
    lim.failed("1.2.3.4", 100)
    assert not lim.limited("1.2.3.4", 200)
    lim.failed("1.2.3.4", 300)
    assert lim.limited("1.2.3.4", 300)
    assert lim.limited("1.2.3.4", 999)
    assert not lim.limited("5.6.7.8", 999)
    assert not lim.limited("1.2.3.4", 1000)   # the window has passed
    assert len(lim) == 0                       # and the entry is gone


def test_limiter_window_restarts():
    lim = FailureLimiter(2, 1000, 10)
    lim.failed("h", 0)
    lim.failed("h", 1500)   # a new window starts at 1500
    assert not lim.limited("h", 1600)
    lim.failed("h", 1700)
    assert lim.limited("h", 1700) and lim.limited("h", 2499)
    assert not lim.limited("h", 2500)
    # failures while limited do not extend the window
    lim = FailureLimiter(1, 1000, 10)
    for t in (0, 300, 600, 900):
        lim.failed("h", t)
    assert lim.limited("h", 999) and not lim.limited("h", 1000)


def test_limiter_succeeded_forgets():
    lim = FailureLimiter(2, 1000, 10)
    lim.failed("h", 0)
    lim.failed("h", 1)
    assert lim.limited("h", 2)
    lim.succeeded("h")
    assert not lim.limited("h", 3) and len(lim) == 0
    lim.succeeded("never seen")


def test_limiter_cap_evicts_oldest_last_failure():
    lim = FailureLimiter(2, 10000, 3)
    lim.failed("a", 0)
    lim.failed("b", 10)
    lim.failed("c", 20)
    lim.failed("a", 30)           # a's last failure is now the newest
    lim.failed("d", 40)           # full: b (last failure at 10) goes
    assert len(lim) == 3 and lim.evicted == 1
    assert lim.limited("a", 50)   # a kept its two failures
    lim.failed("c", 50)
    assert lim.limited("c", 60)
    lim.failed("b", 60)           # b starts again at 1; a (30) goes
    assert not lim.limited("b", 61) and lim.evicted == 2
    assert not lim.limited("a", 61)   # a was forgotten
    lim.failed("d", 70)
    assert lim.limited("d", 71)       # d (40) was kept: two failures now
    assert len(lim) == 3
    # an attacker with many addresses never grows the table
    for i in range(100):
        lim.failed("10.0.0.%d" % i, 100 + i)
    assert len(lim) == 3 and lim.evicted == 102


def test_limiter_clock_going_back_forgets():
    # ticks_ms on a 32-bit board wrap; ticks_diff then sees a window start
    # in the future: the entry counts as expired rather than limiting forever.
    lim = FailureLimiter(1, 1000, 4)
    lim.failed("h", 5000)
    assert lim.limited("h", 5500)
    assert not lim.limited("h", 4000)


def test_limiter_refuses_bad_arguments():
    for args in ((0, 1, 1), (1, 0, 1), (1, 1, 0)):
        try:
            FailureLimiter(*args)
            assert False, args
        except ValueError:
            pass
