"""The registered model: an MLflow pyfunc that turns label maps into RGB images.

Logged as "models from code" (this file is the model definition) with the exported generator
checkpoint (:func:`dagan.inference.export_generator`) as an artifact and ``dagan/`` as code. We
chose that over ``mlflow.pytorch.log_model``, whose MLflow 3 default is a torch.export ("pt2")
program: an exported program fixes the input size and dtype, cannot take PNG bytes or check
label ranges with a clear message, and ties the artifact to one torch version's export format.
The pyfunc keeps the plain weights (loaded with ``weights_only=True``) and all input checks of
:class:`dagan.inference.Synthesizer`.

Input: a DataFrame, one row per label map, with exactly one of
  ``label``      PNG bytes of a single-channel label-id map (base64 in JSON requests), or
  ``label_ids``  the label ids as a nested list (rows of integers),
and, for models trained with instance maps, ``instance`` (16-bit PNG bytes) or the param
``edges_from_labels=true``. Multimodal models (``model.style=vae|noise3d``, docs/MULTIMODAL.md)
take two more optional columns: ``style``, the bytes of a photo (PNG or JPEG) whose style a
``vae`` model transfers onto the row's label map, and ``seed``, an integer >= 0 that picks the
latent (different seeds, different images; the same seed, the same image). Rows without them get
z = 0 (or the style photo's mean): the output stays deterministic. MLflow's input schema allows
no missing values in a binary or integer column, so when only some rows of a request have them,
the others send an empty ``style`` ("" in JSON, b"" in a DataFrame) and a ``seed`` of -1.
Output: a DataFrame with ``image``, RGB PNG bytes (base64 in JSON).

Served (``mlflow models serve``), every JSON input format of MLflow's scoring server works:
``dataframe_split`` and ``dataframe_records`` (whose binary columns the server decodes from
base64) as well as ``inputs`` and ``instances`` (which hand the base64 text over as it is: it is
decoded here). A request without a ``label`` or ``label_ids`` column (MLflow drops columns the
signature does not know, e.g. a misspelled one) or without rows is refused, and so is JSON nested
deeper than Python's parser goes, which MLflow's server would answer with HTTP 500
(:func:`refuse_deep_json_in_the_scoring_server`).

The environment variable ``DAGAN_DEVICE`` (auto | cpu | cuda | cuda:N; default auto: the GPU
when PyTorch sees one) chooses where the generator runs; ``cuda`` without a GPU is an error.

Limits (the model config, from ``register.serve_max_image_pixels`` / ``serve_max_request_pixels``):
pixels per label map (peak memory grows with it: rows are generated one at a time) and pixels per
request (time grows with it). Sizes are read from the PNG headers and list shapes before anything
is decoded or generated; a request over a limit gets HTTP 400 with a message that states the limit.
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import sys

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature, set_model
from mlflow.protos.databricks_pb2 import BAD_REQUEST, INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel
from mlflow.types import DataType
from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema
from PIL import Image

from dagan.data.png import encode_png, open_image
from dagan.distributed import resolve_device
from dagan.inference import (
    SERVE_MAX_IMAGE_PIXELS,
    SERVE_MAX_REQUEST_PIXELS,
    InputError,
    check_pixels,
    decode_id_map,
    decode_rgb,
    load_synthesizer,
)

DEVICE_VARIABLE = "DAGAN_DEVICE"

SIGNATURE = ModelSignature(
    inputs=Schema([
        ColSpec(DataType.binary, "label", required=False),
        ColSpec(Array(Array(DataType.long)), "label_ids", required=False),
        ColSpec(DataType.binary, "instance", required=False),
        ColSpec(DataType.binary, "style", required=False),
        ColSpec(DataType.long, "seed", required=False),
    ]),
    outputs=Schema([ColSpec(DataType.binary, "image")]),
    params=ParamSchema([ParamSpec("edges_from_labels", DataType.boolean, False)]),
)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


IMAGE_SIGNATURES = (b"\x89PNG", b"\xff\xd8")  # PNG, JPEG: raw image bytes are never base64 text


def _binary(value) -> bytes:
    """The bytes of a binary cell: raw, or base64 text (the ``inputs`` / ``instances`` formats leave it encoded)."""
    raw = value.encode() if isinstance(value, str) else bytes(value)
    if raw.startswith(IMAGE_SIGNATURES):
        return raw
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        return raw  # not base64 either: the decoder names it as unreadable


KNOWN_COLUMNS = ("label", "label_ids", "instance", "style", "seed")


def refuse_deep_json_in_the_scoring_server() -> None:
    """Make MLflow's scoring server answer JSON nested deeper than Python's parser goes with HTTP 400, not 500.

    The server (``mlflow models serve``) parses the body with ``json.loads``, whose RecursionError it does not catch.
    The model is loaded inside that server, so this wraps the server's JSON decoding once; elsewhere it does nothing.
    """
    server = sys.modules.get("mlflow.pyfunc.scoring_server")
    decode = getattr(server, "_decode_json_input", None)
    if decode is None or getattr(decode, "refuses_deep_json", False):
        return

    def decode_refusing_deep_json(json_input):
        try:
            return decode(json_input)
        except RecursionError:
            raise MlflowException("the request's JSON nests deeper than the server parses (about "
                                  f"{sys.getrecursionlimit()} levels); a label map is base64 PNG bytes ('label') or "
                                  "a list of rows of integers ('label_ids')", error_code=BAD_REQUEST) from None

    decode_refusing_deep_json.refuses_deep_json = True  # type: ignore[attr-defined]
    server._decode_json_input = decode_refusing_deep_json  # type: ignore[union-attr]


def _size(png, ids, what: str) -> tuple[int, int]:
    """(height, width) of a row's label map, from the PNG header or the nested list's shape."""
    if not _missing(png):
        try:
            width, height = open_image(_binary(png)).size
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise InputError(f"{what} 'label': not a readable PNG ({err}); send a single-channel 8- or 16-bit "
                             "PNG") from None
        return height, width
    rows = list(ids) if not isinstance(ids, str) else []
    return len(rows), len(rows[0]) if rows and hasattr(rows[0], "__len__") else 0


NO_SEED = -1  # a row's seed meaning "none" (JSON requests cannot send null in an integer column)


def _seed(value, what: str) -> int | None:
    """The row's seed: None when absent or NO_SEED; integers (pandas may hand them over as whole floats) as int."""
    if _missing(value):
        return None
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{what} 'seed': {value!r} is not an integer; send a whole number such as 7")
    return None if int(value) == NO_SEED else int(value)


