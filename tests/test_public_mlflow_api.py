"""The project uses MLflow's public API only, so that an MLflow upgrade cannot break it through internals.

Public: the modules MLflow's Python API reference documents (``PUBLIC_MODULES``), and no name that
starts with an underscore. Every module of the project is parsed (dagan/, components/, pipeline/, bench/,
deps/, tests/); every ``import mlflow...`` / ``from mlflow... import ...`` and every attribute chain on an
imported MLflow module (``mlflow.tracking.fluent.x``, lazy imports inside functions included) counts.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("dagan", "components", "pipeline", "bench", "deps", "tests")
# MLflow's Python API reference (docs/api_reference/source/python_api/*.rst in MLflow's repository): the modules
# this project may import from.
PUBLIC_MODULES = frozenset({
    "mlflow", "mlflow.artifacts", "mlflow.client", "mlflow.config", "mlflow.deployments", "mlflow.entities",
    "mlflow.environment_variables", "mlflow.exceptions", "mlflow.models", "mlflow.pyfunc", "mlflow.server",
    "mlflow.tracking", "mlflow.types", "mlflow.types.schema",
    "mlflow.data", "mlflow.data.dataset", "mlflow.data.dataset_source", "mlflow.data.pandas_dataset",
    "mlflow.data.numpy_dataset", "mlflow.data.filesystem_dataset_source", "mlflow.data.http_dataset_source",
})


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _offence(name: str) -> str | None:
    """Why the dotted MLflow name ``name`` (a module, or a module then attributes) is not public; None if it is."""
    parts = name.split(".")
    if any(part.startswith("_") for part in parts):
        return f"{name}: a private name"
    modules = [".".join(parts[:end]) for end in range(2, len(parts) + 1) if _is_module(".".join(parts[:end]))]
    outside = [module for module in modules if module not in PUBLIC_MODULES]
    return f"{name}: {outside[0]} is not a documented module" if outside else None


def mlflow_names(source: str) -> list[str]:
    """Every MLflow name ``source`` uses: imported modules and names, and attribute chains on imported modules."""
    names, aliases = [], {}
    tree = ast.parse(source)
    inner = {id(child.value) for child in ast.walk(tree) if isinstance(child, ast.Attribute)}  # a chain's middle
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "mlflow":
                    names.append(alias.name)
                    aliases[alias.asname or alias.name.split(".")[0]] = alias.asname and alias.name or "mlflow"
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and \
                node.module.split(".")[0] == "mlflow":
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and id(node) not in inner:
            chain, base = [], node
            while isinstance(base, ast.Attribute):
                chain.insert(0, base.attr)
                base = base.value
            if isinstance(base, ast.Name) and base.id in aliases:
                names.append(".".join([aliases[base.id], *chain]))
    return names


def project_private_names(files: list[Path]) -> set[str]:
    """The underscored names the project defines itself (functions, classes, attributes and variables)."""
    names = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
    return {name for name in names if name.startswith("_")}


def foreign_private_attributes(source: str, own: set[str]) -> list[str]:
    """``x._name`` uses in a module that imports MLflow, where the project does not define ``_name``: MLflow's
    private methods and attributes (``dataset._to_mlflow_entity()``)."""
    tree = ast.parse(source)
    if not any(name.split(".")[0] == "mlflow" for name in mlflow_names(source)):
        return []
    return sorted({f"._{node.attr[1:]}: a private attribute the project does not define" for node in ast.walk(tree)
                   if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                   and node.attr not in own})


def test_the_check_sees_private_modules_names_and_attribute_chains():
    source = (
        "import mlflow\n"
        "from mlflow.entities import Metric\n"
        "from mlflow.tracking import MlflowClient\n"
        "def f():\n"
        "    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor\n"
        "    from mlflow.data import _private\n"
        "    import mlflow.store.tracking as store\n"
        "    mlflow.tracking.fluent.end_run()\n"
        "    return mlflow.pyfunc.log_model, mlflow.config.set_system_metrics_node_id\n"
    )
    offences = sorted(filter(None, map(_offence, mlflow_names(source))))
    assert offences == [
        "mlflow.data._private: a private name",
        "mlflow.store.tracking: mlflow.store is not a documented module",
        "mlflow.system_metrics.system_metrics_monitor.SystemMetricsMonitor: mlflow.system_metrics is not a "
        "documented module",
        "mlflow.tracking.fluent.end_run: mlflow.tracking.fluent is not a documented module",
    ]
    assert foreign_private_attributes(source + "entity = dataset._to_mlflow_entity()\n", {"_own"}) == [
        "._to_mlflow_entity: a private attribute the project does not define"]


def test_no_module_uses_a_private_mlflow_name():
    files = sorted(path for folder in FOLDERS for path in (REPO / folder).rglob("*.py"))
    assert len(files) > 100
    own = project_private_names(files)
    offences = [f"{path.relative_to(REPO)}: {offence}" for path in files
                for name in mlflow_names(path.read_text()) if (offence := _offence(name))]
    offences += [f"{path.relative_to(REPO)}: {offence}" for path in files
                 for offence in foreign_private_attributes(path.read_text(), own)]
    assert offences == []
