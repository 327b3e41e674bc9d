"""Config loading: types, unknown keys, overrides, preset resolution."""

import dataclasses
import re
import typing
from pathlib import Path

import pytest
import yaml

from components.settings import StepConfig, load_step_config, redact_uri
from dagan.config import Config, ConfigError, config_from_dict, load_config, save_config
from dagan.overrides import OverrideError, merge_overrides, parse_override

REPO = Path(__file__).resolve().parents[1]
LIBRARY_SECTIONS = {"dataset", "synthetic", "model", "loss", "train", "judge", "evaluate"}


def test_repo_params_load_and_resolve_from_the_synthetic_preset():
    config = load_step_config(REPO / "params.yaml")
    assert config.dataset.name == "synthetic"
    assert config.model.ngf == 16  # the synthetic preset's value replaces null
    assert config.dataset.crop_size == 64
    assert config.train.batch_size == 8
    assert config.model.attention() == (True, "II")


def test_overrides_are_typed_like_dvc_exp_run_set(tmp_path):
    config = load_step_config(REPO / "params.yaml", ["train.lr_g=2e-4", "model.variant=B1", "dataset.name=cityscapes"])
    assert config.train.lr_g == pytest.approx(2e-4)
    assert isinstance(config.train.lr_g, float)
    assert config.model.attention() == (False, "off")
    assert config.model.num_upsampling_layers == "more"  # the cityscapes preset
    assert (config.dataset.crop_size, config.dataset.aspect_ratio) == (512, 2.0)


def test_dict_overrides_as_used_by_kubeflow_and_ray_tune():
    config = load_step_config(REPO / "params.yaml", {"loss.lambda_feat": 3, "model.ngf": 8})
    assert config.loss.lambda_feat == 3.0 and isinstance(config.loss.lambda_feat, float)
    assert config.model.ngf == 8


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lr_gg=1", "unknown key(s) lr_gg"),
        ("trian.lr_g=1", "unknown key(s) trian"),
        ("train.batch_size=two", "'two' is a str, expected int"),
        ("train.batch_size=true", "True is a bool, expected int"),
        ("model.variant=B7", "'B7' is not one of"),
        ("dataset.flip=3", "3 is a int, expected bool"),
        ("mlflow.experiments=x", "mlflow: unknown key(s) experiments; known keys: experiment, tracking_uri"),
        ("register.metric=3", "3 is a int, expected str"),
        ("tune.metric=fid", "'fid' is not one of: judge_miou, fd_judge"),
    ],
)
def test_bad_values_name_the_key_and_the_file(override, message):
    with pytest.raises(ConfigError) as err:
        load_step_config(REPO / "params.yaml", [override])
    assert message in str(err.value)
    assert str(err.value).startswith(f"{REPO / 'params.yaml'}: ") and "\n" not in str(err.value)


def test_the_library_config_has_the_library_sections_and_the_steps_add_theirs():
    assert {f.name for f in dataclasses.fields(Config)} == LIBRARY_SECTIONS
    assert {f.name for f in dataclasses.fields(StepConfig)} == LIBRARY_SECTIONS | {"mlflow", "register", "tune"}
    with pytest.raises(ConfigError, match=r"params.yaml: unknown key\(s\) mlflow, register, tune; known keys: "
                                          "dataset, evaluate, judge, loss, model, synthetic, train$"):
        load_config(REPO / "params.yaml")  # the library knows nothing of tracking, registry or sweeps
    config = load_step_config(REPO / "params.yaml", ["mlflow.experiment=other", "tune.num_samples=3"])
    assert (config.mlflow.experiment, config.tune.num_samples) == ("other", 3)
    assert isinstance(config, StepConfig) and config.model.ngf == 16  # resolved as the library's Config
    assert set(config.to_dict()) == LIBRARY_SECTIONS  # what checkpoints and config.yaml store


def test_override_syntax_errors_say_how_to_write_it():
    with pytest.raises(OverrideError, match=r"section\.key=value"):
        parse_override("lr_g=1")


