"""Training checkpoints: one atomic dict with the whole training state.

Contents (docs/ARCHITECTURE.md, "Training outputs"): ``format_version``, ``config`` (the
resolved library config as a plain dict, :meth:`dagan.config.Config.to_dict`; read it with
:func:`checkpoint_config`), ``semantic_nc``, ``num_label_channels``, ``generator``, ``discriminator``, ``ema``
(or None), ``optimizer_g``, ``optimizer_d``, ``scaler`` (or None), ``step``, ``epoch`` and
``rng`` (python / numpy / torch / cuda states as tensors and plain lists). Everything is
loadable with ``torch.load(..., weights_only=True)``. Files are written atomically
(:mod:`dagan.atomic`), so a crash never leaves a half-written checkpoint; the temporary files
of killed writers are removed when the next run starts (:func:`remove_stale_temporaries`). A
file that is truncated or not a checkpoint is a CheckpointError naming it; resuming skips an
unreadable newest checkpoint for the newest readable one (:func:`load_latest_checkpoint`). A
generator with NaN/Inf weights is refused.
"""

from __future__ import annotations

import logging
import pickle
import random
import re
import zipfile
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from dagan import atomic
from dagan.config import Config, config_from_dict
from dagan.disk import DISK_FULL
from dagan.finite import describe_non_finite, non_finite_tensors

FORMAT_VERSION = 1
STEP_PATTERN = re.compile(r"^step-(\d{8})\.pt$")
FINAL_NAME = "final.pt"
# Sections that checkpoints of earlier versions also stored: the steps' settings (experiment tracking, registry,
# sweeps), which never shaped the model; they are dropped when such a checkpoint's config is read.
FORMER_SECTIONS = ("mlflow", "register", "tune")
log = logging.getLogger("dagan.checkpoint")


class CheckpointError(ValueError):
    """A checkpoint is missing, of another format, or does not fit the current run."""


def checkpoint_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def step_path(out_dir: str | Path, step: int) -> Path:
    return checkpoint_dir(out_dir) / f"step-{step:08d}.pt"


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) RNG states in weights_only-loadable types."""
    version, internal, gauss = random.getstate()
    numpy_state = cast(tuple, np.random.get_state())  # the legacy tuple (legacy=True, the default)
    return {
        "python": [version, list(internal), gauss],
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *map(_plain, numpy_state[2:])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` atomically (:func:`dagan.atomic.atomic_write`); a full disk is a CheckpointError."""
    path = Path(path)
    try:
        with atomic.atomic_write(path) as tmp, tmp.open("wb") as handle:
            torch.save(state, handle)
    except (OSError, RuntimeError) as err:  # torch's zip writer may raise a RuntimeError while closing after an OSError
        cause = err if isinstance(err, OSError) else err.__context__
        if isinstance(cause, OSError) and cause.errno in DISK_FULL:
            raise CheckpointError(
                f"no space left on the device of {path.parent} while writing checkpoint {path.name}; the earlier "
                "checkpoints are intact: free space there (or set train.out_dir to another disk) and run the same "
                "command again to resume"
            ) from None
        raise
    return path


def remove_stale_temporaries(out_dir: str | Path) -> list[Path]:
    """Delete the temporary files that checkpoint writes killed mid-write left in the run's checkpoint folder."""
    return atomic.remove_stale_temporaries(checkpoint_dir(out_dir))


