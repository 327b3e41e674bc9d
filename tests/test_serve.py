"""`mlflow models serve` of the champion answers real HTTP /invocations requests; bad input gets a clear 400."""

import base64
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from eval_fixtures import SIZE, png, registered_model
from PIL import Image


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def serve(root: Path, tracking_uri: str):
    """``mlflow models serve`` of models:/dagan-synthetic@champion in ``root``: yields its URL, stops it after."""
    port = free_port()
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    command = [str(mlflow_cli) if mlflow_cli.exists() else shutil.which("mlflow"), "models", "serve",
               "-m", "models:/dagan-synthetic@champion", "--env-manager", "local", "-h", "127.0.0.1",
               "-p", str(port), "--workers", "1"]
    log = (root / "serve.log").open("w")
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # the venv's uvicorn
    process = subprocess.Popen(command, env=env,
                               stdout=log, stderr=subprocess.STDOUT, cwd=root)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow models serve did not come up:\n{(root / 'serve.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    config, _ = registered_model(root)
    yield from serve(root, config.mlflow.tracking_uri)


def label_png(size: int = SIZE, top_class: int = 3) -> str:
    label = np.zeros((size, size), np.uint8)
    label[: size // 2] = top_class
    return base64.b64encode(png(label)).decode()


def test_served_champion_turns_a_label_png_into_an_rgb_image(server):
    body = {"dataframe_split": {"columns": ["label"], "data": [[label_png()], [label_png(top_class=1)]]},
            "params": {"edges_from_labels": True}}
    status, answer = post(f"{server}/invocations", body)
    assert status == 200, answer
    images = [Image.open(io.BytesIO(base64.b64decode(row["image"]))) for row in answer["predictions"]]
    assert [(im.mode, im.size) for im in images] == [("RGB", (SIZE, SIZE))] * 2


def test_served_model_takes_integer_arrays(server):
    ids = np.zeros((SIZE, SIZE), int)
    ids[:, :8] = 2
    body = {"dataframe_records": [{"label_ids": ids.tolist()}], "params": {"edges_from_labels": True}}
    status, answer = post(f"{server}/invocations", body)
    assert status == 200, answer
    assert Image.open(io.BytesIO(base64.b64decode(answer["predictions"][0]["image"]))).size == (SIZE, SIZE)


def test_bad_requests_get_clear_errors(server):
    wrong_size = {"dataframe_split": {"columns": ["label"], "data": [[label_png(size=30)]]},
                  "params": {"edges_from_labels": True}}
    status, answer = post(f"{server}/invocations", wrong_size)
    assert status == 400 and "size 30x30" in answer["message"] and "multiples of 32" in answer["message"]

    out_of_range = {"dataframe_split": {"columns": ["label"], "data": [[label_png(top_class=9)]]},
                    "params": {"edges_from_labels": True}}
    status, answer = post(f"{server}/invocations", out_of_range)
    assert status == 400 and "label ids span [0, 9]" in answer["message"] and "0..3" in answer["message"]

    no_instances = {"dataframe_split": {"columns": ["label"], "data": [[label_png()]]}}
    status, answer = post(f"{server}/invocations", no_instances)
    assert status == 400 and "instance maps" in answer["message"] and "edges_from_labels" in answer["message"]


def blank_png(height: int, width: int) -> str:
    return base64.b64encode(png(np.zeros((height, width), np.uint8))).decode()  # a few hundred bytes


def test_requests_over_the_pixel_limits_get_a_400_that_states_the_limit(server):
    huge = {"dataframe_split": {"columns": ["label"], "data": [[blank_png(2048, 2048)]]},
            "params": {"edges_from_labels": True}}
    status, answer = post(f"{server}/invocations", huge)
    assert status == 400 and "2048x2048 = 4194304 pixels, more than the limit of 262144 pixels per label map" in \
        answer["message"]
    many = {"dataframe_split": {"columns": ["label"], "data": [[blank_png(512, 512)]] * 5},
            "params": {"edges_from_labels": True}}
    status, answer = post(f"{server}/invocations", many)
    assert status == 400 and "more than 1048576 pixels in all" in answer["message"] and "row 4" in answer["message"]
    ids = {"dataframe_records": [{"label_ids": np.zeros((600, 600), int).tolist()}],
           "params": {"edges_from_labels": True}}
    status, answer = post(f"{server}/invocations", ids)
    assert status == 400 and "600x600 = 360000 pixels" in answer["message"]


def test_the_pixel_limits_come_from_the_register_config(tmp_path, monkeypatch):
    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException

    monkeypatch.chdir(tmp_path)  # the sqlite store's artifacts (./mlruns) stay in the test's folder
    config, _ = registered_model(tmp_path, register={"serve_max_image_pixels": 1024,
                                                     "serve_max_request_pixels": 2048})
    mlflow.set_tracking_uri(config.mlflow.tracking_uri)
    model = mlflow.pyfunc.load_model("models:/dagan-synthetic@candidate")
    label = np.zeros((SIZE, SIZE), np.uint8)
    assert len(model.predict(pd.DataFrame({"label": [png(label)] * 2}), params={"edges_from_labels": True})) == 2
    with pytest.raises(MlflowException, match="more than 2048 pixels in all"):
        model.predict(pd.DataFrame({"label": [png(label)] * 3}), params={"edges_from_labels": True})
    with pytest.raises(MlflowException, match="64x64 = 4096 pixels, more than the limit of 1024"):
        model.predict(pd.DataFrame({"label": [png(np.zeros((64, 64), np.uint8))]}),
                      params={"edges_from_labels": True})


VAE = {"style": "vae", "z_dim": 8}


@pytest.fixture(scope="module")
def vae_registry(tmp_path_factory):
    """A registered model.style=vae model (untrained weights; the pyfunc's plumbing is what is tested here)."""
    root = tmp_path_factory.mktemp("serve-vae")
    config, _ = registered_model(root, model=VAE)
    return root, config


@pytest.fixture(scope="module")
def vae_server(vae_registry):
    root, config = vae_registry
    yield from serve(root, config.mlflow.tracking_uri)


def style_jpeg(color=(200, 40, 40)) -> str:
    photo = np.zeros((40, 56, 3), np.uint8)
    photo[:, :28] = color
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="JPEG")
    return base64.b64encode(buffer.getvalue()).decode()


def decoded(answer: dict) -> list[np.ndarray]:
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(row["image"])))) for row in answer["predictions"]]


