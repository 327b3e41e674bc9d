"""Prepared data through a DVC remote on a real S3 endpoint (moto server on 127.0.0.1, ephemeral
port): dvc add + push from one repository, git clone + dvc pull into a fresh one, checksums match."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import boto3
import numpy as np
import pytest
from data_fixtures import save
from moto.server import ThreadedMotoServer

from dagan.data import DataError, read_manifest
from dagan.data.prepare import prepare_dataset
from dagan.data.shards import verify_shards

BIN = Path(sys.executable).parent
BUCKET = "dagan-data"


@pytest.fixture
def s3_endpoint():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def run(*command: str, cwd: Path, env: dict) -> str:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_push_to_s3_and_pull_into_a_fresh_clone(tmp_path, s3_endpoint):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "DVC_NO_ANALYTICS": "1",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com"}
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id="testing",
                      aws_secret_access_key="testing", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)

    repo = tmp_path / "repo"
    repo.mkdir()
    run("git", "init", "-q", cwd=repo, env=env)
    run("dvc", "init", "-q", cwd=repo, env=env)
    rng = np.random.default_rng(0)
    for i in range(6):
        label = rng.integers(0, 3, (16, 16)).astype(np.uint8)
        save(tmp_path / "raw" / "labels" / f"{i}.png", label)
        save(tmp_path / "raw" / "images" / f"{i}.png", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    prepare_dataset("custom", tmp_path / "raw", repo / "data" / "prepared" / "custom", load_size=16,
                    aspect_ratio=1.0, rows_per_shard=4)
    run("dvc", "add", "-q", "data/prepared/custom", cwd=repo, env=env)
    run("dvc", "remote", "add", "-d", "storage", f"s3://{BUCKET}/dvcstore", cwd=repo, env=env)
    run("dvc", "remote", "modify", "storage", "endpointurl", s3_endpoint, cwd=repo, env=env)
    run("git", "add", "-A", cwd=repo, env=env)
    run("git", "commit", "-qm", "prepared data", cwd=repo, env=env)
    run("dvc", "push", "-q", cwd=repo, env=env)
    assert "testing" not in (repo / ".dvc" / "config").read_text()  # credentials stay in the environment
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix="dvcstore/")["KeyCount"] >= 4

    clone = tmp_path / "clone"
    run("git", "clone", "-q", str(repo), str(clone), cwd=tmp_path, env=env)
    prepared = clone / "data" / "prepared" / "custom"
    assert not prepared.exists()
    run("dvc", "pull", "-q", cwd=clone, env=env)
    manifest = read_manifest(prepared)
    assert manifest.splits == {"train": 6} and len(manifest.shards) == 2
    verify_shards(prepared, manifest.shards)
    damaged = prepared / manifest.shards[0].path  # the check itself catches a damaged shard
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"x")
    with pytest.raises(DataError, match=r"train-00000.parquet has sha256 .* the manifest says"):
        verify_shards(prepared, manifest.shards)
