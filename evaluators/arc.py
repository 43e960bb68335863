"""ARC-AGI scoring: undo the augmentation of every prediction, vote across the augmented copies of each test
input, report pass@k over tasks and write a Kaggle submission.

A vote is the grid a copy predicts, cropped at its end markers and mapped back to the original frame and
colours. Candidates rank by vote count, ties broken by the mean q-halt confidence (sigmoid of the q-halt
logit) of their voters. A task with n test inputs scores the fraction of them whose true output is among the
first k candidates (the ARC Prize convention, as in the official TRM evaluator); pass@k is the mean over the
tasks whose outputs are all known.

Scoring (rank_candidates, pass_at_k, make_submission) is pure and works on hand-made predictions;
ArcCollector turns model batches into predictions, evaluate_arc runs the model and puts it together.
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.distributed as dist

from evaluators.puzzle import Batches, evaluate_puzzles
from models.losses import ACTLossHead
from tasks.arc import ArcMetadata, decode_grid, grid_offset, load_arc_metadata
from utils.distributed import broadcast_object
from utils.files import atomic_write, make_dir

Grid = tuple[tuple[int, ...], ...]
PASS_KS = (1, 2, 5, 10)


def as_grid(grid: np.ndarray | Sequence[Sequence[int]]) -> Grid:
    return tuple(map(tuple, np.asarray(grid, dtype=np.int64).tolist()))


@dataclass(frozen=True)
class Prediction:
    task: str
    test_index: int  # which test input of the task
    grid: Grid | None  # in the original frame; None when the prediction has no well-formed grid
    confidence: float  # sigmoid of the q-halt logit


Votes = dict[tuple[str, int], dict[Grid, list]]  # (task, test index) -> grid -> [count, confidence sum]


def add_votes(predictions: Iterable[Prediction], votes: Votes | None = None) -> Votes:
    """Count the predictions' votes (into `votes` when given: pooled over evaluations)."""
    votes = defaultdict(dict, votes or {})
    for p in predictions:
        if p.grid is not None:
            count_sum = votes[(p.task, p.test_index)].setdefault(p.grid, [0, 0.0])
            count_sum[0] += 1
            count_sum[1] += p.confidence
    return dict(votes)


def rank_votes(votes: Votes) -> dict[tuple[str, int], list[Grid]]:
    """(task, test index) -> distinct predicted grids, best first: most votes, then highest mean confidence
    (then the grid itself, so the order never depends on the order the predictions arrived in)."""
    return {key: sorted(c, key=lambda g: (-c[g][0], -c[g][1] / c[g][0], g)) for key, c in votes.items()}


def rank_candidates(predictions: Iterable[Prediction]) -> dict[tuple[str, int], list[Grid]]:
    return rank_votes(add_votes(predictions))


def pass_at_k(ranked: dict[tuple[str, int], list[Grid]], solutions: dict[str, Sequence[Grid | None]],
              ks: Sequence[int] = PASS_KS) -> dict[str, float]:
    """pass@k over the tasks of `solutions` whose test outputs are all known (see the module docstring)."""
    scored = {t: outs for t, outs in solutions.items() if outs and all(o is not None for o in outs)}
    results = {}
    for k in ks:
        total = sum(sum(as_grid(out) in ranked.get((t, i), [])[:k] for i, out in enumerate(outs)) / len(outs)
                    for t, outs in scored.items())
        results[f"pass@{k}"] = total / max(len(scored), 1)
    results["arc_tasks"] = float(len(scored))
    return results


def make_submission(ranked: dict[tuple[str, int], list[Grid]], num_tests: dict[str, int]) -> dict[str, list[dict]]:
    """Kaggle format: {task: [{"attempt_1": grid, "attempt_2": grid} per test input]}. With one candidate both
    attempts are it; with none, [[0]] (the format has no empty answer)."""
    submission = {}
    for task, n in sorted(num_tests.items()):
        attempts = []
        for i in range(n):
            top = [[list(row) for row in g] for g in ranked.get((task, i), [])[:2]] or [[[0]]]
            attempts.append({"attempt_1": top[0], "attempt_2": top[-1] if len(top) == 1 else top[1]})
        submission[task] = attempts
    return submission


class ArcCollector:
    """Turns the rows of test batches into Predictions (the augmentation undone)."""

    def __init__(self, meta: ArcMetadata):
        self.meta = meta
        self.predictions: list[Prediction] = []
        # the original test inputs, to tell which test input of its task a row holds
        self._test_index = {t: {(g.shape, g.tobytes()): i for i, g in enumerate(grids)}
                            for t, grids in meta.test_inputs.items()}

    def add(self, set_name: str, batch: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]) -> None:
        ids = batch["puzzle_identifiers"].cpu().numpy()
        inputs = batch["inputs"].cpu().numpy()
        preds = outputs["preds"].cpu().numpy()
        confidence = torch.sigmoid(outputs["q_halt_logits"].float()).cpu().numpy()
        for row in np.flatnonzero(ids != 0):  # 0: the blank identifier of padding rows
            identifier = int(ids[row])
            if not 0 < identifier < len(self.meta.task_index) or self.meta.task_index[identifier] < 0:
                raise ValueError(f"puzzle identifier {identifier} is not an ARC puzzle of this dataset")
            task = self.meta.tasks[self.meta.task_index[identifier]]
            aug = self.meta.augmentation(identifier)
            offset = grid_offset(inputs[row])
            original = aug.invert(decode_grid(inputs[row], offset)) if offset is not None else None
            index = None if original is None else self._test_index.get(task, {}).get((original.shape, original.tobytes()))
            if index is None:
                raise ValueError(f"{set_name}: a test row of identifier {identifier} (task {task}) matches none of "
                                 "the task's test inputs; is the test split from the same build as arc_tasks.json?")
            grid = decode_grid(preds[row], offset)
            self.predictions.append(Prediction(task, index, None if grid is None else as_grid(aug.invert(grid)),
                                               float(confidence[row])))


