"""The steps' config: the library's :class:`dagan.config.Config` plus the sections the steps own.

``params.yaml`` holds both. The library reads ``dataset``, ``synthetic``, ``model``, ``loss``,
``train``, ``judge`` and ``evaluate`` (what decides the model, and what a checkpoint stores);
the steps add three sections, each a frozen dataclass here, checked like the library's
(unknown keys and wrong types name the key and the file):

* ``mlflow``: where runs are tracked (the tracking URI, which may carry credentials:
  :func:`redact_uri` keeps them out of every param, tag, file and log line);
* ``register``: the registry gate and the served model's limits (components/register.py);
* ``tune``: Ray Tune sweeps (components/tune.py, docs/TUNE.md), with the default search space.

Every component loads a :class:`StepConfig` (:func:`load_step_config`) and hands it to the
library as the :class:`Config` it is; the library's :meth:`Config.to_dict` leaves these three
sections out, so checkpoints and ``config.yaml`` files never hold them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from dagan.config import Config, ConfigError, Overrides, config_from_dict, load_config
from dagan.inference import SERVE_MAX_IMAGE_PIXELS, SERVE_MAX_REQUEST_PIXELS


def redact_uri(uri: str) -> str:
    """``uri`` without ``user:password@`` (params, tags, files and logs never hold credentials)."""
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    return urlunsplit(parts._replace(netloc=f"{host}:{parts.port}" if parts.port else host))


@dataclass(frozen=True)
class MlflowConfig:
    tracking_uri: str = "sqlite:///mlflow.db"  # $MLFLOW_TRACKING_URI wins (components/outputs.py)
    experiment: str = "dagan"

    def __post_init__(self) -> None:
        examples = {"tracking_uri": "sqlite:///mlflow.db or http://127.0.0.1:5000", "experiment": "dagan"}
        for name, example in examples.items():
            if not getattr(self, name).strip():
                raise ConfigError(f"mlflow.{name} is empty; give one, e.g. {example}")


@dataclass(frozen=True)
class RegisterConfig:
    """The register stage: MLflow registry gate (components/register.py)."""

    model_name: str | None = None  # null: dagan-<dataset.name>
    metric: str = "judge_miou_generated"  # key of outputs/eval/metrics.json that ranks versions
    greater_is_better: bool = True
    gate_miou_ratio: float = 0.6  # champion needs judge mIoU(generated) >= ratio x judge mIoU(real)
    gate_fd_beats_baseline: bool = True  # champion needs fd_judge(generated) < fd_judge(mean-colour baseline)
    # Served model (components/pyfunc_model.py), HTTP 400 above: pixels per label map (peak memory grows with it;
    # measured in docs/RELIABILITY.md, "Input limits") and per request (time).
    serve_max_image_pixels: int = SERVE_MAX_IMAGE_PIXELS
    serve_max_request_pixels: int = SERVE_MAX_REQUEST_PIXELS
    out_dir: str = "outputs/register"

    def __post_init__(self) -> None:
        for name in ("serve_max_image_pixels", "serve_max_request_pixels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"register.{name}={getattr(self, name)!r} must be >= 1")
        if self.gate_miou_ratio < 0:
            raise ConfigError(f"register.gate_miou_ratio={self.gate_miou_ratio!r} must be >= 0 (a share of the real "
                              "images' judge mIoU, e.g. 0.6)")
        if self.model_name is not None and (not self.model_name.strip() or any(c in self.model_name for c in "/:'")
                                            or self.model_name != self.model_name.strip()):
            raise ConfigError(f"register.model_name={self.model_name!r}: a registered model name is not empty and "
                              "has no '/', ':' (MLflow's rule), no quote and no leading or trailing spaces (or null: "
                              "dagan-<dataset>)")
        for name in ("metric", "out_dir"):
            if not getattr(self, name).strip():
                raise ConfigError(f"register.{name} is empty; give one (default: {getattr(RegisterConfig, name)!r})")


def _default_search_space() -> dict[str, dict[str, dict[str, Any]]]:
    return {
        "loss": {"lambda_feat": {"type": "loguniform", "low": 1.0, "high": 30.0},
                 "lambda_gan": {"type": "loguniform", "low": 0.3, "high": 3.0}},
        "model": {"variant": {"type": "choice", "values": ["B1", "B2", "B3", "B4", "B5", "B6"]}},
    }


@dataclass(frozen=True)
class TuneConfig:
    """Ray Tune sweeps of loss weights and attention variants (components/tune.py, docs/TUNE.md)."""

    # section -> key -> {type: loguniform | uniform (low, high) | choice (values)}; checked by
    # components.search_space
    search_space: dict[str, dict[str, dict[str, Any]]] = field(default_factory=_default_search_space)
    # fd_judge (judge Fréchet distance, minimised; separates learning from flat painting) | judge_miou (maximised)
    metric: Literal["judge_miou", "fd_judge"] = "fd_judge"
    num_samples: int = 8  # trials
    max_steps: int = 2000  # training steps per trial (its train.max_steps)
    eval_every: int = 200  # steps between judge evaluations = Tune reports = trial checkpoints
    eval_batches: int = 8  # validation batches (evaluate.batch_size images each) per evaluation
    grace_period: int = 400  # ASHA: steps a trial runs before it can be stopped
    reduction_factor: int = 2  # ASHA: 1/reduction_factor of the trials go on at each rung
    cpus_per_trial: float = 2.0
    gpus_per_trial: float | None = None  # null: 1 when the Ray cluster has GPUs, else 0; > 0 without a GPU: error
    max_concurrent_trials: int = 0  # 0: as many as the resources allow
    num_cpus: int | None = None  # local Ray only (no --address): CPUs Ray may use; null: all
    name: str = "dagan-tune"  # Ray Tune experiment (folder under storage_path; --resume restores it)
    storage_path: str = "outputs/tune/ray"  # local folder or s3://bucket/prefix (endpoint: $AWS_ENDPOINT_URL)
    out_dir: str = "outputs/tune"  # best_params.yaml, best.json, results.csv, mlflow_run.json

    def __post_init__(self) -> None:
        for name in ("num_samples", "max_steps", "eval_every", "eval_batches", "grace_period"):
            if getattr(self, name) < 1:
                raise ConfigError(f"tune.{name}={getattr(self, name)} must be >= 1")
        if self.reduction_factor < 2:
            raise ConfigError(f"tune.reduction_factor={self.reduction_factor} must be >= 2")
        if self.cpus_per_trial <= 0 or (self.gpus_per_trial is not None and self.gpus_per_trial < 0):
            raise ConfigError("tune.cpus_per_trial must be > 0 and tune.gpus_per_trial >= 0 (or null)")


@dataclass(frozen=True)
class StepConfig(Config):
    """Every section of ``params.yaml``: the library's, then the steps' own."""

    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    register: RegisterConfig = field(default_factory=RegisterConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)


def step_config_from_dict(data: dict[str, Any], source: str = "<dict>") -> StepConfig:
    """``data`` (section -> key -> value) checked into a :class:`StepConfig`, unresolved."""
    return config_from_dict(data, source, StepConfig)


def load_step_config(path: str | Path = "params.yaml", overrides: Overrides = ()) -> StepConfig:
    """The params file with ``-S`` overrides, every section checked and preset defaults resolved."""
    return load_config(path, overrides, StepConfig)
