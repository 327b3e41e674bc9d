"""`python -m dagan generate` with a CA2SIS model: class-mean styles, styles from photos, per-class style edits."""

import numpy as np
import pytest
import torch
from eval_fixtures import NUM_CLASSES, png, scene, tiny_config, write_checkpoint, write_prepared
from PIL import Image

from dagan.__main__ import main as dagan_main
from dagan.config import config_from_dict
from dagan.generator import build_generator
from dagan.inference import LabelLayout, export_generator
from dagan.labels import semantic_input

SIZE = 64
LAYOUT = LabelLayout(NUM_CLASSES, False, True, [f"class{i}" for i in range(NUM_CLASSES)],
                     [[40, 60, 200], [200, 60, 40], [60, 200, 60], [220, 220, 40]])


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Three scenes (label PNG, photo PNG) in labels/ and photos/."""
    root = tmp_path_factory.mktemp("scenes")
    rng = np.random.default_rng(1)
    for folder in ("labels", "photos"):
        (root / folder).mkdir()
    for index in range(3):
        label, _, photo = scene(rng, SIZE)
        (root / "labels" / f"scene-{index}.png").write_bytes(png(label))
        Image.fromarray(photo).save(root / "photos" / f"scene-{index}.jpg", quality=95)
    return root


@pytest.fixture(scope="module")
def model(scenes, tmp_path_factory):
    """An exported tiny CA2SIS generator whose class means were tracked on the scenes' photos."""
    config = config_from_dict({
        "dataset": {"crop_size": SIZE, "load_size": SIZE},
        "model": {"generator": "ca2sis", "ngf": 8, "ca2sis_style_dim": 8, "ca2sis_mapping_network": False},
    }, "test").resolved()
    torch.manual_seed(0)
    generator = build_generator(config, NUM_CLASSES + 1, NUM_CLASSES).train()
    for layer in generator.attention:  # untrained, the zero-initialised output convs would hide the styles
        torch.nn.init.normal_(layer.proj_out.weight, std=0.05)
    labels = torch.stack([torch.from_numpy(np.array(Image.open(f))).long()
                          for f in sorted((scenes / "labels").iterdir())])
    photos = torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1)
                          for f in sorted((scenes / "photos").iterdir())]).float() / 127.5 - 1
    with torch.no_grad():
        generator(semantic_input(labels, NUM_CLASSES, labels), style_image=photos)
    return export_generator(tmp_path_factory.mktemp("model") / "generator.pt", generator, config, LAYOUT)


def generate(model, scenes, out, *flags) -> int:
    return dagan_main(["generate", "--model", str(model), "--labels", str(scenes / "labels"), "--out", str(out),
                       "--edges-from-labels", *flags])


def reference(scenes, index) -> list[str]:
    return ["--style-image", str(scenes / "photos" / f"scene-{index}.jpg"),
            "--style-label", str(scenes / "labels" / f"scene-{index}.png")]


def read(folder, index=0) -> np.ndarray:
    return np.asarray(Image.open(folder / f"scene-{index}.png")).astype(int)


def test_class_means_photos_and_style_edits(tmp_path, model, scenes):
    assert generate(model, scenes, tmp_path / "means") == 0
    assert generate(model, scenes, tmp_path / "photos", "--photos", str(scenes / "photos")) == 0
    assert len(list((tmp_path / "photos").glob("*.png"))) == 3
    assert not np.array_equal(read(tmp_path / "means"), read(tmp_path / "photos"))

    # every class of scene 0 from scene 0's own photo: the same as its reconstruction
    own = reference(scenes, 0)
    assert generate(model, scenes, tmp_path / "own", "--photos", str(scenes / "photos"), *own) == 0
    assert np.array_equal(read(tmp_path / "own"), read(tmp_path / "photos"))

    # one class's style from scene 1: scene 0 changes, and differs from a transfer of every class
    other = reference(scenes, 1)
    assert generate(model, scenes, tmp_path / "local", "--photos", str(scenes / "photos"), *other,
                    "--style-classes", "class2") == 0
    assert generate(model, scenes, tmp_path / "global", "--photos", str(scenes / "photos"), *other) == 0
    local, global_, reconstruction = read(tmp_path / "local"), read(tmp_path / "global"), read(tmp_path / "photos")
    assert not np.array_equal(local, reconstruction) and not np.array_equal(local, global_)


def test_style_errors_name_the_fix(tmp_path, model, scenes, capsys):
    blank = tmp_path / "blank.png"
    blank.write_bytes(png(np.zeros((SIZE, SIZE), np.uint8)))
    reference = ["--style-image", str(scenes / "photos" / "scene-1.jpg"), "--style-label", str(blank)]
    assert generate(model, scenes, tmp_path / "out", *reference, "--style-classes", "2") == 2
    assert "the reference has no pixels of class2" in capsys.readouterr().err
    assert generate(model, scenes, tmp_path / "out", *reference, "--style-classes", "sky") == 2
    assert "'sky' is neither a class id 0..3 nor a class name" in capsys.readouterr().err
    assert generate(model, scenes, tmp_path / "out", "--style-image", str(scenes / "photos" / "scene-1.jpg")) == 2
    assert "--style-image and --style-label go together" in capsys.readouterr().err
    assert generate(model, scenes, tmp_path / "out", "--style", str(scenes / "photos" / "scene-1.jpg")) == 2
    assert "takes its styles per class from photos instead: --photos DIR or --style-image" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_dagan_model_refuses_photos(tmp_path, scenes, capsys):
    config = tiny_config(tmp_path, dataset={"crop_size": SIZE, "load_size": SIZE})
    checkpoint = write_checkpoint(config, tmp_path / "final.pt")
    write_prepared(tmp_path / "prepared", {"train": 2}, size=SIZE)
    assert generate(checkpoint, scenes, tmp_path / "out", "--photos", str(scenes / "photos")) == 2
    assert "this model has no style codes (model.generator=dagan)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
