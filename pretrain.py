"""Train a Tiny Recursive Model or a transformer baseline.

    python pretrain.py                                   # small TRM on generated Sudoku, on the CPU
    python pretrain.py arch=transformer lr=3e-4          # any config value can be overridden
    python pretrain.py +experiment=sudoku_extreme_mlp    # a paper recipe
    python pretrain.py resume=checkpoints/<project>/<run> # continue exactly where a run stopped
    torchrun --nproc-per-node 8 pretrain.py ...          # one process per GPU (utils/distributed.py)
    python pretrain.py -m arch.H_cycles=1,2,3 arch.L_cycles=2,4  # a sweep; python -m utils.sweep_summary <dir>

The composed config is config/cfg_pretrain.yaml with the groups arch/, dataset/, optimizer/.
"""
from __future__ import annotations

import importlib
import os
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from dataset.chat_dataset import ChatDataset
from dataset.common import atomic_write
from dataset.mixture import build_mixture_data, plateau_value
from dataset.puzzle_dataset import PuzzleDataset
from dataset.text_dataset import TextDataset
from evaluators.arc import evaluate_arc
from evaluators.language import LanguageEvaluator
from evaluators.puzzle import evaluate_puzzles
from models import build_model
from models.ema import EMA
from models.losses import ACTLossHead
from models.sparse_embedding import SignSGD
from models.trm import Carry
from utils.checkpoint import find_checkpoint, init_from_run, load_checkpoint, save_checkpoint
from utils.curriculum import Stage
from utils.device import describe_policy, resolve_compile, resolve_dtype
from utils.distributed import (Dist, all_reduce_sum, barrier, broadcast_object, gather_rows, init_distributed,
                               reduce_sums, shutdown, sum_gradients)
from utils.logger import RunLogger
from utils.optim import build_optimizers, lr_factor
from utils.sweep_summary import network_passes_per_act_step, write_run_summary
from utils.tokenizer import ChatTokenizer


@dataclass
class TrainState:
    model: ACTLossHead
    optimizers: list[torch.optim.Optimizer]
    base_lrs: list[float]
    ema: EMA | None
    step: int = 0
    carry: Carry | None = None
    first_row: int = 0  # of this rank's rows in the global batch


# ---------------------------------------------------------------- data

DATASET_BUILD_TIMEOUT = timedelta(hours=4)  # ARC with 1000 augmentations takes ~10 minutes on one core
# dataset.build.builder -> (module, its build config class); the module's build(config) writes the dataset
PUZZLE_BUILDERS = {"sudoku": ("dataset.build_sudoku_dataset", "SudokuBuildConfig"),
                   "arc": ("dataset.build_arc_dataset", "ArcBuildConfig"),
                   "maze": ("dataset.build_maze_dataset", "MazeBuildConfig")}


def build_puzzle_data(cfg: DictConfig, rank: int, world_size: int) -> tuple[PuzzleDataset, PuzzleDataset]:
    build = cfg.dataset.get("build")
    train_dir = os.path.join(cfg.data_paths[0], "train")
    if build and rank == 0 and not os.path.exists(os.path.join(train_dir, "dataset.json")):
        build = dict(OmegaConf.to_container(build, resolve=True))
        builder = build.pop("builder")
        if builder not in PUZZLE_BUILDERS:
            raise ValueError(f"dataset.build.builder: unknown builder {builder!r}; choose one of {sorted(PUZZLE_BUILDERS)}")
        print(f"{cfg.data_paths[0]} not found: building it with the {builder} builder")
        module = importlib.import_module(PUZZLE_BUILDERS[builder][0])
        module.build(getattr(module, PUZZLE_BUILDERS[builder][1])(output_dir=cfg.data_paths[0], **build))
    barrier(timeout=DATASET_BUILD_TIMEOUT)  # the other ranks wait for rank 0's build
    for path in list(cfg.data_paths) + list(cfg.data_paths_test):
        if not os.path.isdir(path):
            raise FileNotFoundError(f"dataset directory {path} not found (build it with dataset/build_*_dataset.py "
                                    "or set data_paths=[...])")
    kwargs = dict(global_batch_size=cfg.global_batch_size, seed=cfg.seed, rank=rank, world_size=world_size)
    return (PuzzleDataset(list(cfg.data_paths), "train", **kwargs),
            PuzzleDataset(list(cfg.data_paths_test or cfg.data_paths), "test", **kwargs))


