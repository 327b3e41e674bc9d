"""The ``-S`` override grammar: the part of Hydra's basic override syntax that ``dvc exp run -S`` uses.

Accepted, applied to the params file's nested mapping before the config is validated:

* ``key=value``    set ``key`` (a dotted path: ``train.lr_g``; list items by index: ``a.values.0``)
* ``+key=value``   add ``key``; an error when the file already has it
* ``++key=value``  add or set ``key``
* ``~key``         remove ``key`` from the file (the field takes its default); ``~key=value`` only
                   when it holds ``value``; an error when the file does not have it
* ``key=``         the empty string; ``key=null`` is null

Values are YAML (``2e-4``, ``true``, ``null``, ``[1, 2]``, ``{type: choice, values: [B1, B6]}``,
``'quoted, with commas'``). Rejected with a message that says what to do instead: sweeps
(``a=1,2``: ``dvc exp run --queue`` runs one experiment per value), Hydra functions
(``choice(...)``, ``range(...)``, ...), interpolations (``${...}``), the ``file.yaml:`` prefix of
``dvc exp run`` (components read one file: ``--params FILE``), ``key[0]`` (write ``key.0``),
config groups (``a/b=...``) and packages (``key@pkg``), and YAML 1.1 numbers that surprise (``1:30``
is 90, ``0x10`` is 16: :mod:`dagan.yaml_numbers`).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from dagan.yaml_numbers import load_yaml, surprising_numbers

HYDRA_FUNCTIONS = ("choice", "range", "interval", "glob", "tag", "sort", "shuffle", "int", "float", "str", "bool",
                   "json_str", "extend_list")
KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*(\.([A-Za-z_][A-Za-z0-9_-]*|\d+))*")
FILE_PREFIX = re.compile(r"^[\w./-]+\.(ya?ml|json|toml|py):")
MISSING = object()


class OverrideError(ValueError):
    """An override the grammar does not accept, or that does not fit the file; says how to write it."""


@dataclass(frozen=True)
class Override:
    op: str  # "set" | "add" | "force" | "delete"
    path: tuple[str, ...]
    value: Any = MISSING  # MISSING: "~key" without a value
    text: str = ""


def _top_level_comma(raw: str) -> bool:
    depth, quote = 0, ""
    for char in raw:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            return True
    return False


def parse_value(raw: str, text: str) -> Any:
    """A YAML value; refuses what Hydra would sweep, call or interpolate."""
    stripped = raw.strip()
    if _top_level_comma(stripped):
        raise OverrideError(f"override {text!r}: a sweep over several values runs one experiment per value "
                            f"(dvc exp run --queue -S ...); one run takes one value (quote a string with commas)")
    function = re.match(r"^(\w+)\(", stripped)
    if function and function.group(1) in HYDRA_FUNCTIONS:
        raise OverrideError(f"override {text!r}: Hydra functions such as {function.group(1)}(...) are not "
                            "supported; give a plain value (sweeps: dvc exp run --queue, or Ray Tune: docs/TUNE.md)")
    if "${" in stripped:
        raise OverrideError(f"override {text!r}: interpolations (${{...}}) are not resolved here; give the value")
    if not stripped:
        return ""
    try:
        value = load_yaml(stripped)
    except yaml.YAMLError as err:
        raise OverrideError(f"override {text!r}: the value is not valid YAML ({err})") from None
    for _, number in surprising_numbers(value):  # YAML 1.1's 1:30 = 90, 0x10 = 16, ...
        raise OverrideError(f"override {text!r}: {number.explain()}")
    if isinstance(value, str) and _looks_like_float(value):
        value = float(value)  # YAML 1.1 reads "2e-4" as a string
    return value


def _looks_like_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return any(c in text.lower() for c in "e.") and text.strip().lower() not in {"nan", "inf", "-inf", "+inf"}


def parse_override(text: str) -> Override:
    """``"train.lr_g=2e-4"`` -> Override("set", ("train", "lr_g"), 0.0002); see the module docstring."""
    if FILE_PREFIX.match(text):
        raise OverrideError(f"override {text!r}: the 'file:' prefix picks a params file in dvc exp run; a component "
                            "reads one file: pass --params FILE and -S key=value")
    op, body = ("delete", text[1:]) if text.startswith("~") else ("force", text[2:]) if text.startswith("++") \
        else ("add", text[1:]) if text.startswith("+") else ("set", text)
    key, sep, raw = body.partition("=")
    if not sep and op != "delete":
        raise OverrideError(f"override {text!r} must look like section.key=value (e.g. train.lr_g=2e-4)")
    if re.search(r"\[\d+\]", key):
        raise OverrideError(f"override {text!r}: write list items as key.0=value (the dvc exp run -S form)")
    if "@" in key or "/" in key:
        raise OverrideError(f"override {text!r}: Hydra config groups and packages (a/b, key@pkg) do not exist "
                            "here; write section.key=value")
    if not KEY.fullmatch(key):
        raise OverrideError(f"override {text!r} must look like section.key=value (e.g. train.lr_g=2e-4)")
    path = tuple(key.split("."))
    value = parse_value(raw, text) if sep else MISSING
    if len(path) == 1 and op != "delete" and not isinstance(value, Mapping):
        raise OverrideError(f"override {text!r}: {key} is a section; write section.key=value (e.g. train.lr_g=2e-4)")
    return Override(op, path, value, text)


def _child(node: Any, depth: int, override: Override, create: bool) -> Any:
    """The child ``override.path[depth]`` of a mapping or a list (index); missing mappings are created when
    ``create``."""
    part, where = override.path[depth], ".".join(override.path[: depth + 1])
    if isinstance(node, list):
        if not part.isdigit() or int(part) >= len(node):
            raise OverrideError(f"override {override.text!r}: {where} is not an item of a list of {len(node)}")
        return node[int(part)]
    if not isinstance(node, dict):
        raise OverrideError(f"override {override.text!r}: {where} is inside a value that is not a section")
    if part not in node:
        if not create:
            raise OverrideError(f"override {override.text!r}: {where} is not in the params file")
        node[part] = {}
    return node[part]


def apply_override(data: dict[str, Any], override: Override) -> None:
    """Apply one override to ``data`` in place."""
    *parents, last = override.path
    node = data
    for depth in range(len(parents)):
        node = _child(node, depth, override, create=override.op != "delete")
    where = ".".join(override.path)
    if isinstance(node, list):
        _child(node, len(parents), override, create=False)  # the index must exist
        if override.op in ("add", "delete"):
            raise OverrideError(f"override {override.text!r}: list items can be replaced ({where}=value), not "
                                "added or removed one by one; set the whole list instead")
        node[int(last)] = override.value
        return
    if not isinstance(node, dict):
        raise OverrideError(f"override {override.text!r}: {where} is inside a value that is not a section")
    present = last in node
    if override.op == "add" and present:
        raise OverrideError(f"override {override.text!r}: {where} is already in the params file; use {where}=... "
                            f"or ++{where}=...")
    if override.op == "delete":
        if not present:
            raise OverrideError(f"override {override.text!r}: {where} is not in the params file, nothing to remove")
        if override.value is not MISSING and node[last] != override.value:
            raise OverrideError(f"override {override.text!r}: {where} is {node[last]!r}, not {override.value!r}")
        del node[last]
        return
    node[last] = override.value


def merge_overrides(data: Mapping[str, Any], overrides: Iterable[str] | Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``data`` with ``overrides`` applied: ``-S`` strings, or a dict {dotted key: value} (set)."""
    merged = copy.deepcopy(dict(data))
    if isinstance(overrides, Mapping):
        items = [Override("force", tuple(key.split(".")), value, f"{key}={value!r}")
                 for key, value in overrides.items()]
    else:
        items = [parse_override(text) for text in overrides]
    for override in items:
        apply_override(merged, override)
    return merged
