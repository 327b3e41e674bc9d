"""dvc.yaml's code deps are each stage's import closure, so ``dvc repro`` reruns a stage when code it runs changed.

For every stage whose command runs ``python -m components.<step>``, the project modules the command can
import are found statically: every import statement at the top or inside a function (lazy), relative
(``from . import x``) or absolute, ``importlib.import_module`` / ``__import__`` with a literal name, and the
``__init__.py`` of every package on the way. The stage's code deps (paths under dagan/, components/,
pipeline/) must cover that closure, and name nothing else: a file dep is a module of the closure, a
directory dep a package the closure uses whole (every module in it), so editing code a stage never runs
does not rerun it. Data, params and artifact deps are not checked here.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("components", "dagan", "pipeline")  # in the order dvc.yaml lists them
DYNAMIC_IMPORTS = ("import_module", "__import__")
STEP_COMMAND = re.compile(r"python -m (components\.\w+)")
DVC = str(Path(sys.executable).with_name("dvc"))


def module_file(root: Path, name: str) -> Path | None:
    """The file of project module ``name`` (``a/b.py`` or ``a/b/__init__.py``); None outside the project."""
    base = root.joinpath(*name.split("."))
    if name.split(".")[0] not in PACKAGES:
        return None
    return next((path for path in (base.with_suffix(".py"), base / "__init__.py") if path.is_file()), None)


def imported_names(root: Path, path: Path) -> set[str]:
    """Every module name ``path`` may import: ``from a import b`` counts ``a`` and ``a.b`` (b may be a module)."""
    parts = path.relative_to(root).with_suffix("").parts
    package = parts[:-1]  # the package a relative import starts from (an __init__'s own package)
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            start = package[:len(package) - node.level + 1] if node.level else ()
            base = ".".join((*start, *([node.module] if node.module else [])))
            names |= {base} | {f"{base}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            function = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if function in DYNAMIC_IMPORTS and isinstance(node.args[0].value, str):
                names.add(node.args[0].value)
    return names


def import_closure(root: Path, module: str) -> set[Path]:
    """The project files importing ``module`` can load: its own, its packages' ``__init__.py``, and so on."""
    files: set[Path] = set()
    pending = [module]
    while pending:
        parts = pending.pop().split(".")
        for depth in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__.py and a/b/__init__.py first
            path = module_file(root, ".".join(parts[:depth]))
            if path is not None and path not in files:
                files.add(path)
                pending += sorted(imported_names(root, path))
    return files


def code_deps(deps: list) -> list[str]:
    """The deps under the project's packages (data, params and ``${...}`` artifact paths are not code)."""
    paths = [next(iter(dep)) if isinstance(dep, dict) else dep for dep in deps]
    return [path for path in paths if path.split("/")[0] in PACKAGES]


def expected_deps(root: Path, closure: set[Path]) -> list[str]:
    """The closure as dvc.yaml lists it: a package the closure uses whole as one directory, else its files."""
    listed = []

    def visit(folder: Path) -> None:
        modules = sorted(folder.rglob("*.py"))
        if folder.name not in PACKAGES and all(path in closure for path in modules):
            listed.append(str(folder.relative_to(root)))
            return
        listed.extend(str(path.relative_to(root)) for path in sorted(folder.glob("*.py")) if path in closure)
        for sub in sorted(path.parent for path in folder.glob("*/__init__.py")):
            visit(sub)

    for package in PACKAGES:
        visit(root / package)
    return listed


def dep_problems(root: Path, closure: set[Path], deps: list[str]) -> list[str]:
    """What is wrong with ``deps`` as the cover of ``closure``: a module not covered, or a dep that is not code
    of the closure (a file it never imports, a directory with a module it never imports)."""
    problems = []
    for dep in deps:
        path = root / dep
        modules = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        if not path.exists():
            problems.append(f"{dep}: no such file or directory")
        elif path.is_dir() and dep.rstrip("/") in PACKAGES:
            problems.append(f"{dep}: a whole top-level package; list its modules and sub-packages")
        elif unused := [str(module.relative_to(root)) for module in modules if module not in closure]:
            problems.append(f"{dep}: the stage never imports {', '.join(unused)}")
    uncovered = [str(path.relative_to(root)) for path in sorted(closure)
                 if not any(path == root / dep or root / dep in path.parents for dep in deps)]
    if uncovered:
        problems.append(f"imported by the stage but not a dep: {', '.join(uncovered)}")
    return problems


def stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def write_package(root: Path, files: dict[str, str]) -> None:
    for name, source in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(source)


