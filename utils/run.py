"""A training run's directory: named, or found again to resume (with the config it was started with); the config,
Hydra choices and tokenizer saved in it; the summary it leaves at the end. (Its state: utils/train_state.py.)"""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from utils.checkpoint import check_resumable, find_checkpoint, load_checkpoint, run_steps
from utils.distributed import Dist, broadcast_object
from utils.files import atomic_write, make_dir, remove_leftovers
from utils.sweep_summary import network_passes_per_act_step, write_run_summary
from utils.tokenizer import ChatTokenizer
from utils.train_state import TrainState, restore

CONFIG_GROUPS = ("arch", "dataset", "optimizer", "experiment")
CHOICES_FILE = "hydra_choices.yaml"  # in the run directory: the config group options it was started with


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
    overrides (e.g. max_steps, epochs, logger.mode, curriculum.start_stage: a saved one is not applied again) are
    applied on top of it. resume=true or resume=latest: the newest run of this command line's project
    (checkpoint_dir/<project_name>/*). Repeating a config group option the run was started with (dataset=text) is
    accepted; another option is refused."""
    latest = cfg.resume is True or cfg.resume == "latest"
    file = find_checkpoint(os.path.join(cfg.checkpoint_dir, project_name(cfg), "*", "latest") if latest else cfg.resume)
    check_resumable(file)
    run_dir = os.path.dirname(file) or "."
    saved_path = os.path.join(run_dir, "config.yaml")
    if not os.path.exists(saved_path):
        print(f"warning: {saved_path} not found; resuming with the config of this command line")
        return OmegaConf.merge(cfg, {"resume": file})
    saved = OmegaConf.load(saved_path)
    choices_path = os.path.join(run_dir, CHOICES_FILE)
    choices = OmegaConf.to_container(OmegaConf.load(choices_path)) if os.path.exists(choices_path) else {}
    if OmegaConf.select(saved, "curriculum.start_stage") is not None:  # applied once, when the run started there
        saved.curriculum.start_stage = None
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


RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json")  # any of them (or a checkpoint): a run lives here


def refuse_existing_run(cfg: DictConfig, run_dir: str | None) -> None:
    """A new run never writes into another run's directory (their configs, metrics and checkpoints would mix):
    `run_dir`, or the one run_name names, must not hold a run. Unnamed runs get a fresh name (new_run_dir)."""
    if cfg.resume:
        return
    path = run_dir or (os.path.join(cfg.checkpoint_dir, project_name(cfg), cfg.run_name) if cfg.run_name else None)
    if path and (run_steps(path) or any(os.path.exists(os.path.join(path, f)) for f in RUN_FILES)):
        raise ValueError(f"{path} already holds a run: continue it with resume={path}, or start a new run with "
                         "another run_name=...")


def last_checkpoint(run_dir: str) -> str | None:
    """The run's highest step_<N>.pt, None before its first save."""
    steps = run_steps(run_dir)
    return steps[-1][1] if steps else None


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
            if removed := remove_leftovers(run_dir):
                print(f"removed {len(removed)} unfinished write(s) of an interrupted save: {', '.join(removed)}")
    else:
        run_dir = broadcast_object(run_dir or (new_run_dir(cfg) if d.is_main else None))  # rank 0 names it
    if d.is_main:
        save_run_config(cfg, run_dir)
    return run_dir


def save_run_config(cfg: DictConfig, run_dir: str) -> None:
    """config.yaml (which a resume reads back, so written atomically) and, for a new run, the Hydra choices
    (a resume checks its config group overrides against them)."""
    make_dir(run_dir)
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


# ---------------------------------------------------------------- the end of a run

def report(cfg: DictConfig, run_dir: str, state: TrainState, test_data, device: torch.device,
           results: dict[str, float], logged: dict[str, float], world_size: int, wall_s: float) -> None:
    """Rank 0: the run's summary.json and its last line."""
    some_test_set = next(iter(test_data.values())) if isinstance(test_data, dict) else test_data  # (mixtures: by name)
    batch = next(iter(some_test_set), None)  # None: the data has no validation split
    write_run_summary(run_dir, cfg, results, logged, parameters=sum(p.numel() for p in state.model.parameters()),
                      steps=state.step, world_size=world_size, wall_s=wall_s, seq_len=state.model.config.seq_len,
                      passes_per_act_step=batch and network_passes_per_act_step(state.model, batch[1], device))
    if "test/exact_accuracy" in results:
        print(f"test exact accuracy: {results['test/exact_accuracy']:.4f} "
              f"(token accuracy {results['test/accuracy']:.4f}) after {state.step} steps; run dir {run_dir}")
    elif "test/perplexity" in results:
        trained = "next-token" if cfg.dataset.name == "text" else "trained-token"  # chat: the assistant's tokens
        print(f"validation perplexity: {results['test/perplexity']:.3f} ({trained} accuracy "
              f"{results['test/accuracy']:.4f}) after {state.step} steps; run dir {run_dir}")
