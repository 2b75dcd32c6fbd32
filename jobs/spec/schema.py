"""Dataclasses from the study file's mappings: every key checked, every value coerced to its type.

An unknown key names the nearest known one; a wrong type or value names its path in the file
(``runs.densenet121.training.lr``). Errors are ``ValueError``; :mod:`jobs.spec.study` adds the file.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import types
import typing

from jobs.errors import CxrStudyError
from jobs.spec.configs import LOSS_ARGS, AugmentConfig, LossConfig


def unknown_key(path: str, key, known) -> ValueError:
    """The error for a key that is not one of ``known``, with the nearest known one."""
    near = difflib.get_close_matches(str(key), list(known), n=1)
    hint = f"; did you mean {near[0]!r}?" if near else f"; known keys: {', '.join(known)}"
    return ValueError(f"{path}{'.' if path else ''}{key}: unknown key{hint}")


def coerce(value, kind, path: str):
    """``value`` as type ``kind`` (int, float, bool, str, dict, a dataclass), or ValueError naming ``path``."""
    if dataclasses.is_dataclass(kind):
        return build(kind, value, path)
    if typing.get_origin(kind) in (types.UnionType, typing.Union):
        options = [k for k in typing.get_args(kind) if k is not type(None)]
        return None if value is None else coerce(value, options[0], path)
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{path}: must be true or false (got {value!r})")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"{path}: must be a whole number (got {value!r})")
    if kind is float:
        return _float(value, path)
    if kind is str:
        if isinstance(value, str) and value:
            return value
        raise ValueError(f"{path}: must be a non-empty string (got {value!r})")
    if kind is dict:
        if isinstance(value, dict):
            return dict(value)
        raise ValueError(f"{path}: must be a mapping (got {value!r})")
    raise TypeError(kind)


def _float(value, path: str) -> float:
    number = None
    # YAML 1.1 reads 1e-4 (no dot) as a string; accept it as the number it is meant to be.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            pass
    if number is None:
        raise ValueError(f"{path}: must be a number (got {value!r})")
    if not math.isfinite(number):  # .nan passes every `< low` check; .inf every `> high` one
        raise ValueError(f"{path}: must be a finite number (got {value!r})")
    return number


def _shorthand(cls, data, base=None):
    """The study file's short forms: ``loss: bce``, ``loss: {name: focal, gamma: 1}``, ``augment: none``.

    On top of a ``base`` loss (a variant's or an architecture's override of the recipe), a mapping
    without ``name``, or with the base's name, changes only the arguments it gives (``{gamma: 1}`` and
    ``{args: {gamma: 1}}`` keep the recipe's loss and its other arguments); another name, or a name
    alone (``loss: focal``), starts from that loss's defaults."""
    if cls is LossConfig and isinstance(data, str):
        return {"name": data, "args": dict(LOSS_ARGS["focal"]) if data == "focal" else {}}
    if cls is LossConfig and isinstance(data, dict):
        name = data.get("name", base.name if base is not None else "focal")
        given = data["args"] if "args" in data else {k: v for k, v in data.items() if k != "name"}
        if base is not None and name == base.name and isinstance(given, dict):
            given = {**base.args, **given}
        return {**data, "name": name, "args": given} if "args" in data else {"name": name, "args": given}
    if cls is AugmentConfig and data in (False, "none"):
        return {"enabled": False}
    return data


@functools.cache
def _hints(cls) -> dict:
    """The resolved field types of dataclass ``cls`` (resolving them is slow: ``status`` builds a
    JobSpec per run per poll)."""
    return typing.get_type_hints(cls)


@functools.cache
def _names(cls) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def build(cls, data, path: str, base=None):
    """An instance of dataclass ``cls`` from a mapping, on top of ``base`` (or the defaults)."""
    data = _shorthand(cls, {} if data is None else data, base)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: must be a mapping (got {data!r})")
    hints, names = _hints(cls), list(_names(cls))
    for key in data:
        if key not in names:
            raise unknown_key(path, key, names)
    values = {}
    for name in names:
        if name in data:
            sub_base = getattr(base, name) if base is not None and dataclasses.is_dataclass(hints[name]) else None
            if sub_base is not None:
                values[name] = build(hints[name], data[name], f"{path}.{name}", sub_base)
            else:
                values[name] = coerce(data[name], hints[name], f"{path}.{name}")
        elif base is not None:
            values[name] = getattr(base, name)
    try:
        obj = cls(**values)
    except CxrStudyError as exc:  # PrepConfig checks its own values
        raise ValueError(str(exc).replace("preprocessing.", f"{path}.", 1)) from None
    if hasattr(obj, "check"):
        try:
            obj.check()
        except ValueError as exc:
            raise ValueError(f"{path}.{exc}") from None
    return obj
