"""The studio without a browser: the palette (colours <-> label ids), the checks of every upload, instance maps
of painted layouts, the validation layouts, the command line (ports, datasets, models:/ URIs).

The page itself, in a real browser: tests/test_studio_page.py.
"""

from __future__ import annotations

import io
import socket
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from eval_fixtures import COLORS, SIZE, png, registered_model, tiny_config, write_checkpoint, write_prepared
from PIL import Image

from components.studio.cli import main as studio_main
from components.studio.cli import parse_args
from components.studio.engine import Studio
from components.studio.layouts import Layout, ValidationLayouts
from components.studio.palette import Palette
from dagan.data.classes import class_table
from dagan.inference import InputError, LabelLayout, export_generator, load_synthesizer


def layout(names: list[str], colors: list[list[int]], dont_care: bool = False) -> LabelLayout:
    return LabelLayout(len(names), dont_care, True, names, colors)


def test_every_label_id_gets_a_colour_of_its_own():
    names, colors = class_table("cityscapes")
    palette = Palette.from_layout(layout(names, colors))
    assert len(set(palette.colors)) == len(palette) == 35
    assert palette.colors[0] == (0, 0, 0) and palette.colors[7] == (128, 64, 128)  # unlabeled, road: theirs
    assert all(palette.colors[index] != (0, 0, 0) for index in (1, 2, 3, 4))  # black in the dataset's table
    assert palette.colors[34] != palette.colors[26]  # license plate is car-coloured in the dataset's table
    names, colors = class_table("ade20k")
    palette = Palette.from_layout(layout(names, colors, dont_care=True))
    assert len(palette) == 151 and palette.names[150] == "don't care" and len(set(palette.colors)) == 151


def test_exact_colours_read_back_to_their_ids():
    palette = Palette.from_layout(layout([f"c{i}" for i in range(4)], COLORS.tolist()))
    label = np.random.default_rng(0).integers(0, 4, (16, 24))
    assert (palette.read(palette.paint(label), "canvas") == label).all()


def test_antialiased_brush_edges_take_a_neighbours_class_not_the_class_of_a_colour_in_between():
    # c2 is the colour halfway between c0 and c1: nearest-colour matching would paint the edge c2
    palette = Palette.from_layout(layout(["c0", "c1", "c2"], [[0, 0, 0], [200, 200, 200], [100, 100, 100]]))
    picture = palette.paint(np.repeat([[0] * 6 + [1] * 6], 8, axis=0))
    picture[:, 5:7] = (99, 101, 100)  # a 2-pixel antialiased edge
    label = palette.read(picture, "canvas")
    assert (label[:, :6] == 0).all() and (label[:, 6:] == 1).all()


def test_unknown_colours_are_refused_by_colour_count_and_place():
    palette = Palette.from_layout(layout([f"c{i}" for i in range(4)], COLORS.tolist()))
    picture = palette.paint(np.zeros((16, 16), int))
    picture[4:10, 8:14] = (7, 7, 7)  # wider than the edge band
    with pytest.raises(InputError, match=r"the canvas: 36 pixels have colours of no class, e\.g\. rgb\(7, 7, 7\) x36, "
                                         r"the first at x=8, y=4 \(brush edges up to 2 px"):
        palette.read(picture, "the canvas")
    picture[4:10, 8:14] = COLORS[1]
    picture[0, 0] = (7, 7, 7)
    assert palette.read(picture, "the canvas")[0, 0] == 0  # one off pixel is an edge: repaired
    with pytest.raises(InputError, match="1 pixels have colours of no class.*every pixel must have exactly"):
        palette.read(picture, "upload", edge_band=0)  # uploads: exact only
    alpha = np.full((16, 16), 255, np.uint8)
    alpha[8:, :] = 0
    with pytest.raises(InputError, match="128 pixels are transparent .*fill the canvas"):
        palette.read(palette.paint(np.zeros((16, 16), int)), "the canvas", alpha=alpha)


@pytest.fixture(scope="module")
def studio(tmp_path_factory) -> Studio:
    root = tmp_path_factory.mktemp("engine")
    config = tiny_config(root)
    write_prepared(root / "prepared", {"train": 4, "val": 3})
    synthesizer = load_synthesizer(write_checkpoint(config, root / "final.pt"), manifest_dir=root / "prepared")
    studio = Studio(synthesizer, "final.pt", max_pixels=64 * 64)
    studio.layouts = ValidationLayouts(root / "prepared", "val", synthesizer.layout, studio.size)
    return studio


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels and whose pixel data is 4 bytes of nothing."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", b"\0\0\0\0"))


def encoded(array: np.ndarray, format: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=format)
    return buffer.getvalue()


def test_uploads_of_ids_and_of_exact_colours_become_layouts(studio):
    label = np.zeros((SIZE, SIZE), np.uint8)
    label[:, 10:] = 3
    assert (studio.read_upload(png(label), "ids.png").label == label).all()
    assert (studio.read_upload(png(label.astype(np.uint16)), "ids16.png").label == label).all()
    colours = studio.palette.paint(label)
    assert (studio.read_upload(png(colours), "colours.png").label == label).all()
    assert studio.read_upload(png(label), "ids.png").instance is None  # instance edges = class boundaries


