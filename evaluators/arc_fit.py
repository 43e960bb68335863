"""Test-time puzzle embeddings: answer an ARC task the model never trained on.

A trained TRM reads one input grid plus the embedding row of its puzzle identifier; the row is what carries
the task's rule (the network never sees the demonstrations). A new task has no trained row, so:
  1. its augmented copies are drawn with the run's augmentation settings (tasks/arc.py), each with a new row,
     initialised as training initialises rows (zero);
  2. only those rows are fitted on the copies' demonstrations, with training's own step (ACT carry, loss,
     sign-SGD on the touched rows) and the network frozen;
  3. every copy predicts every test input; the ARC evaluator's voting undoes the augmentations and ranks.
generate.py --arc-task does this for one task file, `python -m evaluators.arc RUN --tasks ...` for a set.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from constants import IGNORE_LABEL_ID
from evaluators.arc import (ArcCollector, Grid, Prediction, as_grid, make_submission, pass_at_k, rank_candidates,
                            write_submission)
from evaluators.puzzle import evaluate_puzzles
from models.losses import ACTLossHead
from models.sparse_embedding import SignSGD, SparseEmbedding
from tasks.arc import (PAD, TASKS_FILE, ArcMetadata, Task, draw_augmentations, encode_demonstrations, encode_pair,
                       load_combined, load_directory, read_json)
from utils.checkpoint import find_checkpoint, load_trained_model
from utils.cli import exit_on_bad_input
from utils.device import resolve_dtype, select_device
from utils.files import atomic_write, make_dir


@dataclass
class FitSettings:
    """How a new task's rows are made and fitted; `from_run` fills what the run trained with."""
    steps: int = 100
    lr: float = 1e-2  # sign-SGD step of the rows (the run's puzzle_emb_lr by default)
    weight_decay: float = 0.1
    batch_size: int = 64
    num_aug: int = 1000  # augmented copies besides the task itself (the run's dataset.build.num_aug)
    translate: bool = True  # demonstration placement as in the run's build
    translate_all: bool = False
    seed: int = 0

    @classmethod
    def from_run(cls, checkpoint: dict[str, Any], **given: Any) -> "FitSettings":
        """The run's augmentation and puzzle-embedding settings, with the `given` ones (not None) on top."""
        cfg = checkpoint.get("config") or {}
        build = (cfg.get("dataset") or {}).get("build") or {}
        run = dict(lr=cfg.get("puzzle_emb_lr"), weight_decay=cfg.get("puzzle_emb_weight_decay"),
                   num_aug=build.get("num_aug"), translate=build.get("translate"),
                   translate_all=build.get("translate_all"))
        values = {k: v for k, v in run.items() if v is not None}
        values.update({k: v for k, v in given.items() if v is not None})
        settings = cls(**values)
        if settings.steps < 0 or settings.num_aug < 0 or settings.batch_size < 1 or settings.lr <= 0:
            raise ValueError(f"fit settings: steps and num_aug must be >= 0, batch_size >= 1 and lr > 0 ({settings})")
        return settings


@dataclass
class TaskRows:
    """One task's augmented copies as model rows: identifier i (1..copies) is copy i - 1."""
    demos: dict[str, torch.Tensor]  # inputs, labels, puzzle_identifiers of every copy's demonstrations
    tests: dict[str, torch.Tensor]  # the same for every copy's test inputs (labels when the outputs are known)
    meta: ArcMetadata  # how to undo each copy's augmentation


def task_seed(task: Task, seed: int) -> list[int]:
    """A task's own random stream: the same copies and placements whichever tasks are solved with it."""
    return [seed, zlib.crc32(task.id.encode())]


def _as_batch(examples: list[tuple[np.ndarray, np.ndarray]], ids: list[int]) -> dict[str, torch.Tensor]:
    inputs = np.stack([x for x, _ in examples]).astype(np.int32)
    labels = np.stack([y for _, y in examples]).astype(np.int32)
    labels[labels == PAD] = IGNORE_LABEL_ID
    return {"inputs": torch.from_numpy(inputs), "labels": torch.from_numpy(labels),
            "puzzle_identifiers": torch.tensor(ids, dtype=torch.int32)}


