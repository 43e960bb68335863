"""Puzzle evaluation: run every test example for the full ACT budget and score token/exact accuracy,
q-halt accuracy, and the exact accuracy reached after each ACT step."""
from __future__ import annotations

from collections import defaultdict
from typing import Callable, Iterable

import torch

from constants import IGNORE_LABEL_ID
from models.losses import ACTLossHead
from utils.sampling import act_steps

Batches = Iterable[tuple[str, dict[str, torch.Tensor], int]]


@torch.no_grad()
def evaluate_puzzles(model: ACTLossHead, batches: Batches, device: torch.device, reduce=None,
                     on_outputs: Callable[[str, dict, dict], None] | None = None) -> dict[str, float]:
    """`reduce(tensor)` sums a tensor over ranks (None: single process); `on_outputs(set name, batch, outputs)`
    sees the outputs of the last ACT step of every batch (the ARC evaluator collects predictions). Returns
    metrics per set."""
    was_training = model.training
    model.eval()
    sums: dict[str, dict[str, torch.Tensor]] = defaultdict(lambda: defaultdict(lambda: torch.zeros((), device=device)))
    for set_name, batch, _ in batches:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        valid = (batch["labels"] != IGNORE_LABEL_ID).any(-1)
        for step, (metrics, outputs) in enumerate(act_steps(model, batch), start=1):
            # accuracy had the model stopped after this step (every sample runs the same steps in eval)
            sums[set_name][f"exact_accuracy@step{step}"] += (outputs["seq_correct"] & valid).sum()
        for k, v in metrics.items():
            sums[set_name][k] += v.float()
        if on_outputs is not None:
            on_outputs(set_name, batch, outputs)
    model.train(was_training)

    results: dict[str, float] = {}
    for set_name, s in sorted(sums.items()):
        keys = sorted(s)
        values = torch.stack([s[k] for k in keys])
        if reduce is not None:
            values = reduce(values)
        totals = dict(zip(keys, values.tolist()))
        count = max(totals.pop("count"), 1.0)
        prefix = "" if len(sums) == 1 else f"{set_name}/"
        results.update({f"{prefix}{k}": v / count for k, v in totals.items()})
        results[f"{prefix}count"] = count
    return results


class PuzzleEvaluator:
    """dataset.evaluator=puzzle: the accuracy metrics above (no tables)."""

    def __init__(self, cfg, run_dir: str | None = None, tokenizer=None, reduce=None):
        self.reduce = reduce

    def evaluate(self, model: ACTLossHead, test_data: Batches, device: torch.device,
                 step: int) -> tuple[dict[str, float], dict[str, list[dict]]]:
        return evaluate_puzzles(model, test_data, device, self.reduce), {}
