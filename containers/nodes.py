"""A TrainJob's nodes as podman containers: the launcher's real spec, run on one machine.

:class:`PodmanTrainJobs` stands in for the Kubernetes API that the train step's launcher
(``pipeline.trainjob.run_trainjob``) creates its TrainJob with. It runs what Kubeflow Trainer's
``torch-distributed`` runtime would: one container per node of ``spec.trainer.numNodes``, each in
``spec.trainer.image`` with ``spec.trainer.command`` and ``spec.trainer.env``, plus what the runtime
adds to every node:

* the ``PET_*`` variables of the torch plugin: ``PET_NNODES``, ``PET_NPROC_PER_NODE``,
  ``PET_NODE_RANK``, ``PET_MASTER_ADDR`` (node 0; here the host's loopback, every node on the host
  network) and ``PET_MASTER_PORT``;
* Kubernetes' expansion of ``$(VAR)`` in the command from the container's env (``$$`` escapes);
* the secret references, resolved from ``secrets`` (``(secret, key) -> value``; a missing required
  key stops the node from starting, as a pod's ``CreateContainerConfigError`` does);
* the runtime patch's volumes: the shared claim as a host folder, ``/dev/shm`` of the emptyDir's size.

Resources (CPU, memory, GPUs) and the security context are not applied (no GPU here; the image's
own user, uid 1000, runs the nodes).
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from containers.kfp_local import SESSION_LABEL
from containers.podman import ContainerError, podman, podman_command, remove_containers, ulimit_flags

MASTER_ADDR = "127.0.0.1"
REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(word: str, env: Mapping[str, str]) -> str:
    """Kubernetes' expansion of ``$(VAR)`` in a container's command; unknown references stay as written."""
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return REFERENCE.sub(replace, word)


def check_port_free(port: int, host: str = MASTER_ADDR) -> None:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            raise ContainerError(f"port {port} on {host} is in use (the rendezvous of node 0 needs it): stop what "
                                 "listens there or choose another port") from None


def free_port(host: str = MASTER_ADDR) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def node_env(spec: Mapping[str, Any], rank: int, master_port: int,
             secrets: Mapping[tuple[str, str], str]) -> dict[str, str]:
    """A node's environment: the spec's plain and secret-backed variables, then the torch runtime's PET_*."""
    trainer = spec["spec"]["trainer"]
    env: dict[str, str] = {}
    for item in trainer.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        ref = item["valueFrom"]["secretKeyRef"]
        if (ref["name"], ref["key"]) in secrets:
            env[item["name"]] = secrets[ref["name"], ref["key"]]
        elif not ref.get("optional", False):
            raise ContainerError(f"node {rank}: secret {ref['name']} has no key {ref['key']} (env {item['name']})")
    env.update({"PET_NNODES": str(trainer["numNodes"]), "PET_NPROC_PER_NODE": str(trainer["numProcPerNode"]),
                "PET_NODE_RANK": str(rank), "PET_MASTER_ADDR": MASTER_ADDR, "PET_MASTER_PORT": str(master_port)})
    return env