def build_chat_data(cfg: DictConfig, rank: int, world_size: int) -> tuple[ChatDataset, ChatDataset]:
    if len(cfg.data_paths) != 1:
        raise ValueError(f"dataset=chat trains on one built dataset, got data_paths={list(cfg.data_paths)}")
    kwargs = dict(global_batch_size=cfg.global_batch_size, seed=cfg.seed, rank=rank, world_size=world_size,
                  pack=cfg.dataset.pack, seq_len=cfg.dataset.get("seq_len"))
    test_path = cfg.data_paths_test[0] if cfg.data_paths_test else cfg.data_paths[0]
    return ChatDataset(cfg.data_paths[0], "train", **kwargs), ChatDataset(test_path, "test", **kwargs)


def build_text_data(cfg: DictConfig, rank: int, world_size: int) -> tuple[TextDataset, TextDataset]:
    if len(cfg.data_paths) != 1:
        raise ValueError(f"dataset=text trains on one built dataset, got data_paths={list(cfg.data_paths)}")
    kwargs = dict(seq_len=cfg.dataset.seq_len, global_batch_size=cfg.global_batch_size, seed=cfg.seed, rank=rank,
                  world_size=world_size, pack=cfg.dataset.pack)
    test_path = cfg.data_paths_test[0] if cfg.data_paths_test else cfg.data_paths[0]
    return TextDataset(cfg.data_paths[0], "train", **kwargs), TextDataset(test_path, "test", **kwargs)


def build_data(cfg: DictConfig, rank: int, world_size: int):
    """(train, test) iterators for cfg.dataset.name; both yield (set name, batch, global batch size)
    (a mixture's test data is a dict of them, one per source)."""
    builders = {"puzzle": build_puzzle_data, "chat": build_chat_data, "text": build_text_data,
                "mixture": build_mixture_data}
    if cfg.dataset.name not in builders:
        raise ValueError(f"dataset.name: unknown dataset kind {cfg.dataset.name!r}; choose one of {sorted(builders)}")
    return builders[cfg.dataset.name](cfg, rank, world_size)


# ---------------------------------------------------------------- checkpoints

def global_carry(carry: Carry | None) -> dict[str, torch.Tensor] | None:
    """The ACT carry of the whole global batch (every rank's rows, in rank order) on rank 0: a checkpoint
    holds the same carry whatever the number of processes that trained it. Called on every rank."""
    if carry is None:
        return None
    return {k: gather_rows(v) for k, v in carry.state_dict().items()}


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


CONFIG_GROUPS = ("arch", "dataset", "optimizer", "experiment")
CHOICES_FILE = "hydra_choices.yaml"  # in the run directory: the config group options it was started with


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


# ---------------------------------------------------------------- training

def train_step(state: TrainState, forward, batch: dict[str, torch.Tensor], cfg: DictConfig,
               total_steps: int) -> dict[str, torch.Tensor]:
    """One optimizer step on this rank's rows of a global batch, in cfg.grad_accum_steps micro-batches (each its
    own forward and backward; their gradients add up to the batch's)."""
    if state.carry is None:
        state.carry = state.model.initial_carry(batch)
    k = cfg.grad_accum_steps
    n = len(batch["inputs"]) // k
    carries, metrics = [], {}
    for i in range(k):
        rows = slice(i * n, (i + 1) * n)
        state.model.model.batch_rows = (state.first_row + i * n, cfg.global_batch_size)  # its exploration draws
        carry, loss, micro_metrics, _ = forward(state.carry.rows(rows) if k > 1 else state.carry,
                                                {name: v[rows] for name, v in batch.items()} if k > 1 else batch)
        (loss / cfg.global_batch_size).backward()
        for opt in state.optimizers:  # sign-SGD sets each micro-batch's puzzle-embedding gradient aside
            if isinstance(opt, SignSGD):
                opt.collect()
        carries.append(carry)
        metrics = {name: metrics.get(name, 0) + v for name, v in micro_metrics.items()}
    state.carry = Carry.cat(carries) if k > 1 else carries[0]
    sum_gradients(list(state.model.parameters()))  # torchrun: the ranks' parts add up to the global batch's gradient
    state.step += 1
    factor = lr_factor(state.step, cfg.lr_warmup_steps, total_steps, cfg.lr_min_ratio)
    for opt, base_lr in zip(state.optimizers, state.base_lrs):
        for group in opt.param_groups:
            group["lr"] = base_lr * factor
        opt.step()
        opt.zero_grad(set_to_none=True)
    if state.ema is not None:
        state.ema.update(state.model)
    return metrics