def test_the_closure_sees_lazy_relative_dynamic_and_package_imports(tmp_path):
    write_package(tmp_path, {
        "components/__init__.py": "",
        "components/step.py": "import torch\nfrom dagan.data import read\n",
        "dagan/__init__.py": "",
        "dagan/data/__init__.py": "from .reader import read\n",
        "dagan/data/reader.py": "from . import formats\n\ndef read():\n    from dagan.model import build\n",
        "dagan/data/formats.py": "from ..console import log\n",
        "dagan/data/unused.py": "",
        "dagan/model.py": "import importlib\nbackend = importlib.import_module('dagan.backend')\n",
        "dagan/backend.py": "",
        "dagan/console.py": "",
        "dagan/never.py": "",
    })
    closure = import_closure(tmp_path, "components.step")
    assert sorted(str(path.relative_to(tmp_path)) for path in closure) == [
        "components/__init__.py", "components/step.py", "dagan/__init__.py", "dagan/backend.py", "dagan/console.py",
        "dagan/data/__init__.py", "dagan/data/formats.py", "dagan/data/reader.py", "dagan/model.py"]
    assert expected_deps(tmp_path, closure) == [
        "components/__init__.py", "components/step.py", "dagan/__init__.py", "dagan/backend.py", "dagan/console.py",
        "dagan/model.py", "dagan/data/__init__.py", "dagan/data/formats.py", "dagan/data/reader.py"]
    assert dep_problems(tmp_path, closure, expected_deps(tmp_path, closure)) == []
    assert dep_problems(tmp_path, closure, ["dagan", "components/step.py", "dagan/never.py", "dagan/gone.py"]) == [
        "dagan: a whole top-level package; list its modules and sub-packages",
        "dagan/never.py: the stage never imports dagan/never.py", "dagan/gone.py: no such file or directory",
        "imported by the stage but not a dep: components/__init__.py"]
    assert dep_problems(tmp_path, closure, ["components/__init__.py", "components/step.py", "dagan/data"]) == [
        "dagan/data: the stage never imports dagan/data/unused.py",
        "imported by the stage but not a dep: dagan/__init__.py, dagan/backend.py, dagan/console.py, dagan/model.py"]
    (tmp_path / "dagan/data/unused.py").unlink()  # now the stage uses the package dagan/data whole
    assert expected_deps(tmp_path, closure)[-1] == "dagan/data"


def test_every_stage_that_runs_code_is_checked():
    checked = {name for name, stage in stages().items() if STEP_COMMAND.search(stage["cmd"])}
    assert checked == {"synthesize", "prepare", "train", "train_judge", "evaluate", "register"}
    unchecked = {name for name, stage in stages().items() if code_deps(stage.get("deps", [])) and name not in checked}
    assert unchecked == set()


@pytest.mark.parametrize("name", sorted(name for name, stage in stages().items() if STEP_COMMAND.search(stage["cmd"])))
def test_a_stages_code_deps_are_its_import_closure(name):
    stage = stages()[name]
    closure = set().union(*(import_closure(REPO, module) for module in STEP_COMMAND.findall(stage["cmd"])))
    problems = dep_problems(REPO, closure, code_deps(stage["deps"]))
    assert problems == [], (f"dvc.yaml stage {name}: " + "; ".join(problems) + "\nits code deps should be:\n" +
                            "\n".join(f"      - {dep}" for dep in expected_deps(REPO, closure)))


def test_the_static_closure_holds_every_module_python_loads():
    """A cross-check of the parser: importing the stages' components loads no project module it missed."""
    modules = sorted({module for stage in stages().values() for module in STEP_COMMAND.findall(stage["cmd"])})
    code = (f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
            "print('\\n'.join(m.__file__ for m in list(sys.modules.values()) if getattr(m, '__file__', None)))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    loaded = {Path(line).resolve() for line in result.stdout.splitlines()}
    project = {path for path in loaded if path.is_relative_to(REPO) and path.relative_to(REPO).parts[0] in PACKAGES}
    static = set().union(*(import_closure(REPO, module) for module in modules))
    assert len(project) > 20 and sorted(project - static) == []


def test_bytecode_caches_are_not_part_of_a_directory_dep():
    """A directory dep hashes every file in it: Python's __pycache__ would rerun the stage after any import."""
    paths = ["dagan/nn/__pycache__/spade.cpython-311.pyc", "dagan/nn/spade.pyc"]
    result = subprocess.run([DVC, "check-ignore", *paths], cwd=REPO,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0 and result.stdout.split() == paths, result.stdout + result.stderr
