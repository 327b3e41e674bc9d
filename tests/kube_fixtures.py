"""A fake Kubernetes API for the TrainJob launcher: the one thing mocked, as no API server can run here.

:class:`FakeTrainJobs` plays the API server's ``trainjobs`` resource behind the kubernetes client's
``CustomObjectsApi`` calls; :class:`FakeCoreV1Api` its pods and their logs. Errors are what the
real client raises for the API server's error responses: :func:`api_error` builds a
``kubernetes.client.exceptions.ApiException`` from an HTTP response carrying the server's ``Status``
body (404 NotFound, 409 AlreadyExists, 403 Forbidden), exactly as ``kubernetes.client.rest`` does.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from types import SimpleNamespace

import urllib3
from kubernetes.client.exceptions import ApiException
from kubernetes.client.rest import RESTResponse

RESOURCE = ("trainer.kubeflow.org", "v1alpha1", "trainjobs")
REASONS = {403: ("Forbidden", "Forbidden"), 404: ("Not Found", "NotFound"), 409: ("Conflict", "AlreadyExists")}

RUNNING = {"conditions": [{"type": "Created", "status": "True"}]}
COMPLETE = {"conditions": [{"type": "Created", "status": "True"}, {"type": "Complete", "status": "True"}]}
SUSPENDED = {"conditions": [{"type": "Created", "status": "True"}, {"type": "Suspended", "status": "True",
                                                                  "reason": "Suspended"}]}
FAILED = {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                          "message": "node-1 exited with 1"}]}


def api_error(status: int, message: str) -> ApiException:
    """The client's exception for an error response of the API server (its ``Status`` object as the body)."""
    http_reason, reason = REASONS[status]
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "details": {"group": RESOURCE[0], "kind": RESOURCE[2]}, "code": status}
    response = urllib3.HTTPResponse(body=json.dumps(body).encode(), status=status, reason=http_reason,
                                    headers={"Content-Type": "application/json"}, preload_content=True)
    return ApiException(http_resp=RESTResponse(response))


class FakeTrainJobs:
    """The ``trainjobs`` of one cluster (any namespace), with the calls made to them in ``calls``.

    A created job goes through ``statuses`` (one per read, the last one stays); ``on_first_read`` (optional)
    plays the cluster with the created spec at the first read. A deleted job is gone after ``deletion_reads``
    reads (foreground deletion waits for the pods). ``existing`` seeds a job a previous attempt created.
    """

    def __init__(self, statuses: list[dict], on_first_read: Callable[[dict], None] | None = None,
                 existing: dict | None = None, deletion_reads: int = 2, forbidden: bool = False):
        self.statuses, self.on_first_read, self.deletion_reads = list(statuses), on_first_read, deletion_reads
        self.forbidden = forbidden
        self.objects: dict[str, dict] = {}
        self.pending: dict[str, list[dict]] = {}  # name -> statuses still to go through
        self.deleting: dict[str, int] = {}  # name -> reads until it is gone
        self.calls: list[tuple] = []
        self.created: list[dict] = []
        if existing is not None:
            self.objects[existing["metadata"]["name"]] = copy.deepcopy(existing)

    def _check(self, group: str, version: str, plural: str) -> None:
        assert (group, version, plural) == RESOURCE

    def _not_found(self, name: str) -> ApiException:
        return api_error(404, f'trainjobs.trainer.kubeflow.org "{name}" not found')

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        self._check(group, version, plural)
        name = body["metadata"]["name"]
        self.calls.append(("create", name))
        if self.forbidden:
            raise api_error(403, f'trainjobs.trainer.kubeflow.org is forbidden: cannot create in "{namespace}"')
        if name in self.objects:
            raise api_error(409, f'trainjobs.trainer.kubeflow.org "{name}" already exists')
        self.objects[name] = {**copy.deepcopy(body), "status": {}}
        self.pending[name] = list(self.statuses)
        self.created.append(copy.deepcopy(body))
        return body

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        self._check(group, version, plural)
        self.calls.append(("get", name))
        if name not in self.objects:
            raise self._not_found(name)
        if name in self.deleting:
            self.deleting[name] -= 1
            if self.deleting[name] < 0:
                del self.objects[name], self.deleting[name]
                raise self._not_found(name)
        elif name in self.pending:
            if self.on_first_read is not None and len(self.pending[name]) == len(self.statuses):
                self.on_first_read(self.created[-1])
            statuses = self.pending[name]
            self.objects[name]["status"] = statuses.pop(0) if len(statuses) > 1 else statuses[0]
        return copy.deepcopy(self.objects[name])

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name, propagation_policy=None):
        self._check(group, version, plural)
        self.calls.append(("delete", name, propagation_policy))
        if name not in self.objects:
            raise self._not_found(name)
        self.deleting.setdefault(name, self.deletion_reads)
        self.objects[name].setdefault("metadata", {})["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        return {"kind": "Status", "status": "Success"}

    def verbs(self) -> list[str]:
        return [call[0] for call in self.calls]


class FakeCoreV1Api:
    """Pods and their logs (timestamped, as ``timestamps=True`` returns them); each read returns the lines logged
    so far, so the reader must skip what it printed before. ``owners``: the ownerReferences of any pod read."""

    def __init__(self, logs: dict[str, list[str]] | None = None, phases: dict[str, str] | None = None,
                 forbidden: bool = False, owners: list[dict] | None = None):
        self.logs, self.phases, self.forbidden, self.owners = logs or {}, phases or {}, forbidden, owners or []
        self.reads: list[tuple[str, int | None]] = []
        self.selectors: list[str] = []

    def list_namespaced_pod(self, namespace, label_selector):
        if self.forbidden:
            raise api_error(403, f'pods is forbidden: cannot list resource "pods" in "{namespace}"')
        self.selectors.append(label_selector)
        return SimpleNamespace(items=[SimpleNamespace(metadata=SimpleNamespace(name=name),
                                                      status=SimpleNamespace(phase=self.phases.get(name, "Running")))
                                      for name in self.logs])

    def read_namespaced_pod_log(self, name, namespace, timestamps, since_seconds=None):
        assert timestamps is True
        self.reads.append((name, since_seconds))
        return "".join(f"2026-01-01T00:00:0{i}.000000000Z {line}\n" for i, line in enumerate(self.logs[name]))

    def read_namespaced_pod(self, name, namespace):
        if self.forbidden:
            raise api_error(403, f'pods "{name}" is forbidden: cannot get resource "pods" in "{namespace}"')
        references = [SimpleNamespace(api_version=owner["apiVersion"], kind=owner["kind"], name=owner["name"],
                                      uid=owner["uid"]) for owner in self.owners]
        return SimpleNamespace(metadata=SimpleNamespace(name=name, owner_references=references))
