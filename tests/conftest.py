"""Shared test set-up: every test module and every test starts without an MLflow tracking URI in the
environment.

``mlflow.set_tracking_uri`` also writes ``$MLFLOW_TRACKING_URI``, which the components prefer
over ``mlflow.tracking_uri`` (components/outputs.py), so a component run in-process by one test
would otherwise send the next test's runs (or a module fixture's) to the first test's store.
"""

import pytest

VARIABLE = "MLFLOW_TRACKING_URI"


@pytest.fixture(autouse=True, scope="module")
def no_tracking_uri_from_earlier_modules():
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(VARIABLE, raising=False)  # before the module's own fixtures; absent again afterwards
        yield


@pytest.fixture(autouse=True)
def no_tracking_uri_from_earlier_tests(monkeypatch):
    monkeypatch.delenv(VARIABLE, raising=False)
