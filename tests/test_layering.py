"""dagan/ is the pure library: it never imports the orchestration tools nor the steps and pipeline built on it.

Every module under dagan/ (``__main__.py`` included) is parsed, and every import in it counts: at the
top, inside functions (lazy imports), and ``importlib.import_module`` / ``__import__`` with a literal name.
"""

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOOLS = ("mlflow", "kfp", "ray", "boto3", "dvc")
STEPS = ("components", "pipeline")  # the layers above the library: they import it, never the other way
FORBIDDEN = TOOLS + STEPS
DYNAMIC_IMPORTS = ("import_module", "__import__")


def imported_names(source: str) -> list[str]:
    """Every absolute module name ``source`` imports, wherever the import statement or call is."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            function = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if function in DYNAMIC_IMPORTS and isinstance(node.args[0].value, str):
                names.append(node.args[0].value)
    return names


def library_files() -> list[Path]:
    return sorted((REPO / "dagan").rglob("*.py"))


def test_the_check_sees_lazy_and_dynamic_imports():
    source = (
        "import torch\n"
        "def serve(uri):\n"
        "    if uri:\n"
        "        from components.generate import load_from_mlflow\n"
        "    import pipeline.steps as steps\n"
        "    return importlib.import_module('mlflow'), __import__('ray.tune')\n"
    )
    assert sorted(imported_names(source)) == ["components.generate", "mlflow", "pipeline.steps", "ray.tune", "torch"]


def test_no_forbidden_import_anywhere_in_the_library():
    files = library_files()
    assert REPO / "dagan" / "__main__.py" in files and len(files) >= 20
    offenders = [
        f"{path.relative_to(REPO)}: {name}"
        for path in files
        for name in imported_names(path.read_text())
        if name.split(".")[0] in FORBIDDEN
    ]
    assert offenders == []


def test_importing_every_library_module_loads_no_tool_and_no_step():
    modules = sorted(".".join(p.relative_to(REPO).with_suffix("").parts) for p in library_files())
    assert "dagan.__main__" in modules
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m.removesuffix('.__init__'))\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stdout.strip() == "[]"
