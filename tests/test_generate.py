"""`python -m dagan generate` from a local checkpoint, `python -m components.generate` from a models:/ URI (the
library's command refuses model URIs, naming the step's); bad inputs give clear errors."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from eval_fixtures import COLORS, SIZE, png, registered_model, tiny_config, write_checkpoint, write_prepared
from PIL import Image

from dagan.__main__ import main as dagan_main

REPO = Path(__file__).resolve().parents[1]


def write_labels(directory: Path, sizes=(SIZE, SIZE), top_class: int = 2) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for index, size in enumerate(sizes):
        label = np.zeros((size, size), np.uint8)
        label[: size // 2] = top_class
        (directory / f"scene-{index}.png").write_bytes(png(label))
    return directory


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    config = tiny_config(tmp_path)
    write_prepared(tmp_path / "prepared", {"train": 2})
    return write_checkpoint(config, tmp_path / "final.pt")


def test_generate_from_a_local_checkpoint(tmp_path, checkpoint, capsys):
    labels = write_labels(tmp_path / "labels")
    instances = tmp_path / "instances"
    instances.mkdir()
    for file in labels.iterdir():
        (instances / file.name).write_bytes(png(np.arange(SIZE * SIZE, dtype=np.uint16).reshape(SIZE, SIZE) // 100))
    out = tmp_path / "out"
    assert dagan_main(["generate", "--model", str(checkpoint), "--labels", str(labels), "--out", str(out),
                       "--instances", str(instances)]) == 0
    images = sorted(out.glob("*.png"))
    assert [p.name for p in images] == ["scene-0.png", "scene-1.png"]
    assert all(Image.open(p).mode == "RGB" and Image.open(p).size == (SIZE, SIZE) for p in images)
    assert "wrote 2 image(s) and" in capsys.readouterr().out
    page = (out / "index.html").read_text()
    assert page.count("<tr>") == 3 and "<th>label</th><th>generated</th></tr>" in page  # header + 2 rows, no real
    for name in ("scene-0.png", "scene-1.png"):
        assert f'src="{name}"' in page and f'src="html/label/{name}"' in page
        label_view = Image.open(out / "html" / "label" / name)
        assert label_view.mode == "RGB" and label_view.getpixel((0, 0)) == tuple(COLORS[2])  # class 2's colour


def test_generate_limit_and_real_photos_on_the_page(tmp_path, checkpoint):
    labels = write_labels(tmp_path / "labels", sizes=(SIZE, SIZE, SIZE))
    photos = tmp_path / "photos"
    photos.mkdir()
    for index in range(3):
        Image.new("RGB", (SIZE, SIZE), (9, 9, 9)).save(photos / f"scene-{index}.jpg")
    out = tmp_path / "out"
    assert dagan_main(["generate", "--model", str(checkpoint), "--labels", str(labels), "--out", str(out),
                       "--edges-from-labels", "--images", str(photos), "--limit", "2", "-q"]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["scene-0.png", "scene-1.png"]  # like test.py --how_many
    page = (out / "index.html").read_text()
    assert "<th>real</th>" in page and 'src="html/real/scene-1.jpg"' in page and "scene-2" not in page
    assert (out / "html" / "real" / "scene-0.jpg").read_bytes() == (photos / "scene-0.jpg").read_bytes()


def test_generate_refuses_a_missing_real_photo_and_a_bad_limit(tmp_path, checkpoint, capsys):
    labels = write_labels(tmp_path / "labels")
    out = tmp_path / "out"
    base = ["generate", "--model", str(checkpoint), "--labels", str(labels), "--out", str(out), "--edges-from-labels"]
    assert dagan_main([*base, "--images", str(tmp_path)]) == 2
    assert "no real photo scene-0.png/.jpg" in capsys.readouterr().err and not out.exists()
    assert dagan_main([*base, "--limit", "0"]) == 2
    assert "--limit 0: give a positive number" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("sizes", "top_class", "flags", "message"),
    [
        ((SIZE, 30), 2, ["--edges-from-labels"], "size 30x30 is not allowed; height and width must be multiples of 32"),
        ((SIZE,), 7, ["--edges-from-labels"], "label ids span [0, 7] but this model knows ids 0..3"),
        ((SIZE,), 1, [], "trained with instance maps; pass the instance map"),
    ],
)
def test_bad_label_maps_are_refused_before_anything_is_written(tmp_path, checkpoint, capsys, sizes, top_class,
                                                               flags, message):
    labels = write_labels(tmp_path / "labels", sizes, top_class)
    out = tmp_path / "out"
    assert dagan_main(["generate", "--model", str(checkpoint), "--labels", str(labels), "--out", str(out),
                       *flags]) == 2
    error = capsys.readouterr().err
    assert message in error and "labels/scene-" in error
    assert not out.exists() or not list(out.iterdir())


def test_generate_never_writes_over_its_input_and_replaces_outputs_only_with_overwrite(tmp_path, checkpoint,
                                                                                      capsys):
    labels = write_labels(tmp_path / "labels")
    before = {p.name: p.read_bytes() for p in labels.iterdir()}
    for flags in ([], ["--overwrite"]):
        assert dagan_main(["generate", "--model", str(checkpoint), "--labels", str(labels), "--out", str(labels),
                           "--edges-from-labels", *flags]) == 2
        assert "would write into the input folder" in capsys.readouterr().err
        assert {p.name: p.read_bytes() for p in labels.iterdir()} == before  # the label maps are untouched
    page_labels = write_labels(tmp_path / "page" / "html" / "label")  # where the page puts its coloured maps
    before = {p.name: p.read_bytes() for p in page_labels.iterdir()}
    assert dagan_main(["generate", "--model", str(checkpoint), "--labels", str(page_labels), "--out",
                       str(tmp_path / "page"), "--edges-from-labels", "--overwrite"]) == 2
    assert "would write into the input folder" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in page_labels.iterdir()} == before

    out = tmp_path / "out"
    out.mkdir()
    (out / "scene-1.png").write_bytes(b"an earlier result")
    assert dagan_main(["generate", "--model", str(checkpoint), "--labels", str(labels), "--out", str(out),
                       "--edges-from-labels"]) == 2
    error = capsys.readouterr().err
    assert "already holds 1 of the output files" in error and "--overwrite" in error
    assert (out / "scene-1.png").read_bytes() == b"an earlier result" and not (out / "scene-0.png").exists()
    assert dagan_main(["generate", "--model", str(checkpoint), "--labels", str(labels), "--out", str(out),
                       "--edges-from-labels", "--overwrite"]) == 0
    assert Image.open(out / "scene-1.png").mode == "RGB"

    pages = tmp_path / "pages"
    pages.mkdir()
    (pages / "index.html").write_text("the user's own page")  # no image clashes, but the page would be replaced
    assert dagan_main(["generate", "--model", str(checkpoint), "--labels", str(labels), "--out", str(pages),
                       "--edges-from-labels"]) == 2
    assert "already holds 1 of the output files" in capsys.readouterr().err
    assert (pages / "index.html").read_text() == "the user's own page" and not (pages / "scene-0.png").exists()


def test_a_file_that_is_not_a_checkpoint_is_named_and_never_loaded_unsafely(tmp_path, capsys):
    import argparse

    import torch

    labels = write_labels(tmp_path / "labels")
    pickled = tmp_path / "pickled.pt"
    torch.save({"format_version": 1, "options": argparse.Namespace(x=1)}, pickled)  # needs a full unpickler
    truncated = tmp_path / "truncated.pt"
    torch.save({"format_version": 1, "weights": torch.zeros(1000)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    for model, message in ((labels / "scene-0.png", "is not a DAGAN checkpoint"),
                           (pickled, "is not a DAGAN checkpoint: it holds objects that a safe (weights-only) load "
                                     "refuses"),
                           (truncated, "is truncated or not a checkpoint")):
        assert dagan_main(["generate", "--model", str(model), "--labels", str(labels), "--out",
                           str(tmp_path / "out")]) == 2
        error = capsys.readouterr().err
        assert f"{model} {message}" in error and "weights_only=False" not in error, error
        assert len(error.strip().splitlines()) == 1


def test_a_decompression_bomb_label_map_is_refused_before_decoding(tmp_path, checkpoint, capsys):
    from test_data_importers import bomb_png

    labels = write_labels(tmp_path / "labels")
    for name, size in (("huge.png", 100_000), ("large.png", 9000)):
        (labels / name).write_bytes(bomb_png((labels / "scene-0.png").read_bytes(), size, size))
        assert dagan_main(["generate", "--model", str(checkpoint), "--labels", str(labels), "--out",
                           str(tmp_path / "out"), "--edges-from-labels"]) == 2
        error = capsys.readouterr().err
        assert name in error and ("decompression bomb" in error or f"size {size}x{size} is not allowed" in error)
        (labels / name).unlink()


def test_training_checkpoint_without_its_dataset_names_the_fix(tmp_path, capsys):
    checkpoint = write_checkpoint(tiny_config(tmp_path / "elsewhere"), tmp_path / "final.pt")
    labels = write_labels(tmp_path / "labels")
    assert dagan_main(["generate", "--model", str(checkpoint), "--labels", str(labels), "--out", str(tmp_path)]) == 2
    assert "pass --manifest DIR" in capsys.readouterr().err


def test_generate_from_a_models_uri(tmp_path):
    config, _ = registered_model(tmp_path)
    labels = write_labels(tmp_path / "labels")
    out = tmp_path / "out"
    env = {**os.environ, "MLFLOW_TRACKING_URI": config.mlflow.tracking_uri}
    result = subprocess.run(
        [sys.executable, "-m", "components.generate", "--model", "models:/dagan-synthetic@champion", "--labels",
         str(labels), "--out", str(out), "--edges-from-labels"], capture_output=True, text=True, env=env, cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in out.glob("*.png")) == ["scene-0.png", "scene-1.png"]



def test_unknown_registered_model_is_a_clear_error(tmp_path, monkeypatch, capsys):
    from components.generate import main as step_main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    labels = write_labels(tmp_path / "labels")
    assert step_main(["--model", "models:/dagan-nothing@champion", "--labels", str(labels),
                      "--out", str(tmp_path / "out")]) == 2
    assert "cannot load models:/dagan-nothing@champion" in capsys.readouterr().err


@pytest.mark.parametrize("uri", ["models:/dagan-synthetic@champion", "runs:/0123abcd/dagan-generator"])
def test_library_generate_refuses_a_model_uri_naming_the_step(uri, tmp_path, capsys):
    labels = write_labels(tmp_path / "labels")
    assert dagan_main(["generate", "--model", uri, "--labels", str(labels), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"python -m components.generate --model {uri}" in error
    assert not (tmp_path / "out").exists()


def test_the_step_takes_every_argument_of_the_library_command(capsys):
    from components.generate import main as step_main

    def help_text(main, argv) -> str:
        with pytest.raises(SystemExit):
            main(argv)
        return capsys.readouterr().out

    flags = re.compile(r"(?<![\w-])--[a-z][a-z-]+")
    library = set(flags.findall(help_text(dagan_main, ["generate", "--help"])))
    assert set(flags.findall(help_text(step_main, ["--help"]))) >= library >= {"--model", "--labels", "--style-image"}


def test_importing_the_library_cli_does_not_import_mlflow():
    code = "import dagan.__main__, dagan.inference, sys; print('mlflow' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stdout.strip() == "False"