class DAGANImageModel(PythonModel):
    """Label maps -> RGB PNG images with the exported DAGAN generator (artifact ``generator``)."""

    def load_context(self, context) -> None:
        device = resolve_device(os.environ.get(DEVICE_VARIABLE, "auto"), key=DEVICE_VARIABLE)
        self.synthesizer = load_synthesizer(context.artifacts["generator"], device=device)
        limits = context.model_config or {}  # models registered before the limits existed: the defaults
        self.max_image_pixels = int(limits.get("max_image_pixels", SERVE_MAX_IMAGE_PIXELS))
        self.max_request_pixels = int(limits.get("max_request_pixels", SERVE_MAX_REQUEST_PIXELS))
        refuse_deep_json_in_the_scoring_server()

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        """Bad input raises an MlflowException (HTTP 400 when served) naming the row, the value and the fix."""
        try:
            return self._predict(model_input, params)
        except InputError as err:
            raise MlflowException(str(err), error_code=INVALID_PARAMETER_VALUE) from None

    def _check_sizes(self, rows: list[dict]) -> None:
        """Every row's size from its PNG header or list shape, against both limits, before any decoding."""
        if not rows:
            raise InputError("the request holds no label map; send one row per label map with a 'label' (PNG "
                             "bytes, base64 in JSON) or 'label_ids' (rows of integers) column")
        total = 0
        for row_number, row in enumerate(rows):
            what = f"row {row_number}"
            png, ids = row.get("label"), row.get("label_ids")
            if _missing(png) == _missing(ids):
                raise InputError(f"{what}: give exactly one of 'label' (PNG bytes) or 'label_ids' (nested list of "
                                 "integers)")
            height, width = _size(png, ids, what)
            check_pixels(height, width, what, self.max_image_pixels, "this model's serve limit")
            total += height * width
            if total > self.max_request_pixels:
                raise InputError(f"the request holds more than {self.max_request_pixels} pixels in all (this model's "
                                 f"serve limit per request; {total} by row {row_number}); split it into smaller "
                                 "requests")

    def _predict(self, model_input: pd.DataFrame, params: dict | None) -> pd.DataFrame:
        edges_from_labels = bool((params or {}).get("edges_from_labels", False))
        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        if not {"label", "label_ids"} & set(model_input.columns):
            columns = ", ".join(map(str, model_input.columns)) or "none"
            raise InputError(f"the request has no 'label' or 'label_ids' column (columns: {columns}; MLflow drops the "
                             "columns this model does not know, e.g. a misspelled one); this model takes "
                             f"{', '.join(KNOWN_COLUMNS)}")
        rows = model_input.to_dict(orient="records")
        self._check_sizes(rows)
        images = []
        for row_number, row in enumerate(rows):
            what = f"row {row_number}"
            png, ids = row.get("label"), row.get("label_ids")
            if not _missing(png):
                label = decode_id_map(_binary(png), f"{what} 'label'")
            else:
                try:
                    label = np.array([np.asarray(r, dtype=np.int64) for r in ids])
                except ValueError as err:
                    raise InputError(f"{what} 'label_ids': rows must be equally long lists of integers ({err})") \
                        from None
            instance = row.get("instance")
            instance = None if _missing(instance) else decode_id_map(_binary(instance), f"{what} 'instance'",
                                                                  self.max_image_pixels)
            style = row.get("style")
            style = None if _missing(style) or len(style) == 0 else decode_rgb(_binary(style), f"{what} 'style'")
            images.append(encode_png(self.synthesizer(label, instance, edges_from_labels, what=what,
                                                      seed=_seed(row.get("seed"), what), style=style)))
        return pd.DataFrame({"image": images})


set_model(DAGANImageModel())
