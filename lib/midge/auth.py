# Password checks for CONNECT, and per-peer bookkeeping of failed logins.
#
# Imported only when a password file is configured. The password file has one
# line per user (tools/passwd writes it):
#
#   username:$pbkdf2-sha256$<iterations>$<salt, base64>$<hash, base64>
#
# The hash is PBKDF2-HMAC-SHA256 (RFC 8018) of the password's bytes, 32 bytes
# long. Passwords are never logged or kept: check() hashes and forgets them.
import binascii
import hashlib

from .compat import const, ticks_diff, MICROPYTHON, read_capped
from .errors import ConfigError

# The default iteration count, for tools/passwd (a file may use any count in
# 1.._MAX_ITERATIONS per line). Chosen so that one check stays well under a
# second on an ESP32 (240 MHz, no PSRAM): ~0.1-0.25 s by the estimate below,
# measured on the host and scaled, not timed on a board.
#
# Measured on the MicroPython 1.29 unix port (x86-64) with callgrind, which
# counts instructions deterministically: one iteration of _pbkdf2_py's loop
# costs ~26,300 instructions with a large heap (~18,200 of them in the four
# SHA-256 block compressions, the rest the VM, allocating 576 bytes and the
# 256-bit XOR); what those 576 bytes cost in garbage collection grows as the
# heap fills. One check at 250 iterations: 6.6M instructions with a large
# heap, 7.6M in a 200 KB heap (twice an ESP32's, as 64-bit objects are twice
# as big) with 75 KB free, 10.4M with 20-35 KB free. Wall time here, best of
# 200: 0.7-0.8 ms per check with a large heap (3.2 us per iteration), 1.5 ms
# in the nearly full 200 KB heap.
#
# Scaling to the ESP32: MicroPython's benchmark tests/perf_bench/
# misc_pystone.py costs 42,100 x86 instructions per loop on this port, and
# ESP32 boards at 240 MHz run 1,166-1,732 loops/s of it (micropython/
# micropython#6565): the board runs the VM at 49-73M x86-equivalent
# instructions/s, 1/5-1/3 of 240M (an in-order core at best one instruction
# per cycle, code fetched through the flash cache, more Xtensa instructions
# than x86 ones for the same C). Taking the slow end, 49M/s, for the SHA-256
# C code too (conservative: tight C runs nearer one instruction per cycle,
# and mbedTLS may use the SHA engine), a check at 250 iterations takes
# 0.13-0.21 s; at 73M/s 0.09-0.14 s. (Wall times agree: pystone runs 90-135
# times slower there than here, so 0.7-1.5 ms here is 0.06-0.2 s there.)
# A check blocks the event loop for that long. For comparison,
# mosquitto_passwd's default is 101 iterations of PBKDF2-SHA512.
ITERATIONS = const(250)
_MAX_ITERATIONS = const(10000000)  # a file's count: bounded, so every check ends
_SALT_BYTES = const(16)            # hash_password's salt
_MAX_SALT_BYTES = const(64)        # accepted in a file
_HASH_BYTES = const(32)            # the stored digest, one SHA-256 block
_MAX_FILE_BYTES = const(65536)     # the password file, read in chunks
_SCHEME = "pbkdf2-sha256"
_DUMMY_SALT = b"midge-dummy-salt"   # for unknown users (see Authenticator)


def pbkdf2_sha256(password, salt, iterations, dklen=32):
    """PBKDF2-HMAC-SHA256 (RFC 8018) of bytes password and salt: dklen
    bytes (any dklen >= 1; each further 32 bytes cost a whole run again).
    ValueError if iterations or dklen < 1. CPython: hashlib.pbkdf2_hmac;
    MicroPython, whose hashlib has only sha256: _pbkdf2_py."""
    if iterations < 1 or dklen < 1:
        raise ValueError("iterations and dklen must be >= 1")
    if MICROPYTHON:
        return _pbkdf2_py(password, salt, iterations, dklen)
    return hashlib.pbkdf2_hmac("sha256", password, salt, iterations, dklen)


def _pbkdf2_py(password, salt, iterations, dklen):
    """PBKDF2-HMAC-SHA256 over hashlib.sha256 alone (arguments checked by
    the caller). HMAC by hand (RFC 2104): the key padded to the 64-byte
    block, XORed with 0x36 / 0x5c once. MicroPython's sha256 objects have no
    copy(), so each HMAC hashes its padded key again: 4 block compressions
    per iteration where a native PBKDF2 needs 2."""
    sha = hashlib.sha256
    from_bytes = int.from_bytes
    key = bytes(password)
    if len(key) > 64:
        key = sha(key).digest()
    k = from_bytes(key + bytes(64 - len(key)), "big")
    ipad = (k ^ from_bytes(b"\x36" * 64, "big")).to_bytes(64, "big")
    opad = (k ^ from_bytes(b"\x5c" * 64, "big")).to_bytes(64, "big")
    out = b""
    block = 1
    while len(out) < dklen:
        h = sha(ipad)
        h.update(salt)
        h.update(block.to_bytes(4, "big"))
        u = h.digest()
        h = sha(opad)
        h.update(u)
        u = h.digest()
        acc = from_bytes(u, "big")
        # The hot loop: locals only, one XOR of 256-bit ints per iteration
        # (measured cheapest: update() beats concatenating the pad and u).
        for _ in range(iterations - 1):
            h = sha(ipad)
            h.update(u)
            u = h.digest()
            h = sha(opad)
            h.update(u)
            u = h.digest()
            acc ^= from_bytes(u, "big")
        out += acc.to_bytes(32, "big")
        block += 1
    return out[:dklen]


