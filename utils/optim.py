"""Optimizers: Adam-atan2 (fused CUDA kernel when available, else pure PyTorch), AdamW, and the factory."""
from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from omegaconf import DictConfig, OmegaConf

from models.sparse_embedding import SignSGD, SparseEmbedding


class AdamAtan2(torch.optim.Optimizer):
    """Adam with atan2 in place of the division by sqrt(v) + eps (Everett et al. 2024): no epsilon.

    Same rule as the fused `adam-atan2` CUDA package (scale a = b = 1):
        p <- p * (1 - lr * wd)
        m <- beta1 * m + (1 - beta1) * g;   v <- beta2 * v + (1 - beta2) * g^2
        p <- p - lr / (1 - beta1^t) * atan2(m, sqrt(v) / sqrt(1 - beta2^t))
    """

    def __init__(self, params: Iterable, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.95),
                 weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"].item()
                m, v, g = state["exp_avg"], state["exp_avg_sq"], p.grad
                p.mul_(1 - lr * wd)
                m.lerp_(g, 1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                denom = v.sqrt().div_((1 - beta2**t) ** 0.5)
                p.add_(torch.atan2(m, denom), alpha=-lr / (1 - beta1**t))


def fused_adam_atan2() -> type | None:
    """The fused CUDA optimizer of the `adam-atan2` package, if it is installed (it only builds with CUDA)."""
    try:
        from adam_atan2 import AdamATan2  # type: ignore[import-not-found]
    except Exception:  # not installed, or built without CUDA
        return None
    return AdamATan2


def build_optimizers(model: torch.nn.Module, optimizer: dict[str, Any], lr: float, weight_decay: float,
                     beta1: float, beta2: float, puzzle_emb_lr: float, puzzle_emb_weight_decay: float,
                     world_size: int = 1) -> tuple[list[torch.optim.Optimizer], list[float]]:
    """Main optimizer for the parameters plus sign-SGD for the puzzle embedding (if the model has one).

    Returns the optimizers and their base learning rates (the schedule scales each).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    name = optimizer["name"]
    kwargs = dict(lr=lr, betas=(beta1, beta2), weight_decay=weight_decay)
    if name == "adam_atan2":
        want = optimizer.get("fused", "auto")  # auto | true | false
        fused = fused_adam_atan2() if want is not False and params[0].is_cuda else None
        if want is True and fused is None:
            raise RuntimeError("optimizer.fused=true needs the adam-atan2 CUDA package and weights on CUDA")
        main = (fused or AdamAtan2)(params, **kwargs)
    elif name == "adamw":
        main = torch.optim.AdamW(params, eps=optimizer.get("eps", 1e-8), **kwargs)
    else:
        raise ValueError(f"unknown optimizer {name!r}; choose adam_atan2 or adamw")
    optimizers, lrs = [main], [lr]
    emb = next((m for m in model.modules() if isinstance(m, SparseEmbedding)), None)
    if emb is not None:
        optimizers.insert(0, SignSGD(emb, lr=puzzle_emb_lr, weight_decay=puzzle_emb_weight_decay, world_size=world_size))
        lrs.insert(0, puzzle_emb_lr)
    return optimizers, lrs


def optimizers_from_config(model: torch.nn.Module, cfg: DictConfig, world_size: int) -> tuple[list[torch.optim.Optimizer], list[float]]:
    """build_optimizers with the run config's values (the optimizer group and the top-level lr, betas, ...)."""
    return build_optimizers(
        model, OmegaConf.to_container(cfg.optimizer), lr=cfg.lr, weight_decay=cfg.weight_decay, beta1=cfg.beta1,
        beta2=cfg.beta2, puzzle_emb_lr=cfg.puzzle_emb_lr, puzzle_emb_weight_decay=cfg.puzzle_emb_weight_decay,
        world_size=world_size)


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Linear warmup to 1, then half a cosine down to min_ratio at total_steps (1.0: constant)."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_ratio + max(0.0, (1 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))
