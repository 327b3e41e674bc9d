"""Registry gate: candidate always, champion only when the gate passes and it beats the champion; never demotes."""

import json

import mlflow
import pytest
from eval_fixtures import GOOD_METRICS, registered_model, write_metrics
from mlflow.tracking import MlflowClient

from components.register import decide, version_description
from components.register import main as register
from components.settings import RegisterConfig
from dagan.config import config_from_dict

GATE = RegisterConfig(gate_miou_ratio=0.6, metric="judge_miou_generated")


def test_gate_needs_miou_ratio_and_fd_below_baseline():
    assert decide(GOOD_METRICS, GATE, None).promote
    low_miou = {**GOOD_METRICS, "judge_miou_generated": 0.3}  # 0.3 < 0.6 x 0.6
    decision = decide(low_miou, GATE, None)
    assert not decision.gate_passed and not decision.promote
    assert decision.reasons[0] == "FAIL judge mIoU: generated 0.3000 must be >= 0.6 x real 0.6000 = 0.3600"
    assert decide(GOOD_METRICS, GATE, None).reasons == [
        "PASS judge mIoU: generated 0.5000 must be >= 0.6 x real 0.6000 = 0.3600",
        "PASS judge Fréchet distance: generated 1.0000 must be < mean-colour baseline 4.0000",
        "PASS no current champion to beat (judge_miou_generated = 0.5000)"]
    worse_fd = {**GOOD_METRICS, "fd_judge_generated": 5.0}
    assert not decide(worse_fd, GATE, None).gate_passed
    assert decide(worse_fd, GATE, None).reasons[1].startswith("FAIL judge Fréchet distance: generated 5.0000 must be <")
    assert decide(worse_fd, RegisterConfig(gate_fd_beats_baseline=False), None).gate_passed


def test_champion_must_be_beaten_in_the_configured_direction():
    tie = decide(GOOD_METRICS, GATE, champion_value=0.5)
    assert not tie.promote  # a tie does not replace the champion
    assert tie.reasons[-1] == "FAIL beat the champion: judge_miou_generated 0.5000 must be > the champion's 0.5000"
    assert decide(GOOD_METRICS, GATE, champion_value=0.4).promote
    lower = RegisterConfig(metric="fd_judge_generated", greater_is_better=False)
    assert decide(GOOD_METRICS, lower, champion_value=2.0).promote
    assert not decide(GOOD_METRICS, lower, champion_value=0.5).promote
    with pytest.raises(ValueError, match="'fid_generated' is missing"):
        decide(GOOD_METRICS, RegisterConfig(metric="fid_generated"), None)


def test_a_champion_that_cannot_be_compared_with_is_kept():
    note = "champion v1 has no tag eval.judge_miou_generated"
    kept = decide(GOOD_METRICS, GATE, None, champion_note=note)
    assert kept.gate_passed and not kept.beats_champion and not kept.promote
    assert kept.reasons == [*decide(GOOD_METRICS, GATE, None).gate_checks,
                            "FAIL champion v1 has no tag eval.judge_miou_generated: cannot compare, champion kept"]
    assert kept.record() == {"gate_passed": True, "beats_champion": False, "promote": False, "reasons": kept.reasons}
    with pytest.raises(AttributeError):
        kept.beats_champion = True  # the verdict is final: no caller edits it


def test_the_version_description_names_the_generator_family():
    """A CC-FPSE or CA2SIS version is not described as a DAGAN variant (the run's own description names it too)."""
    decision = decide(GOOD_METRICS, GATE, None)
    for model, first in (({"generator": "ccfpse", "discriminator": "fpse"}, "CC-FPSE generator + fpse discriminator"),
                         ({"generator": "ca2sis"}, "CA2SIS generator"),
                         ({"variant": "B1", "spap": "both"}, "DAGAN B1 (SPADE) + SPAP in both")):
        config = config_from_dict({"model": model}).resolved()
        text = version_description(config, 5, "run-name", GOOD_METRICS, decision, ["candidate"])
        assert text.splitlines()[0] == f"{first} on synthetic, 5 training steps (run run-name).", text