def volume_flags(spec: Mapping[str, Any], claims: Mapping[str, Path]) -> list[str]:
    """podman flags for the runtime patch's volumes: claims as host folders, the memory emptyDir as /dev/shm."""
    patch = spec["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    pod = patch["template"]["spec"]["template"]["spec"]
    mounts = {mount["name"]: mount["mountPath"] for mount in pod["containers"][0]["volumeMounts"]}
    flags = []
    for volume in pod["volumes"]:
        target = mounts[volume["name"]]
        if "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            if claim not in claims:
                raise ContainerError(f"no host folder for the volume claim {claim} (pass claims={{'{claim}': PATH}})")
            flags += ["--volume", f"{claims[claim]}:{target}"]
        elif volume.get("emptyDir", {}).get("medium") == "Memory" and target == "/dev/shm":
            flags += ["--shm-size", volume["emptyDir"]["sizeLimit"].replace("Gi", "g").replace("Mi", "m")]
    return flags


class PodmanTrainJobs:
    """The part of ``CustomObjectsApi`` the launcher uses, running each TrainJob's nodes as containers.

    ``create`` runs the job to its end (the nodes' output goes to this process's stdout, prefixed
    with the node); ``get`` reports it Complete or Failed as Kubeflow Trainer would, or raises the
    kubernetes client's 404 for a job it does not know; ``delete`` forgets it."""

    def __init__(self, claims: Mapping[str, Path], secrets: Mapping[tuple[str, str], str], session: str,
                 master_port: int | None = None):
        self.claims, self.secrets, self.session = dict(claims), dict(secrets), session
        self.master_port = master_port
        self.jobs: dict[str, dict[str, Any]] = {}
        self.exit_codes: dict[str, list[int]] = {}
        self.commands: dict[str, list[list[str]]] = {}  # per job, each node's command as it ran

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        name = body["metadata"]["name"]
        port = self.master_port or free_port()
        check_port_free(port)
        self.commands[name] = node_commands(body, port, self.secrets)
        codes = run_nodes(body, self.claims, self.secrets, port, self.session)
        self.exit_codes[name] = codes
        failed = [rank for rank, code in enumerate(codes) if code != 0]
        condition = {"type": "Failed", "status": "True", "reason": "NodeFailed",
                     "message": f"nodes {failed} exited with {[codes[rank] for rank in failed]}"} if failed else \
            {"type": "Complete", "status": "True"}
        self.jobs[name] = {**body, "status": {"conditions": [condition]}}
        return self.jobs[name]

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        if name not in self.jobs:
            from kubernetes.client.exceptions import ApiException

            raise ApiException(status=404, reason="Not Found")
        return self.jobs[name]

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name, **options):
        """The nodes are gone once ``create`` returns: deleting forgets the job."""
        self.get_namespaced_custom_object(group, version, namespace, plural, name)
        return self.jobs.pop(name)


def node_commands(spec: Mapping[str, Any], master_port: int, secrets: Mapping[tuple[str, str], str]
                  ) -> list[list[str]]:
    """Each node's command: the spec's, with ``$(VAR)`` expanded from that node's env."""
    command = spec["spec"]["trainer"]["command"]
    return [[expand(word, node_env(spec, rank, master_port, secrets)) for word in command]
            for rank in range(spec["spec"]["trainer"]["numNodes"])]


def run_nodes(spec: Mapping[str, Any], claims: Mapping[str, Path], secrets: Mapping[tuple[str, str], str],
              master_port: int, session: str) -> list[int]:
    """Start one container per node, stream their output, wait for all; returns their exit codes.
    The containers are removed afterwards, also on an error or an interrupt."""
    trainer, job = spec["spec"]["trainer"], spec["metadata"]["name"]
    names = [f"{job}-node-{rank}" for rank in range(trainer["numNodes"])]
    volumes = volume_flags(spec, claims)
    commands = node_commands(spec, master_port, secrets)
    try:
        for rank, (name, command) in enumerate(zip(names, commands, strict=True)):
            env = node_env(spec, rank, master_port, secrets)
            with tempfile.NamedTemporaryFile("w", prefix="dagan-node-env-") as env_file:  # values stay off argv
                env_file.write("".join(f"{key}={value}\n" for key, value in env.items()))
                env_file.flush()
                podman("run", "--detach", "--name", name, "--label", f"{SESSION_LABEL}={session}",
                       "--network", "host", *ulimit_flags(), *volumes, "--env-file", env_file.name,
                       trainer["image"], *command)
        streams = [threading.Thread(target=_stream_logs, args=(name,), daemon=True) for name in names]
        for thread in streams:
            thread.start()
        codes = [int(podman("wait", name).stdout.strip()) for name in names]
        for thread in streams:
            thread.join(timeout=30)
        return codes
    finally:
        remove_containers(names)


def _stream_logs(name: str) -> None:
    with subprocess.Popen(podman_command("logs", "--follow", name), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as process:
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(f"[{name}] {line}")