def summarize_train_metrics(sums: dict[str, torch.Tensor], num_steps: int, global_batch_size: int) -> dict[str, float]:
    """Metric sums over the last `num_steps` steps -> loss per sample, accuracy and ACT steps per halted sample."""
    values = {k: v.item() for k, v in sums.items()}
    count = max(values.pop("count"), 1)
    return {f"train/{k}": v / (global_batch_size * num_steps if k.endswith("loss") else count)
            for k, v in values.items()}


def evaluate(state: TrainState, forward, test_data, device: torch.device, cfg: DictConfig,
             run_dir: str | None = None, d: Dist = Dist(),
             language: LanguageEvaluator | None = None) -> tuple[dict[str, float], dict[str, list[dict]]]:
    """Metrics on the test split (summed over ranks), plus (language models) tables of sample outputs and probe
    outputs; with the EMA weights. ARC (dataset.evaluator=arc) adds pass@k and writes
    <run_dir>/submission_step_<N>.json."""
    reduce = all_reduce_sum if d.enabled else None
    def run():
        if cfg.dataset.get("evaluator") == "arc":
            submission = os.path.join(run_dir, f"submission_step_{state.step}.json") if run_dir else None
            return evaluate_arc(forward, test_data, device, (cfg.data_paths_test or cfg.data_paths)[0], submission,
                                reduce=reduce), {}
        if language is None:
            return evaluate_puzzles(forward, test_data, device, reduce), {}
        return language(forward, test_data, device, reduce)
    if state.ema is None:
        return run()
    with state.ema.applied(state.model):
        return run()


def make_optimizers(model: torch.nn.Module, cfg: DictConfig, world_size: int):
    return build_optimizers(
        model, OmegaConf.to_container(cfg.optimizer), lr=cfg.lr, weight_decay=cfg.weight_decay, beta1=cfg.beta1,
        beta2=cfg.beta2, puzzle_emb_lr=cfg.puzzle_emb_lr, puzzle_emb_weight_decay=cfg.puzzle_emb_weight_decay,
        world_size=world_size)


def enter_stage(state: TrainState, stage: Stage, cfg: DictConfig, world_size: int, run_lrs: list[float],
                reset: bool) -> None:
    """Apply a curriculum stage: its learning rate scales the run's (`run_lrs`, one per optimizer), and it may
    start the optimizers afresh. (The data weights are read by the mixture itself.)"""
    if reset and stage.reset_optimizer:
        state.optimizers, _ = make_optimizers(state.model, cfg, world_size)
    scale = (stage.lr if stage.lr is not None else cfg.lr) / cfg.lr
    state.base_lrs = [lr * scale for lr in run_lrs]


def train(cfg: DictConfig, run_dir: str | None = None) -> dict[str, float]:
    """Run one training job (one of torchrun's processes: every rank calls this) into `run_dir` (default: a new
    directory under checkpoint_dir); returns the last evaluation's metrics (prefixed test/)."""
    d, device = init_distributed(cfg.device)
    try:
        results = run_training(cfg, d, device, run_dir)
        barrier()  # no process tears its connections down while another still uses them
        return results
    finally:
        shutdown(d)


