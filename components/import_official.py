"""``python -m components.import_official``: an official DAGAN/SPADE model as a model of this pipeline.

    python -m components.import_official --generator latest_net_G.pth [--discriminator latest_net_D.pth]
        [--encoder latest_net_E.pth] [--variant B6|B1] [--params FILE]
        -S dataset.name=cityscapes -S train.out_dir=outputs/official-cityscapes

Imports the checkpoint for the preset ``dataset.name`` (dagan.official.convert; image sizes from
``dataset.load_size`` / ``crop_size`` / ``aspect_ratio``) into
``<train.out_dir>/checkpoints/final.pt`` - the place a training leaves its model - and opens an
MLflow run for it, tagged with where it came from (``origin.*``: official code, preset, variant,
file names and sha256), with ``mlflow_run.json`` and ``config.yaml`` beside it. Then
``components.evaluate`` and ``components.register`` with the same ``-S train.out_dir`` evaluate
it on a prepared dataset and register it as ``dagan-<dataset>`` behind the same gate as a trained
model (docs/OFFICIAL.md). An out_dir that already holds checkpoints is refused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import mlflow

from components.cli import entry, load, log, make_parser, run_main
from components.outputs import RUN_FILE, connect_tracking, tracking_uri, write_json
from components.settings import StepConfig
from components.tracking import activate_experiment
from dagan.checkpoint import FINAL_NAME, checkpoint_config, checkpoint_dir
from dagan.config import save_config
from dagan.official.convert import import_official, write_imported

DESCRIPTION = """Import an official DAGAN or SPADE checkpoint (latest_net_G.pth, optionally latest_net_D.pth) as a
model of this pipeline: <train.out_dir>/checkpoints/final.pt and an MLflow run tagged with its origin;
then evaluate and register it like a trained model (docs/OFFICIAL.md)."""


def origin_tags(origin: dict) -> dict[str, str]:
    """Flat ``origin.*`` tags of an imported checkpoint's provenance."""
    tags = {f"origin.{key}": str(origin[key]) for key in ("kind", "code", "preset", "variant")}
    for role, file in origin["files"].items():
        tags[f"origin.{role}_file"] = file["name"]
        tags[f"origin.{role}_sha256"] = file["sha256"]
    return tags


def _run(config: StepConfig, generator: str, discriminator: str | None, variant: str | None,
         encoder: str | None = None) -> int:
    out_dir = Path(config.train.out_dir)
    folder = checkpoint_dir(out_dir)
    if folder.is_dir() and any(folder.glob("*.pt")):
        raise FileExistsError(f"{folder} already holds checkpoints; import into a new -S train.out_dir")
    sizes = {key: getattr(config.dataset, key) for key in ("load_size", "crop_size", "aspect_ratio")}
    checkpoint = import_official(generator, config.dataset.name, variant, discriminator, {"dataset": sizes},
                                 encoder)
    model_config = checkpoint_config(checkpoint, "imported checkpoint")
    path = write_imported(checkpoint, folder / FINAL_NAME)
    save_config(model_config, out_dir / "config.yaml")
    origin = checkpoint["origin"]
    uri = connect_tracking(tracking_uri(config))  # without credentials (docs/RELIABILITY.md)
    experiment_id = activate_experiment(config.mlflow.experiment)
    name = f"official-{origin['code'].lower()}-{origin['preset']}-{origin['variant']}"
    with mlflow.start_run(experiment_id=experiment_id, run_name=name) as run:
        mlflow.log_params({f"model.{key}": value for key, value in dataclasses.asdict(model_config.model).items()})
        mlflow.set_tags({**origin_tags(origin), "dataset": origin["preset"], "variant": origin["variant"],
                         "mlflow.note.content": f"Official {origin['code']} {origin['preset']} model imported from "
                                                f"{origin['files']['generator']['name']}; not trained here."})
        mlflow.log_artifact(str(out_dir / "config.yaml"))
    write_json(out_dir / RUN_FILE, {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id,
                                    "tracking_uri": uri})
    log.info("imported official %s %s (variant %s) into %s; MLflow run %s", origin["code"], origin["preset"],
             origin["variant"], path, run.info.run_id)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("components.import_official", DESCRIPTION)
    parser.add_argument("--generator", required=True, help="the official latest_net_G.pth")
    parser.add_argument("--discriminator", help="the official latest_net_D.pth (kept for fine-tuning)")
    parser.add_argument("--encoder", help="a VAE model's latest_net_E.pth (default: found beside --generator)")
    parser.add_argument("--variant", choices=("B6", "B1"), help="B6 = DAGAN, B1 = SPADE (default: from the file)")
    args = parser.parse_args(argv)
    return run_main(args, lambda: _run(load(args), args.generator, args.discriminator, args.variant, args.encoder))


if __name__ == "__main__":
    entry(main)
