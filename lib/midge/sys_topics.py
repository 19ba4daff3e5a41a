# $SYS: broker statistics published every sys_interval_s to their
# subscribers with the retain flag set, as retained messages are. They are
# not held between publications (each would be a retained message in the
# heap: about 450 bytes apiece on the 64-bit unix port, 17 KB for the set):
# a new subscription to a $SYS filter gets the values of the moment instead
# (match).
import gc

from .compat import mem_free, mem_alloc
from .message import Message
from .topics import split


def snapshot(broker):
    """[(topic, payload str)] of every $SYS value. Collects garbage first so
    the heap figures are comparable from one interval to the next."""
    gc.collect()
    items = [
        ("$SYS/broker/version", "midge " + broker.VERSION),
        ("$SYS/broker/uptime", str(broker.uptime_s())),
        ("$SYS/broker/clients/connected", str(broker.online)),
        ("$SYS/broker/clients/total", str(len(broker.sessions))),
        ("$SYS/broker/messages/received", str(broker.msgs_in)),
        ("$SYS/broker/messages/sent", str(broker.msgs_out)),
        ("$SYS/broker/bytes/received", str(broker.bytes_in)),
        ("$SYS/broker/bytes/sent", str(broker.bytes_out)),
        ("$SYS/broker/retained/count", str(broker.retained.count)),
        ("$SYS/broker/subscriptions/count", str(broker.subs.count + broker.shared_members)),
        ("$SYS/broker/heap/free", str(mem_free())),
        ("$SYS/broker/heap/alloc", str(mem_alloc())),
        ("$SYS/broker/heap/shedding", str(broker.heap.level)),
    ]
    store = broker.store
    if store is not None:
        items.append(("$SYS/broker/store/bytes", str(store.size())))
        items.append(("$SYS/broker/store/bytes_written", str(store.bytes_written)))
        items.append(("$SYS/broker/store/commits", str(store.commits)))
        items.append(("$SYS/broker/store/compactions", str(store.compactions)))
        items.append(("$SYS/broker/store/damaged_records", str(store.damaged_records)))
        items.append(("$SYS/broker/store/damaged_files", str(store.damaged_files)))
        items.append(("$SYS/broker/store/missing_segments", str(store.missing_segments)))
        items.append(("$SYS/broker/store/errors", str(store.errors)))
    c = broker.counters
    for name in c:
        items.append(("$SYS/broker/counters/" + name, str(c[name])))
    broker.sys_count = len(items)
    return items


def publish_all(broker):
    """Send every value to its subscribers (retain flag set, stored
    nowhere: Broker.publish with exempt)."""
    for topic, value in snapshot(broker):
        broker.publish(Message(topic, value.encode(), 0, True), True)


def match(broker, levels, out):
    """Append to out, as retained messages, the $SYS values of this moment
    whose topics the filter `levels` (first level "$SYS") matches: only
    those are made into messages."""
    for topic, value in snapshot(broker):
        if _matches(levels, split(topic)):
            out.append(Message(topic, value.encode(), 0, True))


def _matches(flt, levels):
    """The filter's levels match the topic's ('#' and '+' wildcards)."""
    n = len(levels)
    i = 0
    for f in flt:
        if f == "#":
            return True
        if i >= n or (f != "+" and f != levels[i]):
            return False
        i += 1
    return i == n