def gather_predictions(predictions: list[Prediction]) -> list[Prediction] | None:
    """Every rank's predictions on rank 0 (None on the others); alone, `predictions`. Rank 0 alone votes: sending
    them to every rank would hold world_size copies of a 1000-augmentation evaluation on each."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return predictions
    parts: list | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(predictions, parts, dst=0)
    return None if parts is None else [p for part in parts for p in part]


def write_submission(path: str | os.PathLike, submission: dict) -> None:
    path = Path(path)
    make_dir(path.parent)
    text = json.dumps(submission) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


class VotePool:
    """Votes added up over the evaluations of a run (evaluator.pool_votes=true), as the official evaluator does
    by never clearing them: its final pass@2, the number the paper reports, counts every checkpoint's votes.
    Kept in the training state, so a resumed run goes on pooling."""

    def __init__(self):
        self.votes: Votes = {}
        self.evaluations = 0

    def add(self, predictions: list[Prediction]) -> None:
        self.votes = add_votes(predictions, self.votes)
        self.evaluations += 1

    def state_dict(self) -> dict:
        """Plain lists (a weights-only checkpoint holds them): [task, test index, grid, count, confidence sum]."""
        return {"evaluations": self.evaluations,
                "votes": [[task, index, [list(row) for row in grid], count, total]
                          for (task, index), grids in sorted(self.votes.items())
                          for grid, (count, total) in sorted(grids.items())]}

    def load_state_dict(self, state: dict) -> None:
        self.evaluations = int(state["evaluations"])
        self.votes = {}
        for task, index, grid, count, total in state["votes"]:
            self.votes.setdefault((task, int(index)), {})[as_grid(grid)] = [int(count), float(total)]


def evaluate_arc(model: ACTLossHead, batches: Batches, device: torch.device, dataset_dir: str,
                 submission_path: str | os.PathLike | None = None, ks: Sequence[int] = PASS_KS,
                 reduce=None, pool: VotePool | None = None) -> dict[str, float]:
    """The puzzle metrics plus pass@k (on every rank); writes the submission (on rank 0) when a path is given.
    Votes are collected afresh on every call; with a `pool` they are also added to it, and pooled/pass@k
    (and a pooled submission, `<name>_pooled.json`) count every evaluation the pool has seen."""
    meta = load_arc_metadata(dataset_dir)
    collector = ArcCollector(meta)
    metrics = evaluate_puzzles(model, batches, device, reduce, on_outputs=collector.add)
    predictions = gather_predictions(collector.predictions)
    scores = None
    if predictions is not None:  # rank 0 (or alone)
        solutions = {t: [None if g is None else as_grid(g) for g in outs] for t, outs in meta.test_outputs.items()}
        num_tests = {t: len(v) for t, v in meta.test_inputs.items()}
        rankings = {"": rank_candidates(predictions)}
        if pool is not None:
            pool.add(predictions)
            rankings["pooled/"] = rank_votes(pool.votes)
        scores = {}
        for prefix, ranked in rankings.items():
            scores.update({f"{prefix}{k}": v for k, v in pass_at_k(ranked, solutions, ks).items()})
            if submission_path is not None:
                path = Path(submission_path)
                write_submission(path.with_name(f"{path.stem}_pooled{path.suffix}") if prefix else path,
                                 make_submission(ranked, num_tests))
        if pool is not None:
            scores["pooled/evaluations"] = float(pool.evaluations)
            del scores["pooled/arc_tasks"]
    metrics.update(broadcast_object(scores))
    return metrics


class ArcEvaluator:
    """dataset.evaluator=arc: puzzle metrics and pass@k on the first test dataset; each evaluation writes
    <run_dir>/submission_step_<N>.json. With evaluator.pool_votes=true the votes of every evaluation of the run
    also add up (VotePool): pooled/pass@k and submission_step_<N>_pooled.json."""

    def __init__(self, cfg, run_dir: str | None = None, tokenizer=None, reduce=None):
        self.dataset_dir = (cfg.data_paths_test or cfg.data_paths)[0]
        self.run_dir, self.reduce = run_dir, reduce
        self.pool = VotePool() if (cfg.get("evaluator") or {}).get("pool_votes") else None

    def evaluate(self, model: ACTLossHead, test_data: Batches, device: torch.device,
                 step: int) -> tuple[dict[str, float], dict[str, list[dict]]]:
        submission = os.path.join(self.run_dir, f"submission_step_{step}.json") if self.run_dir else None
        return evaluate_arc(model, test_data, device, self.dataset_dir, submission, reduce=self.reduce,
                            pool=self.pool), {}

    def state_dict(self) -> dict | None:
        """What a checkpoint keeps of the evaluator: the pooled votes (None when not pooling)."""
        return self.pool.state_dict() if self.pool is not None else None

    def load_state_dict(self, state: dict | None) -> None:
        if self.pool is not None and state:
            self.pool.load_state_dict(state)


if __name__ == "__main__":  # python -m evaluators.arc RUN --tasks ...: test-time embeddings for a set of tasks
    import sys

    from evaluators.arc_fit import main

    sys.exit(main())
