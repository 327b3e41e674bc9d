"""Where the GPU work may run: tolerations, a node selector and an optional Kueue queue, chosen at compile time.

One :class:`Scheduling` serves both places that start GPU pods: the pipeline's GPU tasks
(pipeline/tasks.py applies it with kfp-kubernetes) and the nodes of a TrainJob
(pipeline/trainjob.py puts it into the job's ``runtimePatches`` and labels).

* A toleration uses the grammar of ``kubectl taint``: ``KEY[=VALUE][:EFFECT]``; without a value
  it tolerates any value of the key (operator ``Exists``), without an effect every effect.
* The node selector is ``KEY=VALUE`` pairs (all must match a node's labels).
* The queue is a Kueue ``LocalQueue`` name: the label ``kueue.x-k8s.io/queue-name`` on the
  TrainJob (Kueue admits the whole job, every node at once) and on the GPU tasks' pods (Kueue's
  integration for plain pods, where the cluster enables it).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
# A label or taint key: an optional DNS-subdomain prefix and "/", then a name of letters, digits, "-", "_", ".".
_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_QUEUE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def _check(pattern: re.Pattern, text: str, what: str, example: str) -> str:
    if not pattern.match(text):
        raise ValueError(f"{what} {text!r} is not a valid Kubernetes name (e.g. {example})")
    return text


@dataclass(frozen=True)
class Toleration:
    key: str
    value: str = ""  # "": any value of the key (operator Exists)
    effect: str = ""  # "": every effect

    def __post_init__(self) -> None:
        _check(_KEY, self.key, "toleration key", "nvidia.com/gpu")
        _check(_VALUE, self.value, "toleration value", "present")
        if self.effect and self.effect not in EFFECTS:
            raise ValueError(f"toleration effect {self.effect!r} is not one of {', '.join(EFFECTS)}")

    @classmethod
    def parse(cls, text: str) -> Toleration:
        """``KEY[=VALUE][:EFFECT]``, as ``kubectl taint`` writes a taint."""
        rest, _, effect = text.partition(":")
        key, _, value = rest.partition("=")
        return cls(key.strip(), value.strip(), effect.strip())

    @property
    def operator(self) -> str:
        return "Equal" if self.value else "Exists"

    def to_k8s(self) -> dict[str, str]:
        """The pod spec's toleration object."""
        item = {"key": self.key, "operator": self.operator}
        if self.value:
            item["value"] = self.value
        if self.effect:
            item["effect"] = self.effect
        return item


def parse_node_selector(pairs: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """``KEY=VALUE`` strings -> sorted pairs; a malformed one is a ValueError naming it."""
    selected: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"node selector {pair!r} is not KEY=VALUE (e.g. nvidia.com/gpu.present=true)")
        selected[_check(_KEY, key.strip(), "node selector key", "nvidia.com/gpu.present")] = \
            _check(_VALUE, value.strip(), "node selector value", "true")
    return tuple(sorted(selected.items()))


@dataclass(frozen=True)
class Scheduling:
    tolerations: tuple[Toleration, ...] = ()
    node_selector: tuple[tuple[str, str], ...] = ()  # (label key, value) pairs
    queue: str = ""  # Kueue LocalQueue; "" submits without Kueue

    def __post_init__(self) -> None:
        if self.queue:
            _check(_QUEUE, self.queue, "Kueue queue", "gpu-queue")

    def pod_spec(self) -> dict[str, Any]:
        """The pod spec fields (tolerations, nodeSelector) that are set."""
        fields: dict[str, Any] = {}
        if self.tolerations:
            fields["tolerations"] = [toleration.to_k8s() for toleration in self.tolerations]
        if self.node_selector:
            fields["nodeSelector"] = dict(self.node_selector)
        return fields

    def queue_labels(self) -> dict[str, str]:
        """``{kueue.x-k8s.io/queue-name: queue}`` when a queue is chosen."""
        return {QUEUE_LABEL: self.queue} if self.queue else {}

    def to_dict(self) -> dict[str, Any]:
        """Plain data (a pipeline parameter of the TrainJob launcher); :meth:`from_dict` reads it back."""
        return {"tolerations": [[item.key, item.value, item.effect] for item in self.tolerations],
                "node_selector": dict(self.node_selector), "queue": self.queue}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Scheduling:
        return cls(tolerations=tuple(Toleration(*item) for item in data.get("tolerations", [])),
                   node_selector=tuple(sorted(data.get("node_selector", {}).items())), queue=data.get("queue", ""))


def add_scheduling_arguments(parser: argparse.ArgumentParser) -> None:
    """``--toleration``, ``--node-selector`` and ``--kueue-queue`` (pipeline.compile, pipeline.trainjob)."""
    group = parser.add_argument_group("scheduling of the GPU pods")
    group.add_argument("--toleration", action="append", default=[], metavar="KEY[=VALUE][:EFFECT]",
                       help="tolerate a taint of the GPU nodes (repeatable; kubectl taint's grammar), "
                            "e.g. nvidia.com/gpu:NoSchedule")
    group.add_argument("--node-selector", action="append", default=[], metavar="KEY=VALUE",
                       help="run the GPU pods only on nodes with this label (repeatable), "
                            "e.g. nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3")
    group.add_argument("--kueue-queue", default="", metavar="NAME",
                       help="submit the GPU work to this Kueue LocalQueue (label kueue.x-k8s.io/queue-name)")


def scheduling_from(args: argparse.Namespace) -> Scheduling:
    """The :class:`Scheduling` of :func:`add_scheduling_arguments`' flags (a ValueError names a bad one)."""
    return Scheduling(tolerations=tuple(Toleration.parse(text) for text in args.toleration),
                      node_selector=parse_node_selector(args.node_selector), queue=args.kueue_queue)
