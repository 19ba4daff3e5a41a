# midge.heap.HeapGuard: the shedding levels, with a fake free-heap reading
# and a fake collection (both module globals of midge.heap, replaced here).
from midge import heap

_real = (heap.mem_free, heap.gc)


class FakeHeap:
    """free: what mem_free() reads; garbage: what a collection gives back."""

    def __init__(self, free, garbage=0):
        self.free = free
        self.garbage = garbage
        self.collections = 0

    def mem_free(self):
        return self.free

    def collect(self):
        self.collections += 1
        self.free += self.garbage
        self.garbage = 0


def _guard(fake, reserve=10000, probe=100):
    heap.mem_free = fake.mem_free
    heap.gc = fake
    counted = []
    g = heap.HeapGuard(reserve, probe, counted.append)
    return g, counted


def _restore():
    heap.mem_free, heap.gc = _real


def test_levels_follow_free_heap_after_a_collection():
    fake = FakeHeap(50000)
    try:
        g, counted = _guard(fake)
        g.check(0)
        assert g.level == 0 and fake.collections == 0  # plenty free: no collection
        fake.free, fake.garbage = 8000, 0
        g.check(100)
        assert g.level == heap.LOW and fake.collections == 1 and counted == ["heap_low"]
        fake.free = 4000
        g.check(200)
        assert g.level == heap.CRITICAL and counted == ["heap_low"]  # one entry into shedding
        fake.free = 60000
        g.check(300)
        assert g.level == 0
        fake.free = 9000
        g.check(400)
        assert g.level == heap.LOW and counted == ["heap_low", "heap_low"]
    finally:
        _restore()


def test_garbage_is_not_shortage():
    fake = FakeHeap(3000, garbage=40000)   # low reading, but most of it is garbage
    try:
        g, counted = _guard(fake)
        g.check(0)
        assert g.level == 0 and fake.collections == 1 and counted == []
    finally:
        _restore()


def test_collections_are_rate_limited_unless_forced():
    fake = FakeHeap(4000)
    try:
        g, counted = _guard(fake)
        g.check(1000)
        assert fake.collections == 1 and g.level == heap.CRITICAL
        g.check(1005)                      # a moment later: keep the level, no collection
        assert fake.collections == 1 and g.level == heap.CRITICAL
        g.check(1006, True)                # after a MemoryError: collect now
        assert fake.collections == 2
        g.check(1100)
        assert fake.collections == 3
    finally:
        _restore()


def test_read_budget_checks_often_when_full_and_rarely_when_empty():
    fake = FakeHeap(10000 + 32 * 100000)
    try:
        g, counted = _guard(fake)
        g.check(0)
        g.spend(50000)
        fake.free = 1000                   # would be CRITICAL, but the budget is not spent
        g.spend(10000)
        assert g.level == 0
        g.spend(100000)                    # budget spent: checked
        assert g.level == heap.CRITICAL
        g.spend(255)                       # near the reserve the budget is the minimum
        fake.free = 50000
        g.spend(1)
        assert g.level == 0
    finally:
        _restore()


def test_no_reserve_or_no_reading_never_sheds():
    fake = FakeHeap(10)
    try:
        g, counted = _guard(fake, reserve=0)
        g.check(0)
        g.spend(1 << 20)
        assert g.level == 0 and fake.collections == 0
        fake.free = -1                     # CPython: mem_free() cannot tell
        g2 = heap.HeapGuard(10000, 100, counted.append)
        g2.check(0)
        assert g2.level == 0 and g2.reserve == 0
    finally:
        _restore()


def test_a_reading_between_collections_is_never_taken_for_shortage():
    # under the reserve a moment after a collection: garbage may be all it
    # is, so the level stays as it was (0 here) until a collection is allowed
    fake = FakeHeap(50000)
    try:
        g, counted = _guard(fake)
        fake.free, fake.garbage = 4000, 60000
        g.check(1000)                      # collects: plenty free after all
        assert g.level == 0 and fake.collections == 1
        fake.free = 3000                   # new garbage, 5 ms later
        g.check(1005)
        assert g.level == 0 and fake.collections == 1 and counted == []
    finally:
        _restore()


def test_fits_collects_and_tries_a_packet_sized_buffer():
    fake = FakeHeap(500000, garbage=100)
    try:
        g, counted = _guard(fake, probe=64)
        assert g.fits() and fake.collections == 1
        g.probe = 1 << 40                  # no heap has a block this large
        assert not g.fits() and fake.collections == 2
        assert g.level == 0                # fits() only answers; it sets no level
    finally:
        _restore()
