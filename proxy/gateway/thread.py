"""THREAD=ORDEREDSUBJECT and THREAD=REFERENCES (RFC 5256 4), and the THREAD response format.

Theory of operation
-------------------
Both algorithms build a forest of `Node`s (a dummy node has no item) and `render()` writes it.
REFERENCES follows the RFC's numbered steps, which are quoted beside the code: (1) link
messages through Message-ID / References / In-Reply-To, refusing links that would make a loop;
(2) the parentless nodes are the root set; (3) prune dummies; (4) sort the roots; (5) merge
roots with the same base subject; (6) sort every set of siblings, deepest first.

Threads come from untrusted headers and can be thousands deep, so nothing here recurses:
every walk is a loop over an explicit stack, and a loop check walks parent pointers.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field

from .sort import Item, sent_date

__all__ = ["Node", "ordered_subject", "references", "render"]


@dataclass(eq=False, slots=True)
class Node:
    item: Item | None = None            # None: a dummy (a referenced message we do not have)
    parent: "Node | None" = None
    children: list["Node"] = field(default_factory=list)
    key: tuple[float, int] = (0.0, 0)   # a message's sort key, set once (see `_key`)

    def hold(self, item: Item) -> "Node":
        self.item, self.key = item, (sent_date(item), item.seq)
        return self


def _key(node: Node) -> tuple[float, int]:
    """RFC 5256 2.2 sent date, ties by sequence number; a dummy sorts as its first child."""
    while node.item is None and node.children:
        node = node.children[0]
    return node.key


# ---- ORDEREDSUBJECT ------------------------------------------------------------------------

def ordered_subject(items: list[Item]) -> list[Node]:
    """RFC 5256 4: sort by base subject then sent date; each run of one subject is a thread
    whose first message is the parent of the others; threads in order of their first date."""
    threads: list[Node] = []
    subject = None
    for item in sorted(items, key=lambda i: (i.fields.subject, sent_date(i), i.seq)):
        if threads and item.fields.subject == subject:
            threads[-1].children.append(Node(parent=threads[-1]).hold(item))
        else:
            threads.append(Node().hold(item))
            subject = item.fields.subject
    threads.sort(key=_key)
    return threads


# ---- REFERENCES ----------------------------------------------------------------------------

def _descends(node: Node, ancestor: Node) -> bool:
    """Is `node` `ancestor` or below it? Only `ancestor` itself when it has no children, which
    is every new node of a References chain: without that shortcut one message with 100,000
    References walked the chain built so far at each link (5e9 steps, a wedged process)."""
    if not ancestor.children:
        return node is ancestor
    walk: Node | None = node
    while walk is not None:
        if walk is ancestor:
            return True
        walk = walk.parent
    return False


def _link(parent: Node, child: Node) -> None:
    child.parent = parent
    parent.children.append(child)


def _unlink(child: Node) -> None:
    if child.parent is not None:
        child.parent.children.remove(child)
        child.parent = None


def _build(items: list[Item]) -> list[Node]:
    """Step (1); returns every node."""
    table: dict[str, Node] = {}
    nodes: list[Node] = []

    def container(ident: str) -> Node:
        node = table.get(ident)
        if node is None:   # "create a dummy message with this ID"
            node = table[ident] = Node()
            nodes.append(node)
        return node

    for item in sorted(items, key=lambda i: i.seq):
        ident = item.fields.message_id
        node = table.get(ident) if ident is not None else None
        if node is not None and node.item is None:
            node.hold(item)
        else:   # no valid Message-ID, or a duplicate of an earlier one: a unique ID
            node = Node().hold(item)
            nodes.append(node)
            if ident is not None and ident not in table:
                table[ident] = node
        refs = [container(r) for r in item.fields.references]
        # (1)(A) link each reference to the next, never changing an existing parent, no loops
        for parent, child in itertools.pairwise(refs):
            if child.parent is None and not _descends(parent, child):
                _link(parent, child)
        # (1)(B) the last reference is the message's parent (replacing a guessed one), no loops
        _unlink(node)
        if refs and not _descends(refs[-1], node):
            _link(refs[-1], node)
    return nodes


def _prune(roots: list[Node]) -> list[Node]:
    """Step (3): drop childless dummies; splice a dummy's children into its place, except
    that a dummy at the top level keeps them unless it has only one."""
    work: list[tuple[Node | None, list[Node]]] = [(None, roots)]
    top: list[Node] = []
    while work:
        parent, children = work.pop()
        kept: list[Node] = []
        queue = deque(children)
        while queue:
            node = queue.popleft()
            if node.item is None and (parent is not None or len(node.children) <= 1):
                queue.extendleft(reversed(node.children))   # promoted, examined again here
                continue
            node.parent = parent
            kept.append(node)
            work.append((node, node.children))
        if parent is None:
            top = kept
        else:
            parent.children = kept
    return top


def _sort_all(roots: list[Node]) -> None:
    """Step (6): every sibling set by sent date, children before their parents."""
    order: list[Node] = []
    stack = list(roots)
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(node.children)
    for node in reversed(order):
        node.children.sort(key=_key)
    roots.sort(key=_key)


def _subject_of(node: Node) -> tuple[str, bool]:
    item = node.item if node.item is not None else node.children[0].item
    assert item is not None  # a dummy node always has a child with a message (RFC 5256 (4)(B))
    return item.fields.subject, item.fields.reply


def _merge_subjects(roots: list[Node]) -> list[Node]:
    """Step (5): gather threads under the root that have the same base subject."""
    table: dict[str, Node] = {}
    for node in roots:   # (5)(B)
        subject, _ = _subject_of(node)
        if not subject:
            continue
        held = table.get(subject)
        if held is None:
            table[subject] = node
        elif held.item is not None and (node.item is None or (
                _subject_of(held)[1] and not _subject_of(node)[1])):
            table[subject] = node
    out: list[Node] = []
    for node in roots:   # (5)(C)
        subject, reply = _subject_of(node)
        held = table.get(subject) if subject else None
        if held is None or held is node:
            out.append(node)
            continue
        if held.item is None and node.item is None:
            for child in node.children:
                _link(held, child)
            node.children = []
        elif held.item is None:
            _link(held, node)
        elif reply and not _subject_of(held)[1]:
            _link(held, node)
        else:
            dummy = Node()
            index = out.index(held) if held in out else -1
            _link(dummy, held)
            _link(dummy, node)
            table[subject] = dummy
            if index >= 0:
                out[index] = dummy
            else:
                roots_index = roots.index(held)
                roots[roots_index] = dummy
    return out


def references(items: list[Item]) -> list[Node]:
    nodes = _build(items)
    roots = [n for n in nodes if n.parent is None]           # (2)
    roots = _prune(roots)                                     # (3)
    for root in roots:                                        # (4)
        if root.item is None:
            root.children.sort(key=_key)
    roots.sort(key=_key)
    roots = _merge_subjects(roots)                            # (5)
    _sort_all(roots)                                          # (6)
    return roots


# ---- the response --------------------------------------------------------------------------

def render(threads: list[Node]) -> bytes:
    """RFC 5256 5: thread-list per thread; a chain of only children is "1 2 3", a branch
    "1 (2)(3)"."""
    out: list[bytes] = []
    for top in threads:
        out.append(b"(")
        stack: list[Node | bytes] = [b")", top]
        while stack:
            entry = stack.pop()
            if isinstance(entry, bytes):
                out.append(entry)
                continue
            node, spaced = entry, False
            while True:
                if node.item is not None:
                    out.append(b" %d" % node.item.number if spaced else b"%d" % node.item.number)
                    spaced = True
                if node.item is not None and len(node.children) == 1:
                    node = node.children[0]
                    continue
                if node.children:
                    if spaced:
                        out.append(b" ")
                    for child in reversed(node.children):
                        stack += [b")", child, b"("]
                break
    return b"".join(out)
