"""System metrics of every node of a torchrun job, side by side in its one MLflow run (components/node_metrics.py).

Two real torchrun agents on loopback are two nodes (c10d rendezvous, one gloo process each): rank 0 opens the
run, node 1 follows it; the run holds ``system/node0/*`` and ``system/node1/*`` and ends FINISHED.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml
from mlflow import MlflowClient
from mlflow_fixtures import free_port
from train_fixtures import tiny_settings, write_prepared

REPO = Path(__file__).resolve().parents[1]


def test_every_node_of_a_torchrun_job_records_its_system_metrics_in_the_run(tmp_path):
    prepared = write_prepared(tmp_path / "prepared", num_train=8)
    settings = tiny_settings(prepared, tmp_path / "out", batch_size=4, max_steps=8, epochs=4, epochs_decay=0)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    settings["mlflow"] = {"tracking_uri": store, "experiment": "nodes"}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(settings))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"}
    port = free_port()
    agents = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
         "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "nodes-test",
         "-m", "components.train", "--params", str(params)],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [agent.communicate(timeout=600)[0] for agent in agents]
    assert [agent.returncode for agent in agents] == [0, 0], "\n\n".join(output[-3000:] for output in outputs)

    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("nodes").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["train.processes"] == "2"
    for node in ("node0", "node1"):
        assert f"system/{node}/cpu_utilization_percentage" in run.data.metrics, sorted(run.data.metrics)
        assert f"system/{node}/system_memory_usage_megabytes" in run.data.metrics
    assert not [key for key in run.data.metrics if key.startswith("system/") and key.count("/") == 1]