def prune_checkpoints(out_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` step checkpoints; return the deleted paths."""
    steps = sorted(_step_checkpoints(out_dir))
    doomed = [path for _, path in steps[:-keep_last]] if keep_last > 0 else []
    for path in doomed:
        path.unlink(missing_ok=True)
    return doomed


def _step_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    folder = checkpoint_dir(out_dir)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = STEP_PATTERN.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return found


def load_latest_checkpoint(
    out_dir: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[Path, dict[str, Any]] | None:
    """(path, state) of the newest readable checkpoint in ``out_dir`` (final.pt wins a tie), or None.

    An unreadable newer checkpoint (e.g. truncated by a full disk) is skipped with a warning that
    names it; when checkpoints exist but none is readable, a CheckpointError lists them.
    """
    final = checkpoint_dir(out_dir) / FINAL_NAME
    final_state, unreadable = None, []
    if final.is_file():
        try:
            final_state = load_checkpoint(final, map_location)
        except CheckpointError as err:
            unreadable.append(str(err))
            log.warning("%s; looking for the newest step checkpoint", err)
    for step, path in sorted(_step_checkpoints(out_dir), reverse=True):
        if final_state is not None and final_state["step"] >= step:
            break
        try:
            return path, load_checkpoint(path, map_location)
        except CheckpointError as err:
            unreadable.append(str(err))
            log.warning("%s; falling back to the previous checkpoint", err)
    if final_state is not None:
        return final, final_state
    if unreadable:
        raise CheckpointError(f"no readable checkpoint in {checkpoint_dir(out_dir)}: {'; '.join(unreadable)}. Move "
                              "them away to start afresh, or resume from a copy with --resume PATH")
    return None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict with ``weights_only=True`` and check its format version."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    with path.open("rb") as handle:
        if handle.read(4) != b"PK\x03\x04":  # torch.save writes a zip archive
            raise CheckpointError(f"{path} is not a DAGAN checkpoint (not a PyTorch checkpoint file); checkpoints "
                                  "come from python -m components.train")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).partition("WeightsUnpickler error:")[2].strip().split("\n")[0] or "unknown content"
        raise CheckpointError(f"{path} is not a DAGAN checkpoint: it holds objects that a safe (weights-only) load "
                              f"refuses ({reason}); checkpoints come from python -m components.train") from None
    except (RuntimeError, OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"{path} is truncated or not a checkpoint ({_load_failure(err)}); use another "
                              "checkpoint or write it again") from None
    version = state.get("format_version") if isinstance(state, dict) else None
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format_version {version!r}, this code reads {FORMAT_VERSION}; "
            "retrain or convert the checkpoint with the version of the code that wrote it"
        )
    return state


def _load_failure(err: BaseException) -> str:
    """The first sentence of torch's reason (its advice is not ours to give)."""
    if isinstance(err, OSError):
        return err.strerror or type(err).__name__
    if isinstance(err, EOFError):
        return "the file is empty or cut short"
    return str(err).split(". ")[0].split("\n")[0] or type(err).__name__

def label_channels_of(state: dict[str, Any]) -> int | None:
    """The one-hot class channels a checkpoint's generator was built for (None when it does not say:
    checkpoints of generators that do not need it)."""
    if state.get("num_label_channels") is not None:
        return state["num_label_channels"]
    layout = state.get("layout")  # exported generators (dagan.inference.export_generator)
    return layout["num_classes"] + int(layout["contain_dontcare_label"]) if layout else None



def checkpoint_config(state: dict[str, Any], source: str | Path) -> Config:
    """The config a checkpoint holds (:data:`FORMER_SECTIONS` of older checkpoints left out)."""
    stored = {name: section for name, section in state["config"].items() if name not in FORMER_SECTIONS}
    return config_from_dict(stored, f"{source} (config)")


def load_generator(path: str | Path, use_ema: bool = True, map_location: str | torch.device = "cpu"):
    """``(generator, config, semantic_nc)`` from a checkpoint, in eval mode.

    With ``use_ema`` the EMA weights are used when the checkpoint has them (else the trained
    generator's weights).
    """
    from dagan.generator import build_generator

    state = load_checkpoint(path, map_location)
    config = checkpoint_config(state, path)
    generator = build_generator(config, state["semantic_nc"], label_channels_of(state))
    weights = state["ema"] if use_ema and state["ema"] is not None else state["generator"]
    bad = non_finite_tensors(weights)
    if bad:
        cause = ("its imported weights are damaged: import the official file again" if state.get("origin") else
                 "the training that wrote it diverged: use an earlier checkpoint, or retrain with lower learning rates")
        raise CheckpointError(f"{path}: the generator has {describe_non_finite(bad)}; {cause}")
    generator.load_state_dict(weights)
    return generator.eval(), config, state["semantic_nc"]


def load_discriminator(path: str | Path, map_location: str | torch.device = "cpu"):
    """The discriminator of a training checkpoint, in eval mode (e.g. for its SPAP attention maps)."""
    from dagan.discriminator import build_discriminator

    state = load_checkpoint(path, map_location)
    if not state.get("discriminator"):
        raise CheckpointError(f"{path} holds no discriminator weights (an exported generator?); use the training "
                              "checkpoint")
    config = checkpoint_config(state, path)
    discriminator = build_discriminator(config, state["semantic_nc"])
    discriminator.load_state_dict(state["discriminator"])
    return discriminator.eval()
