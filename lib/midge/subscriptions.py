# Subscription trie: topic levels -> subscribers, so a publish walks only
# the branches its topic can match (never a scan of all filters).
#
# Each node (trie.Node) holds the subscribers whose filter ends there:
# {session: grant}. A grant is the granted QoS (0..2) for a 3.1.1
# subscription and for an MQTT 5 one without options; else the QoS with
# No Local (4) and Retain As Published (8) and the subscription identifier
# shifted left by 4 (Broker._subscribe_filter). A route maps each matching
# session to one grant, or, where several subscriptions of one session
# match and one has options, to a tuple of their grants
# (Broker.deliver_opts delivers one copy for them all).


from . import trie
from .compat import const

# Route cache: topic name (bytes) -> {session: highest granted qos}, the
# result of match() for a topic clients publish to again and again (sensor
# readings), used by Broker.publish and the QoS 0 forwarding fast path
# (connection.forward_qos0, through Broker.routes: this same dict). A topic is only cached after it passed
# Broker.check_name. Any subscription change empties it; when full it is
# emptied before an insert.
_ROUTES_MAX = const(16)


class Subscriptions:
    def __init__(self):
        self._root = trie.Node()  # node.value: dict session -> granted qos
        self.count = 0  # filters held, over all sessions
        self.routes = {}  # the route cache: one dict for good (the broker keeps it too)

    def route(self, topic_bytes):
        """Cached sessions for a topic, or None if not cached."""
        return self.routes.get(topic_bytes)

    def forget_routes(self):
        """Empty the route cache (a change elsewhere, a new shared
        subscription group, may make a cached route incomplete)."""
        self.routes.clear()

    def cache_route(self, topic_bytes, sessions):
        r = self.routes
        if len(r) >= _ROUTES_MAX:
            r.clear()
        r[topic_bytes] = sessions

    def add(self, levels, session, qos):
        """Subscribe; returns True if the filter was new for this session
        (False: granted QoS replaced [MQTT-3.8.4-3])."""
        self.routes.clear()
        node = trie.make(self._root, levels)
        if node.value is None:
            node.value = {}
        new = session not in node.value
        node.value[session] = qos
        if new:
            self.count += 1
        return new

    def remove(self, levels, session):
        """Unsubscribe; returns True if the subscription existed."""
        self.routes.clear()
        node, path = trie.find_path(self._root, levels)
        if node is None or not node.value or session not in node.value:
            return False
        del node.value[session]
        self.count -= 1
        if not node.value:
            node.value = None
            trie.prune(node, path)
        return True

    def match(self, levels, out):
        """Collect {session: highest granted qos} for a topic's levels into
        `out` (overlapping filters give one entry, highest QoS)."""
        _match(self._root, levels, 0, len(levels), out, levels[0].startswith("$"))


def _add_all(subs, out):
    for s in subs:
        q = subs[s]
        old = out.get(s)
        if old is None:
            out[s] = q
        elif q < 4 and type(old) is int and old < 4:
            if q > old:
                out[s] = q  # plain grants: the highest QoS [MQTT-3.3.5-1]
        else:
            out[s] = (old + (q,)) if type(old) is tuple else (old, q)


def _match(node, levels, i, n, out, dollar):
    ch = node.children
    if ch is None:
        return
    # '$' topics are not matched by a wildcard in the first level [MQTT-4.7.2-1]
    wild = not (dollar and i == 0)
    if wild:
        h = ch.get("#")
        if h is not None and h.value:
            _add_all(h.value, out)  # '#' matches every remaining level [MQTT-4.7.1-2]
    if wild:
        p = ch.get("+")
        if p is not None:
            if i + 1 == n:
                if p.value:
                    _add_all(p.value, out)
                _match_end(p, out)
            else:
                _match(p, levels, i + 1, n, out, dollar)
    c = ch.get(levels[i])
    if c is not None:
        if i + 1 == n:
            if c.value:
                _add_all(c.value, out)
            _match_end(c, out)
        else:
            _match(c, levels, i + 1, n, out, dollar)


def _match_end(node, out):
    """At the last topic level: a child '#' matches too ('a/#' matches 'a')."""
    ch = node.children
    if ch is not None:
        h = ch.get("#")
        if h is not None and h.value:
            _add_all(h.value, out)