FILE = {"train": {"lr_g": 1.0e-4, "max_steps": 0},
        "tune": {"search_space": {"model": {"variant": {"type": "choice", "values": ["B1", "B6"]}}}}}


@pytest.mark.parametrize(("override", "path", "expected"), [
    ("train.lr_g=2e-4", ("train", "lr_g"), 2e-4),
    ("train.seed=3", ("train", "seed"), 3),  # a schema key missing from the file: set, as params.yaml would
    ("+train.seed=3", ("train", "seed"), 3),
    ("++train.lr_g=0.5", ("train", "lr_g"), 0.5),
    ("tune.search_space.model.variant.values.0=B2", ("tune", "search_space", "model", "variant", "values"),
     ["B2", "B6"]),
    ("tune.search_space.model.variant.values=[B3, B4]", ("tune", "search_space", "model", "variant", "values"),
     ["B3", "B4"]),
    ("train.out_dir='a, b'", ("train", "out_dir"), "a, b"),
    ("train.out_dir=", ("train", "out_dir"), ""),
    ("evaluate.checkpoint=null", ("evaluate", "checkpoint"), None),
])
def test_the_dvc_exp_run_grammar_sets_adds_and_indexes(override, path, expected):
    merged = merge_overrides(FILE, [override])
    node = merged
    for part in path:
        node = node[part]
    assert node == expected
    assert FILE["train"]["lr_g"] == 1.0e-4 and FILE["tune"]["search_space"]["model"]["variant"]["values"] == \
        ["B1", "B6"], "the input is never modified"


def test_params_yaml_holds_exactly_the_defaults():
    """One meaning of "default": every value in params.yaml is its field's default in the dataclasses, so
    removing a key (``-S ~train.amp``) or leaving it out of a params file changes nothing."""
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    defaults = dataclasses.asdict(StepConfig())
    differing = {f"{section}.{key}": (value, defaults[section][key])
                 for section, values in data.items() for key, value in values.items()
                 if value != defaults[section][key]}
    assert differing == {}, "params.yaml value, dataclass default"
    assert data.keys() == defaults.keys()
    assert {section: set(values) for section, values in data.items()} == \
        {section: set(values) for section, values in defaults.items()}, "params.yaml lists every key"


def test_tilde_removes_a_key_so_the_default_applies():
    assert "max_steps" not in merge_overrides(FILE, ["~train.max_steps"])["train"]
    assert "max_steps" not in merge_overrides(FILE, ["~train.max_steps=0"])["train"]
    config = load_step_config(REPO / "params.yaml", ["~train.sample_every", "~model.ngf"])
    assert config.train.sample_every == config_from_dict({}).train.sample_every
    assert load_step_config(REPO / "params.yaml", ["~train.amp"]).train.amp == "bf16"  # not a silent switch to fp32
    assert config.model.ngf == 16  # null in the file; removed: the default null, resolved from the preset


@pytest.mark.parametrize(("override", "message"), [
    ("+train.lr_g=1", "train.lr_g is already in the params file; use train.lr_g=... or ++train.lr_g=..."),
    ("~train.seed", "train.seed is not in the params file, nothing to remove"),
    ("~train.max_steps=5", "train.max_steps is 0, not 5"),
    ("model.variant=B1,B6", "a sweep over several values runs one experiment per value (dvc exp run --queue"),
    ("loss.lambda_feat=choice(1, 10)", "Hydra functions such as choice(...) are not supported"),
    ("train.out_dir=${paths.out}", "interpolations"),
    ("params.yaml:train.lr_g=1", "the 'file:' prefix picks a params file in dvc exp run"),
    ("tune.search_space.model.variant.values[0]=B1", "write list items as key.0=value"),
    ("tune.search_space.model.variant.values.5=B1", "values.5 is not an item of a list of 2"),
    ("+tune.search_space.model.variant.values.0=B1", "list items can be replaced"),
    ("model/generator=spade", "config groups and packages"),
    ("train.lr_g.x=1", "train.lr_g.x is inside a value that is not a section"),
    ("train.lr_g", "must look like section.key=value"),
])
def test_the_rest_of_hydras_grammar_is_refused_with_what_to_do_instead(override, message):
    with pytest.raises(OverrideError) as err:
        merge_overrides(FILE, [override])
    assert message in str(err.value) and override in str(err.value)


