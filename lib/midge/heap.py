# The heap guard: how close the broker is to running out of heap, so that it
# sheds load in a documented order instead of letting MemoryError decide.
#
# Contract:
# - `level` is 0 while the heap is healthy, 1 (LOW) when free heap after a
#   collection is under heap_reserve_bytes, 2 (CRITICAL) when it is under
#   half of that. What each level refuses or drops is decided where the work is done
#   (server.py, broker.py); README "Heap contract" lists the steps. While
#   CRITICAL, on_critical() is called after each check (Delivery.relieve_heap
#   drops the oldest queued messages of the largest queue).
# - check(now) is cheap enough for every tick and every chunk read: it reads
#   the free heap (gc.mem_free(): no collection) and collects only when
#   that reading is within _ZONE packets of the reserve, at most once per
#   _COLLECT_GAP_MS. Fragmentation is not shed for: free bytes do not say
#   whether a block of one packet fits (socket churn alone left no 4 KB
#   block with 70 KB free on the ESP32 budget, and a board filled to its
#   caps has none with 31 KB free), and refusing work then would lock
#   clients out for nothing. Delivery.make_room answers the allocation that
#   fails, with fits() to see when it has given back enough. Between two checks the read loop spends a
#   budget of input bytes (spend()), sized from the free heap so that a full
#   heap is checked often and an empty one rarely.
# - Where free heap cannot be read (CPython: mem_free() is -1) or the reserve
#   is 0, level stays 0 and nothing is shed.
import gc

from . import log
from .compat import const, mem_free, ticks_ms, ticks_diff

LOW = const(1)
CRITICAL = const(2)
_COLLECT_GAP_MS = const(20)   # at most one collection per this many ms (a MemoryError forces one)
_AMPLIFY = const(32)          # heap bytes one input byte may cost at most (fan-out to queues)
_MIN_BUDGET = const(256)      # input bytes between two checks, at least
_ZONE = const(4)              # collect when free heap is within this many packets of the reserve


class HeapGuard:
    level = 0
    free = -1             # free heap at the last check (after a collection if one ran)
    on_critical = None    # called after each check that leaves the level CRITICAL
    _budget = 0           # input bytes left before the next check
    _collected_ms = None  # ticks_ms of the last collection this guard ran

    def __init__(self, reserve_bytes, probe_bytes, count):
        self.reserve = reserve_bytes if mem_free() >= 0 else 0
        self.probe = probe_bytes  # max_packet_size: the largest buffer one client packet needs
        self._count = count       # Broker.count: counts heap_low on each entry into shedding

    def spend(self, n):
        """The read loop read n bytes; check the heap when the budget is
        used up."""
        if self.reserve:
            self._budget -= n
            if self._budget <= 0:
                self.check(ticks_ms())

    def check(self, now, force=False):
        """Measure and set `level`. force: collect now (after a MemoryError)."""
        if not self.reserve:
            return
        free = mem_free()
        if force or free < self.reserve + _ZONE * self.probe:
            # near the reserve before a collection: garbage or shortage?
            last = self._collected_ms
            if not force and last is not None and ticks_diff(now, last) < _COLLECT_GAP_MS:
                self._budget = _MIN_BUDGET
                return  # collected a moment ago: keep the level, look again soon
            gc.collect()
            self._collected_ms = now
            free = mem_free()
        self.free = free
        old = self.level
        if free < self.reserve // 2:
            self.level = CRITICAL
        elif free < self.reserve:
            self.level = LOW
        else:
            self.level = 0
        if self.level != old:
            if not old:
                self._count("heap_low")
            log.warning("heap: %d bytes free (reserve %d): shedding level %d", free, self.reserve,
                        self.level)
        spare = free - self.reserve
        self._budget = spare // _AMPLIFY if spare // _AMPLIFY > _MIN_BUDGET else _MIN_BUDGET
        if self.level == CRITICAL and self.on_critical is not None:
            self.on_critical()

    def fits(self):
        """After heap was given back (Delivery.make_room): collect, then
        whether a buffer of one packet can be allocated (it is dropped at
        once)."""
        gc.collect()
        self._collected_ms = ticks_ms()
        try:
            bytearray(self.probe)
            return True
        except MemoryError:
            return False
