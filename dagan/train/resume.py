"""Which config changes a run may make when it resumes from its checkpoint (docs/RELIABILITY.md, "Resume rules").

A checkpoint continues the run whose resolved config it holds. Resuming it under another config
would silently mix two runs (and keep logging into the first run's MLflow run), so:

* must match: every ``model`` key; ``loss.lambda_*`` and ``loss.vgg_input``; ``dataset``
  ``name``, ``load_size``, ``crop_size``, ``aspect_ratio``, ``flip``; ``train`` ``batch_size``,
  ``lr_schedule``, ``lr_g``, ``lr_d``, ``beta1``, ``beta2``, ``seed``, ``amp``, ``ema_decay``,
  ``ema_rampup``: what is computed, step by step;
* may change, and the change is logged (and tagged on the MLflow run): ``train.max_steps``,
  ``train.epochs``, ``train.epochs_decay``, to extend or shorten the schedule;
* free: everything else (device, ``channels_last``, ``heap_reuse``, ``num_workers``,
  ``ema_bn_batches`` (the EMA's batch-norm statistics at checkpoints only), the log,
  sample and checkpoint intervals, ``keep_last``, paths, ``train.init_from`` (read by new runs
  only), and the ``judge`` and ``evaluate`` sections; the steps' ``mlflow``, ``register`` and
  ``tune`` sections are not part of a checkpoint at all).

A key that a checkpoint of older code lacks counts as that key's default.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dagan.checkpoint import CheckpointError
from dagan.config import Config

MUST_MATCH: dict[str, tuple[str, ...] | None] = {  # section -> keys (None: the whole section)
    "model": None,
    "loss": ("lambda_gan", "lambda_feat", "lambda_vgg", "lambda_att", "lambda_kld", "vgg_input"),
    "dataset": ("name", "load_size", "crop_size", "aspect_ratio", "flip"),
    "train": ("batch_size", "lr_schedule", "lr_g", "lr_d", "beta1", "beta2", "seed", "amp", "ema_decay",
              "ema_rampup"),
}
MAY_CHANGE = {"train": ("max_steps", "epochs", "epochs_decay")}


def _differences(saved: Mapping[str, Any], config: Config, keys: Mapping[str, tuple[str, ...] | None]) -> list[str]:
    current = config.to_dict()
    found = []
    for section, names in keys.items():
        defaults = {f.name: f.default for f in dataclasses.fields(getattr(config, section))}
        for name in names or tuple(current[section]):
            before = saved.get(section, {}).get(name, defaults[name])
            if before != current[section][name]:
                found.append(f"{section}.{name}: {before!r} -> {current[section][name]!r}")
    return found


def resume_changes(saved: Mapping[str, Any], config: Config, source: Path) -> tuple[str, ...]:
    """The allowed changes since the checkpoint at ``source`` (config ``saved``); a CheckpointError
    naming every key that must match but differs."""
    conflicts = _differences(saved, config, MUST_MATCH)
    if conflicts:
        raise CheckpointError(
            f"{source} belongs to a run with another config ({'; '.join(conflicts)}); resuming would mix two runs. "
            "Start a new run: set another train.out_dir, or pass --force-new-run (python -m components.train) to "
            "move the old run's files aside"
        )
    return tuple(_differences(saved, config, MAY_CHANGE))