def test_served_vae_model_takes_a_style_photo_and_a_seed_per_row(vae_server, vae_registry):
    from dagan.inference import load_synthesizer

    # rows without a style send "" and rows without a seed -1: JSON input cannot carry nulls there
    rows = [[label_png(), "", -1], [label_png(), style_jpeg(), -1], [label_png(), style_jpeg(), 4],
            [label_png(), "", 4], [label_png(), "", 4], [label_png(), "", 5]]
    body = {"dataframe_split": {"columns": ["label", "style", "seed"], "data": rows},
            "params": {"edges_from_labels": True}}
    status, answer = post(f"{vae_server}/invocations", body)
    assert status == 200, answer
    images = decoded(answer)
    # the served images are exactly what the registered generator makes for each row's latent
    root, config = vae_registry
    synthesizer = load_synthesizer(root / "train" / "checkpoints" / "final.pt", manifest_dir=root / "prepared")
    label = np.asarray(Image.open(io.BytesIO(base64.b64decode(label_png())))).astype(np.int64)
    photo = np.asarray(Image.open(io.BytesIO(base64.b64decode(style_jpeg()))).convert("RGB"))
    for image, (_, style, seed) in zip(images, rows, strict=True):
        expected = synthesizer(label, edges_from_labels=True, seed=None if seed < 0 else seed,
                               style=photo if style else None)
        assert np.array_equal(image, expected)
    assert np.array_equal(images[3], images[4])  # the same seed, the same image
    assert np.array_equal(images[0], synthesizer(label, edges_from_labels=True))  # no seed, no style: z = 0


def test_served_vae_model_refuses_bad_styles_and_seeds(vae_server):
    broken = base64.b64encode(b"not a photo").decode()
    for style, seed, message in ((broken, -1, "row 0 'style': not a readable image"),
                                 ("", -3, "seed -3 must be an integer in [0,")):
        body = {"dataframe_records": [{"label": label_png(), "style": style, "seed": seed}],
                "params": {"edges_from_labels": True}}
        status, answer = post(f"{vae_server}/invocations", body)
        assert status == 400 and message in answer["message"], answer


def test_the_deterministic_model_refuses_a_seed_over_http(server):
    body = {"dataframe_records": [{"label": label_png(), "seed": 1}], "params": {"edges_from_labels": True}}
    status, answer = post(f"{server}/invocations", body)
    assert status == 400 and "model.style=off" in answer["message"]