def task_rows(task: Task, settings: FitSettings) -> TaskRows:
    """The task and up to num_aug distinct augmentations of it, placed as the run's builder placed them (test
    inputs at the top left)."""
    augs = draw_augmentations(task, settings.num_aug, np.random.default_rng([*task_seed(task, settings.seed), 0]))
    placement = np.random.default_rng([*task_seed(task, settings.seed), 1])
    demos, demo_ids, tests, test_ids = [], [], [], []
    for identifier, aug in enumerate(augs, start=1):
        rows = encode_demonstrations(task.train, aug, placement if settings.translate else None, settings.translate_all)
        demos += rows
        demo_ids += [identifier] * len(rows)
        tests += [encode_pair(p, aug) for p in task.test]
        test_ids += [identifier] * len(task.test)
    meta = ArcMetadata(tasks=[task.id], task_index=np.array([-1] + [0] * len(augs)),
                       transform=np.array([0] + [a.transform for a in augs]),
                       colours=np.array([list(range(10))] + [list(a.colours) for a in augs]),
                       test_inputs={task.id: [p.input for p in task.test]},
                       test_outputs={task.id: [p.output for p in task.test]})
    return TaskRows(_as_batch(demos, demo_ids), _as_batch(tests, test_ids), meta)


def puzzle_embedding(model: torch.nn.Module) -> SparseEmbedding | None:
    return next((m for m in model.modules() if isinstance(m, SparseEmbedding)), None)


def fresh_rows(model: ACTLossHead, copies: int) -> SparseEmbedding | None:
    """Replace the model's embedding table by the blank row and one new row per copy, initialised as training
    initialises them (zero: models/trm.py builds the table with std 0). None: the model has no embedding."""
    emb = puzzle_embedding(model)
    if emb is not None:
        emb.weights = torch.zeros(copies + 1, emb.weights.shape[1], device=emb.weights.device)
    return emb


