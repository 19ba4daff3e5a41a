# What one password check costs, measured under the MicroPython unix port
# (x86-64; lib/midge/auth.py scales it to an ESP32).
#
#   MICROPYPATH=.frozen:lib:tools .venv/bin/micropython -X heapsize=200k tools/measure/password_cost.py [N [HELD_KB]]
#
# Times N (default 50) checks of a right and a wrong password with
# Authenticator.check at auth.ITERATIONS, the check a CONNECT with a user
# name costs, and prints the median and the slowest in milliseconds with the
# free heap they ran in. HELD_KB: that many times 16 bytearrays of 64 bytes
# held first (about 1.5 KB of heap per HELD_KB on the 64-bit port), to see
# the check in a heap as full as a busy broker's:
# each iteration allocates, and the collections that causes cost more the
# fuller the heap is. Also runs on CPython (hashlib.pbkdf2_hmac), for
# comparison.
import gc
import sys
import time

from midge import auth
from midge.compat import mem_free

try:
    ticks_us, ticks_diff = time.ticks_us, time.ticks_diff
except AttributeError:  # CPython
    def ticks_us():
        return time.perf_counter_ns() // 1000

    def ticks_diff(a, b):
        return a - b


def _times(a, user, password, n):
    out = []
    for _ in range(n):
        t0 = ticks_us()
        a.check(user, password)
        out.append(ticks_diff(ticks_us(), t0))
    out.sort()
    return out


def main(argv):
    n = int(argv[1]) if len(argv) > 1 else 50
    held_kb = int(argv[2]) if len(argv) > 2 else 0
    held = [None] * (held_kb * 16)  # (made whole first: no list regrowth in a full heap)
    for i in range(len(held)):
        held[i] = bytearray(64)
    a = auth.Authenticator({"alice": auth.hash_password("wonderland", auth.ITERATIONS)})
    gc.collect()
    free = mem_free()
    ok = a.check("alice", b"wonderland") and not a.check("alice", b"wrong")
    print("password check, PBKDF2-HMAC-SHA256 x %d iterations, %s, %d KB held, free heap %d"
          % (auth.ITERATIONS, sys.implementation.name, held_kb, free))
    for label, pw in (("right password", b"wonderland"), ("wrong password", b"wrong")):
        t = _times(a, "alice", pw, n)
        print("  %-15s median %.2f ms  slowest %.2f ms  (%d checks)"
              % (label, t[len(t) // 2] / 1000, t[-1] / 1000, n))
    print("  checks agree with the file: %s" % ok)
    del held
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
