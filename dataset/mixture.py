"""A mixture of token datasets (plain text, chat; synthetic tasks built as either) for one model: every
training row comes from a source drawn by the current curriculum stage's weights.

The draw for batch b uses a generator seeded with (seed, b), and each source keeps its own resumable
stream, so (batch counter, source streams, curriculum) is the whole state: a resumed run draws the same
rows. Validation reads every source's validation split and reports each one.
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterator

import numpy as np
import torch

from dataset.chat_dataset import ChatDataset
from dataset.epochs import rank_rows
from dataset.leveled_dataset import LeveledDataset, open_leveled
from dataset.text_dataset import TextDataset
from dataset.token_dataset import TokenDataset
from utils.curriculum import Curriculum, Stage

LOADERS = {"text": TextDataset, "chat": ChatDataset}


def open_source(path: str, split: str, seq_len: int, **kwargs) -> TokenDataset:
    """A built text or chat dataset, or one in difficulty levels (its dataset.json says which) with rows of
    seq_len positions."""
    meta = os.path.join(path, "dataset.json")
    if not os.path.exists(meta):
        raise FileNotFoundError(f"{meta} not found: build the source with dataset/build_text_dataset.py, "
                                "dataset/build_chat_dataset.py or examples/make_synthetic_tasks.py")
    with open(meta) as f:
        kind = json.load(f).get("kind")
    if kind == "leveled":
        return open_leveled(path, split, lambda level_path, seed: open_source(level_path, split, seq_len,
                                                                              **{**kwargs, "seed": seed}),
                            kwargs.get("seed", 0))
    if kind not in LOADERS:
        raise ValueError(f"{meta}: a mixture source must be a text, chat or leveled dataset, got kind {kind!r}")
    return LOADERS[kind](path, split, seq_len=seq_len, **kwargs)


def stage_probabilities(stage: Stage, sources: list[str]) -> np.ndarray:
    """The chance that a row comes from each of `sources` in `stage` (its weights, normalised)."""
    unknown = set(stage.weights) - set(sources)
    if unknown:
        raise ValueError(f"stage {stage.name}: weights for unknown sources {sorted(unknown)}; the sources are "
                         f"{sorted(sources)}")
    p = np.array([float(stage.weights.get(name, 0.0)) for name in sources])
    if (p < 0).any() or p.sum() <= 0:
        raise ValueError(f"stage {stage.name}: weights must be >= 0 and not all 0, got {stage.weights}")
    return p / p.sum()


class MixtureDataset:
    def __init__(self, sources: dict[str, TokenDataset], curriculum: Curriculum, global_batch_size: int,
                 seed: int = 0, rank: int = 0, world_size: int = 1):
        first = next(iter(sources.values()))
        for name, source in sources.items():
            if source.model_fields() != first.model_fields() or source.pad_id != first.pad_id:
                raise ValueError(f"mixture source {name} ({source.path}): vocabulary, row length or padding differ "
                                 f"from {first.path}; build every source with the same tokenizer")
            if source.metadata.get("tokenizer_fingerprint") != first.metadata.get("tokenizer_fingerprint"):
                raise ValueError(f"mixture source {name} ({source.path}): its tokenizer differs from {first.path}'s")
        self.sources, self.curriculum, self.first = sources, curriculum, first
        self.seed, self.rank = seed, rank
        self.global_batch_size, self.local_batch_size = global_batch_size, global_batch_size // world_size
        self.seq_len, self.batches = first.seq_len, 0

    # ---- facts for the trainer
    @property
    def examples_per_epoch(self) -> float:
        """One epoch: one pass over every source's rows."""
        return sum(s.examples_per_epoch for s in self.sources.values())

    def model_fields(self) -> dict[str, int]:
        return self.first.model_fields()

    def tokenizer(self):
        return self.first.tokenizer()

    def probabilities(self) -> np.ndarray:
        return stage_probabilities(self.curriculum.stage, list(self.sources))

    def state_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "sources": {k: s.state_dict() for k, s in self.sources.items()},
                "curriculum": self.curriculum.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batches = int(state["batches"])
        for name, source in self.sources.items():
            source.load_state_dict(state["sources"][name])
        self.curriculum.load_state_dict(state["curriculum"])

    def set_difficulty(self) -> None:
        """The current stage's difficulty to every leveled source (None: all levels)."""
        for source in self.sources.values():
            if isinstance(source, LeveledDataset):
                source.difficulty = self.curriculum.stage.difficulty

    # ---- batches
    def draw_sources(self) -> np.ndarray:
        """The source index of every row of the next batch."""
        rng = np.random.default_rng([self.seed, self.batches])
        return rng.choice(len(self.sources), size=self.global_batch_size, p=self.probabilities())

    def __iter__(self) -> Iterator[tuple[str, dict[str, torch.Tensor], int]]:
        sources = list(self.sources.values())
        while True:
            self.set_difficulty()
            picks = self.draw_sources()
            self.batches += 1
            specs = [(sources[k], sources[k]._train_row()) for k in picks]  # every rank advances every stream
            mine = rank_rows(0, len(specs), self.rank, self.local_batch_size)
            yield "train", self.first.collate([specs[r][0]._row(specs[r][1]) for r in mine]), len(specs)


def plateau_value(metrics: dict[str, float], key: str) -> float:
    """The validation metric the curriculum's plateau detection watches (dataset.plateau_metric)."""
    if key not in metrics:
        raise ValueError(f"dataset.plateau_metric: no validation metric {key!r}; choose one of {sorted(metrics)}")
    return metrics[key]


def open_mixture(cfg, rank: int, world_size: int) -> tuple[MixtureDataset, dict[str, TokenDataset]]:
    """(training mixture, {source name: validation split}) from cfg.dataset (see config/dataset/mixture.yaml)."""
    d = cfg.dataset
    if not d.sources:
        raise ValueError("dataset.sources: a mixture needs at least one source")
    kwargs = dict(global_batch_size=cfg.global_batch_size, seed=cfg.seed, rank=rank, world_size=world_size, pack=d.pack)
    train, test = {}, {}
    for k, (name, source) in enumerate(d.sources.items()):
        if "path" not in source:
            raise ValueError(f"dataset.sources.{name}: needs a path")
        train[name] = open_source(source.path, "train", d.seq_len, **{**kwargs, "seed": cfg.seed + k})
        test[name] = open_source(source.path, "test", d.seq_len, **kwargs)
    defaults = {name: float(s.get("weight", 1.0)) for name, s in d.sources.items()}
    stages = [Stage.from_config(raw, i, defaults) for i, raw in enumerate(d.get("stages") or [{"name": "all"}])]
    for stage in stages:  # every stage's weights now, not when training reaches it
        stage_probabilities(stage, list(d.sources))
    if any(s.difficulty is not None for s in stages) and not any(isinstance(s, LeveledDataset) for s in train.values()):
        raise ValueError("dataset.stages: a stage sets a difficulty, but no source is a leveled dataset "
                         "(examples/make_synthetic_tasks.py writes them: <output-dir>/text or /chat)")
    return MixtureDataset(train, Curriculum(stages), cfg.global_batch_size, cfg.seed, rank, world_size), test
