"""Evaluators: each scores a model on the test data of one kind of run, behind one interface, and
dataset.evaluator names the one a run uses."""
from __future__ import annotations

from typing import Any, Protocol

import torch
from omegaconf import DictConfig

from evaluators.arc import ArcEvaluator
from evaluators.language import LanguageEvaluator
from evaluators.puzzle import PuzzleEvaluator

EVALUATORS = {"puzzle": PuzzleEvaluator, "arc": ArcEvaluator, "language": LanguageEvaluator}


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
    return EVALUATORS[name](cfg, run_dir, tokenizer, reduce)
