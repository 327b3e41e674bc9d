"""What a registration creates is marked until it is complete, and the next registration cleans up after one that
was killed or failed part-way (components/register.py).

``python -m components.register`` logs the model (an MLflow LoggedModel in the training's run) and registers it as
a new model version in one MLflow call; both carry the tag ``dagan.registration=incomplete``
(:data:`INCOMPLETE_MARK`) until the version has its tags, description and aliases (:func:`mark_complete`). A
register killed (SIGKILL, OOM, a lost node) or failing in between leaves them marked; the next registration, before
it creates anything of its own, deletes a marked version that got no alias (it never became a candidate) and
completes one that did (only the mark was left to remove), then deletes the marked logged models that no remaining
version comes from, PENDING or READY (:func:`clean_up_incomplete`).
"""

from __future__ import annotations

import logging

from mlflow.tracking import MlflowClient

REGISTRATION_TAG, INCOMPLETE = "dagan.registration", "incomplete"
INCOMPLETE_MARK = {REGISTRATION_TAG: INCOMPLETE}

log = logging.getLogger("components")


def mark_complete(client: MlflowClient, name: str, version: str, model_id: str) -> None:
    """Remove the mark from version ``version`` of ``name`` and from the logged model it comes from."""
    client.delete_model_version_tag(name, version, REGISTRATION_TAG)
    client.delete_logged_model_tag(model_id, REGISTRATION_TAG)


def _aliases_by_version(client: MlflowClient, name: str) -> dict[str, list[str]]:
    """version -> its aliases (a search of versions does not return them)."""
    holders: dict[str, list[str]] = {}
    for alias, holder in client.get_registered_model(name).aliases.items():
        holders.setdefault(str(holder), []).append(alias)
    return holders


def clean_up_incomplete(client: MlflowClient, name: str, experiment_id: str) -> None:
    """Delete or complete the marked versions of ``name``, then delete the marked logged models of the experiment
    that no version comes from."""
    marked = [version for version in client.search_model_versions(f"name = '{name}'")
              if version.tags.get(REGISTRATION_TAG) == INCOMPLETE]
    holders = _aliases_by_version(client, name) if marked else {}
    for version in marked:
        aliases = sorted(holders.get(str(version.version), []))
        if aliases:
            client.delete_model_version_tag(name, version.version, REGISTRATION_TAG)
            log.warning("completed version %s of %s (aliases %s), left incomplete by an interrupted registration",
                        version.version, name, ", ".join(aliases))
        else:
            client.delete_model_version(name, version.version)
            log.warning("deleted version %s of %s, left incomplete by an interrupted or failed registration",
                        version.version, name)
    for model in client.search_logged_models([experiment_id],
                                             filter_string=f"tags.`{REGISTRATION_TAG}` = '{INCOMPLETE}'"):
        sources = {version.source for version in client.search_model_versions(f"run_id = '{model.source_run_id}'")} \
            if model.source_run_id else set()
        if f"models:/{model.model_id}" in sources:
            client.delete_logged_model_tag(model.model_id, REGISTRATION_TAG)
        else:
            client.delete_logged_model(model.model_id)
            log.warning("deleted logged model %s (%s), left by an interrupted or failed registration", model.model_id,
                        model.status)
