"""The train step's guard against non-finite numbers: a step whose loss or any gradient is NaN or infinite is
skipped (nothing is updated), counted and reported; `max_bad_steps` of them in a row stop the run, naming its
last good checkpoint. Every rank takes the same decision (one all-reduce of a flag), so under torchrun the
processes skip, and stop, together. A checkpoint is never written with non-finite weights."""
from __future__ import annotations

from typing import Iterable

import torch

from utils.distributed import all_reduce_sum


class NonFiniteTraining(ValueError):
    """The run cannot go on: too many non-finite steps in a row, or non-finite weights at a save."""


def all_finite(*groups: list[torch.Tensor]) -> list[bool]:
    """For each group of tensors (the first one not empty: a step's losses), whether all of them are finite on
    every rank; one all-reduce for all the groups."""
    device = groups[0][0].device
    bad = torch.stack([torch.stack([~t.isfinite().all() for t in group]).any() if group
                       else torch.zeros((), dtype=torch.bool, device=device) for group in groups])
    return (all_reduce_sum(bad.float()) == 0).tolist()


def gradients(params: Iterable[torch.nn.Parameter], optimizers: list) -> list[torch.Tensor]:
    """The gradients of `params`, and the puzzle embedding's rows that sign-SGD set aside (`pending`)."""
    pending = [g for opt in optimizers for _, g in getattr(opt, "pending", [])]
    return [p.grad for p in params if p.grad is not None] + pending


def back_off(scaler: torch.amp.GradScaler) -> None:
    """Lower the loss scale for an overflow the scaler cannot see (in sign-SGD's gradients) as it does for one it
    finds: times its backoff factor, and growth_interval good steps before it grows again (the count of good
    steps before the overflow is dropped: it would grow the scale back at once)."""
    scaler.update(scaler.get_scale() * scaler.get_backoff_factor())
    scaler.load_state_dict(scaler.state_dict() | {"_growth_tracker": 0})


def discard_gradients(model: torch.nn.Module, optimizers: list) -> None:
    """Drop a bad step's gradients (sign-SGD's set-aside rows too) without stepping."""
    model.zero_grad(set_to_none=True)
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)


def check_finite_weights(model: torch.nn.Module, where: str, doing: str) -> None:
    """Raise NonFiniteTraining ("<where>: <doing>: the weight ... holds NaN ...") when any weight is not finite."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not tensor.isfinite().all():
            raise NonFiniteTraining(f"{where}: {doing}: the weight {name} holds NaN or infinite values")


class BadSteps:
    """Counts skipped steps; stops the run after `max_in_row` in a row."""

    def __init__(self, max_in_row: int, last_checkpoint, say):
        self.max_in_row, self.last_checkpoint, self.say = max_in_row, last_checkpoint, say
        self.in_row = self.total = 0

    def good(self) -> None:
        self.in_row = 0

    def bad(self, step: int) -> None:
        """Step `step` was skipped: say so; raise NonFiniteTraining when it is the max_in_row-th in a row."""
        self.in_row, self.total = self.in_row + 1, self.total + 1
        self.say(f"step {step}: non-finite loss or gradient, step skipped ({self.in_row} in a row, {self.total} "
                 f"in all; the run stops after max_bad_steps={self.max_in_row} in a row)")
        if self.in_row >= self.max_in_row:
            last = self.last_checkpoint()
            raise NonFiniteTraining(
                f"step {step}: {self.in_row} steps in a row had a non-finite loss or gradient; stopped. "
                + (f"Last good checkpoint: {last} (resume={last} with a lower lr, or more lr_warmup_steps)" if last
                   else "No checkpoint was written yet (try a lower lr or more lr_warmup_steps)"))
