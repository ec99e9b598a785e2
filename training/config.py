"""Typed, documented settings: frozen dataclasses filled from TOML presets and `key=value` overrides.

Every stage declares one frozen dataclass whose fields carry their documentation in
`field(metadata={"help": ...})`. `load_config` builds it from, in order: the dataclass defaults,
a named preset (`training/configs/<stage>-<preset>.toml` or any TOML path) and `--set key=value`
overrides. Unknown keys and values of the wrong type raise `ConfigError`: a typo in an
experiment should stop the run, not fall back to a default silently.

    >>> from dataclasses import dataclass, field
    >>> @dataclass(frozen=True)
    ... class Demo:
    ...     steps: int = field(default=10, metadata={"help": "Optimiser steps."})
    ...     lr: float = 1e-3
    >>> load_config(Demo, overrides=["steps=3"])
    Demo(steps=3, lr=0.001)
"""

from __future__ import annotations

import dataclasses
import enum
import json
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from training.errors import ConfigError

C = TypeVar("C")

PRESET_DIR = Path(__file__).resolve().parent / "configs"


def preset_path(stage: str, preset: str) -> Path:
    """The TOML file of a named preset (`quick`, `paper`, ...) or `preset` itself when it is a path."""
    candidate = Path(preset)
    if candidate.suffix == ".toml":
        if not candidate.is_file():
            raise ConfigError(f"config file not found: {candidate}")
        return candidate
    path = PRESET_DIR / f"{stage}-{preset}.toml"
    if not path.is_file():
        known = sorted(p.stem.removeprefix(f"{stage}-") for p in PRESET_DIR.glob(f"{stage}-*.toml"))
        raise ConfigError(f"unknown preset {preset!r} for {stage}; known presets: {', '.join(known) or 'none'}")
    return path


def load_config(
    cls: type[C],
    preset: Path | None = None,
    overrides: Iterable[str] = (),
    values: Mapping[str, Any] | None = None,
) -> C:
    """Build the dataclass `cls` from defaults, a TOML file, a mapping and `key=value` strings."""
    merged: dict[str, Any] = {}
    if preset is not None:
        with open(preset, "rb") as handle:
            try:
                merged.update(tomllib.load(handle))
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{preset}: not valid TOML: {exc}") from exc
    merged.update(values or {})
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        merged[key.strip()] = _parse_literal(raw.strip())
    return build_config(cls, merged, source=str(preset) if preset else "settings")


def build_config(cls: type[C], values: Mapping[str, Any], source: str = "settings") -> C:
    """Check names and types of `values` against the dataclass `cls` and build it."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"{source}: unknown setting(s) {', '.join(unknown)} for {cls.__name__}; "
            f"known: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {name: _coerce(name, value, hints[name]) for name, value in values.items()}
    try:
        config = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    return config


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (paths and enums as strings)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def describe_config(cls: type) -> str:
    """One line per setting: name, type, default and help text (for --help epilogs and the README)."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else "(required)"
        type_name = getattr(hints[f.name], "__name__", str(hints[f.name]))
        lines.append(f"  {f.name} ({type_name}, default {default!r}): {f.metadata.get('help', '')}")
    return "\n".join(lines)


def _parse_literal(raw: str) -> Any:
    """Read an override value as TOML (numbers, booleans, quoted strings, lists), else as a string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(name, value, option)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError("; ".join(errors))
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{name} must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        item_type = args[0] if args else Any
        items = [_coerce(name, v, item_type) for v in value]
        return tuple(items) if origin is tuple else items
    if annotation is Any:
        return value
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        try:
            return annotation(value)
        except ValueError:
            choices = ", ".join(str(m.value) for m in annotation)
            raise ConfigError(f"{name} must be one of {choices}, got {value!r}") from None
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{name} must be a string, got {value!r}")
    if annotation is Path:
        if isinstance(value, str | Path):
            return Path(value)
        raise ConfigError(f"{name} must be a path, got {value!r}")
    return value
