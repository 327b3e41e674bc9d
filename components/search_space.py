"""The search space of a sweep (``tune.search_space`` in params.yaml), checked against the config schema.

A sweep (components/tune.py, docs/TUNE.md) trains one model per trial with some config keys
sampled. The space is written per config section::

    loss:
      lambda_feat: {type: loguniform, low: 1.0, high: 30.0}
    model:
      variant: {type: choice, values: [B1, B2, B3, B4, B5, B6]}

This module is pure (no Ray): it turns the mapping into :class:`Dimension` objects and checks,
before any trial starts, that every key exists, every bound and choice is a valid value of it
(the config's own type checks, e.g. ``model.variant`` in B1..B6), that every combination of the
choices is a valid config (``model.generator: ca2sis`` with ``model.spap: generator`` is not), and
that no dimension sets a key the sweep itself decides (the trial's step budget, folders and device).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from components.settings import StepConfig, step_config_from_dict
from dagan.config import ConfigError
from dagan.overrides import merge_overrides

KINDS = {"loguniform": ("low", "high"), "uniform": ("low", "high"), "choice": ("values",)}
# Keys every trial sets itself (components.tune): sweeping them would be overwritten or break resuming.
RESERVED_KEYS = frozenset({"train.max_steps", "train.checkpoint_every", "train.out_dir", "train.device",
                           "dataset.prepared_dir", "evaluate.judge", "mlflow.tracking_uri"})


@dataclass(frozen=True)
class Dimension:
    key: str  # dotted config key, e.g. loss.lambda_feat
    kind: str  # loguniform | uniform | choice
    low: float | None = None
    high: float | None = None
    values: tuple[Any, ...] = ()

    def candidates(self) -> tuple[Any, ...]:
        """Values that must all be valid for the key: the bounds, or every choice."""
        return self.values if self.kind == "choice" else (self.low, self.high)


def _dimension(key: str, spec: Any, where: str) -> Dimension:
    if not isinstance(spec, Mapping) or spec.get("type") not in KINDS:
        raise ConfigError(f"{where}: expected {{type: loguniform|uniform|choice, ...}}, got {spec!r}")
    kind = spec["type"]
    fields = KINDS[kind]
    extra = sorted(set(spec) - {"type", *fields})
    missing = [name for name in fields if name not in spec]
    if extra or missing:
        raise ConfigError(f"{where}: a {kind} dimension takes exactly {', '.join(fields)}; "
                          f"missing: {', '.join(missing) or '-'}, unknown: {', '.join(extra) or '-'}")
    if kind == "choice":
        values = spec["values"]
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}.values: expected a non-empty list, got {values!r}")
        return Dimension(key, kind, values=tuple(values))
    low, high = spec["low"], spec["high"]
    for name, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ConfigError(f"{where}.{name}: {value!r} is not a finite number")
    if not low < high:
        raise ConfigError(f"{where}: low={low} must be below high={high}")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}: a loguniform range needs low > 0, got low={low}; use type: uniform for 0")
    return Dimension(key, kind, float(low), float(high))


def parse_search_space(space: Mapping[str, Any], base: Mapping[str, Any], source: str) -> list[Dimension]:
    """The dimensions of ``space`` (section -> key -> spec), each checked against ``base`` (a params dict)."""
    dimensions = []
    for section, keys in space.items():
        for name, spec in (keys or {}).items():
            key = f"{section}.{name}"
            where = f"{source}: tune.search_space.{key}"
            if section == "tune" or key in RESERVED_KEYS:
                raise ConfigError(f"{where}: the sweep sets {key} itself for every trial; remove it from the space")
            _check_key(section, name, where)
            dimension = _dimension(key, spec, where)
            for value in dimension.candidates():
                try:
                    step_config_from_dict(merge_overrides(dict(base), {key: value}), source).resolved()
                except ConfigError as err:
                    raise ConfigError(f"{where}: {value!r} is not a valid value: {err}") from None
            dimensions.append(dimension)
    if not dimensions:
        raise ConfigError(f"{source}: tune.search_space is empty; add at least one dimension (docs/TUNE.md)")
    _check_choice_combinations(dimensions, base, source)
    return dimensions


def _check_key(section: str, name: str, where: str) -> None:
    """The config has ``section.name`` (the keys a params file may set)."""
    sections = typing.get_type_hints(StepConfig)
    if section not in sections:
        raise ConfigError(f"{where}: unknown key: there is no config section {section!r}; the sections are "
                          f"{', '.join(sorted(sections))}")
    keys = sorted(field.name for field in dataclasses.fields(sections[section]))
    if name not in keys:
        raise ConfigError(f"{where}: unknown key {section}.{name}; the keys of {section} are {', '.join(keys)}")


MAX_CHECKED_COMBINATIONS = 4096


def _check_choice_combinations(dimensions: list[Dimension], base: Mapping[str, Any], source: str) -> None:
    """Every combination of the choice dimensions' values must resolve (up to MAX_CHECKED_COMBINATIONS)."""
    choices = [d for d in dimensions if d.kind == "choice"]
    if len(choices) < 2:
        return
    for values in itertools.islice(itertools.product(*(d.values for d in choices)), MAX_CHECKED_COMBINATIONS):
        overrides = {d.key: value for d, value in zip(choices, values, strict=True)}
        try:
            step_config_from_dict(merge_overrides(dict(base), overrides), source).resolved()
        except ConfigError as err:
            combination = ", ".join(f"{key}={value!r}" for key, value in overrides.items())
            raise ConfigError(f"{source}: tune.search_space: the combination {combination} is not a valid config "
                              f"({err}); remove one of the values or sweep the keys separately") from None
