"""Batches from the on-disk puzzle format (spec section 10) for the trainer.

Training is an endless, seeded stream: epoch e visits every group once in an order drawn from
(seed, e); from each group one random puzzle (augmentation) is taken, and from that puzzle its
examples in random order until the global batch is full. Batches run on across epoch ends, so no
data is dropped. The position in the stream (epoch, group) is the iterator's whole state, which
makes resuming exact. Each rank takes its slice of every global batch.

Test mode walks every example of each set in order; the last batch is padded (ignored labels).
"""
from __future__ import annotations

import importlib
import os
import warnings
from dataclasses import dataclass, fields
from datetime import timedelta
from typing import Iterator

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from constants import IGNORE_LABEL_ID
from dataset.common import PuzzleDatasetMetadata, check_set, load_metadata
from dataset.epochs import EpochStream, rank_rows
from models.trm import check_field_types
from tasks import TASKS
from utils.distributed import barrier

FIELDS = ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices")


@dataclass
class PuzzleSet:
    name: str
    arrays: dict[str, np.ndarray]


def _merge_metadata(paths: list[str], metas: list[PuzzleDatasetMetadata]) -> PuzzleDatasetMetadata:
    first = metas[0]
    for path, m in zip(paths[1:], metas[1:]):
        for key in ("seq_len", "vocab_size", "pad_id", "ignore_label_id", "blank_identifier_id"):
            if getattr(m, key) != getattr(first, key):
                raise ValueError(f"{path}: {key}={getattr(m, key)} differs from {paths[0]} ({getattr(first, key)})")
    with_ids = [p for p, m in zip(paths, metas) if m.num_puzzle_identifiers > 1]
    if len(with_ids) > 1:  # (the official code shares the space too; our builders each number from 1)
        warnings.warn(f"data_paths {with_ids} each have puzzle identifiers: they share one numbering, so puzzle "
                      "i of every dataset trains the same embedding row; build them as one dataset to keep them apart")
    groups = sum(m.total_groups for m in metas)
    return PuzzleDatasetMetadata(
        pad_id=first.pad_id, ignore_label_id=first.ignore_label_id, blank_identifier_id=first.blank_identifier_id,
        vocab_size=first.vocab_size, seq_len=first.seq_len,
        num_puzzle_identifiers=max(m.num_puzzle_identifiers for m in metas),  # identifiers share one space
        total_groups=groups, total_puzzles=sum(m.total_puzzles for m in metas),
        mean_puzzle_examples=sum(m.mean_puzzle_examples * m.total_groups for m in metas) / max(groups, 1),
        sets=[f"{p}:{s}" if len(paths) > 1 else s for p, m in zip(paths, metas) for s in m.sets])


