"""Train a Tiny Recursive Model or a transformer baseline.

    python pretrain.py                                   # small TRM on generated Sudoku, on the CPU
    python pretrain.py arch=transformer lr=3e-4          # any config value can be overridden
    python pretrain.py +experiment=sudoku_extreme_mlp    # a paper recipe
    python pretrain.py resume=checkpoints/<project>/<run> # continue exactly where a run stopped
    torchrun --nproc-per-node 8 pretrain.py ...          # one process per GPU (utils/distributed.py)
    python pretrain.py -m arch.H_cycles=1,2,3 arch.L_cycles=2,4  # a sweep; python -m utils.sweep_summary <dir>

The composed config is config/cfg_pretrain.yaml with the groups arch/, dataset/, optimizer/. This file is the
loop: composing the parts of a run, the train step and the evaluation schedule. The data open in dataset/,
the evaluators live in evaluators/, the run directory in utils/run.py, the state and checkpoints in
utils/train_state.py.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from dataset.loaders import open_data
from dataset.mixture import plateau_value
from evaluators import Evaluator, make_evaluator
from models.ema import auto_ema_rate
from models.sparse_embedding import SignSGD
from models.trm import Carry
from utils.checkpoint import RunCheckpoints, find_checkpoint
from utils.cli import exit_on_bad_input
from utils.config_check import check_config
from utils.curriculum import Curriculum
from utils.device import describe_policy, resolve_compile
from utils.distributed import (Dist, all_reduce_sum, broadcast_object, init_distributed, leave_together,
                               reduce_sums, shutdown, sum_gradients)
from utils.logger import RunLogger
from utils.nonfinite import BadSteps, all_finite, back_off, discard_gradients, gradients
from utils.optim import lr_factor
from utils.run import (last_checkpoint, open_run_dir, project_name, refuse_existing_run, report, resume_config,
                       run_tokenizer)
from utils.train_state import TrainState, enter_stage, save_run_checkpoint, start_state


# ---------------------------------------------------------------- the step

def train_step(state: TrainState, forward, batch: dict[str, torch.Tensor], cfg: DictConfig,
               schedule: Callable[[int], float]) -> dict[str, torch.Tensor] | None:
    """One optimizer step on this rank's rows of a global batch, in cfg.grad_accum_steps micro-batches (each its
    own forward and backward; their gradients add up to the batch's), at the learning rates times
    schedule(step). None: the step was skipped (a non-finite loss or gradient on some rank; nothing was updated)."""
    if state.carry is None:
        state.carry = state.model.initial_carry(batch)
    k = cfg.grad_accum_steps
    n = len(batch["inputs"]) // k
    carries, metrics, losses = [], {}, []
    for i in range(k):
        rows = slice(i * n, (i + 1) * n)
        carry, loss, micro_metrics, _ = forward(state.carry.rows(rows) if k > 1 else state.carry,
                                                {name: v[rows] for name, v in batch.items()} if k > 1 else batch,
                                                (state.first_row + i * n, cfg.global_batch_size))  # exploration rows
        state.scaler.scale(loss / cfg.global_batch_size).backward()  # (scaled only in float16)
        losses.append(loss.detach())
        for opt in state.optimizers:  # sign-SGD sets each micro-batch's puzzle-embedding gradient aside
            if isinstance(opt, SignSGD):
                opt.collect()
        carries.append(carry)
        metrics = {name: metrics.get(name, 0) + v for name, v in micro_metrics.items()}
    sum_gradients(list(state.model.parameters()))  # torchrun: the ranks' parts add up to the global batch's gradient
    # float16's loss scaler skips the steps whose gradients overflow itself (and lowers the scale); other dtypes
    # check them here. The scaler sees the weights' gradients only: an overflow of sign-SGD's (puzzle
    # embeddings) is its skip too
    scaled = state.scaler.is_enabled()
    losses_finite, grads_finite = all_finite(losses, gradients([] if scaled else state.model.parameters(),
                                                               state.optimizers))
    if not losses_finite or not (grads_finite or scaled):
        discard_gradients(state.model, state.optimizers)  # the carry stays the step's starting one, too
        return None
    overflow = not grads_finite  # (float16: sign-SGD's gradients)
    state.carry = Carry.cat(carries) if k > 1 else carries[0]
    weights = [opt for opt in state.optimizers if not isinstance(opt, SignSGD)]
    if cfg.get("grad_clip"):  # the norm of the unscaled gradient, before clipping, is logged
        for opt in weights:
            state.scaler.unscale_(opt)
        metrics["grad_norm"] = torch.nn.utils.clip_grad_norm_(
            [p for p in state.model.parameters() if p.grad is not None], cfg.grad_clip)
    state.step += 1
    factor, loss_scale = schedule(state.step), state.scaler.get_scale()
    for opt, base_lr in zip(state.optimizers, state.base_lrs):
        for group in opt.param_groups:
            group["lr"] = base_lr * factor
    for opt in weights if not overflow else []:
        state.scaler.step(opt)  # float16: skipped when a gradient overflowed (inf or NaN)
    if overflow:  # ... or sign-SGD's did (which the scaler does not see): the scale is lowered here
        back_off(state.scaler)
    else:
        state.scaler.update()  # the scaler's own update: lowered after its overflow, else it may grow
    skipped = state.scaler.get_scale() < loss_scale  # float16: the scaler skipped this step (an overflow)
    for opt in state.optimizers:
        if isinstance(opt, SignSGD) and not skipped:  # sign-SGD skips the same steps
            opt.step()
        opt.zero_grad(set_to_none=True)
    if state.ema is not None and not skipped:  # (the weights did not move)
        state.ema.update(state.model)
    return metrics


# ---------------------------------------------------------------- composing a run

@dataclass
class Run:
    """The parts of one training job, composed by start_run."""
    cfg: DictConfig
    d: Dist
    device: torch.device
    state: TrainState
    train_data: Any
    test_data: Any
    model_config: dict[str, Any]
    run_dir: str
    evaluator: Evaluator
    logger: RunLogger
    forward: Callable
    total_steps: int
    stop: int
    eval_steps: set[int]
    run_lrs: list[float]  # the optimizers' learning rates, before any curriculum stage scales them
    curriculum: Curriculum | None
    checkpoints: RunCheckpoints
    bad_steps: BadSteps

    def schedule(self, step: int) -> float:
        """The learning-rate factor of training step `step`: the run's warmup and cosine, or the curriculum
        stage's."""
        cfg = self.cfg
        factor = lr_factor(step, cfg.lr_warmup_steps, self.total_steps, cfg.lr_min_ratio)
        return self.curriculum.lr_factor(step, factor, cfg.lr_warmup_steps) if self.curriculum else factor