@pytest.mark.parametrize(("content", "message"), [
    (lambda: b"GIF89a not really", r"upload x: not a PNG \("),
    (lambda: encoded(np.zeros((SIZE, SIZE, 3), np.uint8), "JPEG"), "upload x: a JPEG file, not a PNG"),
    (lambda: png_header(100_000, 100_000), r"upload x: refused as a decompression bomb \(Image size \(10000000000 "
                                           r"pixels\) exceeds limit .*\); this page takes label maps of at most 4096"),
    (lambda: png_header(4000, 40), "upload x: size 40x4000 is not allowed; height and width must be at most 2048"),
    (lambda: png_header(100, 100), r"upload x: 100x100 = 10000 pixels, more than the limit of 4096 pixels per label "
                                   r"map \(--max-pixels\)"),
    (lambda: png(np.full((SIZE, SIZE), 9, np.uint8)), r"label ids span \[9, 9\] but this model knows ids 0\.\.3"),
    (lambda: png(np.zeros((30, 30), np.uint8)), "size 30x30 is not allowed"),
    (lambda: png(np.full((SIZE, SIZE, 3), 7, np.uint8)),
     r"1024 pixels have colours of no class, e\.g\. rgb\(7, 7, 7\)"),
    (lambda: encoded(np.zeros((SIZE, SIZE, 3), np.float32)[..., 0], "TIFF"), "a TIFF file, not a PNG"),
])
def test_bad_uploads_are_one_line_that_names_the_upload_and_the_fix(studio, content, message):
    # the header-only PNGs have no pixel data: their size is refused before any pixel is decoded
    with pytest.raises(InputError, match=message):
        studio.read_upload(content(), "x")


def test_painted_pixels_take_class_boundaries_as_instance_edges_the_rest_keeps_its_instances(studio):
    base = studio.validation_layout(studio.layouts.ids[0])
    assert base.instance is not None and base.photo is not None and base.label.shape == (SIZE, SIZE)
    painted = base.label.copy()
    painted[:4] = 2
    instance = studio.instance(painted, base)
    changed = painted != base.label
    assert (instance[changed] == 2).all() and (instance[~changed] == base.instance[~changed]).all()
    assert studio.instance(painted, studio.blank(1)) is None


def test_each_photo_is_numbered_and_timed(studio):
    first = studio.generate(studio.blank(1).label, studio.blank(1))
    second = studio.generate(studio.blank(2).label, studio.blank(2))
    assert second.number == first.number + 1 and first.image.shape == (SIZE, SIZE, 3) and first.seconds > 0


def test_a_style_photo_needs_a_vae_model(studio):
    with pytest.raises(InputError, match=r"takes no style photo \(model.style=off\); models trained with "
                                         "model.style=vae do"):
        studio.read_style_photo(png(np.zeros((8, 8, 3), np.uint8)), "me.png")


