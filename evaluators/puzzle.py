"""Puzzle evaluation: run every test example for the full ACT budget and score token/exact accuracy,
q-halt accuracy, the exact accuracy reached after each ACT step, and where the halting head would have
stopped (halt_step) with the exact accuracy there (halt_exact_accuracy)."""
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
    metrics per sample over every set; with several sets, each one's too (prefixed `<set>/`)."""
    was_training = model.training
    model.eval()
    sums: dict[str, dict[str, torch.Tensor]] = defaultdict(lambda: defaultdict(lambda: torch.zeros((), device=device)))
    for set_name, batch, _ in batches:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        valid = (batch["labels"] != IGNORE_LABEL_ID).any(-1)
        halt_step = torch.zeros_like(valid, dtype=torch.long)  # 0: the head has not said stop yet
        halt_correct = torch.zeros_like(valid)
        for step, (metrics, outputs) in enumerate(act_steps(model, batch), start=1):
            # accuracy had the model stopped after this step (every sample runs the same steps in eval)
            sums[set_name][f"exact_accuracy@step{step}"] += (outputs["seq_correct"] & valid).sum()
            # the stopping rule of training (models/trm.py), the last step when it never fires
            stop = (halt_step == 0) & (wants_to_halt(model, outputs) | (step == model.config.halt_max_steps))
            halt_step = torch.where(stop, step, halt_step)
            halt_correct = torch.where(stop, outputs["seq_correct"], halt_correct)
        sums[set_name]["halt_step"] += (halt_step * valid).sum()
        sums[set_name]["halt_exact_accuracy"] += (halt_correct & valid).sum()
        for k, v in metrics.items():
            sums[set_name][k] += v.float()
        if on_outputs is not None:
            on_outputs(set_name, batch, outputs)
    model.train(was_training)

    results: dict[str, float] = {}
    overall: dict[str, float] = defaultdict(float)
    for set_name, s in sorted(sums.items()):
        keys = sorted(s)
        values = torch.stack([s[k] for k in keys])
        if reduce is not None:
            values = reduce(values)
        totals = dict(zip(keys, values.tolist()))
        for k, v in totals.items():
            overall[k] += v
        if len(sums) > 1:
            results.update(per_sample(totals, f"{set_name}/"))
    return {**per_sample(overall), **results}


def per_sample(totals: dict[str, float], prefix: str = "") -> dict[str, float]:
    """Sums over samples (and their `count`) -> means per sample, and the count."""
    count = max(totals["count"], 1.0)
    return {f"{prefix}{k}": v / count for k, v in totals.items() if k != "count"} | {f"{prefix}count": count}


def wants_to_halt(model: ACTLossHead, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
    if model.config.no_ACT_continue:
        return outputs["q_halt_logits"] > 0
    return outputs["q_halt_logits"] > outputs["q_continue_logits"]


class PuzzleEvaluator:
    """dataset.evaluator=puzzle: the accuracy metrics above (no tables)."""

    def __init__(self, cfg, run_dir: str | None = None, tokenizer=None, reduce=None):
        self.reduce = reduce

    def evaluate(self, model: ACTLossHead, test_data: Batches, device: torch.device,
                 step: int) -> tuple[dict[str, float], dict[str, list[dict]]]:
        return evaluate_puzzles(model, test_data, device, self.reduce), {}