class PuzzleDataset:
    def __init__(self, data_paths: list[str], split: str, global_batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        if global_batch_size % world_size:
            raise ValueError(f"global_batch_size {global_batch_size} is not divisible by the world size {world_size}")
        self.split, self.rank = split, rank
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // world_size
        metas = [load_metadata(os.path.join(p, split)) for p in data_paths]
        self.metadata = _merge_metadata(data_paths, metas)
        self.sets = [self._load_set(os.path.join(p, split), s, f"{p}:{s}" if len(data_paths) > 1 else s, m)
                     for p, m in zip(data_paths, metas) for s in m.sets]
        # global group id -> (set, local group) through cumulative offsets
        self._group_offsets = np.cumsum([0] + [len(s.arrays["group_indices"]) - 1 for s in self.sets])
        self.stream = EpochStream(int(self._group_offsets[-1]), seed, self._epoch_plan) if split == "train" else None

    @property
    def examples_per_epoch(self) -> float:
        return self.metadata.total_groups * self.metadata.mean_puzzle_examples

    def model_fields(self) -> dict[str, int]:
        """What the model needs to know of the data."""
        m = self.metadata
        return dict(seq_len=m.seq_len, vocab_size=m.vocab_size, num_puzzle_identifiers=m.num_puzzle_identifiers)

    @staticmethod
    def _load_set(split_dir: str, set_name: str, label: str, meta: PuzzleDatasetMetadata) -> PuzzleSet:
        """One set's arrays, checked against the split's dataset.json (a mismatch names the file)."""
        def file(field: str) -> str:
            return os.path.join(split_dir, f"{set_name}__{field}.npy")

        arrays = {}
        for field in FIELDS:
            if not os.path.exists(file(field)):
                raise FileNotFoundError(f"{file(field)}: missing array of set {set_name!r}")
            try:  # the example arrays can be large (ARC): map them instead of reading them
                arrays[field] = np.load(file(field), mmap_mode="r" if field in ("inputs", "labels") else None)
            except (ValueError, OSError, EOFError) as e:
                raise ValueError(f"{file(field)}: not a readable .npy array ({e})") from None
        check_set(set_name, arrays, meta, where=file)
        return PuzzleSet(label, arrays)

    # ---- state (exact resume) ----
    def state_dict(self) -> dict[str, int]:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.stream.load_state_dict(state)

    # ---- batches ----
    def _collate(self, inputs: np.ndarray, labels: np.ndarray, ids: np.ndarray) -> dict[str, torch.Tensor]:
        """numpy rows -> int32 tensors with ignored labels as -100, padded to a full batch."""
        meta = self.metadata
        labels = labels.astype(np.int32)
        if meta.ignore_label_id is not None:
            labels[labels == meta.ignore_label_id] = IGNORE_LABEL_ID
        pad = self.local_batch_size - len(inputs)
        if pad > 0:
            inputs = np.concatenate([inputs, np.full((pad, meta.seq_len), meta.pad_id, dtype=inputs.dtype)])
            labels = np.concatenate([labels, np.full((pad, meta.seq_len), IGNORE_LABEL_ID, dtype=np.int32)])
            ids = np.concatenate([ids, np.full(pad, meta.blank_identifier_id, dtype=ids.dtype)])
        return {"inputs": torch.from_numpy(inputs.astype(np.int32)), "labels": torch.from_numpy(labels),
                "puzzle_identifiers": torch.from_numpy(ids.astype(np.int32))}

    def _epoch_plan(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        order = rng.permutation(int(self._group_offsets[-1]))
        pick = rng.random(len(order))  # which puzzle of each group
        example_keys = [rng.random(len(s.arrays["inputs"])) for s in self.sets]  # example order inside a puzzle
        return order, pick, example_keys

    def _take_group(self, g: int, u: float, keys: list[np.ndarray], want: int) -> tuple[int, np.ndarray, int]:
        """From global group g: (set index, example rows, puzzle index), at most `want` rows."""
        si = int(np.searchsorted(self._group_offsets, g, side="right") - 1)
        a = self.sets[si].arrays
        local = g - self._group_offsets[si]
        lo, hi = a["group_indices"][local], a["group_indices"][local + 1]
        puzzle = int(lo + int(u * (hi - lo)))
        start, end = a["puzzle_indices"][puzzle], a["puzzle_indices"][puzzle + 1]
        rows = start + np.argsort(keys[si][start:end], kind="stable")[:want]
        return si, rows, puzzle

    def _iter_train(self) -> Iterator[tuple[str, dict[str, torch.Tensor], int]]:
        while True:
            chunks: list[tuple[int, np.ndarray, int]] = []
            size = 0
            while size < self.global_batch_size:
                (order, pick, keys), pos = self.stream.advance()
                si, rows, puzzle = self._take_group(int(order[pos]), pick[pos], keys, self.global_batch_size - size)
                chunks.append((si, rows, puzzle))
                size += len(rows)
            mine = rank_rows(0, self.global_batch_size, self.rank, self.local_batch_size)
            yield "train", self._gather(chunks, mine.start, mine.stop), self.global_batch_size

    def _gather(self, chunks: list[tuple[int, np.ndarray, int]], lo: int, hi: int) -> dict[str, torch.Tensor]:
        inputs, labels, ids, n = [], [], [], 0
        for si, rows, puzzle in chunks:
            a = self.sets[si].arrays
            take = rows[max(0, lo - n):max(0, hi - n)]
            n += len(rows)
            if len(take):
                inputs.append(a["inputs"][take])
                labels.append(a["labels"][take])
                ids.append(np.full(len(take), a["puzzle_identifiers"][puzzle]))
        return self._collate(np.concatenate(inputs), np.concatenate(labels), np.concatenate(ids))

    def _iter_test(self) -> Iterator[tuple[str, dict[str, torch.Tensor], int]]:
        for s in self.sets:
            a = s.arrays
            example_puzzle = np.repeat(np.arange(len(a["puzzle_indices"]) - 1), np.diff(a["puzzle_indices"]))
            for start in range(0, len(a["inputs"]), self.global_batch_size):
                end = min(start + self.global_batch_size, len(a["inputs"]))
                rows = np.array(rank_rows(start, end, self.rank, self.local_batch_size), dtype=np.int64)
                ids = a["puzzle_identifiers"][example_puzzle[rows]]
                yield s.name, self._collate(a["inputs"][rows], a["labels"][rows], ids), end - start

    def __iter__(self) -> Iterator[tuple[str, dict[str, torch.Tensor], int]]:
        """Yields (set name, local batch, global effective batch size)."""
        return self._iter_train() if self.split == "train" else self._iter_test()


DATASET_BUILD_TIMEOUT = timedelta(hours=4)  # ARC with 1000 augmentations takes ~10 minutes on one core
# task -> (its builder module, the module's build config class); the module's build(config) writes the dataset
PUZZLE_BUILDERS = {"sudoku": ("dataset.build_sudoku_dataset", "SudokuBuildConfig"),
                   "arc": ("dataset.build_arc_dataset", "ArcBuildConfig"),
                   "maze": ("dataset.build_maze_dataset", "MazeBuildConfig")}


def build_missing(cfg: DictConfig) -> None:
    """Write data_paths[0] (= dataset.build_path) with the builder of dataset.task and the options dataset.build."""
    build = dict(OmegaConf.to_container(cfg.dataset.build, resolve=True))
    task = build.pop("builder", None) or cfg.dataset.get("task")  # builder: the key of configs saved before `task`
    if task not in PUZZLE_BUILDERS:
        raise ValueError(f"dataset.task: no builder for the task {task!r}; choose one of {sorted(PUZZLE_BUILDERS)}")
    module = importlib.import_module(PUZZLE_BUILDERS[task][0])
    config_class = getattr(module, PUZZLE_BUILDERS[task][1])
    known = {f.name for f in fields(config_class)} - {"output_dir"}  # (the output is data_paths[0])
    if set(build) - known:
        raise ValueError(f"dataset.build: unknown option(s) {sorted(set(build) - known)} for the {task} builder; "
                         f"known: {sorted(known)}")
    config = config_class(output_dir=cfg.data_paths[0], **build)
    check_field_types(config, prefix="dataset.build.")
    print(f"{cfg.data_paths[0]} not found: building it with the {task} builder")
    module.build(config)


def open_puzzle(cfg: DictConfig, rank: int, world_size: int) -> tuple[PuzzleDataset, PuzzleDataset]:
    """(train, test) puzzle data of data_paths (test: data_paths_test when given); rank 0 first builds a
    missing dataset when dataset.build says how."""
    task = cfg.dataset.get("task")
    if task is not None and task not in TASKS:
        raise ValueError(f"dataset.task: unknown task {task!r}; choose one of {list(TASKS)}")
    # Only dataset.build_path is ever built: a missing data_paths=[...] is an error (a typo must not generate data)
    build_path = cfg.dataset.get("build_path")
    builds = (cfg.dataset.get("build") and build_path
              and os.path.normpath(cfg.data_paths[0]) == os.path.normpath(build_path))
    if builds and rank == 0 and not os.path.exists(os.path.join(cfg.data_paths[0], "train", "dataset.json")):
        build_missing(cfg)
    barrier(timeout=DATASET_BUILD_TIMEOUT)  # the other ranks wait for rank 0's build
    for path in list(cfg.data_paths) + list(cfg.data_paths_test):
        if not os.path.isdir(path):
            how = (f"; to build a new dataset there with dataset.build's options, set dataset.build_path={path} "
                   f"instead of data_paths" if cfg.dataset.get("build") and path == cfg.data_paths[0] else "")
            raise FileNotFoundError(f"dataset directory {path} not found (build it with dataset/build_*_dataset.py "
                                    f"or set data_paths=[...]){how}")
    kwargs = dict(global_batch_size=cfg.global_batch_size, seed=cfg.seed, rank=rank, world_size=world_size)
    return (PuzzleDataset(list(cfg.data_paths), "train", **kwargs),
            PuzzleDataset(list(cfg.data_paths_test or cfg.data_paths), "test", **kwargs))
