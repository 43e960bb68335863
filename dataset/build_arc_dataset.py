"""Build the ARC-AGI puzzle dataset in the on-disk format of dataset/common.py.

Input, either layout:
  combined  --input-prefix DIR/arc-agi reads DIR/arc-agi_<subset>_challenges.json and, when present,
            DIR/arc-agi_<subset>_solutions.json (the Kaggle layout)
  directory --input-dir DIR reads DIR/<subset>/<task id>.json, one task per file (the ARC GitHub layout)

Examples:
  python -m dataset.build_arc_dataset --input-prefix ../shared/data/arc-agi/arc-agi \\
      --subsets training evaluation concept --test-set evaluation --num-aug 1000 --output-dir data/arc1concept-aug-1000
  python -m dataset.build_arc_dataset --input-prefix ../shared/data/arc-agi/arc-agi \\
      --subsets training2 evaluation2 concept --test-set evaluation2 --num-aug 1000 --output-dir data/arc2concept-aug-1000

Every task of every subset becomes one group: the task itself and up to `num_aug` distinct augmentations
(one of the 8 dihedral transforms, a permutation of the colours 1..9 with black kept, and a random
translation of the examples on the canvas), each with its own puzzle identifier. Placement follows the
official builder: in every augmented puzzle one demonstration, drawn at random (seeded), stays at the top
left, where the test inputs sit and are scored, and the others move to random offsets (--translate-all
moves every one, as this builder did before; --no-translate moves none). Tasks of the test set
give their demonstration pairs to the train split and their test inputs to the test split (under the same
identifiers); the other tasks give all their pairs (with known outputs) to the train split.

Encoding (the official TRM one): a grid of h x w colours sits at (r, c) on a 30x30 canvas, flattened row
by row; 0 = PAD, 1 = end marker, 2..11 = colours 0..9. The end markers fill row r + h under the grid and
column c + w right of it (where they fit on the canvas). Labels use the same encoding and PAD is ignored.

Besides the splits, the build writes what the ARC evaluator needs to undo every augmentation:
  arc_augmentations.npz  per identifier: task index (-1 for the blank), transform, colour map
  arc_tasks.json         task ids and subsets, the test set, and the original test inputs / outputs
The task format, the augmentations and the encoding live in tasks/arc.py.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dataset.common import (PuzzleDatasetMetadata, check_output_dir, run_build_cli, save_identifiers,  # noqa: E402
                            save_split, staged_output)
from tasks.arc import (AUGMENTATIONS_FILE, IDENTITY, PAD, SEQ_LEN, TASKS_FILE, VOCAB_SIZE, Task,  # noqa: E402
                       draw_augmentations, encode_demonstrations, encode_pair, load_combined, load_directory)
from utils.files import atomic_write  # noqa: E402


# ----------------------------------------------------------------------------- config and input files


@dataclass
class ArcBuildConfig:
    output_dir: str = "data/arc1concept-aug-1000"
    input_prefix: str | None = None  # combined layout: <prefix>_<subset>_challenges.json
    input_dir: str | None = None  # directory layout: <dir>/<subset>/<task>.json
    subsets: list[str] = field(default_factory=lambda: ["training", "evaluation", "concept"])
    test_set: str = "evaluation"  # its demonstrations train, its test inputs are the test split
    num_aug: int = 1000  # augmented copies per task besides the original (fewer when duplicates arise)
    translate: bool = True  # random placement of the train examples on the canvas (official rule: see below)
    translate_all: bool = False  # move every demonstration; the official rule keeps one per puzzle at the top left
    translate_test: bool = False  # also of the test inputs (the official code places them top left)
    seed: int = 0
    quiet: bool = False


def _check_config(cfg: ArcBuildConfig) -> None:
    if (cfg.input_prefix is None) == (cfg.input_dir is None):
        raise ValueError("give exactly one of input_prefix (combined layout) or input_dir (one file per task)")
    if not cfg.subsets or len(set(cfg.subsets)) != len(cfg.subsets):
        raise ValueError(f"subsets must be a non-empty list without repeats, got {list(cfg.subsets)}")
    if cfg.test_set not in cfg.subsets:
        raise ValueError(f"test_set {cfg.test_set!r} must be one of the subsets {list(cfg.subsets)}")
    if cfg.num_aug < 0 or cfg.seed < 0:
        raise ValueError(f"num_aug and seed must be >= 0, got {cfg.num_aug} and {cfg.seed}")


def load_tasks(cfg: ArcBuildConfig) -> list[Task]:
    tasks, where = [], {}
    for subset in cfg.subsets:
        loaded = load_combined(cfg.input_prefix, subset) if cfg.input_prefix else load_directory(cfg.input_dir, subset)
        for t in loaded:
            if t.id in where:  # a test task also trained on would leak its answers; two copies confuse scoring
                raise ValueError(f"task {t.id} appears in subsets {where[t.id]} and {subset}; choose subsets that "
                                 "do not overlap")
            where[t.id] = subset
        tasks += loaded
    return tasks


@dataclass
class _SplitRows:
    """Examples of one split, filled puzzle by puzzle."""
    inputs: np.ndarray
    labels: np.ndarray
    puzzle_identifiers: list[int] = field(default_factory=list)
    puzzle_indices: list[int] = field(default_factory=lambda: [0])
    group_indices: list[int] = field(default_factory=lambda: [0])

    def add_puzzle(self, identifier: int, examples: list[tuple[np.ndarray, np.ndarray]]) -> None:
        n = self.puzzle_indices[-1]
        for i, (x, y) in enumerate(examples):
            self.inputs[n + i], self.labels[n + i] = x, y
        self.puzzle_identifiers.append(identifier)
        self.puzzle_indices.append(n + len(examples))

    def end_group(self) -> None:
        if self.group_indices[-1] != len(self.puzzle_identifiers):
            self.group_indices.append(len(self.puzzle_identifiers))

    def arrays(self) -> dict[str, np.ndarray]:
        n = self.puzzle_indices[-1]
        return {"inputs": self.inputs[:n], "labels": self.labels[:n],
                "puzzle_identifiers": np.asarray(self.puzzle_identifiers, np.int32),
                "puzzle_indices": np.asarray(self.puzzle_indices, np.int32),
                "group_indices": np.asarray(self.group_indices, np.int32)}


def build(config: ArcBuildConfig) -> None:
    """Write `<output_dir>/{train,test}`, identifiers.json, arc_augmentations.npz and arc_tasks.json."""
    cfg = config
    _check_config(cfg)
    check_output_dir(cfg.output_dir)
    say = (lambda *_: None) if cfg.quiet else print
    start = time.perf_counter()
    tasks = load_tasks(cfg)
    is_test = [t.subset == cfg.test_set for t in tasks]
    train_pairs = [t.train if test else t.train + [p for p in t.test if p.output is not None]
                   for t, test in zip(tasks, is_test)]
    unsolved = sum(p.output is None for t, test in zip(tasks, is_test) if not test for p in t.test)
    if unsolved:
        say(f"{unsolved} test input(s) of training subsets have no known output: only their demonstrations train")

    # one generator per task and purpose: the same seed gives the same data, task by task
    augs = [draw_augmentations(t, cfg.num_aug, np.random.default_rng([cfg.seed, 0, i])) for i, t in enumerate(tasks)]
    n_train = sum(len(a) * len(p) for a, p in zip(augs, train_pairs))
    n_test = sum(len(a) * len(t.test) for a, t, test in zip(augs, tasks, is_test) if test)
    train = _SplitRows(np.empty((n_train, SEQ_LEN), np.uint8), np.empty((n_train, SEQ_LEN), np.uint8))
    test = _SplitRows(np.empty((n_test, SEQ_LEN), np.uint8), np.empty((n_test, SEQ_LEN), np.uint8))
    names, task_index, transforms, colours = ["<blank>"], [-1], [0], [IDENTITY.colours]
    for i, (task, task_augs) in enumerate(zip(tasks, augs)):
        rng = np.random.default_rng([cfg.seed, 1, i])  # placement: which demonstration stays, the offsets
        for k, aug in enumerate(task_augs):
            identifier = len(names)
            names.append(f"{task.id}/{k}")
            task_index.append(i)
            transforms.append(aug.transform)
            colours.append(aug.colours)
            train.add_puzzle(identifier, encode_demonstrations(train_pairs[i], aug, rng if cfg.translate else None,
                                                               cfg.translate_all))
            if is_test[i]:
                test.add_puzzle(identifier, [encode_pair(p, aug, rng if cfg.translate_test else None) for p in task.test])
        train.end_group()
        if is_test[i]:
            test.end_group()

    test_tasks = {t.id: {"test_inputs": [p.input.tolist() for p in t.test],
                         "test_outputs": [None if p.output is None else p.output.tolist() for p in t.test]}
                  for t, test in zip(tasks, is_test) if test}
    text = json.dumps({"tasks": [t.id for t in tasks], "subsets": [t.subset for t in tasks],
                       "test_set": cfg.test_set, "test_tasks": test_tasks}) + "\n"
    with staged_output(cfg.output_dir) as out:
        for split, rows in (("train", train), ("test", test)):
            arrays = rows.arrays()
            num_puzzles = len(arrays["puzzle_identifiers"])
            metadata = PuzzleDatasetMetadata(
                pad_id=PAD, ignore_label_id=PAD, blank_identifier_id=0, vocab_size=VOCAB_SIZE, seq_len=SEQ_LEN,
                num_puzzle_identifiers=len(names), total_groups=len(arrays["group_indices"]) - 1,
                mean_puzzle_examples=len(arrays["inputs"]) / max(num_puzzles, 1), total_puzzles=num_puzzles,
                sets=["all"])
            save_split(out, split, metadata, {"all": arrays})
        save_identifiers(out, names)
        atomic_write(out / AUGMENTATIONS_FILE, lambda f: np.savez(
            f, task_index=np.asarray(task_index, np.int32), transform=np.asarray(transforms, np.int8),
            colours=np.asarray(colours, np.uint8)))
        atomic_write(out / TASKS_FILE, lambda f: f.write(text.encode()))
    say(f"wrote {cfg.output_dir}: {len(tasks)} tasks ({sum(is_test)} in the test set {cfg.test_set!r}), "
        f"{len(names) - 1} "
        f"puzzles with augmentations, train {n_train} examples, test {n_test} examples, "
        f"in {time.perf_counter() - start:.1f} s")


# ----------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> None:
    d = ArcBuildConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", required=True)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input-prefix", help="combined layout: PREFIX_<subset>_challenges.json (+ _solutions.json)")
    src.add_argument("--input-dir", help="directory layout: DIR/<subset>/<task id>.json")
    p.add_argument("--subsets", nargs="+", default=d.subsets,
                   help="e.g. training evaluation concept (ARC-AGI-1), training2 evaluation2 concept (ARC-AGI-2)")
    p.add_argument("--test-set", default=d.test_set, help="the subset whose test inputs form the test split")
    p.add_argument("--num-aug", type=int, default=d.num_aug, help="augmented copies per task")
    p.add_argument("--no-translate", dest="translate", action="store_false", help="keep grids at the top left")
    p.add_argument("--translate-all", action="store_true", help="move every demonstration (the official rule, the "
                   "default, keeps one random demonstration of each augmented puzzle at the top left)")
    p.add_argument("--translate-test", action="store_true", help="also move the test inputs on the canvas")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--quiet", action="store_true")
    run_build_cli(build, ArcBuildConfig, p.parse_args(argv))


if __name__ == "__main__":
    main()
