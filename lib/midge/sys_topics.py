# $SYS: broker statistics published as retained messages every
# sys_interval_s. They bypass the retained caps (a fixed, small set).
import gc

from .compat import mem_free, mem_alloc
from .message import Message


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
    return items


def publish_all(broker):
    for topic, value in snapshot(broker):
        broker.publish(Message(topic, value.encode(), 0, True), True)
