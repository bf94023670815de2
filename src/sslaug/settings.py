"""Typed settings from JSON/YAML mappings: dataclass fields, coerced, unknown keys named.

One way for every config dataclass (augmentation options, strong-augmentation settings,
evaluation protocols) to be built from a table's options or a scale's settings.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, TypeVar

C = TypeVar("C")


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a JSON value to a dataclass field's type (lists -> tuples, ints -> floats)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key) if len(inner) == 1 else value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"spec key {key!r} expects a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key) for v in value)
        if len(args) != len(value):
            raise ValueError(f"spec key {key!r} expects {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    if annotation is bool:
        if not isinstance(value, bool):
            raise ValueError(f"spec key {key!r} expects true/false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ValueError(f"spec key {key!r} expects an integer, got {value!r}")
        return int(value)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"spec key {key!r} expects a number, got {value!r}")
        return float(value)
    if annotation is str and not isinstance(value, str):
        raise ValueError(f"spec key {key!r} expects a string, got {value!r}")
    return value


def apply_overrides(config_cls: type[C], spec: dict[str, Any] | str | None) -> C:
    """Build ``config_cls`` from defaults plus ``spec`` (a dict or a JSON object string).

    Unknown keys raise ``ValueError`` naming the key, so a typo in a Snakemake
    config never silently falls back to a default.
    """
    if spec is None or spec == "":
        spec = {}
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as e:
            raise ValueError(f"--spec is not valid JSON: {e}") from e
    if not isinstance(spec, dict):
        raise ValueError(f"--spec must be a JSON object, got {type(spec).__name__}")
    hints = typing.get_type_hints(config_cls)
    known = {f.name for f in dataclasses.fields(config_cls)}  # type: ignore[arg-type]
    for key in spec:
        if key not in known:
            raise ValueError(
                f"unknown {config_cls.__name__} key {key!r} in spec; known keys: {', '.join(sorted(known))}"
            )
    values = {k: _coerce(v, hints[k], k) for k, v in spec.items()}
    config = config_cls(**values)
    if hasattr(config, "validate"):
        config.validate()
    return config


