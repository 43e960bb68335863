"""A token dataset in difficulty levels (the synthetic task suite: examples/make_synthetic_tasks.py), used as a
mixture source: a curriculum stage's `difficulty: d` draws its rows from levels 1..d, in equal shares (the
easier levels stay in the mix, so they are not forgotten); without one, from every level.

On disk: <path>/dataset.json = {"kind": "leveled", "levels": {"1": "level1", ...}}, each level a built text or
chat dataset (all with one tokenizer). Row b's level is drawn from (seed, b), each level keeps its own stream,
so (row counter, level streams) is the whole state. Validation reads every level's validation split.
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from dataset.token_dataset import TokenDataset


class LeveledDataset(TokenDataset):
    kind = "leveled"

    def __init__(self, path: str, split: str, levels: dict[int, TokenDataset], seed: int = 0):
        first = next(iter(levels.values()))
        for level, data in levels.items():
            if data.model_fields() != first.model_fields() or \
                    data.metadata.get("tokenizer_fingerprint") != first.metadata.get("tokenizer_fingerprint"):
                raise ValueError(f"{path}: level {level} ({data.path}) differs from {first.path} in tokenizer or "
                                 "row length; build every level with the same tokenizer")
        self.path, self.split, self.seed, self.levels, self.first = path, split, seed, levels, first
        self.metadata, self.pad_id, self.seq_len, self.pack = first.metadata, first.pad_id, first.seq_len, first.pack
        self.global_batch_size, self.local_batch_size, self.rank = \
            first.global_batch_size, first.local_batch_size, first.rank
        self.difficulty: int | None = None  # set by the mixture from the curriculum stage
        self.rows = 0

    @property
    def examples_per_epoch(self) -> float:
        return sum(data.examples_per_epoch for data in self.levels.values())

    def tokenizer(self):
        return self.first.tokenizer()

    def active_levels(self) -> list[int]:
        if self.difficulty is None:
            return list(self.levels)
        if not min(self.levels) <= self.difficulty <= max(self.levels):
            raise ValueError(f"{self.path}: difficulty {self.difficulty}, but its levels are {sorted(self.levels)}")
        return [level for level in self.levels if level <= self.difficulty]

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "levels": {str(k): data.state_dict() for k, data in self.levels.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows = int(state["rows"])
        for level, data in self.levels.items():
            data.load_state_dict(state["levels"][str(level)])

    def _train_row(self) -> tuple[int, Any]:
        active = self.active_levels()
        level = active[int(np.random.default_rng([self.seed, self.rows]).integers(len(active)))]
        self.rows += 1
        return level, self.levels[level]._train_row()

    def _test_rows(self) -> list[tuple[int, Any]]:
        return [(level, spec) for level, data in self.levels.items() for spec in data._test_rows()]

    def _row(self, spec: tuple[int, Any]) -> dict[str, np.ndarray]:
        level, inner = spec
        return self.levels[level]._row(inner)


def open_leveled(path: str, split: str, open_level, seed: int = 0) -> LeveledDataset:
    """The leveled dataset at `path`; open_level(level directory, seed) opens one level's split."""
    with open(os.path.join(path, "dataset.json")) as f:
        meta = json.load(f)
    if not isinstance(meta.get("levels"), dict) or not meta["levels"]:
        raise ValueError(f"{path}/dataset.json: a leveled dataset needs 'levels': {{\"1\": \"level1\", ...}}")
    levels = {int(k): open_level(os.path.join(path, sub), seed + int(k)) for k, sub in sorted(meta["levels"].items(),
                                                                                         key=lambda kv: int(kv[0]))}
    return LeveledDataset(path, split, levels, seed)
