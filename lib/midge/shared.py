# Shared subscriptions: `$share/{group}/{filter}` (MQTT 5 section 4.8.2;
# 3.1.1 clients may use them too, as with mosquitto). Each message that
# matches the filter goes to ONE member of the group.
#
# A Group is keyed by its whole share name in Broker.groups and sits in a
# trie of its own (Broker.shared, a Subscriptions whose "sessions" are
# groups), so a publish that matches no group pays one dict test. Members
# are the sessions subscribed with that share name -> their grant (as in
# subscriptions.py). Choice: round robin over the members, skipping those
# offline or congested while another can take it; if none is connected, the
# next member in turn (a persistent session) queues it.
#
# Caps: a member is a subscription (max_subscriptions per session,
# max_subscriptions_total over all); a group exists only while it has a
# member, so groups are bounded by the subscriptions.
#
# This module is imported by the first shared subscription (Broker imports
# it where a `$share/` filter is met): a hub that never sees one never pays
# its heap.
from . import topics
from .protocol import ProtocolError, RC_PROTOCOL_ERROR, SUBACK_FAILURE
from .session import MSG, STATE, AWAIT_ACK

PREFIX = "$share/"


def parse(filt):
    """(group name, filter levels) of a share name, None if filt is not
    one, or "" when it is malformed: the group name must be non-empty
    without wildcards or '/', the filter a valid non-empty filter
    [MQTT-4.8.2-1..2]."""
    if not filt.startswith(PREFIX):
        return None
    rest = filt[len(PREFIX):]
    i = rest.find("/")
    if i <= 0:
        return ""
    name = rest[:i]
    if "+" in name or "#" in name:
        return ""
    levels = topics.filter_levels(rest[i + 1:])
    if levels is None:
        return ""
    return name, levels


class Group:
    def __init__(self, key, levels):
        self.key = key          # the share name, "$share/group/filter"
        self.levels = levels    # the filter's levels
        self.members = {}       # session -> grant
        self.order = []         # the members in round-robin order
        self.turn = 0           # index into order of the next candidate

    def add(self, s, grant):
        if s not in self.members:
            self.order.append(s)
        self.members[s] = grant

    def remove(self, s):
        if self.members.pop(s, None) is not None:
            i = self.order.index(s)
            del self.order[i]
            if i < self.turn:
                self.turn -= 1

    def pick(self):
        """The member the next message goes to: the first in turn that is
        connected with room, else the first in turn (it queues). Moves the
        turn past it."""
        order = self.order
        n = len(order)
        if not n:
            return None
        first = None
        for k in range(n):
            i = (self.turn + k) % n
            s = order[i]
            c = s.conn
            if c is not None and c.room() > 0:
                self.turn = i + 1
                return s
            if first is None:
                first = i
        self.turn = first + 1
        return order[first]

    def matches(self, topic_levels):
        """True if a topic (its levels) matches this group's filter."""
        return _matches(self.levels, topic_levels)


def _matches(flt, lv):
    n = len(flt)
    if lv and lv[0][:1] == "$" and flt[0] in ("+", "#"):
        return False  # [MQTT-4.7.2-1]
    for i in range(n):
        f = flt[i]
        if f == "#":
            return True
        if i >= len(lv):
            return False
        if f != "+" and f != lv[i]:
            return False
    return n == len(lv)


# --- the broker's side (functions of the Broker, kept here) ------------------------

def subscribe(b, s, key, opts, grant):
    """A `$share/group/filter` SUBSCRIBE filter of session s: its return
    code. No retained messages are sent for a shared subscription (MQTT 5
    section 4.8.2)."""
    sp = parse(key)
    if not sp:
        return 0x8F  # topic filter invalid (0x80 in 3.1.1)
    if opts & 4:
        raise ProtocolError("No Local on a shared subscription", RC_PROTOCOL_ERROR)  # [MQTT-3.8.3-4]
    if key not in s.subs and not b.room_for_subscription(s):
        return SUBACK_FAILURE
    join(b, s, key, sp[1], grant)
    s.subs[key] = grant
    st = s.store
    if st is not None:
        st.sub(s, key, grant)
    return opts & 3


def join(b, s, key, levels, grant):
    g = b.groups.get(key)
    if g is None:
        g = b.groups[key] = Group(key, levels)
        b.shared.add(levels, g, 0)
        b.subs.forget_routes()  # cached routes know nothing of the group
    if s not in g.members:
        b.shared_members += 1
    g.add(s, grant)


def leave(b, s, key):
    """s leaves a group (the group goes when empty); the group, or None if
    s was not in it."""
    g = b.groups.get(key)
    if g is None or s not in g.members:
        return None
    g.remove(s)
    b.shared_members -= 1
    if not g.members:
        del b.groups[key]
        b.shared.remove(g.levels, g)
    return g


def deliver(b, g, msg):
    """One member of group g gets msg."""
    s = g.pick()
    q = g.members[s]
    try:
        if q < 4:
            mq = msg.qos
            b.flow.deliver(s, msg, q if q < mq else mq)
        else:
            b.deliver_opts(s, msg, q, None)
    except MemoryError:
        conn = s.conn
        if conn is not None:
            conn.close()
        b.memory_error("out of memory delivering to client %s: message dropped for it" % s.client_id)


def hand_over(b, s, left):
    """A member's session ends: the messages it was given through the
    groups it left and never acknowledged (inflight before PUBREC, and
    queued) go to another member of the group (MQTT 5 section 4.8.2: the
    Server SHOULD send them to another subscribed Client)."""
    msgs = []
    for e in s.inflight:
        if e[MSG] is not None and e[STATE] == AWAIT_ACK:
            msgs.append(e[MSG])
    for e in s.queue:
        msgs.append(e[0])
    for msg in msgs:
        levels = topics.split(msg.topic)
        for g in left:
            if g.members and g.matches(levels):
                deliver(b, g, msg)
                break
