# The topic-level trie shared by the subscription index and the retained
# store: a node maps one topic level ("+" and "#" included, for filters)
# to a child node and holds one value (None when empty). Empty branches are
# pruned so a trie never outgrows what it holds.


class Node:
    def __init__(self):
        self.children = None  # dict level -> Node, or None
        self.value = None     # what the owner stores here, or None


def find(root, levels):
    """The node at `levels`, or None."""
    node = root
    for lv in levels:
        ch = node.children
        if ch is None:
            return None
        node = ch.get(lv)
        if node is None:
            return None
    return node


def make(root, levels):
    """The node at `levels`, created with its parents if missing."""
    node = root
    for lv in levels:
        ch = node.children
        if ch is None:
            ch = node.children = {}
        nxt = ch.get(lv)
        if nxt is None:
            nxt = ch[lv] = Node()
        node = nxt
    return node


def find_path(root, levels):
    """(node, [(parent, level), ...]) for `levels`, or (None, None)."""
    path = []
    node = root
    for lv in levels:
        ch = node.children
        nxt = ch.get(lv) if ch else None
        if nxt is None:
            return None, None
        path.append((node, lv))
        node = nxt
    return node, path


def prune(node, path):
    """After node.value became None: drop the empty nodes bottom-up."""
    while path and node.value is None and not node.children:
        parent, lv = path.pop()
        del parent.children[lv]
        if not parent.children:
            parent.children = None
        node = parent
