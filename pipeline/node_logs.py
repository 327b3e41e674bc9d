"""The TrainJob's node logs, copied into the launcher step's own log while it waits.

Kubeflow shows a step's stdout; the TrainJob's nodes are other pods. The launcher
(pipeline/launcher.py) polls the TrainJob anyway, and at every poll prints the nodes' new log
lines here, prefixed with the pod's name.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

log = logging.getLogger("pipeline.trainjob")

JOBSET_LABEL = "jobset.sigs.k8s.io/jobset-name"  # on every pod of the JobSet the Trainer makes for a TrainJob


class NodeLogs:
    """Copies the TrainJob's node logs into this process's stdout (the launcher step's log in Kubeflow).

    The TrainJob's pods carry the label of the JobSet the Trainer creates for it (same name). Every
    poll reads each pod's recent log with timestamps and prints the lines newer than the last one
    printed, prefixed with the pod's name. Reading logs needs ``get``/``list`` on pods and pods/log
    (docs/KUBEFLOW.md); without them the step says so once and goes on waiting.
    """

    def __init__(self, api, name: str, namespace: str, window_s: float, out: TextIO | None = None):
        self.api, self.name, self.namespace = api, name, namespace
        self.window_s = window_s
        self.out = out or sys.stdout
        self.last: dict[str, str] = {}  # pod -> timestamp of the last printed line
        self.disabled = False

    def pump(self) -> None:
        if self.disabled:
            return
        from kubernetes.client.exceptions import ApiException

        try:
            pods = self.api.list_namespaced_pod(self.namespace, label_selector=f"{JOBSET_LABEL}={self.name}").items
            for pod in sorted(pods, key=lambda item: item.metadata.name):
                if pod.status.phase != "Pending":
                    self._print_new(pod.metadata.name)
        except ApiException as err:
            self.disabled = True
            log.warning("cannot read the TrainJob's node logs (%s %s); give the pipeline's service account get/list "
                        "on pods and pods/log to see them here (docs/KUBEFLOW.md)", err.status, err.reason)

    def _print_new(self, pod: str) -> None:
        since = None if pod not in self.last else int(self.window_s) + 60
        text = self.api.read_namespaced_pod_log(pod, self.namespace, timestamps=True, since_seconds=since)
        for line in text.splitlines():
            stamp, _, message = line.partition(" ")
            if stamp > self.last.get(pod, ""):
                self.out.write(f"[{pod}] {message}\n")
                self.last[pod] = stamp
        self.out.flush()
