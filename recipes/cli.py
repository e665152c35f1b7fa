"""Command lines generated from configuration dataclasses.

Every leaf field of a (nested) config dataclass becomes a flag: ``beta`` -> ``--beta``,
``behaviour.sampler`` -> ``--behaviour.sampler``; booleans get ``--x/--no-x``, tuples take
several values, and the help text is the field's trailing ``# comment`` in the source.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

Config = TypeVar("Config")


def flat_fields(cls, prefix: str = "") -> Iterator[tuple[str, Any, str]]:
    """(dotted name, default, help) for every leaf field of a (nested) config dataclass."""
    comments = dict(re.findall(r"^\s+(\w+):[^#\n]*#\s*(.+)$", inspect.getsource(cls), flags=re.MULTILINE))
    instance = cls()
    for f in dataclasses.fields(cls):
        value = getattr(instance, f.name)
        if dataclasses.is_dataclass(value):
            yield from flat_fields(type(value), f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value, comments.get(f.name, "")


def config_parser(
    cls,
    *,
    prog: str | None = None,
    description: str | None = None,
    choices: dict[str, Sequence] | None = None,
) -> argparse.ArgumentParser:
    """An argument parser with one flag per leaf field of ``cls``; ``choices`` restricts fields."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    choices = choices or {}
    for name, default, text in flat_fields(cls):
        flag = "--" + name.replace("_", "-")
        kwargs: dict[str, Any] = {"dest": name, "default": default, "help": text or name.replace("_", " ")}
        if name in choices:
            kwargs["choices"] = choices[name]
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif isinstance(default, tuple):
            kind = type(default[0]) if default else str
            parser.add_argument(flag, nargs="+", type=kind, metavar=kind.__name__, **kwargs)
        else:
            parser.add_argument(flag, type=type(default), metavar=type(default).__name__, **kwargs)
    return parser


def build_config(cls: type[Config], data: dict) -> Config:
    """A ``cls`` from a flat dotted dict (parsed flags) or a nested dict (``asdict``, JSON);
    keys that are not fields of ``cls`` are ignored, missing ones keep their defaults."""
    nested: dict = {}
    for name, value in data.items():
        *path, leaf = name.split(".")
        node = nested
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    defaults = cls()
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in nested:
            continue
        value, default = nested[f.name], getattr(defaults, f.name)
        if dataclasses.is_dataclass(default):
            value = build_config(type(default), value)
        elif isinstance(default, tuple):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def parse_config(cls: type[Config], argv: list[str] | None = None, **parser_kwargs) -> Config:
    """Parse ``argv`` into a ``cls`` (see :func:`config_parser` for the keyword arguments)."""
    return build_config(cls, vars(config_parser(cls, **parser_kwargs).parse_args(argv)))