def run_training(cfg: DictConfig, d: Dist, device: torch.device, run_dir: str | None) -> dict[str, float]:
    started = time.time()
    rank, world_size = d.rank, d.world_size
    torch.manual_seed(cfg.seed)  # weights and the ACT exploration draws: the same on every rank

    train_data, test_data = build_data(cfg, rank, world_size)
    arch = OmegaConf.to_container(cfg.arch, resolve=True)
    arch["forward_dtype"] = resolve_dtype(arch["forward_dtype"], device, training=True)
    model_config = {**arch, **train_data.model_fields()}
    if cfg.grad_accum_steps < 1 or train_data.local_batch_size % cfg.grad_accum_steps:
        raise ValueError(f"grad_accum_steps={cfg.grad_accum_steps} must divide the batch of each process "
                         f"({train_data.local_batch_size} = global_batch_size / {world_size} processes)")
    model = build_model(model_config, batch_size=train_data.local_batch_size // cfg.grad_accum_steps).to(device)
    init_from = cfg.init_from or cfg.load_checkpoint  # load_checkpoint: the official code's name for it
    if cfg.init_from and cfg.load_checkpoint and cfg.init_from != cfg.load_checkpoint:
        raise ValueError(f"init_from={cfg.init_from} and load_checkpoint={cfg.load_checkpoint}: give one")
    if init_from and not cfg.resume:  # weights only: the optimizers below start afresh
        init_from_run(model, init_from, train_data.tokenizer() if hasattr(train_data, "tokenizer") else None)
    optimizers, base_lrs = make_optimizers(model, cfg, world_size)
    state = TrainState(model, optimizers, base_lrs, EMA(model, cfg.ema_rate) if cfg.ema else None,
                       first_row=rank * train_data.local_batch_size)
    curriculum = getattr(train_data, "curriculum", None)

    steps_per_epoch = train_data.examples_per_epoch / cfg.global_batch_size
    total_steps = max(1, int(cfg.epochs * steps_per_epoch))
    stop = min(total_steps, cfg.max_steps or total_steps)
    # evaluate after every eval_interval epochs (the last one at the end), skipping the first min_eval_interval
    n_evals = max(1, int(cfg.epochs // cfg.eval_interval))
    eval_steps = {max(1, round(k * total_steps / n_evals)) for k in range(cfg.min_eval_interval + 1, n_evals + 1)}
    # the device policy's choices (auto -> measured rule in utils/device.py), recorded in the run's config
    use_compile, compile_note = resolve_compile(cfg.compile, device, stop)
    cfg.arch.forward_dtype, cfg.compile = arch["forward_dtype"], use_compile

    if cfg.resume:
        ckpt_path = find_checkpoint(cfg.resume)
        local = train_data.local_batch_size
        restore(state, train_data, load_checkpoint(ckpt_path), device, slice(rank * local, (rank + 1) * local),
                cfg.global_batch_size)
        run_dir = os.path.dirname(ckpt_path) or "."
        if d.is_main:
            print(f"resumed {ckpt_path} at step {state.step}")
    else:
        run_dir = broadcast_object(run_dir or (new_run_dir(cfg) if d.is_main else None))  # rank 0 names it
    if d.is_main:
        os.makedirs(run_dir, exist_ok=True)
        yaml = OmegaConf.to_yaml(cfg, resolve=True).encode()  # atomic: a resume reads it back
        atomic_write(Path(run_dir) / "config.yaml", lambda f: f.write(yaml))
        if not cfg.resume and (choices := hydra_choices()):  # a resume checks its group overrides against these
            atomic_write(Path(run_dir) / CHOICES_FILE, lambda f: f.write(OmegaConf.to_yaml(choices).encode()))
    language = None
    if hasattr(train_data, "tokenizer"):  # a language model keeps its tokenizer, so generation needs nothing else
        tokenizer = train_data.tokenizer()
        saved = os.path.join(run_dir, "tokenizer")
        if cfg.resume and os.path.isdir(saved) and ChatTokenizer.load(saved).fingerprint() != tokenizer.fingerprint():
            raise ValueError(f"{cfg.data_paths[0]}: its tokenizer differs from the one of the run being resumed ({saved})")
        if d.is_main and not (cfg.resume and os.path.isdir(saved)):  # a resumed run's was checked above
            tokenizer.save(saved)
        language = LanguageEvaluator(cfg.dataset, tokenizer)

    n_params = sum(p.numel() for p in model.parameters())
    if d.is_main:
        print(f"{cfg.arch.name}: {n_params / 1e6:.2f}M parameters on {device} ({arch['forward_dtype']}"
              f"{f', {world_size} processes' if d.enabled else ''}); {total_steps} steps ({steps_per_epoch:.2f}/epoch), "
              f"batch {cfg.global_batch_size}; run dir {run_dir}")
    logger = RunLogger(run_dir, project_name(cfg), os.path.basename(run_dir),
                       OmegaConf.to_container(cfg, resolve=True), cfg.logger.mode, cfg.logger.entity,
                       cfg.logger.tags, enabled=d.is_main, resumed_at=state.step if cfg.resume else None)

    if d.is_main:
        print(describe_policy(arch["forward_dtype"], compile_note, device))
    forward = torch.compile(model) if use_compile else model

    def save() -> None:  # every rank takes part (the carry is gathered); rank 0 writes
        carry = global_carry(state.carry)
        if d.is_main:
            save_checkpoint(os.path.join(run_dir, f"step_{state.step}.pt"),
                            checkpoint_state(state, train_data, cfg, model_config, carry, device))

    if curriculum is not None:
        enter_stage(state, curriculum.stage, cfg, world_size, base_lrs, reset=False)
        if d.is_main:
            print(f"curriculum stage {curriculum.index} ({curriculum.stage.name}) from step {curriculum.start}")

    def next_stage(reason: str | None) -> None:
        if reason:
            enter_stage(state, curriculum.stage, cfg, world_size, base_lrs, reset=True)
            logger.log({"curriculum/stage": curriculum.index}, state.step)
            if d.is_main:
                tqdm.write(f"step {state.step}: stage {curriculum.index} ({curriculum.stage.name}) begins ({reason})")

    results: dict[str, float] = {}
    logged: dict[str, float] = {}
    sums: dict[str, torch.Tensor] = {}
    logged_at, logged_time = state.step, time.perf_counter()
    batches = iter(train_data)
    model.train()
    with tqdm(total=stop, initial=state.step, disable=rank != 0, dynamic_ncols=True) as bar:
        while state.step < stop:
            _, batch, _ = next(batches)
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            metrics = train_step(state, forward, batch, cfg, total_steps)
            sums = {k: sums.get(k, 0) + v.detach().float() for k, v in metrics.items()}  # no device sync
            bar.update(1)
            if curriculum is not None:
                next_stage(curriculum.after_step(state.step))
            if state.step % cfg.log_interval == 0 or state.step == stop:
                logged = summarize_train_metrics(reduce_sums(sums), state.step - logged_at, cfg.global_batch_size)
                logged["train/lr"] = state.base_lrs[-1] * lr_factor(state.step, cfg.lr_warmup_steps, total_steps,
                                                                     cfg.lr_min_ratio)
                logged["train/samples_per_s"] = ((state.step - logged_at) * cfg.global_batch_size
                                                 / (time.perf_counter() - logged_time))
                sums, logged_at, logged_time = {}, state.step, time.perf_counter()
                logger.log(logged, state.step)
                bar.set_postfix(loss=f"{logged['train/lm_loss']:.3f}", acc=f"{logged['train/accuracy']:.3f}",
                                exact=f"{logged['train/exact_accuracy']:.3f}", steps=f"{logged['train/steps']:.1f}")
            at_end = state.step == stop
            evaluating = state.step in eval_steps or (at_end and cfg.eval_at_end)
            if evaluating:
                eval_started = time.perf_counter()
                metrics, tables = evaluate(state, forward, test_data, device, cfg, run_dir, d, language)
                logged_time += time.perf_counter() - eval_started  # throughput counts training time only
                results = {f"test/{k}": v for k, v in metrics.items()}
                logger.log(results, state.step)
                for name, rows in tables.items():
                    logger.log_table(name, rows, state.step)
                if d.is_main:
                    bar.write(f"step {state.step}: " + ", ".join(
                        f"{k.removeprefix('test/')} {v:.4f}" for k, v in results.items() if "@step" not in k))
                if curriculum is not None:
                    next_stage(curriculum.after_eval(state.step, plateau_value(metrics, cfg.dataset.plateau_metric)))
            if at_end or (evaluating and cfg.checkpoint_every_eval):
                save()
    logger.finish()
    if not d.is_main:
        return results
    some_test_set = next(iter(test_data.values())) if isinstance(test_data, dict) else test_data  # (mixtures: by name)
    write_run_summary(run_dir, cfg, results, logged, parameters=n_params, steps=state.step, world_size=world_size,
                      wall_s=time.time() - started,
                      passes_per_act_step=network_passes_per_act_step(model, next(iter(some_test_set))[1], device))
    if "test/exact_accuracy" in results:
        print(f"test exact accuracy: {results['test/exact_accuracy']:.4f} "
              f"(token accuracy {results['test/accuracy']:.4f}) after {state.step} steps; run dir {run_dir}")
    elif "test/perplexity" in results:
        trained = "next-token" if cfg.dataset.name == "text" else "trained-token"  # chat: the assistant's tokens
        print(f"validation perplexity: {results['test/perplexity']:.3f} ({trained} accuracy "
              f"{results['test/accuracy']:.4f}) after {state.step} steps; run dir {run_dir}")
    return results


@hydra.main(config_path="config", config_name="cfg_pretrain", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        hydra_cfg = HydraConfig.get()
        if cfg.resume:
            cfg = resume_config(cfg, list(hydra_cfg.overrides.task))
        # a sweep (-m) runs each job in its own directory under hydra.sweep.dir, named for its overrides
        train(cfg, hydra_cfg.runtime.output_dir if hydra_cfg.mode == RunMode.MULTIRUN and not cfg.resume else None)
    except (FileNotFoundError, ValueError) as e:  # bad input: one clear line, non-zero exit
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
