"""The one YAML loader of the package: ``yaml.SafeLoader`` that refuses duplicate mapping keys.

PyYAML keeps the last of two equal keys silently (``alpha: 0.05`` then ``alpha: 0.5`` means 0.5), so a
protocol or site config could say two things and mean the second. :class:`UniqueKeyLoader` raises instead,
naming the key and both line numbers. It is a ``SafeLoader``: tags such as ``!!python/object`` are refused
as before. Every YAML file the package reads (protocols, site configs, model configs) goes through
:func:`load_yaml`, which also refuses documents that expand, through aliases, to more than
:data:`MAX_VALUES` values ("billion laughs": nine nested aliases of nine items each are 387 million strings
to any code that walks them) or nest deeper than :data:`MAX_DEPTH` levels.
"""

from __future__ import annotations

from typing import IO, Any

import yaml

__all__ = ["MAX_DEPTH", "MAX_VALUES", "UniqueKeyLoader", "load_yaml"]

#: Most values (scalars, lists, mappings, counting every alias use) a configuration document may hold.
MAX_VALUES = 100_000
#: Deepest nesting of lists and mappings a configuration document may have.
MAX_DEPTH = 50


class UniqueKeyLoader(yaml.SafeLoader):
    """A ``SafeLoader`` whose mappings refuse a key that appears twice (a ``ConstructorError``)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # keys merged in by << may be overridden
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key; the base class reports it
                    continue
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"duplicate key {key!r} (first at line {first.start_mark.line + 1}, again at line {key_node.start_mark.line + 1})",
                        key_node.start_mark,
                    )
                seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def load_yaml(stream: str | bytes | IO[str] | IO[bytes]) -> Any:
    """Parse YAML safely, refusing duplicate keys.

    Raises
    ------
    yaml.YAMLError
        For a syntax error, a disallowed tag or a duplicate key (the message names the key and lines).

    Examples
    --------
    >>> load_yaml("a: 1\\nb: [2, 3]\\n")
    {'a': 1, 'b': [2, 3]}
    >>> load_yaml("alpha: 0.05\\nalpha: 0.5\\n")
    Traceback (most recent call last):
    ...
    yaml.constructor.ConstructorError: duplicate key 'alpha' (first at line 1, again at line 2)
    ...
    """
    try:
        data = yaml.load(stream, Loader=UniqueKeyLoader)  # noqa: S506 - UniqueKeyLoader is a SafeLoader
    except RecursionError:
        raise yaml.YAMLError(f"the document nests deeper than Python can parse (at most {MAX_DEPTH} levels are allowed)") from None
    _check_size(data)
    return data


def _check_size(data: Any) -> None:
    """Walk the loaded document (aliases counted at every use) and stop at the first excess; cost <= MAX_VALUES."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    seen = 0
    while stack:
        value, depth = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            raise yaml.YAMLError(f"the document holds more than {MAX_VALUES:,} values (aliases expanded); a configuration is far smaller")
        if depth > MAX_DEPTH:
            raise yaml.YAMLError(f"the document nests more than {MAX_DEPTH} levels deep")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for pair in value.items() for v in pair)
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
