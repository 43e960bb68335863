"""Evaluators: each scores a model on the test data of one kind of run, behind one interface, and
dataset.evaluator names the one a run uses."""
from __future__ import annotations

import importlib
from typing import Any, Protocol

import torch
from omegaconf import DictConfig

# module:class, imported when chosen: `python -m evaluators.arc` (or .chat) runs that module as a script, which an
# import here would have loaded once already (runpy then warns of unpredictable behaviour)
EVALUATORS = {"puzzle": "evaluators.puzzle:PuzzleEvaluator", "arc": "evaluators.arc:ArcEvaluator",
              "language": "evaluators.language:LanguageEvaluator"}


class Evaluator(Protocol):
    def evaluate(self, model: torch.nn.Module, test_data: Any, device: torch.device,
                 step: int) -> tuple[dict[str, float], dict[str, list[dict]]]:
        """(metrics, tables): metrics summed over ranks, tables of sample outputs (may be empty)."""


def make_evaluator(cfg: DictConfig, run_dir: str | None, tokenizer=None, reduce=None) -> Evaluator:
    """The evaluator dataset.evaluator names; `reduce(tensor)` sums over ranks (None: one process)."""
    # configs saved before dataset.evaluator existed: language models have a tokenizer, puzzle runs none
    name = cfg.dataset.get("evaluator") or ("language" if tokenizer is not None else "puzzle")
    if name not in EVALUATORS:
        raise ValueError(f"dataset.evaluator: unknown evaluator {name!r}; choose one of {sorted(EVALUATORS)}")
    module, cls = EVALUATORS[name].split(":")
    return getattr(importlib.import_module(module), cls)(cfg, run_dir, tokenizer, reduce)
