"""Strict conversion of plain YAML/JSON data into typed frozen dataclasses (the protocol's schema engine).

The dataclasses' annotations are the schema: :func:`build_dataclass` checks every value against them and raises
the caller's error class with the field path, the allowed values and the value found. :func:`to_plain` is the
inverse (JSON-ready data, e.g. for hashing).
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union

__all__ = ["build_dataclass", "show", "to_plain"]

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 2, 5, 5, 5, 40, 40


def show(value: Any) -> str:
    """A bounded repr of a value found in a config file (a hostile value can be huge).

    Examples
    --------
    >>> show(list(range(100)))
    '[0, 1, 2, 3, 4, ...]'
    """
    return _REPR.repr(value)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, path: str, error: type[Exception], root: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value not in args:
            raise error(f"{path}: allowed values are {list(args)}; found {show(value)}")
        return value
    if origin in (Union, types.UnionType):
        errors = []
        for option in args:
            try:
                return _convert(value, option, path, error, root)
            except error as exc:
                errors.append(str(exc))
        raise error(f"{path}: expected {_type_name(tp)}; found {show(value)}")
    if tp is type(None):
        if value is not None:
            raise error(f"{path}: expected null; found {show(value)}")
        return None
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, path, error=error, root=root)
    if tp is bool:
        if not isinstance(value, bool):
            raise error(f"{path}: expected true or false; found {show(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise error(f"{path}: expected an integer; found {show(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise error(f"{path}: expected a number; found {show(value)}")
        if not math.isfinite(value):
            raise error(f"{path}: expected a finite number; found {show(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise error(f"{path}: expected a string; found {show(value)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise error(f"{path}: expected a list; found {show(value)}")
        item_tp = args[0]
        return tuple(_convert(v, item_tp, f"{path}[{i}]", error, root) for i, v in enumerate(value))
    if origin in (Mapping, dict):
        if not isinstance(value, Mapping):
            raise error(f"{path}: expected a mapping; found {show(value)}")
        key_tp, val_tp = args
        return types.MappingProxyType(
            {_convert(k, key_tp, f"{path}", error, root): _convert(v, val_tp, f"{path}.{k}", error, root) for k, v in value.items()}
        )
    raise TypeError(f"config schema: unsupported annotation {tp!r} at {path}")  # pragma: no cover


def build_dataclass(cls: type, data: Any, path: str = "", *, error: type[Exception] = ValueError, root: str = "config") -> Any:
    """Build the frozen dataclass ``cls`` from plain YAML/JSON ``data``, strictly.

    Every field is converted to its annotation (``bool``, ``int``, finite ``float``, ``str``, ``Literal``, unions,
    ``tuple[T, ...]``, ``Mapping[K, V]`` as a read-only mapping, nested dataclasses); unknown keys, missing required
    keys and wrong types raise ``error`` with a message naming the field path, the allowed values or type and the
    value found (shown bounded: a hostile value can be huge). A field named ``base_dir`` is never read from data.

    Parameters
    ----------
    cls : type
        The dataclass to build.
    data : object
        Parsed YAML/JSON.
    path : str
        Field path of ``data`` ("" at the top).
    error : type of Exception
        Raised on invalid data (e.g. :class:`audit.errors.ProtocolError`).
    root : str
        Name of the top level in messages.

    Examples
    --------
    >>> import dataclasses
    >>> @dataclasses.dataclass(frozen=True)
    ... class Limits:
    ...     alpha: float = 0.05
    ...     method: Literal["holm", "none"] = "holm"
    >>> build_dataclass(Limits, {"alpha": 0.1})
    Limits(alpha=0.1, method='holm')
    >>> build_dataclass(Limits, {"method": "bh"}, root="statistics")
    Traceback (most recent call last):
    ...
    ValueError: method: allowed values are ['holm', 'none']; found 'bh'
    """
    where = path or root
    if not isinstance(data, Mapping):
        raise error(f"{where}: expected a mapping; found {show(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "base_dir"}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{path}." if path else ""
        raise error(f"{prefix}{unknown[0]}: unknown key; allowed keys at {where} are {sorted(fields)}")
    kwargs = {}
    for name, field in fields.items():
        sub = f"{path}.{name}" if path else name
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], sub, error, root)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise error(f"{sub}: required key is missing")
    try:
        return cls(**kwargs)
    except ValueError as exc:  # a settings class that validates its own values names the field
        raise error(f"{path}.{exc}" if path else str(exc)) from None


def to_plain(value: Any) -> Any:
    """Turn dataclasses (``base_dir`` left out), mapping proxies and tuples into JSON-ready data.

    Examples
    --------
    >>> import types
    >>> to_plain({"a": (1, 2), "b": types.MappingProxyType({1: "x"})})
    {'a': [1, 2], 'b': {'1': 'x'}}
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.name != "base_dir"}
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value
