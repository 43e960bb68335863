"""One module per task (sudoku, maze, arc): its encoding into tokens and back, its checker and its
augmentation. Builders, evaluators and generate.py import these, never each other. (synthetic.py holds the
synthetic task suite for language models, which are not puzzles: it is not in TASKS.)"""
from __future__ import annotations

import importlib
from types import ModuleType

TASKS = ("sudoku", "maze", "arc")


def task_module(name: str) -> ModuleType:
    """tasks.<name>; a ValueError naming the known tasks otherwise."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {list(TASKS)}")
    return importlib.import_module(f"tasks.{name}")
