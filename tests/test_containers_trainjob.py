"""The TrainJob's nodes as two containers of the image (``make test-containers``).

The train step's launcher (``pipeline.steps.train_distributed``) builds and submits its real
TrainJob spec; :class:`containers.nodes.PodmanTrainJobs` runs that spec's command and env as
Kubeflow Trainer's torch runtime would, one container per node on the host network, rendezvousing
on gloo through the ``PET_*`` variables the runtime gives every node. The launcher then exports
the final checkpoint, and the evaluate step accepts it (in a container of its own).
"""

from __future__ import annotations

import json
import shlex

import yaml
from container_fixtures import IMAGE, IMAGE_UID, needs_image, run_in_image, session_containers_removed
from test_pipeline_local import TINY

from containers.kfp_local import writable_by
from containers.nodes import PodmanTrainJobs
from pipeline import steps
from pipeline.tasks import IMAGE_PARAMS, ClusterSettings

pytestmark = needs_image

NODES = 2


def test_the_trainjobs_node_command_trains_on_two_container_nodes_to_a_checkpoint_evaluate_accepts(tmp_path):
    shared = tmp_path / "shared"  # the ReadWriteMany volume: at the same path on the host and in the nodes
    for folder in (shared, shared / "run", shared / "eval"):
        writable_by(folder, IMAGE_UID, IMAGE_UID)
    overrides = [*TINY, "train.max_steps=2"]
    prepared = shared / "prepared"  # by the image's own synthesize and prepare steps: train and val splits
    made = run_in_image("sh", "-c", " && ".join(
        f"python -m components.{step} {shlex.join(steps.component_argv(IMAGE_PARAMS, overrides, paths))}"
        for step, paths in (("synthesize", {"dataset.raw_dir": shared / "raw"}),
                            ("prepare", {"dataset.raw_dir": shared / "raw", "dataset.prepared_dir": prepared}))),
        volumes={shared: str(shared)})
    assert made.returncode == 0, made.stderr[-3000:]
    tracking = f"sqlite:///{shared / 'mlflow.db'}"
    settings = ClusterSettings(image=IMAGE, gpus=0, shared_pvc="dagan-shared", shared_mount=str(shared),
                               trainjob=True)
    secrets = {("dagan-mlflow", "MLFLOW_TRACKING_URI"): tracking,
               ("dagan-s3", "AWS_ACCESS_KEY_ID"): "unused-here", ("dagan-s3", "AWS_SECRET_ACCESS_KEY"): "unused-here"}

    with session_containers_removed() as session:
        cluster = PodmanTrainJobs(claims={"dagan-shared": shared}, secrets=secrets, session=session)
        metrics = steps.train_distributed(
            IMAGE_PARAMS, overrides, str(prepared), str(shared / "model"), job_name="dagan-containers",
            work_dir=f"{shared}/run", image=IMAGE, num_nodes=NODES, gpus_per_node=0,
            resources={"cpu": "1", "memory": "4Gi", "shm": "1Gi"}, shared_pvc="dagan-shared",
            shared_mount=str(shared), secret_env=settings.secret_env(), timeout_s=1800, kfp_run_id="local-run",
            api=cluster)

    (spec,) = cluster.jobs.values()
    command = spec["spec"]["trainer"]["command"]  # pipeline/trainjob.py's, as the launcher submitted it
    assert command[0] == "torchrun" and spec["spec"]["trainer"]["numNodes"] == NODES
    assert all(ran[0] == "torchrun" and len(ran) == len(command) for ran in cluster.commands["dagan-containers"])
    assert cluster.exit_codes["dagan-containers"] == [0] * NODES
    assert metrics["steps"] == 2.0
    assert (shared / "model" / "checkpoints" / "final.pt").is_file()
    config = yaml.safe_load((shared / "run" / "train" / "config.yaml").read_text())
    assert config["train"]["max_steps"] == 2

    paths = {"dataset.prepared_dir": shared / "run" / "data", "judge.out_dir": shared / "eval" / "judge",
             "train.out_dir": shared / "model", "evaluate.out_dir": shared / "eval" / "scores"}
    argv = shlex.join(steps.component_argv(IMAGE_PARAMS, overrides, paths))
    evaluated = run_in_image("sh", "-c", f"python -m components.train_judge {argv} && "
                                         f"python -m components.evaluate {argv}",
                             volumes={shared: str(shared)}, env={"MLFLOW_TRACKING_URI": tracking})
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    scores = json.loads((shared / "eval" / "scores" / "metrics.json").read_text())
    assert "judge_miou_generated" in scores

    from mlflow.tracking import MlflowClient

    run_id = json.loads((shared / "model" / "mlflow_run.json").read_text())["run_id"]
    run = MlflowClient(tracking).get_run(run_id)
    assert run.data.params["train.processes"] == str(NODES), "both nodes joined one process group"
    assert run.data.tags["kfp.run_id"] == "local-run"
    assert "eval/judge_miou_generated" in run.data.metrics
