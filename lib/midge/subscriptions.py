# Subscription trie: topic levels -> subscribers, so a publish walks only
# the branches its topic can match (never a scan of all filters).
#
# Each node maps a level ("+" and "#" included) to a child node, and holds
# the subscribers whose filter ends at that node: {session: granted_qos}.
# Empty branches are pruned on unsubscribe so the trie never outgrows the
# live subscriptions.


class _Node:
    def __init__(self):
        self.children = None  # dict level -> _Node, or None
        self.subs = None      # dict session -> qos, or None


class Subscriptions:
    def __init__(self):
        self._root = _Node()
        self.count = 0  # filters held, over all sessions

    def add(self, levels, session, qos):
        """Subscribe; returns True if the filter was new for this session
        (False: granted QoS replaced [MQTT-3.8.4-3])."""
        node = self._root
        for lv in levels:
            ch = node.children
            if ch is None:
                ch = node.children = {}
            nxt = ch.get(lv)
            if nxt is None:
                nxt = ch[lv] = _Node()
            node = nxt
        if node.subs is None:
            node.subs = {}
        new = session not in node.subs
        node.subs[session] = qos
        if new:
            self.count += 1
        return new

    def remove(self, levels, session):
        """Unsubscribe; returns True if the subscription existed."""
        path = []
        node = self._root
        for lv in levels:
            ch = node.children
            nxt = ch.get(lv) if ch else None
            if nxt is None:
                return False
            path.append((node, lv))
            node = nxt
        if not node.subs or session not in node.subs:
            return False
        del node.subs[session]
        self.count -= 1
        if not node.subs:
            node.subs = None
        # prune empty nodes bottom-up
        while path and node.subs is None and not node.children:
            parent, lv = path.pop()
            del parent.children[lv]
            if not parent.children:
                parent.children = None
            node = parent
        return True

    def match(self, levels, out):
        """Collect {session: highest granted qos} for a topic's levels into
        `out` (overlapping filters give one entry, highest QoS)."""
        _match(self._root, levels, 0, len(levels), out, levels[0][:1] == "$")


def _add_all(subs, out):
    for s in subs:
        q = subs[s]
        old = out.get(s)
        if old is None or q > old:
            out[s] = q


def _match(node, levels, i, n, out, dollar):
    ch = node.children
    if ch is None:
        return
    # '$' topics are not matched by a wildcard in the first level [MQTT-4.7.2-1]
    wild = not (dollar and i == 0)
    if wild:
        h = ch.get("#")
        if h is not None and h.subs:
            _add_all(h.subs, out)  # '#' also matches the parent level [MQTT-4.7.1-2]
    if i == n:
        return
    if wild:
        p = ch.get("+")
        if p is not None:
            if i + 1 == n:
                if p.subs:
                    _add_all(p.subs, out)
                _match_end(p, out)
            else:
                _match(p, levels, i + 1, n, out, dollar)
    c = ch.get(levels[i])
    if c is not None:
        if i + 1 == n:
            if c.subs:
                _add_all(c.subs, out)
            _match_end(c, out)
        else:
            _match(c, levels, i + 1, n, out, dollar)


def _match_end(node, out):
    """At the last topic level: a child '#' matches too ('a/#' matches 'a')."""
    ch = node.children
    if ch is not None:
        h = ch.get("#")
        if h is not None and h.subs:
            _add_all(h.subs, out)