def evaluation_steps(epochs: float, eval_interval: float, skip: int, total_steps: int) -> set[int]:
    """The steps after every eval_interval epochs (the last one at the end of the schedule), the first `skip` left
    out. The count forgives float round-off in the ratio: 1.2 epochs / 0.1 is 11.999999999999998, 12 evaluations."""
    n_evals = max(1, math.floor(epochs / eval_interval + 1e-9))
    return {max(1, round(k * total_steps / n_evals)) for k in range(skip + 1, n_evals + 1)}


def start_run(cfg: DictConfig, d: Dist, device: torch.device, run_dir: str | None) -> Run:
    """Data, model, optimizers and schedule; the run directory (a new one, or the resumed run's with its state
    restored), its logger and evaluator."""
    refuse_existing_run(cfg, run_dir)  # before any long work
    torch.manual_seed(cfg.seed)  # weights and the ACT exploration draws: the same on every rank
    train_data, test_data = open_data(cfg, d.rank, d.world_size)
    steps_per_epoch = train_data.examples_per_epoch / cfg.global_batch_size
    total_steps = max(1, int(cfg.epochs * steps_per_epoch))
    eval_steps = evaluation_steps(cfg.epochs, cfg.eval_interval, cfg.min_eval_interval, total_steps)
    stop = min(total_steps, cfg.max_steps or total_steps)
    if cfg.ema_rate == "auto":  # recorded in the run's config, as the device policy's choices below
        cfg.ema_rate = auto_ema_rate(stop)
    state, model_config = start_state(cfg, device, train_data, d)
    # the device policy's choices (auto -> the measured rule in utils/device.py), recorded in the run's config
    use_compile, compile_note = resolve_compile(cfg.compile, device, stop)
    cfg.arch.forward_dtype, cfg.compile = model_config["forward_dtype"], use_compile
    if use_compile and device.type == "cpu":
        # the compiled CPU kernels add some gradients (the embeddings') with atomics across threads, so two runs
        # differed in the last bits and then drifted apart; their deterministic variants keep same seed, same result
        torch.use_deterministic_algorithms(True, warn_only=True)
    curriculum = getattr(train_data, "curriculum", None)
    start_stage = requested_stage(cfg, curriculum)
    run_dir = open_run_dir(cfg, d, state, train_data, device, run_dir)
    run_lrs = list(state.base_lrs)
    if start_stage is not None and curriculum.move_to(start_stage, state.step):  # (resumed: after the restore)
        enter_stage(state, curriculum.stage, cfg, d.world_size, run_lrs, reset=True)
    checkpoints = RunCheckpoints(run_dir, cfg.get("checkpoint_best_metric", "auto"),
                                 cfg.get("checkpoint_best_mode", "auto"), cfg.get("checkpoint_keep_last"),
                                 resumed_at=state.step if cfg.resume else None)
    tokenizer = run_tokenizer(cfg, train_data, run_dir, d.is_main)
    evaluator = make_evaluator(cfg, run_dir, tokenizer, all_reduce_sum if d.enabled else None)
    if state.evaluator is not None and hasattr(evaluator, "load_state_dict"):  # a resumed run's pooled votes
        evaluator.load_state_dict(state.evaluator)
    if d.is_main:
        stopping = f", stopping at {stop} (max_steps)" if stop < total_steps else ""
        print(f"{cfg.arch.name}: {sum(p.numel() for p in state.model.parameters()) / 1e6:.2f}M parameters on "
              f"{device} ({model_config['forward_dtype']}{f', {d.world_size} processes' if d.enabled else ''}); "
              f"{total_steps} steps ({steps_per_epoch:.2f}/epoch){stopping}, batch {cfg.global_batch_size}; "
              f"run dir {run_dir}")
        print(describe_policy(model_config["forward_dtype"], compile_note, device))
    logger = RunLogger(run_dir, project_name(cfg), os.path.basename(run_dir),
                       OmegaConf.to_container(cfg, resolve=True), cfg.logger.mode, cfg.logger.entity,
                       cfg.logger.tags, enabled=d.is_main, resumed_at=state.step if cfg.resume else None,
                       tensorboard=cfg.logger.get("tensorboard", False), group=cfg.logger.get("group"))
    forward = torch.compile(state.model) if use_compile else state.model
    bad_steps = BadSteps(cfg.get("max_bad_steps", 10), lambda: last_checkpoint(run_dir),
                         tqdm.write if d.is_main else lambda _: None)
    return Run(cfg, d, device, state, train_data, test_data, model_config, run_dir, evaluator, logger, forward,
               total_steps, stop, eval_steps, run_lrs, curriculum, checkpoints, bad_steps)


