"""Importing the official TinyRecursiveModels code from a clone (benchmarks time it, tests compare against it)."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def import_official(path: str | Path, *names: str) -> list[ModuleType]:
    """The modules `names` (e.g. "models.recursive_reasoning.trm") of the official code at `path`.

    Its top-level package is also called `models`: ours are set aside in sys.modules while it imports, then
    restored; its modules stay loaded as `official_models.*` (the official classes keep references to them)."""
    if not (Path(path) / "models").is_dir():
        raise FileNotFoundError(f"{path}: not a clone of the official TinyRecursiveModels repository (no models/)")
    ours = {k: v for k, v in sys.modules.items() if k == "models" or k.startswith("models.")}
    for k in ours:
        del sys.modules[k]
    # its `models` is a namespace package, which any regular `models` package on the path (ours) would shadow
    saved_path = list(sys.path)
    sys.path[:] = [str(Path(path).resolve())] + [p for p in sys.path if Path(p or ".").resolve() != ROOT]
    try:
        return [importlib.import_module(name) for name in names]
    finally:
        sys.path[:] = saved_path
        for k in [k for k in sys.modules if k == "models" or k.startswith("models.")]:
            module = sys.modules.pop(k)
            module.__name__ = f"official_{k}"  # torch.compile finds a function's module by this name
            sys.modules[module.__name__] = module
        sys.modules.update(ours)
