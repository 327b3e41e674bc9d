"""What the MLflow UI's model pages show, read back through MLflow's public API after the real steps
(train, train_judge, evaluate of a kept checkpoint and of the final one, register) on a tiny model:
each split is a dataset input, the kept checkpoints are logged models ranked by their evaluation, and the
registered model carries the evaluation metrics on the split they were computed on (README, "Models")."""

from __future__ import annotations

import mlflow
from eval_fixtures import tiny_config, write_params, write_prepared

from components import evaluate, register, train, train_judge


def test_checkpoints_and_the_registered_model_carry_their_metrics_and_datasets(tmp_path):
    config = tiny_config(tmp_path, train={"epochs": 2, "max_steps": 5, "checkpoint_every": 2, "keep_last": 1,
                                          "log_every": 1, "sample_every": 0},
                         judge={"epochs": 2})
    write_prepared(tmp_path / "prepared")
    params = str(write_params(config, tmp_path))
    step_four = tmp_path / "train" / "checkpoints" / "step-00000004.pt"
    assert train.main(["--params", params]) == 0 and train_judge.main(["--params", params]) == 0
    assert evaluate.main(["--params", params, "-S", f"evaluate.checkpoint={step_four}",
                          "-S", f"evaluate.out_dir={tmp_path / 'eval-4'}"]) == 0
    assert evaluate.main(["--params", params]) == 0 and register.main(["--params", params]) == 0

    mlflow.set_tracking_uri(config.mlflow.tracking_uri)
    experiment = mlflow.get_experiment_by_name("test").experiment_id
    (run,) = mlflow.search_runs([experiment], output_format="list")
    contexts = {item.dataset.name: {tag.key: tag.value for tag in item.tags}["mlflow.data.context"]
                for item in run.inputs.dataset_inputs}
    assert contexts == {"synthetic-train": "training", "synthetic-val": "evaluation"}
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "eval/fd_judge_generated")
    assert sorted(point.step for point in history) == [4, 5]  # each evaluation at its checkpoint's step

    checkpoints = mlflow.search_logged_models(
        experiment_ids=[experiment], output_format="list",
        filter_string=f"source_run_id = '{run.info.run_id}' AND model_type = 'dagan-checkpoint'",
        order_by=[{"field_name": "metrics.eval/fd_judge_generated", "ascending": True}])
    assert sorted(model.name for model in checkpoints) == ["final", "step-00000004"]  # step 2: deleted (keep_last)
    scores = []
    for model in checkpoints:
        step = int(model.tags["dagan.step"])
        (score,) = [metric for metric in model.metrics if metric.key == "eval/fd_judge_generated"]
        assert (score.step, score.dataset_name) == (step, "synthetic-val")
        assert {metric.key: metric.step for metric in model.metrics}["loss/g_total"] == step
        scores.append(score.value)
    assert scores == sorted(scores)

    (generator,) = mlflow.search_logged_models(experiment_ids=[experiment], filter_string="name = 'dagan-generator'",
                                               output_format="list")
    version = mlflow.MlflowClient().get_model_version("dagan-synthetic", "1")
    assert version.source == f"models:/{generator.model_id}" and generator.source_run_id == run.info.run_id
    evaluation = {metric.key: metric for metric in generator.metrics if metric.key.startswith("eval/")}
    assert {(metric.step, metric.dataset_name) for metric in evaluation.values()} == {(5, "synthetic-val")}
    assert evaluation["eval/judge_miou_generated"].value == run.data.metrics["eval/judge_miou_generated"]
    assert {metric.key for metric in generator.metrics if not metric.key.startswith("eval/")} >= {"loss/g_total"}
    assert not [metric.key for metric in generator.metrics if metric.key.startswith("system/")]
