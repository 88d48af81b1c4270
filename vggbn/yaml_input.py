"""YAML from people (sweep files, --set values), parsed within bounds: a file over MAX_BYTES is
refused before it is read whole, nesting deeper than MAX_DEPTH before the parser recurses into it,
and a document whose aliases expand past MAX_NODES (a "billion laughs") before anything walks the
expansion. yaml.safe_load alone hangs or ends in MemoryError / RecursionError on such input.

Only PyYAML's safe tags are constructed (SafeLoader): `!!python/object` and the like are refused.
"""

from __future__ import annotations

from typing import Any

import yaml

MAX_BYTES = 1 << 20  # a sweep file: the shipped ones are under 8 KB
MAX_DEPTH = 64  # mappings and lists inside each other
MAX_NODES = 200_000  # the document's nodes with every alias expanded


class TooBig(ValueError):
    """The input is past one of the bounds; str() says which, for a message."""


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader whose composer counts its depth (PyYAML's composer recurses once per level)."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise TooBig(f"nested deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _expanded_size(root: yaml.Node) -> int:
    """Nodes in the document once each alias is replaced by what it names (aliases share node
    objects: counted once per use, computed once per node)."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key not in sizes:
            if isinstance(node, yaml.MappingNode):
                n = 1 + sum(size(k) + size(v) for k, v in node.value)
            elif isinstance(node, yaml.SequenceNode):
                n = 1 + sum(size(v) for v in node.value)
            else:
                n = 1
            sizes[key] = n
            if n > MAX_NODES:
                raise TooBig(f"its aliases expand to over {MAX_NODES:,} values")
        return sizes[key]

    return size(root)


def load(text: str) -> Any:
    """The YAML document in `text` (None when empty). yaml.YAMLError for what is not YAML, TooBig
    for what is past the bounds."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise TooBig(f"over {MAX_BYTES >> 20} MB")
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node)  # depth is bounded by MAX_DEPTH: this recursion is too
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_bounded(path, limit: int = MAX_BYTES) -> bytes:
    """At most `limit` bytes of a file (TooBig past it): /dev/zero or a 5 GB file is not read whole."""
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise TooBig(f"over {limit >> 20} MB")
    return data