def _b64(data):
    return binascii.b2a_base64(data)[:-1].decode()  # without the newline


def _unb64(text, what):
    """The bytes of canonical base64 text (padded, no newline); ValueError
    naming `what` otherwise. Canonical: re-encoding gives the text back, so
    the check is the same on both interpreters (CPython's decoder skips
    stray characters)."""
    raw = text.encode()
    try:
        data = binascii.a2b_base64(raw)
    except ValueError:
        data = None
    if data is None or binascii.b2a_base64(data)[:-1] != raw:
        raise ValueError("%s is not base64" % what)
    return data


def _parse(encoded):
    """(iterations, salt, hash) of '$pbkdf2-sha256$N$SALT$HASH'; ValueError
    saying what is wrong."""
    parts = encoded.split("$")
    if len(parts) != 5 or parts[0]:
        raise ValueError("expected $%s$ITERATIONS$SALT$HASH after the ':'" % _SCHEME)
    if parts[1] != _SCHEME:
        raise ValueError("unknown scheme (not %s)" % _SCHEME)
    n = parts[2]
    ok = 0 < len(n) <= 8 and n[0] != "0"  # ASCII digits only: int() takes more
    for c in n:
        if c < "0" or c > "9":
            ok = False
    if not ok or int(n) > _MAX_ITERATIONS:
        raise ValueError("iterations must be 1..%d" % _MAX_ITERATIONS)
    salt = _unb64(parts[3], "salt")
    if not 0 < len(salt) <= _MAX_SALT_BYTES:
        raise ValueError("salt must be 1..%d bytes" % _MAX_SALT_BYTES)
    digest = _unb64(parts[4], "hash")
    if len(digest) != _HASH_BYTES:
        raise ValueError("hash must be %d bytes" % _HASH_BYTES)
    return int(n), salt, digest


def _encode(iterations, salt, digest):
    return "$%s$%d$%s$%s" % (_SCHEME, iterations, _b64(salt), _b64(digest))


def hash_password(password, iterations=ITERATIONS, salt=None):
    """The stored form of a password (str, hashed as UTF-8, or bytes): the
    part of a password file line after 'username:'. salt: bytes, default
    16 random bytes. ValueError for iterations outside 1.._MAX_ITERATIONS or
    a salt outside 1..64 bytes."""
    if not 1 <= iterations <= _MAX_ITERATIONS:
        raise ValueError("iterations must be 1..%d" % _MAX_ITERATIONS)
    if salt is None:
        import os
        salt = os.urandom(_SALT_BYTES)
    if not 0 < len(salt) <= _MAX_SALT_BYTES:
        raise ValueError("salt must be 1..%d bytes" % _MAX_SALT_BYTES)
    if isinstance(password, str):
        password = password.encode()
    return _encode(iterations, salt, pbkdf2_sha256(password, salt, iterations, _HASH_BYTES))


def _equal(a, b):
    """a == b for equal-length bytes, in time that does not depend on where
    they differ: OR of XORs, no early exit."""
    if len(a) != len(b):
        return False
    r = 0
    for i in range(len(a)):
        r |= a[i] ^ b[i]
    return r == 0


def verify(encoded, password):
    """True if bytes password hashes to the stored form `encoded` (one
    PBKDF2 run at its iteration count); False for a wrong password or a
    malformed `encoded` (never raises for those)."""
    try:
        iterations, salt, digest = _parse(encoded)
    except (ValueError, AttributeError, TypeError):  # the last two: not a str
        return False
    return _equal(pbkdf2_sha256(password, salt, iterations, len(digest)), digest)


def _bad_user(user):
    """Why a user name from the file is refused, or None: it must be
    non-empty with no ':' (the separator) and no control characters."""
    if not user:
        return "empty user name"
    for c in user:
        if ord(c) < 32 or ord(c) == 127:
            return "control character in the user name"
    return None