def test_pyfunc_in_process_takes_style_and_seed_columns(vae_registry):
    import mlflow
    import pandas as pd

    _, config = vae_registry
    mlflow.set_tracking_uri(config.mlflow.tracking_uri)
    model = mlflow.pyfunc.load_model("models:/dagan-synthetic@champion")
    frame = pd.DataFrame({"label": [base64.b64decode(label_png())] * 4,
                          "style": [b"", base64.b64decode(style_jpeg()), b"", b""], "seed": [-1, -1, 9, 9]})
    result = model.predict(frame, params={"edges_from_labels": True})
    images = [np.asarray(Image.open(io.BytesIO(b))) for b in result["image"]]
    assert len(images) == 4 and all(image.shape == (SIZE, SIZE, 3) for image in images)
    assert np.array_equal(images[2], images[3])


def test_a_request_without_a_known_label_column_or_rows_is_a_400(server):
    """MLflow drops a column the signature does not know: a misspelled only column left an empty request (HTTP 200
    with no predictions)."""
    for body in ({"dataframe_split": {"columns": ["lable"], "data": [[label_png()]]}},
                 {"dataframe_records": [{"lable": label_png()}]}):
        status, answer = post(f"{server}/invocations", {**body, "params": {"edges_from_labels": True}})
        assert status == 400 and "the request has no 'label' or 'label_ids' column" in answer["message"], answer
    status, answer = post(f"{server}/invocations", {"dataframe_split": {"columns": ["label"], "data": []}})
    assert status == 400 and "'label'" in answer["message"], answer


def test_every_json_input_format_of_the_scoring_server_gives_the_same_images(server):
    expected = post(f"{server}/invocations", {"dataframe_split": {"columns": ["label"], "data": [[label_png()]]},
                                              "params": {"edges_from_labels": True}})
    assert expected[0] == 200, expected
    for body in ({"dataframe_records": [{"label": label_png()}]}, {"inputs": {"label": [label_png()]}},
                 {"inputs": [{"label": label_png()}]}, {"instances": [{"label": label_png()}]}):
        status, answer = post(f"{server}/invocations", {**body, "params": {"edges_from_labels": True}})
        assert status == 200, (body.keys(), answer)  # base64 text, not "not a readable PNG"
        assert answer["predictions"] == expected[1]["predictions"], body.keys()


def test_json_nested_deeper_than_the_parser_goes_is_a_400(server):
    depth = 100_000
    body = ('{"dataframe_records": [{"label_ids": ' + "[" * depth + "]" * depth + '}], '
            '"params": {"edges_from_labels": true}}').encode()
    request = urllib.request.Request(f"{server}/invocations", body, {"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=60)
    assert err.value.code == 400
    assert "nests deeper than the server parses" in json.loads(err.value.read())["message"]
    status, _ = post(f"{server}/invocations", {"dataframe_records": [{"label": label_png()}],
                                               "params": {"edges_from_labels": True}})
    assert status == 200  # the server goes on


def test_the_served_model_refuses_a_generator_with_non_finite_weights(tmp_path):
    """A model saved with NaN weights (registration itself refuses them): loading it, in a process or in ``mlflow
    models serve``, stops with the line naming the file and the count."""
    import mlflow
    import torch
    from eval_fixtures import tiny_config, write_prepared

    from components.register import pyfunc_model_arguments
    from components.settings import RegisterConfig
    from dagan.data.manifest import read_manifest
    from dagan.generator import build_generator
    from dagan.inference import LabelLayout, export_generator

    config = tiny_config(tmp_path)
    layout = LabelLayout.from_manifest(read_manifest(write_prepared(tmp_path / "prepared")))
    generator = build_generator(config, layout.semantic_nc, layout.num_label_channels)
    with torch.no_grad():
        next(generator.parameters()).view(-1)[:3] = float("nan")
    exported = export_generator(tmp_path / "generator.pt", generator, config, layout)
    mlflow.pyfunc.save_model(str(tmp_path / "model"), **pyfunc_model_arguments(exported, RegisterConfig()))
    message = "generator.pt: the generator has 3 NaN/Inf values in 1 tensor(s)"
    with pytest.raises(Exception, match=re.escape(message)):
        mlflow.pyfunc.load_model(str(tmp_path / "model"))
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run([str(mlflow_cli), "models", "serve", "-m", str(tmp_path / "model"), "--env-manager",
                             "local", "-h", "127.0.0.1", "-p", str(free_port()), "--workers", "1"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and message in result.stdout + result.stderr, (result.stdout + result.stderr)[-3000:]