def test_registry_aliases_follow_the_gate_and_never_demote(tmp_path):
    config, params = registered_model(tmp_path)  # v1: passes, no champion yet
    name = "dagan-synthetic"
    client = MlflowClient(config.mlflow.tracking_uri)

    def aliases() -> dict[str, str]:
        return {alias: str(v) for alias, v in client.get_registered_model(name).aliases.items()}

    def record() -> dict:
        return json.loads((tmp_path / "register" / "registration.json").read_text())

    assert aliases() == {"candidate": "1", "champion": "1"}
    assert record()["aliases"] == ["candidate", "champion"] and record()["gate_passed"]
    version = client.get_model_version(name, "1")
    assert version.tags == {"variant": "B6", "gate_passed": "True", "champion_decision": "promoted",
                            "source_run_id": version.run_id, "eval.judge_miou_generated": "0.5"}
    lines = version.description.splitlines()
    assert lines[0] == "DAGAN B6 (SAM + CAM-II) on synthetic, 5 training steps (run B6-synthetic-stand-in)."
    assert "judge_miou_generated 0.5" in lines[2] and "fd_judge_baseline 4" in lines[2]
    assert lines[4].startswith("Decision: promoted to champion (aliases: candidate, champion; gate PASS)")
    assert [line[:6] for line in lines[5:]] == ["- PASS"] * 3
    model_id = version.source.removeprefix("models:/")
    model = mlflow.get_logged_model(model_id)
    assert model.name == "dagan-generator" and model.source_run_id == version.run_id
    assert mlflow.models.get_model_info(f"runs:/{version.run_id}/dagan-generator").model_id == model_id
    logged = {metric.key: metric.step for metric in model.metrics}
    assert logged == {"loss/g_total": 5}, "the final step's metrics, never the system metrics"
    info = mlflow.models.get_model_info(record()["model_uri"])
    assert info.signature.inputs.input_names() == ["label", "label_ids", "instance", "style", "seed"]
    assert info.signature.params.params[0].name == "edges_from_labels"
    assert info.saved_input_example_info is not None
    assert version.run_id == json.loads((tmp_path / "train" / "mlflow_run.json").read_text())["run_id"]

    write_metrics(config, {**GOOD_METRICS, "judge_miou_generated": 0.9, "fd_judge_generated": 9.0})
    assert register(["--params", str(params)]) == 0  # v2: better mIoU but fails the fd gate
    assert aliases() == {"candidate": "2", "champion": "1"}
    assert not record()["gate_passed"] and "FAIL judge Fréchet distance: generated 9.0000" in client.get_model_version(
        name, "2").description

    write_metrics(config, {**GOOD_METRICS, "judge_miou_generated": 0.45})
    assert register(["--params", str(params)]) == 0  # v3: passes the gate, worse than the champion
    assert aliases() == {"candidate": "3", "champion": "1"}
    assert record()["gate_passed"] and not record()["beats_champion"] and record()["previous_champion"] == "1"

    write_metrics(config, {**GOOD_METRICS, "judge_miou_generated": 0.55})
    assert register(["--params", str(params)]) == 0  # v4: passes and beats v1
    assert aliases() == {"candidate": "4", "champion": "4"}

    client.delete_model_version_tag(name, "4", "eval.judge_miou_generated")
    write_metrics(config, {**GOOD_METRICS, "judge_miou_generated": 0.9})
    assert register(["--params", str(params)]) == 0  # v5: better, but the champion cannot be compared with
    assert aliases() == {"candidate": "5", "champion": "4"}
    assert record()["gate_passed"] and not record()["beats_champion"] and not record()["promote"]
    assert record()["reasons"][-1] == ("FAIL champion v4 has neither the model metric eval/judge_miou_generated nor "
                                       "the tag eval.judge_miou_generated: cannot compare, champion kept")
    assert client.get_model_version(name, "5").tags["champion_decision"] == "not promoted"


def test_missing_eval_metrics_is_a_clear_error(tmp_path, capsys):
    from eval_fixtures import tiny_config, write_params

    params = write_params(tiny_config(tmp_path), tmp_path)
    assert register(["--params", str(params)]) == 2
    assert "metrics.json does not exist; run the evaluate stage first" in capsys.readouterr().err


def test_the_champion_is_compared_through_its_models_metrics(tmp_path):
    """The champion's value is eval/<metric> of its logged model, on the evaluation split, as the model page shows it
    (versions of older registries, tag only, are compared through their tag: the test above)."""
    from eval_fixtures import start_training_run, tiny_config, write_checkpoint, write_params, write_prepared

    from components.register import logged_model_id
    from components.tracking import log_dataset

    config = tiny_config(tmp_path)
    write_prepared(tmp_path / "prepared")
    write_checkpoint(config, tmp_path / "train" / "checkpoints" / "final.pt")
    run_id = start_training_run(config, steps=5)
    with mlflow.start_run(run_id=run_id):  # what components.evaluate logs
        split = log_dataset(MlflowClient(), run_id, config.dataset.prepared_dir, "val", "evaluation")
        mlflow.log_metrics({f"eval/{key}": value for key, value in GOOD_METRICS.items()}, step=5, dataset=split.dataset)
    write_metrics(config, GOOD_METRICS)
    params = write_params(config, tmp_path)
    assert register(["--params", str(params)]) == 0  # v1: champion
    name, client = "dagan-synthetic", MlflowClient(config.mlflow.tracking_uri)
    model = client.get_logged_model(logged_model_id(client.get_model_version(name, "1").source))
    (metric,) = [point for point in model.metrics if point.key == "eval/judge_miou_generated"]
    assert (metric.value, metric.step, metric.dataset_name) == (0.5, 5, "synthetic-val")

    client.set_model_version_tag(name, "1", "eval.judge_miou_generated", "0.99")  # not what the comparison reads
    write_metrics(config, {**GOOD_METRICS, "judge_miou_generated": 0.6})
    assert register(["--params", str(params)]) == 0  # v2: beats the champion's model metric 0.5
    record = json.loads((tmp_path / "register" / "registration.json").read_text())
    assert record["promote"] and record["previous_champion"] == "1"
    assert record["reasons"][-1] == ("PASS beat the champion: judge_miou_generated 0.6000 must be > the champion's "
                                     "0.5000")