def load_passwords(path):
    """{username: stored form} from a password file. Blank lines and lines
    whose first non-blank character is '#' are skipped. ConfigError
    ("password file PATH line N: what") for a malformed line, a duplicate
    user, an unreadable file or one larger than 65536 bytes."""
    try:
        data = read_capped(path, _MAX_FILE_BYTES)
    except OSError as e:
        raise ConfigError("password file %s: cannot read it: %s" % (path, e))
    if data is None:
        raise ConfigError("password file %s: larger than %d bytes" % (path, _MAX_FILE_BYTES))
    users = {}
    lineno = 0
    start = 0
    end = len(data)
    while start < end:
        i = data.find(b"\n", start)
        if i < 0:
            i = end
        lineno += 1
        raw = data[start:i]
        start = i + 1
        try:
            line = raw.decode().rstrip()  # also drops a CR of CRLF
        except UnicodeError:
            line = None
        what = None
        if line is None:
            what = "not UTF-8"
        else:
            s = line.strip()
            if not s or s[0] == "#":
                continue
            colon = line.find(":")
            if colon < 0:
                what = "expected user:hash (no ':')"
            else:
                user = line[:colon]
                encoded = line[colon + 1:]
                what = _bad_user(user)
                if what is None and user in users:
                    what = "user %s appears twice" % user
                if what is None:
                    try:
                        _parse(encoded)
                    except ValueError as e:
                        what = str(e)
        if what is not None:
            raise ConfigError("password file %s line %d: %s" % (path, lineno, what))
        users[user] = encoded
    return users


class Authenticator:
    """Checks user name and password against a loaded password file."""

    def __init__(self, users):
        # users: {username: stored form}, from load_passwords (owned).
        self.users = users
        # Unknown users are checked against this, a stored form of the
        # iteration count most users have (the larger on a tie) whose hash no
        # password matches in practice: a check costs the same for every name.
        counts = {}
        for encoded in users.values():
            n = _parse(encoded)[0]
            counts[n] = counts.get(n, 0) + 1
        best = ITERATIONS
        most = 0
        for n, c in counts.items():
            if c > most or (c == most and n > best):
                best = n
                most = c
        self._dummy = _encode(best, _DUMMY_SALT, bytes(_HASH_BYTES))

    def check(self, username, password):
        """True if `password` (bytes, or None when CONNECT has none) is
        username's password. Always runs exactly one PBKDF2 (blocking, ~0.1-
        0.25 s on an ESP32 at ITERATIONS): an unknown user (or None) or a
        missing password costs the same as a wrong password, so the timing
        does not tell which users exist."""
        encoded = self.users.get(username)
        if encoded is None:
            verify(self._dummy, b"" if password is None else password)
            return False
        if password is None:
            verify(encoded, b"")
            return False
        return verify(encoded, password)


class FailureLimiter:
    """Failed logins per peer (a host, without port), for refusing a peer
    that keeps guessing. Times are ticks_ms values, compared with
    ticks_diff. The table holds at most max_peers peers whatever an attacker
    does: a new peer in a full table replaces the one whose last failure is
    oldest (counted in `evicted`)."""

    def __init__(self, max_failures, window_ms, max_peers):
        if max_failures < 1 or window_ms < 1 or max_peers < 1:
            raise ValueError("max_failures, window_ms and max_peers must be >= 1")
        self.max_failures = max_failures
        self.window_ms = window_ms
        self.max_peers = max_peers
        self.evicted = 0  # peers forgotten to make room
        # peer -> [failures in the window, window start ms, last failure ms]
        self._peers = {}

    def _expired(self, entry, now_ms):
        # A window has passed (or the clock went back, as a 32-bit board's
        # ticks seem to after ~6 days without a failure: forget rather than
        # limit forever).
        d = ticks_diff(now_ms, entry[1])
        return d < 0 or d >= self.window_ms

    def failed(self, peer, now_ms):
        """Record a failed login of peer at now_ms."""
        entry = self._peers.get(peer)
        if entry is not None:
            if self._expired(entry, now_ms):
                entry[0] = 1
                entry[1] = now_ms
            elif entry[0] < self.max_failures:
                entry[0] += 1
            entry[2] = now_ms
            return
        peers = self._peers
        if len(peers) >= self.max_peers:
            oldest = None
            age = 0
            for p, e in peers.items():  # O(max_peers), only when full
                d = ticks_diff(now_ms, e[2])
                if oldest is None or d > age:
                    oldest = p
                    age = d
            del peers[oldest]
            self.evicted += 1
        peers[peer] = [1, now_ms, now_ms]

    def limited(self, peer, now_ms):
        """True if peer has failed max_failures times or more within the
        window_ms that started at its first failure counted."""
        entry = self._peers.get(peer)
        if entry is None:
            return False
        if self._expired(entry, now_ms):
            del self._peers[peer]
            return False
        return entry[0] >= self.max_failures

    def succeeded(self, peer):
        """Forget peer's failures (it logged in)."""
        self._peers.pop(peer, None)

    def __len__(self):
        return len(self._peers)
