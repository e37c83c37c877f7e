"""The JSON form of the contracts: one generic ``to_dict`` / ``from_dict`` for records,
reports and manifests instead of one written by hand per class.

A record's JSON object holds its fields, in order, each as a JSON value (a nested record
through its own ``to_dict``, tuples as lists, dicts item by item), except where a field
says otherwise in its metadata:

* :func:`inline`: the field's record is written as its parent's own keys (a training hit
  contains its chunk record, and its JSON stays the one flat object it always was);
* :func:`omitted_if_none`: left out while it is None (an index manifest's lineage);
* :func:`written_as`: written through a function (a total's file index -1 as null).

A class may also name properties in ``JSON_DERIVED``, written after the fields (a
manifest's totals). :func:`record_from_dict` reads the same form back by the fields'
type annotations.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "JsonRecord",
    "inline",
    "is_inline",
    "json_value",
    "omitted_if_none",
    "record_dict",
    "record_from_dict",
    "written_as",
]

_INLINE = "tda.json.inline"
_OMIT_NONE = "tda.json.omit_none"
_WRITE = "tda.json.write"


def inline() -> dict[str, Any]:
    """Field metadata: write this field's record as its parent's own keys."""
    return {_INLINE: True}


def is_inline(f: dataclasses.Field) -> bool:
    """True for a field written as its parent's own keys (:func:`inline`)."""
    return bool(f.metadata.get(_INLINE))


def omitted_if_none() -> dict[str, Any]:
    """Field metadata: leave this field out of the JSON while it is None."""
    return {_OMIT_NONE: True}


def written_as(convert: Callable[[Any], Any]) -> dict[str, Any]:
    """Field metadata: write ``convert(value)`` instead of the value."""
    return {_WRITE: convert}


def json_value(value: Any) -> Any:
    """A field value -> its JSON value: records through their ``to_dict`` (else
    :func:`record_dict`), tuples and lists as lists (so a record's dict equals its JSON
    read back), dicts with their values converted."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        to_dict = getattr(value, "to_dict", None)
        return to_dict() if to_dict is not None else record_dict(value)
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    if isinstance(value, dict):
        return {k: json_value(v) for k, v in value.items()}
    return value


def record_dict(record: Any) -> dict[str, Any]:
    """A dataclass instance -> its JSON object (see the module docstring)."""
    data: dict[str, Any] = {}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if value is None and f.metadata.get(_OMIT_NONE):
            continue
        value = f.metadata[_WRITE](value) if _WRITE in f.metadata else json_value(value)
        if is_inline(f):
            data.update(value)
        else:
            data[f.name] = value
    for name in getattr(type(record), "JSON_DERIVED", ()):
        data[name] = json_value(getattr(record, name))
    return data


def record_from_dict(cls: type, data: Mapping[str, Any]) -> Any:
    """The JSON object ``data`` -> an instance of the dataclass ``cls``, nested records,
    tuples and inlined records rebuilt from the field annotations. A field missing from
    ``data`` takes its default (KeyError without one); a key that is no field is a
    TypeError. Values are not converted otherwise (JSON numbers stay as they are)."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    used: set[str] = set()
    for f in dataclasses.fields(cls):
        if is_inline(f):
            inner = hints[f.name]
            names = [g.name for g in dataclasses.fields(inner)]
            kwargs[f.name] = record_from_dict(inner, {n: data[n] for n in names if n in data})
            used.update(names)
        elif f.name in data:
            kwargs[f.name] = _from_json(hints[f.name], data[f.name])
            used.add(f.name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise KeyError(f.name)
    unknown = sorted(set(data) - used)
    if unknown:
        raise TypeError(f"{cls.__name__} has no field {unknown[0]!r}")
    return cls(**kwargs)


def _from_json(tp: Any, value: Any) -> Any:
    """One JSON value read as annotation ``tp``."""
    if value is None:
        return None
    if dataclasses.is_dataclass(tp):
        return record_from_dict(tp, value)
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        records = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        return record_from_dict(records[0], value) if records else value
    if origin is tuple:
        item = typing.get_args(tp)[0]
        return tuple(_from_json(item, v) for v in value)
    if origin is dict:
        item = typing.get_args(tp)[1]
        return {k: _from_json(item, v) for k, v in value.items()}
    return value


class JsonRecord:
    """Mixin for frozen dataclasses: ``to_dict`` is :func:`record_dict`."""

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        return record_dict(self)
