"""The state a training run carries from step to step (model, optimizers, EMA, ACT carry), how it starts, and
how it goes into a checkpoint and comes back out of one."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from models import build_model
from models.ema import EMA
from models.losses import ACTLossHead
from models.trm import Carry
from utils.checkpoint import build_saved_model, init_from_run, save_checkpoint, shape_mismatch
from utils.curriculum import Stage
from utils.device import resolve_dtype
from utils.distributed import Dist, gather_rows
from utils.nonfinite import check_finite_weights
from utils.optim import optimizers_from_config


@dataclass
class TrainState:
    model: ACTLossHead
    optimizers: list[torch.optim.Optimizer]
    base_lrs: list[float]
    ema: EMA | None
    scaler: torch.amp.GradScaler  # float16: scales the loss against gradient underflow; otherwise disabled (a no-op)
    step: int = 0
    carry: Carry | None = None
    first_row: int = 0  # of this rank's rows in the global batch
    evaluator: dict | None = None  # what the evaluator keeps across evaluations (pooled ARC votes), as saved


def enter_stage(state: TrainState, stage: Stage, cfg: DictConfig, world_size: int, run_lrs: list[float],
                reset: bool) -> None:
    """Apply a curriculum stage: its learning rate scales the run's (`run_lrs`, one per optimizer), and it may
    start the optimizers afresh. (The data weights are read by the mixture itself.)"""
    if reset and stage.reset_optimizer:
        state.optimizers, _ = optimizers_from_config(state.model, cfg, world_size)
    scale = (stage.lr if stage.lr is not None else cfg.lr) / cfg.lr
    state.base_lrs = [lr * scale for lr in run_lrs]


def start_state(cfg: DictConfig, device: torch.device, train_data, d: Dist) -> tuple[TrainState, dict[str, Any]]:
    """(state, model_config): the network (from init_from's weights when given) and its optimizers."""
    arch = OmegaConf.to_container(cfg.arch, resolve=True)
    arch["forward_dtype"] = resolve_dtype(arch["forward_dtype"], device, training=True)
    if arch["forward_dtype"] == "float16" and device.type != "cuda":
        raise ValueError(f"arch.forward_dtype=float16 trains on CUDA only (with a loss scaler); on {device.type} "
                         "train with bfloat16 or float32 (generate.py --dtype float16 is fine anywhere)")
    fields = train_data.model_fields()
    for key, value in fields.items():  # +arch.seq_len=N and the like would be replaced by the data's without a word
        if arch.get(key) is not None and arch[key] != value:
            raise ValueError(f"arch.{key}={arch[key]}: the data sets it ({value})"
                             + ("; for chat and text rows use dataset.seq_len" if key == "seq_len" else ""))
    model_config = {**arch, **fields, "gradient_checkpointing": bool(cfg.get("gradient_checkpointing"))}
    if cfg.grad_accum_steps < 1 or train_data.local_batch_size % cfg.grad_accum_steps:
        raise ValueError(f"grad_accum_steps={cfg.grad_accum_steps} must divide the batch of each process "
                         f"({train_data.local_batch_size} = global_batch_size / {d.world_size} processes)")
    batch_size = train_data.local_batch_size // cfg.grad_accum_steps
    model = (build_saved_model(model_config, cfg.resume, batch_size=batch_size) if cfg.resume  # (its config's model)
             else build_model(model_config, batch_size=batch_size)).to(device)
    init_weights(cfg, model, train_data)
    optimizers, base_lrs = optimizers_from_config(model, cfg, d.world_size)
    state = TrainState(model, optimizers, base_lrs, EMA(model, cfg.ema_rate) if cfg.ema else None,
                       torch.amp.GradScaler(device.type, enabled=model_config["forward_dtype"] == "float16"),
                       first_row=d.rank * train_data.local_batch_size)
    return state, model_config


# ---------------------------------------------------------------- checkpoints

def global_carry(carry: Carry | None) -> dict[str, torch.Tensor] | None:
    """The ACT carry of the whole global batch (every rank's rows, in rank order) on rank 0: a checkpoint
    holds the same carry whatever the number of processes that trained it. Called on every rank."""
    if carry is None:
        return None
    return {k: gather_rows(v) for k, v in carry.state_dict().items()}


def init_weights(cfg: DictConfig, model: ACTLossHead, train_data) -> None:
    """init_from (or load_checkpoint, the official code's name for it): start from a run's weights alone (the
    optimizers start afresh); nothing when resuming."""
    init_from = cfg.init_from or cfg.load_checkpoint
    if cfg.init_from and cfg.load_checkpoint and cfg.init_from != cfg.load_checkpoint:
        raise ValueError(f"init_from={cfg.init_from} and load_checkpoint={cfg.load_checkpoint}: give one")
    if init_from and not cfg.resume:
        init_from_run(model, init_from, train_data.tokenizer() if hasattr(train_data, "tokenizer") else None)


def save_run_checkpoint(state: TrainState, train_data, cfg: DictConfig, model_config: dict[str, Any], run_dir: str,
                        device: torch.device, is_main: bool) -> str:
    """<run_dir>/step_<N>.pt (returned). Every rank takes part (the carry is gathered); rank 0 writes."""
    file = os.path.join(run_dir, f"step_{state.step}.pt")
    check_finite_weights(state.model, file, "not written")  # the same weights on every rank: all stop together
    carry = global_carry(state.carry)
    if is_main:
        save_checkpoint(file, checkpoint_state(state, train_data, cfg, model_config, carry, device))
    return file


def checkpoint_state(state: TrainState, train_data, cfg: DictConfig, model_config: dict[str, Any],
                     carry: dict[str, torch.Tensor] | None, device: torch.device) -> dict[str, Any]:
    # the RNG state is the same on every rank (the exploration draws cover the global batch), so rank 0's is kept
    rng = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    if torch.backends.mps.is_available():
        rng["mps"] = torch.mps.get_rng_state()
    return {
        "model": state.model.state_dict(),
        "ema": state.ema.state_dict() if state.ema else None,
        "ema_updates": state.ema.updates if state.ema else None,
        "scaler": state.scaler.state_dict() if state.scaler.is_enabled() else None,
        "optimizers": [o.state_dict() for o in state.optimizers],
        "step": state.step,
        "carry": carry,
        "data": train_data.state_dict(),
        "rng": rng,
        "evaluator": state.evaluator,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "model_config": model_config,  # build_model(**model_config) rebuilds the network without the data
    }


def restore(state: TrainState, train_data, ckpt: dict[str, Any], device: torch.device, rows: slice,
            global_batch_size: int) -> None:
    """Load a checkpoint into this rank's state; `rows` are the rank's rows of the saved global-batch carry."""
    if mismatch := shape_mismatch(state.model.state_dict(), ckpt["model"]):
        raise ValueError(f"resume: {mismatch}: resume with the run's own sizes (arch.*), or start a new run from "
                         "its weights with init_from=... (sizes must match there too)")
    state.model.load_state_dict(ckpt["model"])
    for opt, opt_state in zip(state.optimizers, ckpt["optimizers"], strict=True):
        opt.load_state_dict(opt_state)
    if state.ema is not None:
        if not ckpt.get("ema"):
            raise ValueError("resume: ema=true but the checkpoint has no EMA weights (resume it with ema=false)")
        state.ema.load_state_dict(ckpt["ema"])
        updates = ckpt.get("ema_updates")
        state.ema.updates = int(ckpt["step"] if updates is None else updates)  # (checkpoints before it: one per step)
    if state.scaler.is_enabled() and ckpt.get("scaler"):
        state.scaler.load_state_dict(ckpt["scaler"])
    state.step = int(ckpt["step"])
    state.evaluator = ckpt.get("evaluator")
    if ckpt["carry"] is not None:
        saved_rows = len(ckpt["carry"]["steps"])
        if saved_rows != global_batch_size:
            raise ValueError(f"resume: the checkpoint's ACT carry holds {saved_rows} rows but global_batch_size is "
                             f"{global_batch_size}; resume with the run's global_batch_size")
        state.carry = Carry.from_state_dict({k: v[rows].to(device) for k, v in ckpt["carry"].items()})
    train_data.load_state_dict(ckpt["data"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    if "cuda" in ckpt["rng"] and device.type == "cuda":
        cuda_rng = ckpt["rng"]["cuda"]  # this device's state (a list of every device's in older checkpoints)
        if isinstance(cuda_rng, list):
            torch.cuda.set_rng_state_all(cuda_rng)
        else:
            torch.cuda.set_rng_state(cuda_rng, device)
    if "mps" in ckpt["rng"] and torch.backends.mps.is_available():
        torch.mps.set_rng_state(ckpt["rng"]["mps"])
