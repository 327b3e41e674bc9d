# One image for every step of the pipeline: DVC stages, Kubeflow components and the
# distributed TrainJob all run `python -m components.<step>` (or torchrun) in it.
#
#   docker build -t REGISTRY/dagan:TAG --build-arg GIT_COMMIT=$(git rev-parse HEAD) .
#
# CUDA: the torch wheel pinned in requirements.lock is PyPI's Linux build, which bundles the
# CUDA 13 runtime, cuDNN and NCCL (the nvidia-* packages of the lock). The node needs only the
# NVIDIA driver (>= 580 for CUDA 13) and the device plugin; no CUDA base image is required.
# No credentials are baked in: MLflow and S3 settings arrive as environment variables from
# Kubernetes secrets at run time (docs/KUBEFLOW.md).
#
# The base image is pinned by digest (the tag says which release it is; the digest makes the build
# reproducible). Refresh both together: docker buildx imagetools inspect python:3.11.13-slim-bookworm
# (the "Digest:" line, the multi-platform index). A builder without access to Docker Hub passes a
# local Python 3.11 base on Debian 12 instead (--build-arg BASE_IMAGE=...; `make image` makes one).
ARG BASE_IMAGE=python:3.11.13-slim-bookworm@sha256:86adf8dbadc3d6e82ee5dd2c74bec2e1c2467cdad47886280501df722372d2e1
FROM ${BASE_IMAGE}

LABEL org.opencontainers.image.title="dagan" \
      org.opencontainers.image.description="DAGAN semantic image synthesis: pipeline steps" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# Layers from the least to the most often changed, so a rebuild reuses what did not change.
# Dependencies first: the runtime lock only; the test and lint tools (requirements-dev.lock) stay out.
COPY requirements.lock /tmp/requirements.lock
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir -r /tmp/requirements.lock \
    && rm /tmp/requirements.lock

# Non-root runtime user. The code stays root-owned (read-only for the user); the default
# relative output folders and the home directory (torch/matplotlib caches) are writable.
RUN groupadd --gid 1000 dagan \
    && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/dagan dagan \
    && mkdir -p /app/data /app/outputs \
    && chown -R 1000:1000 /app/data /app/outputs

# The project is installed as a package (site-packages holds the only copy of the code); it is built
# from a scratch copy, so no build/ or *.egg-info is left behind. /app holds the default params file.
COPY pyproject.toml README.md /tmp/dagan-src/
COPY dagan/ /tmp/dagan-src/dagan/
COPY components/ /tmp/dagan-src/components/
COPY pipeline/ /tmp/dagan-src/pipeline/
RUN pip install --no-cache-dir --no-deps /tmp/dagan-src \
    && rm -rf /tmp/dagan-src \
    && python -c "import dagan, components.cli, pipeline.steps"
WORKDIR /app
COPY params.yaml ./

# The commit last: a RUN after a changed ARG misses the layer cache, so declaring it earlier would
# reinstall every dependency for each new commit.
ARG GIT_COMMIT=unknown
LABEL org.opencontainers.image.revision="${GIT_COMMIT}"
# No git in the image: the commit comes from DAGAN_GIT_COMMIT, and GitPython (imported by MLflow for
# its source tags) stays quiet instead of printing a warning into every step's log.
ENV HOME=/home/dagan \
    TORCH_HOME=/home/dagan/.cache/torch \
    MPLCONFIGDIR=/home/dagan/.cache/matplotlib \
    GIT_PYTHON_REFRESH=quiet \
    DAGAN_GIT_COMMIT=${GIT_COMMIT}
USER 1000:1000

# No ENTRYPOINT: Kubeflow and the TrainJob set the command of every container.
CMD ["python", "-m", "dagan", "--help"]
