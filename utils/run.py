"""A training run's life outside the loop: its state, its directory (named, or found again to resume) with the
config, Hydra choices and tokenizer saved in it, the checkpoint state (what is saved, and restoring it), and
the summary it leaves at the end."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from models.ema import EMA
from models.losses import ACTLossHead
from models.trm import Carry
from utils.checkpoint import find_checkpoint, init_from_run, load_checkpoint, save_checkpoint
from utils.distributed import Dist, broadcast_object, gather_rows
from utils.curriculum import Stage
from utils.files import atomic_write
from utils.optim import optimizers_from_config
from utils.sweep_summary import network_passes_per_act_step, write_run_summary
from utils.tokenizer import ChatTokenizer

CONFIG_GROUPS = ("arch", "dataset", "optimizer", "experiment")
CHOICES_FILE = "hydra_choices.yaml"  # in the run directory: the config group options it was started with


@dataclass
class TrainState:
    model: ACTLossHead
    optimizers: list[torch.optim.Optimizer]
    base_lrs: list[float]
    ema: EMA | None
    step: int = 0
    carry: Carry | None = None
    first_row: int = 0  # of this rank's rows in the global batch


def enter_stage(state: TrainState, stage: Stage, cfg: DictConfig, world_size: int, run_lrs: list[float],
                reset: bool) -> None:
    """Apply a curriculum stage: its learning rate scales the run's (`run_lrs`, one per optimizer), and it may
    start the optimizers afresh. (The data weights are read by the mixture itself.)"""
    if reset and stage.reset_optimizer:
        state.optimizers, _ = optimizers_from_config(state.model, cfg, world_size)
    scale = (stage.lr if stage.lr is not None else cfg.lr) / cfg.lr
    state.base_lrs = [lr * scale for lr in run_lrs]


# ---------------------------------------------------------------- run directories

def hydra_choices() -> dict[str, str]:
    """The config group options of this command line (e.g. arch: trm_chat); {} when the config was composed
    without Hydra's runtime (tests use compose())."""
    if not HydraConfig.initialized():
        return {}
    choices = HydraConfig.get().runtime.choices
    return {group: choices[group] for group in CONFIG_GROUPS if choices.get(group) is not None}


