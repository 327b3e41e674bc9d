"""The container tooling (containers/) without a container: the build's pip settings and apt mirror, the
TrainJob's node environment, and the one-line errors. Cheap; the real runs are ``make test-containers``."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from containers import image, nodes
from containers.podman import ContainerError
from pipeline.trainjob import DistributedTraining, SecretEnv, trainjob_spec

ROOT = Path(__file__).resolve().parents[1]


def test_the_debian_mirror_comes_from_one_line_or_deb822_apt_sources(tmp_path):
    one_line = tmp_path / "sources.list"
    one_line.write_text("# comment\ndeb [arch=amd64] http://mirror.example/debian bookworm main\n")
    folder = tmp_path / "sources.list.d"
    folder.mkdir()
    (folder / "debian.sources").write_text("Types: deb\nURIs: http://deb.example/debian\nSuites: bookworm "
                                           "bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: "
                                           "http://security.example\nSuites: bookworm-security\n")
    assert image.debian_mirror([one_line, folder]) == "http://mirror.example/debian"
    assert image.debian_mirror([tmp_path / "missing", folder]) == "http://deb.example/debian"
    with pytest.raises(ContainerError, match="no apt source for Debian bookworm .* --mirror URL"):
        image.debian_mirror([tmp_path / "missing"])


def test_the_builds_pip_settings_name_read_only_mounts_under_the_build_home(tmp_path):
    wheels, index, cert = tmp_path / "wheels", tmp_path / "pypi" / "simple", tmp_path / "ca.crt"
    for folder in (wheels, index):
        folder.mkdir(parents=True)
    cert.write_text("certificate")
    config, mounts = image.build_settings({
        "global": {"find-links": str(wheels), "extra-index-url": f"file://{index} https://pypi.example/simple",
                   "cert": str(cert), "default-timeout": "180", "constraint": "/nonexistent/constraints.txt"},
        "install": {"no-compile": "false"}})
    home = image.BUILD_FILES
    assert config.splitlines() == [
        "[global]", f"find-links = {home}{wheels}",
        f"extra-index-url = file://{home}{index} https://pypi.example/simple", f"cert = {home}{cert}",
        "default-timeout = 180", "constraint = /nonexistent/constraints.txt", "[install]", "no-compile = false"]
    # a local index's files lie beside its simple/ folder: the parent is mounted
    assert mounts == {wheels: f"{home}{wheels}", index.parent: f"{home}{index.parent}", cert: f"{home}{cert}"}
    assert all(target.startswith(image.BUILD_HOME + "/") for target in mounts.values())


def test_the_machines_pip_settings_are_read_with_its_environment_winning(tmp_path, monkeypatch):
    config = tmp_path / "pip.conf"
    config.write_text("[global]\nfind-links = /from/the/file\ntimeout = 7\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(config))
    monkeypatch.setenv("PIP_FIND_LINKS", "/from/the/environment")
    settings = image.pip_settings()
    assert settings["global"]["find-links"] == "/from/the/environment"
    assert settings["global"]["timeout"] == "7"


def test_a_failed_build_is_one_line_that_says_what_to_do():
    offline = [  # the end of a real build with --network none
        "Looking in links: /root/build-files/opt/wheels",
        "WARNING: Location 'file:///root/build-files/opt/pypi/simple/aiobotocore/' is ignored: it is neither a "
        "file nor a directory.",
        "WARNING: Retrying (Retry(total=0, connect=None, read=None, redirect=None, status=None)) after connection "
        "broken by 'NewConnectionError('<pip._vendor.urllib3.connection.HTTPSConnection object at 0x7efde832e4d0>: "
        "Failed to establish a new connection: [Errno -3] Temporary failure in name resolution')': "
        "/simple/aiobotocore/",
        "ERROR: Could not find a version that satisfies the requirement aiobotocore==3.10.0 (from versions: none)",
        "ERROR: No matching distribution found for aiobotocore==3.10.0",
        'Error: building at STEP "RUN python -m venv /opt/venv     && pip install --no-cache-dir -r '
        '/tmp/requirements.lock     && rm /tmp/requirements.lock": while running runtime: exit status 1']
    assert image.build_failure(offline) == (
        "the image build reached no package index for aiobotocore==3.10.0: check the network and the pip settings "
        "(pip config list), then run the same command again")
    assert "found no torch==9.9 in the package indexes" in image.build_failure(
        ["ERROR: No matching distribution found for torch==9.9", "Error: building at STEP"])
    assert image.build_failure(["COPY dagan/ /tmp/x", "Error: no such file dagan"]) == (
        "the image build failed: Error: no such file dagan (the build's output is above)")


def test_kubernetes_expands_the_commands_env_references():
    env = {"PET_MASTER_ADDR": "10.0.0.1", "PET_MASTER_PORT": "29400"}
    assert nodes.expand("$(PET_MASTER_ADDR):$(PET_MASTER_PORT)", env) == "10.0.0.1:29400"
    assert nodes.expand("$$(PET_MASTER_ADDR) $(UNKNOWN) plain", env) == "$(PET_MASTER_ADDR) $(UNKNOWN) plain"


def _spec(host_folder: Path) -> dict:
    job = DistributedTraining(name="dagan-x", image="localhost/dagan:local", train_args=("--params", "p.yaml"),
                              num_nodes=2, gpus_per_node=0, shared_pvc="dagan-shared", shm_size="2Gi",
                              env=(("KFP_RUN_ID", "run-1"),),
                              secret_env=(SecretEnv("MLFLOW_TRACKING_URI", "dagan-mlflow", "MLFLOW_TRACKING_URI"),
                                          SecretEnv("MLFLOW_S3_ENDPOINT_URL", "dagan-s3", "MLFLOW_S3_ENDPOINT_URL",
                                                    optional=True)))
    return trainjob_spec(job)


def test_a_node_gets_the_specs_env_its_secrets_and_the_torch_runtimes_rendezvous(tmp_path):
    spec = _spec(tmp_path)
    secrets = {("dagan-mlflow", "MLFLOW_TRACKING_URI"): "sqlite:////mnt/shared/mlflow.db"}
    assert nodes.node_env(spec, 1, 29400, secrets) == {
        "KFP_RUN_ID": "run-1", "MLFLOW_TRACKING_URI": "sqlite:////mnt/shared/mlflow.db",
        "PET_NNODES": "2", "PET_NPROC_PER_NODE": "1", "PET_NODE_RANK": "1", "PET_MASTER_ADDR": "127.0.0.1",
        "PET_MASTER_PORT": "29400"}
    with pytest.raises(ContainerError, match="node 0: secret dagan-mlflow has no key MLFLOW_TRACKING_URI"):
        nodes.node_env(spec, 0, 29400, {})
    assert nodes.volume_flags(spec, {"dagan-shared": tmp_path}) == [
        "--shm-size", "2g", "--volume", f"{tmp_path}:/mnt/shared"]
    with pytest.raises(ContainerError, match="no host folder for the volume claim dagan-shared"):
        nodes.volume_flags(spec, {})


def test_a_rendezvous_port_in_use_is_one_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ContainerError, match=f"port {port} on 127.0.0.1 is in use .*: stop what listens"):
            nodes.check_port_free(port)


def test_without_podman_and_apt_get_the_command_says_what_to_do(tmp_path):
    """No podman on PATH and no apt-get to install it: one line, exit code 2, nothing started."""
    result = subprocess.run([sys.executable, "-m", "containers", "image"], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "PATH": str(tmp_path)}, timeout=120)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: podman, runc, debootstrap not found and there is no apt-get here: install them by hand (apt-get "
        "install podman runc debootstrap), then run the same command again"]


@pytest.mark.skipif(shutil.which("debootstrap") is None or os.geteuid() != 0, reason="needs debootstrap, as root")
def test_an_unreachable_mirror_for_the_base_is_one_line():
    with pytest.raises(ContainerError) as raised:
        image.make_base("localhost/dagan-base:never-made", mirror="http://127.0.0.1:9/debian")
    message = str(raised.value)
    assert message.startswith("debootstrap from http://127.0.0.1:9/debian failed (") and "\n" not in message
    assert message.endswith("check that the mirror is reachable or pass another with --mirror URL")


def test_the_local_trainjob_api_answers_an_unknown_job_with_the_kubernetes_clients_404():
    from kubernetes.client.exceptions import ApiException

    jobs = nodes.PodmanTrainJobs(claims={}, secrets={}, session="unit")
    for call in (jobs.get_namespaced_custom_object, jobs.delete_namespaced_custom_object):
        with pytest.raises(ApiException) as raised:
            call("trainer.kubeflow.org", "v1alpha1", "team-a", "trainjobs", "dagan-missing")
        assert raised.value.status == 404
