"""The project image built and run with podman on a machine without a Docker daemon or registry.

A cluster runs every pipeline step in a container of the project image (Dockerfile) as uid 1000, and
the TrainJob's nodes run the same image under ``torchrun``. This package makes that real on one
machine: :mod:`containers.podman` drives podman (installed with apt when missing),
:mod:`containers.image` makes a local Debian 12 + Python 3.11 base once and builds the image with
the machine's own package-index settings mounted read-only for the build, :mod:`containers.kfp_local`
runs the compiled pipeline with kfp.local's DockerRunner against podman's Docker-compatible API,
and :mod:`containers.nodes` runs the TrainJob's node command in one container per node.
``python -m containers`` is the command line (``make image``, ``make test-containers``).

Build-time tooling only: nothing here is installed into the image (pyproject's package list).
"""