def resume_config(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """A resumed run keeps the config it was started with; only this command line's `key=value`
    overrides (e.g. max_steps, epochs, logger.mode) are applied on top of it. resume=true or resume=latest:
    the newest run of this command line's project (checkpoint_dir/<project_name>/*). Repeating a config group
    option the run was started with (dataset=text) is accepted; another option is refused."""
    latest = cfg.resume is True or cfg.resume == "latest"
    file = find_checkpoint(os.path.join(cfg.checkpoint_dir, project_name(cfg), "*", "latest") if latest else cfg.resume)
    run_dir = os.path.dirname(file) or "."
    saved_path = os.path.join(run_dir, "config.yaml")
    if not os.path.exists(saved_path):
        print(f"warning: {saved_path} not found; resuming with the config of this command line")
        return OmegaConf.merge(cfg, {"resume": file})
    saved = OmegaConf.load(saved_path)
    choices_path = os.path.join(run_dir, CHOICES_FILE)
    choices = OmegaConf.to_container(OmegaConf.load(choices_path)) if os.path.exists(choices_path) else {}
    for override in overrides:
        key, _, value = override.partition("=")
        key = key.lstrip("+~")
        if key in CONFIG_GROUPS:
            if choices.get(key) == value and not override.startswith("~"):
                continue  # the option the run was started with
            started = f"it was started with {key}={choices[key]}" if key in choices else "its options were not saved"
            raise ValueError(f"resume: {override!r} would change the config group of the run being resumed "
                             f"({run_dir}: {started})")
        OmegaConf.update(saved, key, OmegaConf.select(cfg, key), merge=False, force_add=True)
    saved.resume = file
    return saved


def project_name(cfg: DictConfig) -> str:
    return cfg.project_name or f"{os.path.basename(os.path.normpath(cfg.data_paths[0])).capitalize()}-ACT-torch"


def new_run_dir(cfg: DictConfig) -> str:
    project = project_name(cfg)
    arch = hydra_choices().get("arch", cfg.arch.name)  # the option (trm_chat) when known, else the model (trm)
    name = cfg.run_name or f"{arch}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = os.path.join(cfg.checkpoint_dir, project, name)
    suffix = 1
    while os.path.exists(run_dir) and not cfg.run_name:  # two runs started in the same second
        run_dir, suffix = os.path.join(cfg.checkpoint_dir, project, f"{name}-{suffix}"), suffix + 1
    return run_dir


def open_run_dir(cfg: DictConfig, d: Dist, state: TrainState, train_data, device: torch.device,
                 run_dir: str | None) -> str:
    """The run's directory, with its config saved: a resumed run's (its checkpoint restored into `state` and
    `train_data`), else `run_dir` or a new one named by rank 0."""
    if cfg.resume:
        ckpt_path = find_checkpoint(cfg.resume)
        local = train_data.local_batch_size
        restore(state, train_data, load_checkpoint(ckpt_path), device, slice(d.rank * local, (d.rank + 1) * local),
                cfg.global_batch_size)
        run_dir = os.path.dirname(ckpt_path) or "."
        if d.is_main:
            print(f"resumed {ckpt_path} at step {state.step}")
    else:
        run_dir = broadcast_object(run_dir or (new_run_dir(cfg) if d.is_main else None))  # rank 0 names it
    if d.is_main:
        save_run_config(cfg, run_dir)
    return run_dir


def save_run_config(cfg: DictConfig, run_dir: str) -> None:
    """config.yaml (which a resume reads back, so written atomically) and, for a new run, the Hydra choices
    (a resume checks its config group overrides against them)."""
    os.makedirs(run_dir, exist_ok=True)
    yaml = OmegaConf.to_yaml(cfg, resolve=True).encode()
    atomic_write(Path(run_dir) / "config.yaml", lambda f: f.write(yaml))
    if not cfg.resume and (choices := hydra_choices()):
        atomic_write(Path(run_dir) / CHOICES_FILE, lambda f: f.write(OmegaConf.to_yaml(choices).encode()))


def run_tokenizer(cfg: DictConfig, train_data, run_dir: str, is_main: bool) -> ChatTokenizer | None:
    """A language model keeps its tokenizer in the run directory, so generation needs nothing else."""
    if not hasattr(train_data, "tokenizer"):
        return None
    tokenizer = train_data.tokenizer()
    saved = os.path.join(run_dir, "tokenizer")
    if cfg.resume and os.path.isdir(saved) and ChatTokenizer.load(saved).fingerprint() != tokenizer.fingerprint():
        raise ValueError(f"{cfg.data_paths[0]}: its tokenizer differs from the one of the run being resumed ({saved})")
    if is_main and not (cfg.resume and os.path.isdir(saved)):  # a resumed run's was checked above
        tokenizer.save(saved)
    return tokenizer


# ---------------------------------------------------------------- checkpoint state

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
                        device: torch.device, is_main: bool) -> None:
    """<run_dir>/step_<N>.pt. Every rank takes part (the carry is gathered); rank 0 writes."""
    carry = global_carry(state.carry)
    if is_main:
        save_checkpoint(os.path.join(run_dir, f"step_{state.step}.pt"),
                        checkpoint_state(state, train_data, cfg, model_config, carry, device))


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
        "optimizers": [o.state_dict() for o in state.optimizers],
        "step": state.step,
        "carry": carry,
        "data": train_data.state_dict(),
        "rng": rng,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "model_config": model_config,  # build_model(**model_config) rebuilds the network without the data
    }


def restore(state: TrainState, train_data, ckpt: dict[str, Any], device: torch.device, rows: slice,
            global_batch_size: int) -> None:
    """Load a checkpoint into this rank's state; `rows` are the rank's rows of the saved global-batch carry."""
    state.model.load_state_dict(ckpt["model"])
    for opt, opt_state in zip(state.optimizers, ckpt["optimizers"], strict=True):
        opt.load_state_dict(opt_state)
    if state.ema is not None:
        if not ckpt.get("ema"):
            raise ValueError("resume: ema=true but the checkpoint has no EMA weights")
        state.ema.load_state_dict(ckpt["ema"])
    state.step = int(ckpt["step"])
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


# ---------------------------------------------------------------- the end of a run

def report(cfg: DictConfig, run_dir: str, state: TrainState, test_data, device: torch.device,
           results: dict[str, float], logged: dict[str, float], world_size: int, wall_s: float) -> None:
    """Rank 0: the run's summary.json and its last line."""
    some_test_set = next(iter(test_data.values())) if isinstance(test_data, dict) else test_data  # (mixtures: by name)
    write_run_summary(run_dir, cfg, results, logged, parameters=sum(p.numel() for p in state.model.parameters()),
                      steps=state.step, world_size=world_size, wall_s=wall_s,
                      passes_per_act_step=network_passes_per_act_step(state.model, next(iter(some_test_set))[1], device))
    if "test/exact_accuracy" in results:
        print(f"test exact accuracy: {results['test/exact_accuracy']:.4f} "
              f"(token accuracy {results['test/accuracy']:.4f}) after {state.step} steps; run dir {run_dir}")
    elif "test/perplexity" in results:
        trained = "next-token" if cfg.dataset.name == "text" else "trained-token"  # chat: the assistant's tokens
        print(f"validation perplexity: {results['test/perplexity']:.3f} ({trained} accuracy "
              f"{results['test/accuracy']:.4f}) after {state.step} steps; run dir {run_dir}")