def fit_rows(model: ACTLossHead, emb: SparseEmbedding, demos: dict[str, torch.Tensor], settings: FitSettings,
             device: torch.device, progress: Callable[[float], None] | None = None) -> float:
    """Fit the new rows on the demonstrations, the network frozen: training's step (ACT carry, its loss, the
    rows' sign-SGD) on random batches of demonstrations. Returns the last step's loss per example."""
    was_training = model.training
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    model.train()
    optimizer = SignSGD(emb, lr=settings.lr, weight_decay=settings.weight_decay)
    draw = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)  # the ACT exploration draws
    carry, loss_value = None, float("nan")
    try:
        for _ in range(settings.steps):
            rows = torch.randint(len(demos["inputs"]), (settings.batch_size,), generator=draw)
            batch = {k: v[rows].to(device) for k, v in demos.items()}
            if carry is None:
                carry = model.initial_carry(batch)
            carry, loss, _, _ = model(carry, batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            loss_value = loss.item() / settings.batch_size
            if progress is not None:
                progress(loss_value)
    finally:
        for p in frozen:
            p.requires_grad_(True)
        model.train(was_training)
    return loss_value


def predict(model: ACTLossHead, rows: TaskRows, batch_size: int, device: torch.device) -> list[Prediction]:
    """Every copy's prediction of every test input, mapped back to the original frame."""
    collector = ArcCollector(rows.meta)
    n = len(rows.tests["inputs"])
    batches = (("test", {k: v[i:i + batch_size] for k, v in rows.tests.items()}, min(batch_size, n - i))
               for i in range(0, n, batch_size))
    evaluate_puzzles(model, batches, device, on_outputs=collector.add)
    return collector.predictions


@dataclass
class Answer:
    task: Task
    candidates: list[list[Grid]]  # per test input, best first
    loss: float  # of the last fitting step (nan: nothing fitted)

    def scores(self) -> dict[str, float] | None:
        """pass@k of this task when all its outputs are known."""
        if any(p.output is None for p in self.task.test):
            return None
        ranked = {(self.task.id, i): c for i, c in enumerate(self.candidates)}
        return pass_at_k(ranked, {self.task.id: [as_grid(p.output) for p in self.task.test]})


def solve_task(model: ACTLossHead, task: Task, settings: FitSettings, device: torch.device,
               progress: Callable[[float], None] | None = None) -> Answer:
    """Fit new rows for the task's copies (settings.steps of them; 0: untrained rows), then predict and vote."""
    rows = task_rows(task, settings)
    emb = fresh_rows(model, len(rows.meta.task_index) - 1)
    loss = float("nan")
    if emb is not None and settings.steps > 0:
        loss = fit_rows(model, emb, rows.demos, settings, device, progress)
    ranked = rank_candidates(predict(model, rows, settings.batch_size, device))
    return Answer(task, [ranked.get((task.id, i), []) for i in range(len(task.test))], loss)


# ----------------------------------------------------------------------------- a whole set: python -m evaluators.arc


def load_task_set(tasks: str, subset: str) -> list[Task]:
    """A directory (DIR/<subset>/<task>.json) or a Kaggle prefix (<prefix>_<subset>_challenges.json)."""
    return load_directory(tasks, subset) if os.path.isdir(tasks) else load_combined(tasks, subset)


def trained_task_ids(checkpoint: dict[str, Any]) -> set[str]:
    """The tasks of the run's training data (from its build's arc_tasks.json, when it is still there)."""
    paths = (checkpoint.get("config") or {}).get("data_paths") or []
    path = Path(paths[0]) / TASKS_FILE if paths else None
    return set(read_json(path)["tasks"]) if path is not None and path.is_file() else set()


def evaluate_set(model: ACTLossHead, checkpoint: dict[str, Any], tasks: list[Task], settings: FitSettings,
                 device: torch.device, out_dir: str | os.PathLike) -> dict[str, float]:
    """Answer every task (one fitted set of rows each), keeping each answer in <out_dir>/answers/<task>.json as
    it comes (a rerun skips the tasks already answered); then <out_dir>/submission.json (Kaggle format) and
    scores.json (pass@k over the tasks whose outputs are known). A rerun must use the same settings."""
    out = Path(out_dir)
    make_dir(out / "answers")
    settings_text = json.dumps(asdict(settings), sort_keys=True) + "\n"
    saved = out / "settings.json"
    if saved.is_file() and saved.read_text() != settings_text:
        raise ValueError(f"{out}: answered with other settings ({saved.read_text().strip()}); use another "
                         "--output-dir or the same settings")
    atomic_write(saved, lambda f: f.write(settings_text.encode()))
    seen = trained_task_ids(checkpoint) & {t.id for t in tasks}
    if seen:
        print(f"warning: {len(seen)} of the {len(tasks)} tasks were in the run's training data (e.g. {sorted(seen)[0]})",
              file=sys.stderr)
    ranked: dict[tuple[str, int], list[Grid]] = {}
    with tqdm(tasks, desc="tasks", file=sys.stderr) as bar:
        for task in bar:
            path = out / "answers" / f"{task.id}.json"
            if path.is_file():
                candidates = [[as_grid(g) for g in c] for c in read_json(path)["candidates"]]
            else:
                answer = solve_task(model, task, settings, device)
                candidates = answer.candidates
                text = json.dumps({"candidates": candidates, "loss": answer.loss}) + "\n"
                atomic_write(path, lambda f: f.write(text.encode()))
            ranked.update({(task.id, i): c for i, c in enumerate(candidates)})
    write_submission(out / "submission.json", make_submission(ranked, {t.id: len(t.test) for t in tasks}))
    solutions = {t.id: [as_grid(p.output) for p in t.test] for t in tasks if all(p.output is not None for p in t.test)}
    scores = pass_at_k(ranked, solutions)
    text = json.dumps(scores, indent=1) + "\n"
    atomic_write(out / "scores.json", lambda f: f.write(text.encode()))
    return scores


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evaluators.arc", description="Answer a set of ARC tasks a run never "
                                "trained on, fitting new puzzle-embedding rows per task: a Kaggle submission and pass@k.")
    p.add_argument("run", help="a run directory or checkpoint of an ARC run")
    p.add_argument("--tasks", required=True, help="DIR (DIR/<subset>/<task>.json) or a Kaggle prefix "
                   "(PREFIX_<subset>_challenges.json, + _solutions.json when present)")
    p.add_argument("--subset", required=True, help="e.g. evaluation2")
    p.add_argument("--output-dir", help="default: <run dir>/test_time_<subset>")
    p.add_argument("--fit-steps", type=int, default=100)
    p.add_argument("--fit-lr", type=float, help="default: the run's puzzle_emb_lr")
    p.add_argument("--num-aug", type=int, help="default: the run's dataset.build.num_aug")
    p.add_argument("--batch-size", type=int, default=64, help="examples per fitting step and per prediction batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16", "float64"])
    p.add_argument("--no-ema", action="store_true", help="use the raw weights even when EMA weights are saved")
    args = p.parse_args(argv)
    with exit_on_bad_input():
        device = select_device(args.device, "--device")
        file = find_checkpoint(args.run)
        model, checkpoint = load_trained_model(file, device, use_ema=not args.no_ema,
                                               dtype=resolve_dtype(args.dtype, device))
        if (checkpoint.get("config") or {}).get("dataset", {}).get("task") not in ("arc", None):
            raise ValueError(f"{file}: not an ARC run (its task is {checkpoint['config']['dataset']['task']})")
        tasks = load_task_set(args.tasks, args.subset)
        settings = FitSettings.from_run(checkpoint, steps=args.fit_steps, lr=args.fit_lr, num_aug=args.num_aug,
                                        batch_size=args.batch_size, seed=args.seed)
        out = args.output_dir or os.path.join(os.path.dirname(file) or ".", f"test_time_{args.subset}")
        scores = evaluate_set(model, checkpoint, tasks, settings, device, out)
    known = int(scores["arc_tasks"])
    print(f"{len(tasks)} tasks answered into {out}/submission.json" + (
        f"; over the {known} with known outputs: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()
                                                               if k.startswith("pass@")) if known else ""))
    return 0


if __name__ == "__main__":  # the same command as python -m evaluators.arc
    sys.exit(main())