def test_a_bad_override_through_a_component_is_one_line_naming_the_file(tmp_path, capsys):
    from components.train import main

    assert main(["--params", str(REPO / "params.yaml"), "-S", "+train.lr_g=1"]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {REPO / 'params.yaml'}: override '+train.lr_g=1'") and error.count("\n") == 1


def test_variant_and_custom_knobs_must_agree():
    with pytest.raises(ConfigError, match="variant=custom"):
        config_from_dict({"model": {"variant": "B6", "use_sam": False}}).resolved()
    with pytest.raises(ConfigError, match="needs model.use_sam"):
        config_from_dict({"model": {"variant": "custom", "use_sam": True}}).resolved()
    custom = config_from_dict({"model": {"variant": "custom", "use_sam": False, "cam": "I"}}).resolved()
    assert custom.model.attention() == (False, "I")


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="known presets: ade20k, celebamask_hq"):
        config_from_dict({"dataset": {"name": "imagenet"}}).resolved()


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_step_config(tmp_path / "nope.yaml")


def test_resolved_config_round_trips_through_save(tmp_path):
    config = load_step_config(REPO / "params.yaml", ["model.variant=B3"])
    save_config(config, tmp_path / "resolved.yaml")
    reloaded = load_config(tmp_path / "resolved.yaml")  # the library's sections only: the library reads it
    assert reloaded.to_dict() == config.to_dict() and type(reloaded) is Config
    assert [path.name for path in tmp_path.iterdir()] == ["resolved.yaml"]  # no temporary file left
    assert yaml.safe_load((tmp_path / "resolved.yaml").read_text())["model"]["ngf"] == 16


