"""Exponential moving average of the trained parameters (buffers, e.g. the puzzle-embedding table, are live).

Bias-corrected as Adam's moments are: after t updates the average is sum_i (1 - r) r^(t-i) w_i / (1 - r^t) over the
trained weights w_1..w_t alone, so an early evaluation does not carry the initial weights (a plain EMA at rate 0.99
still holds 21% of them after 156 steps). It tends to the official code's plain EMA as r^t -> 0: at its rate
0.999 the two differ by under 1e-21 of the initial weights after 50k steps."""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


def auto_ema_rate(steps: int) -> float:
    """`ema_rate=auto`: an averaging window (1 / (1 - rate) steps) of 2% of the run, within the paper's 0.999 (runs
    of 50k steps and more, as all of its recipes) and 0.99 (runs of 5k steps and fewer, e.g. the default job)."""
    return min(0.999, max(0.99, 1 - 50 / steps))


class EMA:
    def __init__(self, model: nn.Module, rate: float = 0.999):
        self.rate = rate
        self.updates = 0  # weights folded in so far (checkpoints keep it beside the shadow)
        self.shadow = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold in the weights after an optimizer step that changed them."""
        self.updates += 1
        r, t = self.rate, self.updates
        decay = r * (1 - r ** (t - 1)) / (1 - r ** t)  # the average so far keeps this; the new weights the rest
        for name, p in model.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(p.detach(), 1.0 - decay)

    @contextmanager
    def applied(self, model: nn.Module):
        """Temporarily load the averaged weights into `model` (for evaluation and saving)."""
        params = dict(model.named_parameters())
        backup = {n: params[n].detach().clone() for n in self.shadow}
        with torch.no_grad():
            for n, v in self.shadow.items():
                params[n].copy_(v)
        try:
            yield model
        finally:
            with torch.no_grad():
                for n, v in backup.items():
                    params[n].copy_(v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) ^ set(state)
        if missing:
            raise KeyError(f"EMA state does not match the model: {sorted(missing)[:5]}")
        for n, v in state.items():
            self.shadow[n].copy_(v)
