"""``python -m components.generate``: label maps -> images with a model from MLflow or a checkpoint.

    python -m components.generate --model URI --labels DIR --out DIR [--instances DIR] [--edges-from-labels]

``URI`` is a registry URI (``models:/dagan-synthetic@champion``, ``models:/dagan-synthetic/3``),
a run URI (``runs:/<run id>/dagan-generator``) or a local checkpoint path. It takes every argument of
``python -m dagan generate`` (the library's command, which reads local checkpoints only: the
library never imports mlflow) and runs the same code with a loader that also resolves model URIs.
The tracking URI is ``$MLFLOW_TRACKING_URI`` when set.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from dagan.__main__ import generate as run_generate
from dagan.inference import MODEL_URI_SCHEMES, Synthesizer, add_generate_arguments, load_synthesizer

DESCRIPTION = ("Turn label-map PNGs into images with a model from the MLflow registry (models:/NAME@ALIAS), a run "
               "(runs:/RUN_ID/dagan-generator) or a local checkpoint; writes index.html beside the images.")


def load_from_mlflow(uri: str) -> Synthesizer:
    """The Synthesizer inside a registered/logged DAGAN pyfunc model."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from components.outputs import connect_tracking

    connect_tracking(mlflow.get_tracking_uri())  # credentials of $MLFLOW_TRACKING_URI stay out of messages
    try:
        model = mlflow.pyfunc.load_model(uri)
    except MlflowException as err:
        raise ValueError(f"cannot load {uri} from MLflow ({mlflow.get_tracking_uri()}): {err.message}") from None
    python_model = model.unwrap_python_model()
    synthesizer = getattr(python_model, "synthesizer", None)
    if not isinstance(synthesizer, Synthesizer):
        raise ValueError(f"{uri} is not a DAGAN image model (components/pyfunc_model.py); register one with "
                         "python -m components.register")
    return synthesizer


def load_model(model: str, manifest_dir: str | None) -> Synthesizer:
    """An MLflow model URI through MLflow, anything else as a local checkpoint."""
    if model.startswith(MODEL_URI_SCHEMES):
        return load_from_mlflow(model)
    return load_synthesizer(model, manifest_dir=manifest_dir)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m components.generate", description=DESCRIPTION)
    add_generate_arguments(parser, model_help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/dagan-generator "
                                              "or a checkpoint path")
    return run_generate(parser.parse_args(argv), load_model)


if __name__ == "__main__":
    sys.exit(main())
