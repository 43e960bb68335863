"""Token losses and the ACT loss head that turns model outputs into the training loss and metrics."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from constants import IGNORE_LABEL_ID
from models.trm import ACTModel, Batch, Carry, TRMConfig


def log_stablemax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """log of s(x_i) / sum_j s(x_j) with s(x) = 1/(1-x) for x < 0 and x+1 otherwise (no exponentials)."""
    s = torch.where(x < 0, 1 / (1 - x + 1e-30), x + 1)
    return torch.log(s / s.sum(dim=dim, keepdim=True))


def stablemax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token loss in float64 (TRM's default; float32 on Apple MPS, which has no float64); 0 where mask is False."""
    logp = log_stablemax(logits.to(torch.float32 if logits.device.type == "mps" else torch.float64))
    picked = logp.gather(-1, torch.where(mask, labels, 0).long().unsqueeze(-1)).squeeze(-1)
    return -torch.where(mask, picked, 0)


def softmax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token loss in float32; 0 where mask is False."""
    flat = F.cross_entropy(logits.float().flatten(0, -2), torch.where(mask, labels, 0).long().flatten(), reduction="none")
    return torch.where(mask, flat.view(labels.shape), 0)


LOSSES = {"stablemax_cross_entropy": stablemax_cross_entropy, "softmax_cross_entropy": softmax_cross_entropy}


class ACTLossHead(nn.Module):
    """Wraps an ACTModel: `carry, loss, metrics, outputs = head(carry, batch)`.

    loss = lm_loss + 0.5 * (q_halt_loss + q_continue_loss), summed over samples (the trainer divides by
    the global batch size). Metrics are sums over the samples that halted this step with >= 1 label.
    """

    def __init__(self, model: ACTModel, loss_type: str = "stablemax_cross_entropy"):
        super().__init__()
        if loss_type not in LOSSES:
            raise ValueError(f"unknown loss_type {loss_type!r}; choose one of {list(LOSSES)}")
        self.model = model
        self.loss_fn = LOSSES[loss_type]

    @property
    def config(self) -> TRMConfig:
        return self.model.config

    def initial_carry(self, batch: Batch) -> Carry:
        return self.model.initial_carry(batch)

    def forward(self, carry: Carry, batch: Batch, batch_rows: tuple[int, int] | None = None
                ) -> tuple[Carry, torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """batch_rows: see ACTModel.forward."""
        carry, outputs = self.model(carry, batch, batch_rows)
        labels, logits = carry.data["labels"], outputs["logits"]

        with torch.no_grad():
            preds = logits.argmax(-1)
            mask = labels != IGNORE_LABEL_ID
            counts = mask.sum(-1)
            divisor = counts.clamp_min(1).unsqueeze(-1)
            correct = mask & (preds == labels)
            seq_correct = correct.sum(-1) == counts
            valid = carry.halted & (counts > 0)
            metrics = {
                "count": valid.sum(),
                "accuracy": torch.where(valid, (correct.float() / divisor).sum(-1), 0).sum(),
                "exact_accuracy": (valid & seq_correct).sum(),
                "q_halt_accuracy": (valid & ((outputs["q_halt_logits"] >= 0) == seq_correct)).sum(),
                "steps": torch.where(valid, carry.steps, 0).sum(),
            }
            outputs["preds"] = preds
            outputs["seq_correct"] = seq_correct

        lm_loss = (self.loss_fn(logits, labels, mask) / divisor).sum()
        q_halt = F.binary_cross_entropy_with_logits(outputs["q_halt_logits"], seq_correct.float(), reduction="none")
        loss = lm_loss + 0.5 * q_halt.sum()
        # the metric leaves out the rows without labels (an evaluation batch's padding, "correct" with no answer)
        metrics.update(lm_loss=lm_loss.detach(), q_halt_loss=torch.where(counts > 0, q_halt.detach(), 0).sum())
        if "target_q_continue" in outputs:
            q_continue_loss = F.binary_cross_entropy_with_logits(
                outputs["q_continue_logits"], outputs["target_q_continue"], reduction="sum")
            loss = loss + 0.5 * q_continue_loss
            metrics["q_continue_loss"] = q_continue_loss.detach()
        return carry, loss, metrics, {k: v.detach() for k, v in outputs.items()}
