"""YAML 1.1 numbers that surprise, refused in params files and ``-S`` values.

PyYAML implements YAML 1.1, whose resolver reads some plain scalars as numbers that nobody who
wrote them meant: ``1:30`` is 90 (base 60), ``0x10`` is 16, ``010`` is 8 (octal), ``0b11`` is 3
and ``1_000`` is 1000; YAML 1.2 (and dvc, which reads ``params.yaml`` with ruamel) reads most of
them as text. :func:`load_yaml` reads such a scalar as a :class:`SurprisingNumber` and
:func:`surprising_numbers` finds them, so that the config loader refuses each one, naming the key
and the literal: write the plain decimal number, or quote the text.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import yaml

PLAIN_INT = re.compile(r"[-+]?(0|[1-9][0-9]*)")
PLAIN_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)")


@dataclass(frozen=True)
class SurprisingNumber:
    """A plain scalar that YAML 1.1 reads as ``value`` although it was written as ``literal``."""

    literal: str
    value: int | float

    @property
    def form(self) -> str:
        text = self.literal.lstrip("+-").lower()
        if ":" in text:
            return "base 60"
        if text.startswith("0x"):
            return "hexadecimal"
        if text.startswith("0b"):
            return "binary"
        if "_" in text:
            return "digits grouped with '_'"
        return "octal"

    def explain(self) -> str:
        return (f"the YAML 1.1 literal {self.literal!r} reads as {self.value!r} ({self.form}); write {self.value!r} "
                f"if that number is meant, or quote it ('{self.literal}') for text")


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps the surprising numeric literals as :class:`SurprisingNumber`."""


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int | SurprisingNumber:
    value = loader.construct_yaml_int(node)
    return value if PLAIN_INT.fullmatch(node.value) else SurprisingNumber(node.value, value)


def _construct_float(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> float | SurprisingNumber:
    value = loader.construct_yaml_float(node)
    return value if PLAIN_FLOAT.fullmatch(node.value) else SurprisingNumber(node.value, value)


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_Loader.add_constructor("tag:yaml.org,2002:float", _construct_float)


def load_yaml(stream: str | IO[str]) -> Any:
    """``yaml.safe_load`` with surprising numbers kept as :class:`SurprisingNumber` (find them with
    :func:`surprising_numbers`)."""
    return yaml.load(stream, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def surprising_numbers(data: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, SurprisingNumber]]:
    """(dotted key, number) of every :class:`SurprisingNumber` in ``data`` (mappings and lists, depth first)."""
    if isinstance(data, SurprisingNumber):
        yield ".".join(path), data
    elif isinstance(data, dict):
        for key, value in data.items():
            yield from surprising_numbers(value, (*path, str(key)))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from surprising_numbers(value, (*path, str(index)))