def requested_stage(cfg: DictConfig, curriculum: Curriculum | None) -> int | None:
    """The stage curriculum.start_stage names (an index or a name), checked before the run starts."""
    stage = OmegaConf.select(cfg, "curriculum.start_stage")
    if stage is None:
        return None
    if curriculum is None:
        raise ValueError(f"curriculum.start_stage={stage}: this run's data have no curriculum stages "
                         "(dataset=mixture with dataset.stages has)")
    return curriculum.index_of(stage)


# ---------------------------------------------------------------- the loop

def evaluate(run: Run) -> tuple[dict[str, float], dict[str, list[dict]]]:
    """The run's evaluator on the test data, with the EMA weights when the run keeps them."""
    with run.state.ema.applied(run.state.model) if run.state.ema else contextlib.nullcontext():
        return run.evaluator.evaluate(run.forward, run.test_data, run.device, run.state.step)


def next_stage(run: Run, reason: str | None) -> None:
    """Enter the curriculum's new stage when it has just changed (`reason` says why)."""
    if reason:
        enter_stage(run.state, run.curriculum.stage, run.cfg, run.d.world_size, run.run_lrs, reset=True)
        run.logger.log({"curriculum/stage": run.curriculum.index}, run.state.step)
        if run.d.is_main:
            tqdm.write(f"step {run.state.step}: stage {run.curriculum.index} ({run.curriculum.stage.name}) begins "
                       f"({reason})")


