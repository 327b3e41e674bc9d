"""Joining Ray for a sweep (components/tune.py): a local Ray, or a running cluster.

Without an address the sweep starts Ray in its own process (``tune.num_cpus`` CPUs); Ray 2.59 and
later turn token authentication on for such a local Ray and keep its token in ``~/.ray/auth_token``.
With ``--address`` it joins a cluster: ``auto`` inside a Ray job or on a node of the cluster (the
way docs/TUNE.md runs it, ``ray job submit ... -- python -m components.tune --address auto``),
``HOST:PORT`` for the head's GCS, ``ray://HOST:10001`` for Ray Client.

Everything that can stop the join stops it with one line, before the sweep writes or starts
anything: an address nothing answers at (Ray itself would retry for minutes and then exit without a
message), and a cluster that refuses this process because it requires its auth token
(``RAY_AUTH_MODE=token`` with ``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH``; Ray enables it by
default on every cluster from 2.61 on).
"""

from __future__ import annotations

import socket

from dagan.config import ConfigError

CONNECT_TIMEOUT_S = 10.0


def connect_ray(address: str | None, num_cpus: int | None) -> None:
    """Start a local Ray (no address) or join a cluster; an address that does not answer, or refuses this
    process (no or a wrong auth token), stops the sweep with one line before anything is written."""
    import ray

    runtime_env = {"env_vars": {"RAY_CHDIR_TO_TRIAL_DIR": "0"}}  # relative paths mean the same in every trial
    if not address:
        ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env=runtime_env)
        return
    check_address_answers(address)
    from ray.exceptions import AuthenticationError

    try:
        ray.init(address=address, runtime_env=runtime_env)
    except (ConnectionError, AuthenticationError) as err:
        causes = (err, err.__cause__)
        if any(isinstance(cause, AuthenticationError) or "InvalidAuthToken" in str(cause) for cause in causes):
            raise ConfigError(f"the Ray cluster at {address} refused this process: it needs the cluster's auth token. "
                              "Set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH, a file) to it "
                              "(docs/TUNE.md)") from None
        raise ConfigError(f"cannot join the Ray cluster at {address}: {str(err).strip().splitlines()[0]}") from None


def check_address_answers(address: str) -> None:
    """A ``HOST:PORT`` or ``ray://HOST:PORT`` address must accept a TCP connection (Ray itself would retry for
    minutes); ``auto`` and ``local`` are Ray's to resolve."""
    target = address[len("ray://"):] if address.startswith("ray://") else address
    if target in ("auto", "local"):
        return
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--address {address}: expected auto, HOST:PORT (the GCS, 6379) or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        raise ConfigError(f"--address {address}: nothing answers at {host}:{port} ({err.strerror or err}); start the "
                          "Ray cluster, or pass its address (auto inside a Ray job or on a cluster node)") from None