def test_a_port_in_use_is_one_line_before_the_model_is_loaded(tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert studio_main(["--model", str(tmp_path / "missing.pt"), "--port", str(port)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: --port {port}: 127.0.0.1:{port} is already in use") and "--port" in error
    assert error.count("\n") == 1 and "missing.pt" not in error


def test_a_dataset_with_other_classes_is_refused_by_name(tmp_path, capsys):
    config = tiny_config(tmp_path)
    write_prepared(tmp_path / "prepared", {"train": 2, "val": 2})
    trained = load_synthesizer(write_checkpoint(config, tmp_path / "final.pt"), manifest_dir=tmp_path / "prepared")
    checkpoint = export_generator(tmp_path / "exported.pt", trained.generator, config, trained.layout)  # with classes
    other = tmp_path / "other"
    write_prepared(other, {"train": 2, "val": 2})
    manifest = (other / "manifest.json").read_text().replace('"class3"', '"sky"')
    (other / "manifest.json").write_text(manifest)
    assert studio_main(["--model", str(checkpoint), "--data", str(other), "--port", "0"]) == 2
    assert f"--data {other}: its classes (4: class0, class1, class2, sky) are not the model's (4: class0, class1, " \
           "class2, class3)" in capsys.readouterr().err
    assert studio_main(["--model", str(checkpoint), "--data", str(tmp_path), "--port", "0"]) == 2
    assert "no manifest.json there" in capsys.readouterr().err


def test_help_names_the_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: python -m components.studio ") and "127.0.0.1" in text and "-q, --quiet" in text


def test_a_registered_model_brings_its_classes_and_the_dataset_its_layouts(tmp_path, monkeypatch):
    from components.studio.cli import load_studio

    config, _ = registered_model(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", config.mlflow.tracking_uri)
    studio = load_studio(parse_args(["--model", "models:/dagan-synthetic@champion", "--data",
                                     str(Path(config.dataset.prepared_dir)), "--device", "cpu"]))
    assert studio.palette.names == tuple(f"class{index}" for index in range(4))
    assert studio.palette.colors == tuple(tuple(color) for color in COLORS.tolist())
    assert studio.layouts is not None and studio.layouts.ids[:2] == ["val-000", "val-001"]
    assert studio.size == (SIZE, SIZE) and studio.generated == 0


def test_bf16_channels_last_generation_stays_close_to_float32(studio):
    label = studio.validation_layout(studio.layouts.ids[0]).label
    exact = studio.synthesizer(label, edges_from_labels=True).astype(float)
    try:
        studio.synthesizer.set_precision("bf16", channels_last=True)
        fast = studio.synthesizer(label, edges_from_labels=True).astype(float)
    finally:
        studio.synthesizer.set_precision("off", channels_last=False)
    assert (studio.synthesizer(label, edges_from_labels=True) == exact).all()  # back to exact float32
    assert np.abs(fast - exact).mean() < 3  # of 255 levels: bf16 rounding
    with pytest.raises(ValueError, match="precision 'fp16': choose one of off, bf16"):
        studio.synthesizer.set_precision("fp16")


def test_a_vae_model_takes_a_style_photo_and_refuses_what_is_no_photo(tmp_path):
    config = tiny_config(tmp_path, model={"style": "vae"})
    write_prepared(tmp_path / "prepared", {"train": 2, "val": 2})
    synthesizer = load_synthesizer(write_checkpoint(config, tmp_path / "final.pt"), manifest_dir=tmp_path / "prepared")
    studio = Studio(synthesizer, "vae.pt")
    assert studio.takes_seeds and studio.takes_style_photo and not studio.takes_style_reference
    photo = studio.read_style_photo(encoded(COLORS[np.zeros((48, 40), int)].astype(np.uint8), "JPEG"), "me.jpg")
    assert photo.shape == (48, 40, 3)
    blank = studio.blank(1)
    assert studio.generate(blank.label, blank, seed=3, style_photo=photo).image.shape == (SIZE, SIZE, 3)
    with pytest.raises(InputError, match="style photo notes.txt: not a readable image"):
        studio.read_style_photo(b"just words", "notes.txt")


def test_a_ca2sis_model_takes_chosen_classes_styles_from_a_validation_photo(tmp_path):
    import torch

    from dagan.config import config_from_dict
    from dagan.generator import build_generator

    size = 64
    config = config_from_dict({"dataset": {"crop_size": size, "load_size": size},
                               "model": {"generator": "ca2sis", "ngf": 8, "ca2sis_style_dim": 8,
                                         "ca2sis_mapping_network": False}}, "test").resolved()
    torch.manual_seed(0)
    generator = build_generator(config, 5, 4).eval()
    for layer in generator.attention:  # untrained, the zero-initialised output convs would hide the styles
        torch.nn.init.normal_(layer.proj_out.weight, std=0.05)
    checkpoint = export_generator(tmp_path / "ca2sis.pt", generator, config,
                                  layout([f"class{i}" for i in range(4)], COLORS.tolist()))
    write_prepared(tmp_path / "prepared", {"train": 2, "val": 2}, size=size)
    studio = Studio(load_synthesizer(checkpoint), "ca2sis.pt")
    studio.layouts = ValidationLayouts(tmp_path / "prepared", "val", studio.synthesizer.layout, studio.size)
    assert studio.takes_style_reference and not studio.takes_seeds
    reference = studio.layouts.ids[0]
    present = sorted(int(value) for value in np.unique(studio.validation_layout(reference).label))
    edit = studio.style_edit(reference, [])
    assert edit is not None and list(edit.classes) == present
    assert studio.style_edit("", []) is None  # the class means of training
    canvas = studio.validation_layout(studio.layouts.ids[1])
    means = studio.generate(canvas.label, canvas).image
    styled = studio.generate(canvas.label, canvas, style_edit=studio.style_edit(reference, ["class0"])).image
    assert np.abs(means.astype(float) - styled).mean() > 0.1
    plain = studio.validation_layout(reference)
    studio.layouts.get = lambda name: Layout(name, np.zeros_like(plain.label), None, plain.photo)  # class0 only
    with pytest.raises(InputError, match=f"layout {reference} shows no class2, so it has no style for them"):
        studio.style_edit(reference, ["class0", "class2"])


def test_the_seed_box_takes_whole_numbers_or_nothing():
    from components.studio.handlers import MAX_SEED, parse_seed

    assert parse_seed("") is None and parse_seed("  ") is None and parse_seed(None) is None
    assert parse_seed(" 42 ") == 42 and parse_seed(str(MAX_SEED)) == MAX_SEED
    for bad in ("-1", "1.5", "seven", str(MAX_SEED + 1)):
        with pytest.raises(InputError, match=f"style seed {bad!r}: give a whole number from 0 to {MAX_SEED}"):
            parse_seed(bad)