def test_config_is_frozen():
    config = load_step_config(REPO / "params.yaml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.train.lr_g = 1.0  # type: ignore[misc]


def test_bare_off_is_the_string_choice_not_a_boolean():
    config = load_step_config(REPO / "params.yaml", ["train.amp=off", "evaluate.fid=off"])
    assert (config.train.amp, config.evaluate.fid) == ("off", "off")
    with pytest.raises(ConfigError, match="not one of"):
        load_step_config(REPO / "params.yaml", ["train.amp=true"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.batch_size=0", "train.batch_size=0 must be >= 1 (the global batch"),
        ("train.batch_size=-4", "train.batch_size=-4 must be >= 1"),
        ("train.checkpoint_every=0", "train.checkpoint_every=0 must be >= 1 (steps)"),
        ("train.log_every=0", "train.log_every=0 must be >= 1 (steps)"),
        ("train.max_steps=-1", "train.max_steps=-1 must be >= 0 (0: the whole schedule)"),
        ("train.ema_rampup=-0.1", "train.ema_rampup=-0.1 must be >= 0"),
        ("train.ema_bn_batches=-1", "train.ema_bn_batches=-1 must be >= 0"),
        ("train.lr_g=0", "train.lr_g=0.0 must be > 0"),
        ("train.beta2=1", "train.beta2=1.0 must be in [0, 1)"),
        ("dataset.crop_size=0", "dataset.crop_size=0 must be >= 1"),
        ("dataset.aspect_ratio=0", "dataset.aspect_ratio=0.0 must be > 0"),
        ("dataset.max_classes=300", "dataset.max_classes=300 must be <= 256"),
        ("model.ngf=0", "model.ngf=0 must be >= 1"),
        ("train.epochs=0", "train.epochs + train.epochs_decay=0 must be >= 1"),
        ("register.serve_max_image_pixels=0", "register.serve_max_image_pixels=0 must be >= 1"),
        # a negative loss weight would reverse that loss
        *[(f"loss.{name}=-1", f"loss.{name}=-1.0 must be >= 0 (0 switches that loss off)")
          for name in ("lambda_gan", "lambda_feat", "lambda_vgg", "lambda_att", "lambda_kld")],
        ("model.init_gain=0", "model.init_gain=0.0 must be > 0"),
        ("model.ca2sis_style_dim=0", "model.ca2sis_style_dim=0 must be >= 1"),
        *[(f"{key}={value}", f"{key}={value} must be an integer in [0, 4294967295]")
          for key in ("train.seed", "judge.seed", "synthetic.seed") for value in (-1, 2**32)],
        ("dataset.crop_size=1", "image sides must be multiples of 32 (2**5 for model.num_upsampling_layers=normal), "
                                "got 1x1 (dataset.crop_size=1"),
        ("register.gate_miou_ratio=-0.5", "register.gate_miou_ratio=-0.5 must be >= 0"),
        ("register.model_name=team/model", "register.model_name='team/model': a registered model name is not empty"),
        ("register.metric=", "register.metric is empty"),
        ("mlflow.experiment=", "mlflow.experiment is empty"),
        ("mlflow.tracking_uri=' '", "mlflow.tracking_uri is empty"),
    ],
)
def test_out_of_range_values_are_one_clear_line_for_every_entry_point(override, message):
    overrides = [override, "train.epochs_decay=0"] if override.startswith("train.epochs=") else [override]
    with pytest.raises(ConfigError) as err:
        load_step_config(REPO / "params.yaml", overrides)
    assert message in str(err.value) and str(err.value).startswith(str(REPO / "params.yaml"))
    assert "\n" not in str(err.value)


def _numeric_fields(section: str) -> list[str]:
    schema = typing.get_type_hints(StepConfig)[section]
    return [name for name, hint in typing.get_type_hints(schema).items() if re.search(r"\b(int|float)\b", str(hint))]


@pytest.mark.parametrize("key", [f"{section}.{name}" for section in ("loss", "model", "train", "register", "judge",
                                                                     "dataset", "synthetic", "evaluate", "tune")
                                 for name in _numeric_fields(section)])
@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_no_number_of_the_config_takes_nan_or_an_infinity(key, value):
    with pytest.raises(ConfigError) as err:
        load_step_config(REPO / "params.yaml", [f"{key}={value}"])
    message = str(err.value)
    assert key in message and "\n" not in message, message
    assert "not a finite number" in message or "expected int" in message, message


def test_the_numeric_keys_cover_the_loss_weights_and_the_models_numbers():
    assert {"lambda_gan", "lambda_feat", "lambda_vgg", "lambda_att", "lambda_kld"} <= set(_numeric_fields("loss"))
    assert {"init_gain", "ngf", "z_dim", "sam_kernel_size"} <= set(_numeric_fields("model"))
    assert {"lr_g", "lr_d", "beta1", "seed", "ema_decay", "max_steps"} <= set(_numeric_fields("train"))


@pytest.mark.parametrize(("literal", "value", "form"), [
    ("1:30", 90, "base 60"), ("0x10", 16, "hexadecimal"), ("010", 8, "octal"), ("0b11", 3, "binary"),
    ("1_000", 1000, "digits grouped with '_'"), ("1:30.5", 90.5, "base 60"),
])
def test_yaml_1_1_numbers_that_surprise_are_refused_naming_the_key_and_the_literal(tmp_path, literal, value, form):
    expected = f"the YAML 1.1 literal '{literal}' reads as {value!r} ({form}); write {value!r} if that number is meant"
    params = tmp_path / "params.yaml"
    params.write_text(f"train:\n  max_steps: {literal}\n")
    with pytest.raises(ConfigError) as err:
        load_step_config(params)
    assert str(err.value).startswith(f"{params}: train.max_steps: {expected}")
    with pytest.raises(ConfigError) as err:
        load_step_config(REPO / "params.yaml", [f"train.lr_g={literal}"])
    assert f"override 'train.lr_g={literal}': {expected}" in str(err.value)
    params.write_text("train:\n  max_steps: 90\n  lr_g: 2.0e-4\n  beta2: 0.9\n")  # plain numbers stay numbers
    assert load_step_config(params).train.max_steps == 90
    assert load_step_config(params, ["train.max_steps=+30", "train.lr_g=1.5e-4"]).train.max_steps == 30


def test_a_params_file_that_is_not_a_mapping_is_a_clear_error(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("just a string\n")
    for overrides in ([], ["train.lr_g=1e-3"]):
        with pytest.raises(ConfigError, match=r"params.yaml: the file holds a str \('just a string'\), not a mapping"):
            load_step_config(params, overrides)


def test_credentials_never_leave_the_config_object(tmp_path):
    config = load_step_config(REPO / "params.yaml", ["mlflow.tracking_uri=http://alice:pw@mlflow.example.com:5000"])
    assert config.mlflow.tracking_uri == "http://alice:pw@mlflow.example.com:5000"  # what the components use
    save_config(config, tmp_path / "config.yaml")
    assert "mlflow" not in config.to_dict() and "alice" not in (tmp_path / "config.yaml").read_text()
    assert redact_uri(config.mlflow.tracking_uri) == "http://mlflow.example.com:5000"  # tags, files, log lines


def test_generator_and_discriminator_choices_and_attention_knobs():
    config = load_step_config(REPO / "params.yaml", ["model.generator=ccfpse", "model.discriminator=fpse"])
    assert (config.model.generator, config.model.discriminator) == ("ccfpse", "fpse")
    assert config.model.attention() == (False, "off")  # CC-FPSE has no SAM / CAM
    with pytest.raises(ConfigError, match="model.generator=ccfpse has none"):
        load_step_config(REPO / "params.yaml", ["model.generator=ccfpse", "model.variant=custom", "model.use_sam=true"])
    with pytest.raises(ConfigError, match="'patch' is not one of: multiscale, fpse"):
        load_step_config(REPO / "params.yaml", ["model.discriminator=patch"])
    # the FPSE discriminator's size rule is checked with the config, so a sweep or a run stops before it starts
    with pytest.raises(ConfigError, match="model.discriminator=fpse needs image sides that are multiples of 32 and "
                                          "at least 64, got 48x48"):
        load_step_config(REPO / "params.yaml", ["model.discriminator=fpse", "dataset.crop_size=48"])
    with pytest.raises(ConfigError, match="at least 64, got 32x64"):
        load_step_config(REPO / "params.yaml", ["model.discriminator=fpse", "dataset.aspect_ratio=2.0"])


def test_from_official_maps_every_official_option_to_keys_that_exist():
    """docs/FROM_OFFICIAL.md: each official option has a row, and every config key it names is a real one."""
    text = (REPO / "docs" / "FROM_OFFICIAL.md").read_text()
    options = ("--dataset_mode", "--label_dir", "--image_dir", "--label_nc", "--no_instance",
               "--contain_dontcare_label", "--niter", "--niter_decay", "--batchSize", "--gpu_ids", "--name",
               "--which_epoch", "--continue_train", "--how_many", "--results_dir", "--use_vae", "--z_dim",
               "--no_vgg_loss", "--lambda_feat", "--lambda_kld", "--netG", "--netD")
    assert not [option for option in options if f"| `{option}" not in text and f", `{option}" not in text]
    assert "planned" not in text
    config = StepConfig()
    fields = {section.name: {f.name for f in dataclasses.fields(getattr(config, section.name))}
              for section in dataclasses.fields(config)}
    named = re.findall(r"`(?:-S )?(" + "|".join(fields) + r")\.([a-z_0-9]+)", text)
    unknown = [f"{section}.{key}" for section, key in named if key not in fields[section] and key != "py"]  # train.py
    assert named and not unknown, unknown
