"""Layers only point down: each package imports only the packages below it (no folder-level cycle), and the
scripts that build datasets are imported by nothing but their own tests."""
from __future__ import annotations

import ast
import re
import subprocess
import sys

from conftest import ROOT

LAYERS = ["constants", "models", "utils", "tasks", "dataset", "evaluators"]  # bottom first


def project_imports(path) -> set[str]:
    """The modules of this project that `path` imports (anywhere in the file, lazy imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n for n in names if n.split(".")[0] in LAYERS}


def modules(layer: str):
    return [ROOT / f"{layer}.py"] if (ROOT / f"{layer}.py").exists() else sorted((ROOT / layer).glob("*.py"))


def test_each_layer_imports_only_the_layers_below_it():
    wrong = [f"{path.relative_to(ROOT)} imports {name}"
             for rank, layer in enumerate(LAYERS) for path in modules(layer) for name in project_imports(path)
             if LAYERS.index(name.split(".")[0]) > rank]
    assert not wrong


def test_only_tests_import_the_builder_scripts():
    """Task knowledge lives in tasks/; the trainer reaches a builder through dataset/puzzle_dataset.py's registry."""
    files = sorted(ROOT.glob("*.py")) + [path for layer in LAYERS for path in modules(layer)]
    wrong = [f"{path.relative_to(ROOT)} imports {name}" for path in files for name in project_imports(path)
             if name.startswith("dataset.build_") and path.parent.name != "dataset"]
    assert not wrong


def test_no_test_module_imports_another():
    """Shared test helpers live in conftest.py."""
    wrong = [f"{path.name} imports {node.module}" for path in sorted((ROOT / "tests").glob("test_*.py"))
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("test_")]
    assert not wrong


def test_packages_do_not_load_their_scripts():
    """`python -m evaluators.arc` imports the package first, then runs arc.py as __main__: a package whose import
    loaded arc.py (directly or through another module) would load it twice (runpy warns of unpredictable behaviour)."""
    scripts = [f"{path.parent.name}.{path.stem}" for layer in LAYERS for path in modules(layer)
               if 'if __name__ == "__main__"' in path.read_text()]
    packages = sorted({name.split(".")[0] for name in scripts})
    code = f"import sys, {', '.join(packages)}; print(sorted(set({scripts!r}) & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_package_modules_the_docs_run_by_path_can_be_run_so():
    """`python dataset/build_sudoku_dataset.py` works because the builders put the repository root on sys.path;
    the other package modules with a command line (utils/, evaluators/) are shown as `python -m ...` only."""
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *(p for layer in LAYERS for p in modules(layer))]
    shown = {m for doc in docs for m in re.findall(rf"python3? ((?:{'|'.join(LAYERS)})/\w+\.py)", doc.read_text())}
    wrong = [path for path in sorted(shown) if "sys.path.insert" not in (ROOT / path).read_text()]
    assert shown and not wrong, f"run as a path but not importable so (show python -m instead): {wrong}"
