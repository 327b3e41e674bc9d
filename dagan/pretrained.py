"""Pretrained weight files: an explicit path, the torch hub cache, or a download when allowed.

Three networks need published weights: VGG19 for the perceptual loss L_p (paper Eq. 10;
:mod:`dagan.perceptual`) and the FID Inception network and LPIPS for the evaluation (paper
section 4; :mod:`dagan.eval.fid`). Each is looked up the same way: a path given in the config,
else ``<torch hub dir>/checkpoints/<file>`` (``TORCH_HOME`` moves it), else a download into that
cache when the machine is online and the config allows it. Nothing falls back to random weights:
a file that is not found raises :class:`MissingPretrainedWeightsError` (or the caller's subclass)
saying where we looked and which config key points at the file or turns its user off.
"""

from __future__ import annotations

from pathlib import Path

import torch


class MissingPretrainedWeightsError(FileNotFoundError):
    """A pretrained network was asked for but its weights are not on this machine."""


def hub_checkpoints_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def pretrained_file(
    file_name: str, url: str, explicit: str, key: str, turn_off: str, download_off: str | None = None,
    error: type[MissingPretrainedWeightsError] = MissingPretrainedWeightsError, progress: bool = False,
) -> Path:
    """The local file of one pretrained network.

    ``explicit``: a path, or "auto" (the torch hub cache, then ``url``); ``key``: the config key that
    holds the path ("" when there is none); ``turn_off``: how to run without the network;
    ``download_off``: the setting that forbids downloading, when it does.
    """
    if explicit != "auto":
        path = Path(explicit)
        if not path.is_file():
            given = f"{key}={explicit}" if key else explicit
            raise error(f"{given}: no such file (expected {file_name}); fix the path, or {turn_off}")
        return path
    cached = hub_checkpoints_dir() / file_name
    if cached.is_file():
        return cached
    looked = f"{file_name} not found: looked for {cached} (torch hub cache; TORCH_HOME moves it)"
    place = f"there{f' or point {key} at it' if key else ''}, or {turn_off}"
    if download_off is not None:
        raise error(f"{looked} and {download_off}. Copy the file from {url} {place}")
    cached.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(cached), progress=progress)
    except OSError as err:  # URLError and socket errors are OSErrors
        raise error(f"{looked} and could not download {url} ({err}). Copy the file {place}") from None
    return cached
