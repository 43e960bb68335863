"""What the language-model loaders (chat conversations, plain text) share: the on-disk metadata and
tokenizer, rows of `seq_len` next-token pairs, batching and rank slicing, and the resumable stream.

A subclass says what a row is made of (`_row(spec)`), how training draws the next row's spec
(`_train_row`, from `self.stream`) and which rows make up the validation pass (`_test_rows`).
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterator

import numpy as np
import torch

from constants import IGNORE_LABEL_ID
from dataset.epochs import EpochStream, rank_rows

SPLIT_DIRS = {"train": "train", "test": "valid"}
CHECK_TOKENS = 1 << 24


def next_token_pairs(tokens: np.ndarray, trained: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """inputs[t] = tokens[t]; labels[t] = tokens[t + 1] where that token is trained, else ignored.
    The only place where inputs and labels are shifted, for every kind of token data."""
    return tokens[:-1], np.where(trained[1:], tokens[1:], IGNORE_LABEL_ID)


def load_token_metadata(path: str, kind: str) -> dict:
    meta_path = os.path.join(path, "dataset.json")
    if not os.path.exists(meta_path):
        raise FileNotFoundError(f"{meta_path} not found: build the {kind} dataset with dataset/build_{kind}_dataset.py")
    with open(meta_path) as f:
        meta = json.load(f)
    if meta.get("kind") != kind:
        raise ValueError(f"{meta_path}: not a {kind} dataset (kind={meta.get('kind')!r})")
    return meta


def single_paths(cfg) -> tuple[str, str]:
    """(train, test) directories of a language-model run, which trains on one built dataset (its valid split
    tests unless data_paths_test names another)."""
    if len(cfg.data_paths) != 1:
        raise ValueError(f"dataset={cfg.dataset.name} trains on one built dataset, got data_paths={list(cfg.data_paths)}")
    return cfg.data_paths[0], cfg.data_paths_test[0] if cfg.data_paths_test else cfg.data_paths[0]


class TokenDataset:
    kind = ""  # the `kind` of dataset.json this loader reads
    stream: EpochStream | None = None

    def __init__(self, path: str, split: str, global_batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, pack: bool = False):
        if global_batch_size % world_size:
            raise ValueError(f"global_batch_size {global_batch_size} is not divisible by the world size {world_size}")
        self.path, self.split, self.seed, self.rank, self.pack = path, split, seed, rank, pack
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // world_size
        self.metadata = load_token_metadata(path, self.kind)
        self.pad_id = int(self.metadata["pad_id"])
        self.split_dir = os.path.join(path, SPLIT_DIRS[split])
        self.seq_len = 0  # set by the subclass

    def _load(self, name: str, mmap: bool = True) -> np.ndarray:
        file = os.path.join(self.split_dir, f"{name}.npy")
        if not os.path.exists(file):
            raise FileNotFoundError(f"{file}: missing array of the {os.path.basename(self.split_dir)} split")
        try:
            array = np.load(file, mmap_mode="r" if mmap else None)
        except (ValueError, OSError, EOFError) as e:
            raise ValueError(f"{file}: not a readable .npy array ({e})") from None
        if array.ndim != 1:
            raise ValueError(f"{file}: expected a 1-D array, got shape {list(array.shape)}")
        return array

    def _load_tokens(self) -> np.ndarray:
        """tokens.npy, checked: integer ids below dataset.json's vocab_size."""
        tokens, file = self._load("tokens"), os.path.join(self.split_dir, "tokens.npy")
        vocab = self.metadata["vocab_size"]
        if not np.issubdtype(tokens.dtype, np.integer):
            raise ValueError(f"{file}: token ids must be integers, got dtype {tokens.dtype}")
        for start in range(0, len(tokens), CHECK_TOKENS):  # in blocks: the file is mapped, not read
            block = tokens[start:start + CHECK_TOKENS]
            if block.min() < 0 or block.max() >= vocab:
                raise ValueError(f"{file}: token ids must lie in [0, {vocab}) (vocab_size of {self.path}/dataset.json)"
                                 f", got {block.min()}..{block.max()}")
        return tokens

    # ---- facts for the trainer
    def model_fields(self) -> dict[str, int]:
        return dict(seq_len=self.seq_len, vocab_size=int(self.metadata["vocab_size"]), num_puzzle_identifiers=1)

    def tokenizer(self):
        from utils.tokenizer import ChatTokenizer

        return ChatTokenizer.load(os.path.join(self.path, "tokenizer"))

    def state_dict(self) -> dict[str, Any]:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stream.load_state_dict(state)

    # ---- rows and batches
    def _blank_row(self) -> dict[str, np.ndarray]:
        row = {"inputs": np.full(self.seq_len, self.pad_id, dtype=np.int64),
               "labels": np.full(self.seq_len, IGNORE_LABEL_ID, dtype=np.int64)}
        if self.pack:
            row["segment_ids"] = np.zeros(self.seq_len, dtype=np.int64)  # 0: padding
            row["position_ids"] = np.arange(self.seq_len, dtype=np.int64)
        return row

    def _row(self, spec) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _train_row(self):
        raise NotImplementedError

    def _test_rows(self) -> list:
        raise NotImplementedError

    def train_row(self) -> dict[str, np.ndarray]:
        """The next training row (used by the mixture loader, which picks the source of every row)."""
        return self._row(self._train_row())

    def collate(self, rows: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
        while len(rows) < self.local_batch_size:  # a short last test batch: blank rows, nothing to score
            rows.append(self._blank_row())
        return {k: torch.from_numpy(np.stack([r[k] for r in rows]).astype(np.int32)) for k in rows[0]}

    def __iter__(self) -> Iterator[tuple[str, dict[str, torch.Tensor], int]]:
        """Yields (set name, local batch, global number of real rows in the batch)."""
        if self.split == "train":
            while True:
                rows = [self._train_row() for _ in range(self.global_batch_size)]
                mine = rank_rows(0, len(rows), self.rank, self.local_batch_size)
                yield "train", self.collate([self._row(rows[r]) for r in mine]), len(rows)
        else:
            rows = self._test_rows()
            for start in range(0, len(rows), self.global_batch_size):
                end = min(start + self.global_batch_size, len(rows))
                mine = rank_rows(start, end, self.rank, self.local_batch_size)
                yield "valid", self.collate([self._row(rows[r]) for r in mine]), end - start
