"""The built image itself (``make test-containers``): its user, its contents, its first use as uid 1000."""

from __future__ import annotations

import json
import uuid

import docker
import pytest
from container_fixtures import IMAGE, IMAGE_UID, needs_image, run_in_image, session_containers_removed

from containers.image import BUILD_HOME
from containers.kfp_local import SESSION_LABEL, docker_api, session_containers
from containers.podman import ContainerError, podman, require_image, ulimits

pytestmark = needs_image


def test_runs_as_uid_1000_from_the_installed_package_without_build_leftovers():
    listing = run_in_image("sh", "-c", "id -u; id -g; ls -A /app; python -c 'import components, dagan, pipeline; "
                                       "print(components.__file__)'; pip config list")
    assert listing.returncode == 0, listing.stderr
    uid, gid, *rest = listing.stdout.split("\n")
    assert (uid, gid) == (str(IMAGE_UID), str(IMAGE_UID))
    app = rest[:rest.index("/opt/venv/lib/python3.11/site-packages/components/__init__.py")]
    assert sorted(app) == ["data", "outputs", "params.yaml"], "no build/, *.egg-info or second copy of the code"
    settings = rest[rest.index("/opt/venv/lib/python3.11/site-packages/components/__init__.py") + 1:]
    assert [line for line in settings if line] == [":env:.disable-pip-version-check='1'",
                                                   ":env:.no-cache-dir='1'"], "no build-time pip settings"


def test_nothing_of_the_builds_pip_settings_is_in_the_image():
    """The machine's pip config, wheel folders and local indexes were mounted over the build's $HOME only."""
    found = run_in_image("sh", "-c", f"ls -A {BUILD_HOME}; ls /etc/pip.conf /etc/xdg/pip /opt", user="0")
    assert found.returncode != 0 and "/etc/pip.conf" in found.stderr and "/etc/xdg/pip" in found.stderr
    home, opt = found.stdout.split("\n", 1)[0], found.stdout.split()[-1]
    assert "build-files" not in found.stdout and ".config" not in home and opt == "venv"
    history = json.loads(podman("history", "--format", "json", IMAGE).stdout)
    assert not [entry for entry in history if "pypi" in entry["CreatedBy"] or "wheels" in entry["CreatedBy"]]


def test_a_step_whose_tracking_store_the_user_cannot_write_says_what_to_do_in_one_line():
    """The default store, sqlite:///mlflow.db, lies in /app, which uid 1000 cannot write (a traceback before)."""
    steps = ("python -m components.synthesize -q -S synthetic.num_train=8 -S synthetic.num_val=4 -S synthetic.size=32 "
             "&& python -m components.prepare -q -S dataset.load_size=32 -S dataset.crop_size=32 "
             "&& python -m components.train -q -S train.max_steps=1 -S model.ngf=8 -S model.ndf=8 "
             "-S loss.lambda_vgg=0 -S dataset.load_size=32 -S dataset.crop_size=32 -S train.batch_size=2")
    result = run_in_image("sh", "-c", steps)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: MLflow tracking store sqlite:///mlflow.db: /app is not a folder this user (uid {IMAGE_UID}) can "
        "write; set MLFLOW_TRACKING_URI (a tracking server, or sqlite:////PATH/mlflow.db in a writable folder) or "
        "-S mlflow.tracking_uri=...")
    assert "Traceback" not in result.stderr


def test_mlflow_finds_no_git_and_stays_quiet_about_it():
    """The image has no git; without GIT_PYTHON_REFRESH=quiet every MLflow run printed a 20-line warning."""
    result = run_in_image("python", "-c", "from mlflow.utils.git_utils import get_git_commit; "
                                          "print(get_git_commit('/app'))")
    assert result.returncode == 0 and result.stdout.strip() == "None"
    assert "Git" not in result.stderr, result.stderr


def test_a_missing_image_is_one_line():
    with pytest.raises(ContainerError, match="image localhost/dagan:no-such-tag does not exist here; build it with "
                                             "`make image`"):
        require_image("localhost/dagan:no-such-tag")


def test_an_interrupted_run_stops_the_api_service_and_removes_its_containers(tmp_path):
    """What a container test starts (podman's API service, containers through it) does not outlive it."""
    session = f"interrupt-{uuid.uuid4().hex[:8]}"
    with pytest.raises(KeyboardInterrupt), session_containers_removed(session), docker_api(tmp_path) as url:
        client = docker.DockerClient(base_url=url)
        client.containers.run(IMAGE, ["sleep", "600"], detach=True, labels={SESSION_LABEL: session},
                              network_mode="none", ulimits=[docker.types.Ulimit(name=name, soft=soft, hard=hard)
                                                            for name, (soft, hard) in ulimits().items()])
        assert session_containers(session)
        raise KeyboardInterrupt
    assert not session_containers(session)
    with pytest.raises(docker.errors.DockerException):
        docker.DockerClient(base_url=url, timeout=5)