def log_training(run: Run, sums: dict[str, torch.Tensor], since: int, since_time: float) -> dict[str, float]:
    """Metric sums since step `since` -> loss per sample, accuracy and ACT steps per halted sample; lr, speed."""
    cfg, step = run.cfg, run.state.step
    values = {k: v.item() for k, v in reduce_sums(sums).items()}
    count = max(values.pop("count"), 1)
    per = {"grad_norm": (step - since) * run.d.world_size}  # the same on every rank: a mean per step
    logged = {f"train/{k}": v / per.get(k, cfg.global_batch_size * (step - since) if k.endswith("loss") else count)
              for k, v in values.items()}
    logged["train/lr"] = run.state.base_lrs[-1] * run.schedule(step)
    if run.bad_steps.total:
        logged["train/skipped_steps"] = run.bad_steps.total
    logged["train/samples_per_s"] = (step - since) * cfg.global_batch_size / (time.perf_counter() - since_time)
    run.logger.log(logged, step)
    return logged


def run_evaluation(run: Run) -> dict[str, float]:
    """Evaluate, log and print; a curriculum may change stage on the result. Returns the metrics (test/...)."""
    started = time.perf_counter()
    metrics, tables = evaluate(run)
    run.state.evaluator = run.evaluator.state_dict() if hasattr(run.evaluator, "state_dict") else None
    results = {f"test/{k}": v for k, v in metrics.items()}
    run.logger.log({**results, "time/eval_s": time.perf_counter() - started}, run.state.step)
    for name, rows in tables.items():
        run.logger.log_table(name, rows, run.state.step)
    if run.d.is_main:
        tqdm.write(f"step {run.state.step}: " + ", ".join(
            f"{k.removeprefix('test/')} {v:.4f}" for k, v in results.items() if "@step" not in k))
    if run.curriculum is not None:
        next_stage(run, run.curriculum.after_eval(run.state.step,
                                                  plateau_value(metrics, run.cfg.dataset.plateau_metric)))
    return results


