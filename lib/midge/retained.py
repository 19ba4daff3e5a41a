# Retained messages: a trie of topic levels -> the one retained Message of
# that topic, capped in count and bytes.
#
# Caps (max_retained_messages, max_retained_bytes): a message for a NEW
# topic that would pass either cap is refused (set() returns False and the
# caller counts retained_refused); replacing an existing topic is refused
# only if the new bytes do not fit. Messages marked `exempt` ($SYS) are not
# counted against the caps. An empty payload clears the topic
# [MQTT-3.3.1-10] and is never stored [MQTT-3.3.1-11].
from . import trie


class Retained:
    def __init__(self, max_messages, max_bytes):
        self._root = trie.Node()  # node.value: the retained Message
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.count = 0   # messages held, $SYS excluded
        self.bytes = 0   # their size(), $SYS excluded
        self.total = 0   # messages held, $SYS included

    def set(self, levels, msg, exempt=False):
        """Store, replace or (empty payload) clear. Returns False when a cap
        refused it, True otherwise."""
        if not msg.payload:
            self._clear(levels, exempt)
            return True
        node = trie.find(self._root, levels)
        old = node.value if node is not None else None
        if not exempt:
            old_size = old.size() if old is not None else 0
            if old is None and self.count >= self.max_messages:
                return False
            if self.bytes - old_size + msg.size() > self.max_bytes:
                return False
            self.bytes += msg.size() - old_size
            if old is None:
                self.count += 1
        if old is None:
            self.total += 1
        if node is None:
            node = trie.make(self._root, levels)
        node.value = msg
        return True

    def get(self, levels):
        node = trie.find(self._root, levels)
        return node.value if node is not None else None

    def match(self, filter_levels, out):
        """Append every retained message matching a filter to `out`."""
        _collect(self._root, filter_levels, 0, out, True)

    def all(self, out):
        """Append every retained message, '$' topics included."""
        _collect_all(self._root, out)

    def _clear(self, levels, exempt):
        node, path = trie.find_path(self._root, levels)
        if node is None or node.value is None:
            return
        old = node.value
        node.value = None
        self.total -= 1
        if not exempt:
            self.count -= 1
            self.bytes -= old.size()
        trie.prune(node, path)


def _collect(node, flt, i, out, top):
    if i == len(flt):
        if node.value is not None:
            out.append(node.value)
        return
    lv = flt[i]
    ch = node.children
    if lv == "#":
        # '#' matches this level too ('a/#' matches 'a') [MQTT-4.7.1-2]
        if node.value is not None and not top:
            out.append(node.value)
        if ch is not None:
            for k in ch:
                if top and k[:1] == "$":
                    continue  # [MQTT-4.7.2-1]
                _collect_all(ch[k], out)
        return
    if ch is None:
        return
    if lv == "+":
        for k in ch:
            if top and k[:1] == "$":
                continue  # [MQTT-4.7.2-1]
            _collect(ch[k], flt, i + 1, out, False)
        return
    nxt = ch.get(lv)
    if nxt is not None:
        _collect(nxt, flt, i + 1, out, False)


def _collect_all(node, out):
    if node.value is not None:
        out.append(node.value)
    ch = node.children
    if ch is not None:
        for k in ch:
            _collect_all(ch[k], out)
