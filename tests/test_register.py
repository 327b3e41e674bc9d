"""Registry gate: candidate always, champion only when the gate passes and it beats the champion; never demotes."""

import json

import mlflow
import pytest
from eval_fixtures import GOOD_METRICS, registered_model, write_metrics
from mlflow.tracking import MlflowClient

from components.register import decide
from components.register import main as register
from dagan.config import RegisterConfig

GATE = RegisterConfig(gate_miou_ratio=0.6, metric="judge_miou_generated")


def test_gate_needs_miou_ratio_and_fd_below_baseline():
    assert decide(GOOD_METRICS, GATE, None).promote
    low_miou = {**GOOD_METRICS, "judge_miou_generated": 0.3}  # 0.3 < 0.6 x 0.6
    decision = decide(low_miou, GATE, None)
    assert not decision.gate_passed and not decision.promote and "0.3000 < 0.6 x real" in decision.reasons[0]
    worse_fd = {**GOOD_METRICS, "fd_judge_generated": 5.0}
    assert not decide(worse_fd, GATE, None).gate_passed
    assert decide(worse_fd, RegisterConfig(gate_fd_beats_baseline=False), None).gate_passed


def test_champion_must_be_beaten_in_the_configured_direction():
    assert not decide(GOOD_METRICS, GATE, champion_value=0.5).promote  # a tie does not replace the champion
    assert decide(GOOD_METRICS, GATE, champion_value=0.4).promote
    lower = RegisterConfig(metric="fd_judge_generated", greater_is_better=False)
    assert decide(GOOD_METRICS, lower, champion_value=2.0).promote
    assert not decide(GOOD_METRICS, lower, champion_value=0.5).promote
    with pytest.raises(ValueError, match="'fid_generated' is missing"):
        decide(GOOD_METRICS, RegisterConfig(metric="fid_generated"), None)


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
    assert version.tags["champion_decision"] == "promoted" and version.tags["eval.judge_miou_generated"] == "0.5"
    info = mlflow.models.get_model_info(record()["model_uri"])
    assert info.signature.inputs.input_names() == ["label", "label_ids", "instance", "style", "seed"]
    assert info.signature.params.params[0].name == "edges_from_labels"
    assert info.saved_input_example_info is not None
    assert version.run_id == json.loads((tmp_path / "train" / "mlflow_run.json").read_text())["run_id"]

    write_metrics(config, {**GOOD_METRICS, "judge_miou_generated": 0.9, "fd_judge_generated": 9.0})
    assert register(["--params", str(params)]) == 0  # v2: better mIoU but fails the fd gate
    assert aliases() == {"candidate": "2", "champion": "1"}
    assert not record()["gate_passed"] and "fd_judge generated 9.0000 >= " in client.get_model_version(
        name, "2").tags["decision_reasons"]

    write_metrics(config, {**GOOD_METRICS, "judge_miou_generated": 0.45})
    assert register(["--params", str(params)]) == 0  # v3: passes the gate, worse than the champion
    assert aliases() == {"candidate": "3", "champion": "1"}
    assert record()["gate_passed"] and not record()["beats_champion"] and record()["previous_champion"] == "1"

    write_metrics(config, {**GOOD_METRICS, "judge_miou_generated": 0.55})
    assert register(["--params", str(params)]) == 0  # v4: passes and beats v1
    assert aliases() == {"candidate": "4", "champion": "4"}


def test_missing_eval_metrics_is_a_clear_error(tmp_path, capsys):
    from eval_fixtures import tiny_config, write_params

    params = write_params(tiny_config(tmp_path), tmp_path)
    assert register(["--params", str(params)]) == 2
    assert "metrics.json does not exist; run the evaluate stage first" in capsys.readouterr().err