def train_loop(run: Run) -> tuple[dict[str, float], dict[str, float]]:
    """Train to run.stop, evaluating and checkpointing on schedule; returns (last test metrics, last train log)."""
    cfg, state = run.cfg, run.state
    if run.curriculum is not None:
        enter_stage(state, run.curriculum.stage, cfg, run.d.world_size, run.run_lrs, reset=False)
        if run.d.is_main:
            print(f"curriculum stage {run.curriculum.index} ({run.curriculum.stage.name}) from step {run.curriculum.start}")
    results, logged, sums = {}, {}, {}
    at_end = state.step == run.stop
    if cfg.resume and (state.step in run.eval_steps or (at_end and cfg.eval_at_end)) and \
            not broadcast_object(run.logger.logged(state.step, "test/")):
        # resumed from a checkpoint whose evaluation did not finish (it is saved first): evaluate it now
        resumed = find_checkpoint(cfg.resume)
        on_disk = os.path.basename(resumed) == f"step_{state.step}.pt"  # (not a copy under another name)
        results = checkpoint_and_evaluate(run, at_end, evaluating=True, saved=resumed if on_disk else None)
    logged_at, logged_time = state.step, time.perf_counter()
    batches = iter(run.train_data)
    state.model.train()
    with tqdm(total=run.stop, initial=state.step, disable=run.d.rank != 0, dynamic_ncols=True) as bar:
        while state.step < run.stop:
            _, batch, _ = next(batches)
            batch = {k: v.to(run.device, non_blocking=True) for k, v in batch.items()}
            metrics = train_step(state, run.forward, batch, cfg, run.schedule)
            if metrics is None:  # skipped (non-finite): nothing trained, nothing to log
                run.bad_steps.bad(state.step + 1)
                continue
            run.bad_steps.good()
            sums = {k: sums.get(k, 0) + v.detach().float() for k, v in metrics.items()}  # no device sync
            bar.update(1)
            if state.step % cfg.log_interval == 0 or state.step == run.stop:
                logged = log_training(run, sums, logged_at, logged_time)
                sums, logged_at, logged_time = {}, state.step, time.perf_counter()
                bar.set_postfix(loss=f"{logged['train/lm_loss']:.3f}", acc=f"{logged['train/accuracy']:.3f}",
                                exact=f"{logged['train/exact_accuracy']:.3f}", steps=f"{logged['train/steps']:.1f}")
            if run.curriculum is not None:  # (after the log, which shows the learning rate this step trained with)
                next_stage(run, run.curriculum.after_step(state.step))
            at_end = state.step == run.stop
            evaluating = state.step in run.eval_steps or (at_end and cfg.eval_at_end)
            if at_end or evaluating:
                eval_started = time.perf_counter()
                results = checkpoint_and_evaluate(run, at_end, evaluating) or results
                logged_time += time.perf_counter() - eval_started  # throughput counts training time only
    run.logger.finish()
    return results, logged


def checkpoint_and_evaluate(run: Run, at_end: bool, evaluating: bool, saved: str | None = None
                            ) -> dict[str, float] | None:
    """Save this step's checkpoint (unless it is on disk already: `saved`, the file a resume started from), then
    evaluate when due (saved before, so a failing evaluation loses no training); without checkpoint_every_eval an
    evaluation's file stays only as the new best (or the final one). Returns the evaluation's metrics (None: none
    was due)."""
    cfg, state = run.cfg, run.state
    file = saved or save_run_checkpoint(state, run.train_data, cfg, run.model_config, run.run_dir, run.device,
                                        run.d.is_main)
    results, best = None, False
    if evaluating:
        results = run_evaluation(run)
        best = run.checkpoints.improved(results)  # (every rank)
        if run.curriculum is not None or state.evaluator is not None:
            # the evaluation moved training state (the curriculum, pooled votes): the checkpoint follows it
            save_run_checkpoint(state, run.train_data, cfg, run.model_config, run.run_dir, run.device, run.d.is_main)
    if run.d.is_main:
        if at_end or cfg.checkpoint_every_eval or best:
            run.checkpoints.saved(file, best, final=at_end)
        else:
            os.remove(file)
    return results


def train(cfg: DictConfig, run_dir: str | None = None) -> dict[str, float]:
    """Run one training job (one of torchrun's processes: every rank calls this) into `run_dir` (default: a new
    directory under checkpoint_dir); returns the last evaluation's metrics (prefixed test/)."""
    check_config(cfg)
    d, device = init_distributed(cfg.device)
    started = time.time()
    deterministic = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        run = start_run(cfg, d, device, run_dir)
        results, logged = train_loop(run)
        if d.is_main:
            report(cfg, run.run_dir, run.state, run.test_data, device, results, logged, d.world_size,
                   time.time() - started)
        leave_together(d)  # no process tears its connections down while another still uses them
        return results
    finally:
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])  # (as the run found it)
        shutdown(d)


@hydra.main(config_path="config", config_name="cfg_pretrain", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with exit_on_bad_input():  # bad input, a full disk: one clear line, non-zero exit
        hydra_cfg = HydraConfig.get()
        if cfg.resume:
            cfg = resume_config(cfg, list(hydra_cfg.overrides.task))
        # a sweep (-m) runs each job in its own directory under hydra.sweep.dir, named for its overrides
        train(cfg, hydra_cfg.runtime.output_dir if hydra_cfg.mode == RunMode.MULTIRUN and not cfg.resume else None)


if __name__ == "__main__":
    main()
