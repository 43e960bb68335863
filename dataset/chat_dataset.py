"""Batches of tokenized conversations (written by dataset/build_chat_dataset.py) for the trainer.

On disk, per split: `tokens.npy` (all conversations back to back), `trained.npy` (True where the token
is a training target: assistant text and assistant end tokens) and `offsets.npy` (CSR: conversation i
is tokens[offsets[i]:offsets[i+1]]), memory-mapped. Each conversation becomes next-token pairs in
`next_token_pairs`, the only place where the shift happens. A row holds one conversation padded to
seq_len, or with `pack=True` several whole conversations back to back; then `segment_ids` keep
attention inside each conversation and `position_ids` restart at 0 for each.
"""
from __future__ import annotations

import json
import os
from typing import Iterator

import numpy as np
import torch

from dataset.sampling import EpochStream, rank_rows
from models.losses import IGNORE_LABEL_ID

SPLIT_DIRS = {"train": "train", "test": "valid"}


def next_token_pairs(tokens: np.ndarray, trained: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """inputs[t] = tokens[t]; labels[t] = tokens[t + 1] where that token is trained, else ignored."""
    return tokens[:-1], np.where(trained[1:], tokens[1:], IGNORE_LABEL_ID)


def load_chat_metadata(path: str) -> dict:
    meta_path = os.path.join(path, "dataset.json")
    if not os.path.exists(meta_path):
        raise FileNotFoundError(f"{meta_path} not found: build the chat dataset with dataset/build_chat_dataset.py")
    with open(meta_path) as f:
        meta = json.load(f)
    if meta.get("kind") != "chat":
        raise ValueError(f"{meta_path}: not a chat dataset (kind={meta.get('kind')!r})")
    return meta


class ChatDataset:
    def __init__(self, path: str, split: str, global_batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, pack: bool = False):
        if global_batch_size % world_size:
            raise ValueError(f"global_batch_size {global_batch_size} is not divisible by the world size {world_size}")
        self.path, self.split, self.rank, self.pack = path, split, rank, pack
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // world_size
        self.metadata = load_chat_metadata(path)
        self.seq_len = int(self.metadata["max_length"])
        self.pad_id = int(self.metadata["pad_id"])
        split_dir = os.path.join(path, SPLIT_DIRS[split])
        self.arrays = {}
        for name in ("tokens", "trained", "offsets"):
            file = os.path.join(split_dir, f"{name}.npy")
            if not os.path.exists(file):
                raise FileNotFoundError(f"{file}: missing array of the {SPLIT_DIRS[split]} split")
            self.arrays[name] = np.load(file, mmap_mode="r" if name != "offsets" else None)
        lengths = np.diff(self.arrays["offsets"]) - 1  # input positions of each conversation
        if len(lengths) and lengths.max() > self.seq_len:
            raise ValueError(f"{split_dir}: a conversation has {lengths.max()} positions, more than max_length "
                             f"{self.seq_len}")
        self.lengths = lengths
        self.stream = EpochStream(len(lengths), seed) if split == "train" else None

    # ---- facts for the trainer
    @property
    def examples_per_epoch(self) -> float:
        """Rows per epoch (packed rows estimated from the token count)."""
        if self.pack:
            return max(1.0, float(self.lengths.sum()) / self.seq_len)
        return float(len(self.lengths))

    def model_fields(self) -> dict[str, int]:
        return dict(seq_len=self.seq_len, vocab_size=int(self.metadata["vocab_size"]), num_puzzle_identifiers=1)

    def tokenizer(self):
        from utils.tokenizer import ChatTokenizer

        return ChatTokenizer.load(os.path.join(self.path, "tokenizer"))

    def state_dict(self) -> dict[str, int]:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.stream.load_state_dict(state)

    # ---- rows and batches
    def _pairs(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.arrays["offsets"][i], self.arrays["offsets"][i + 1]
        return next_token_pairs(np.asarray(self.arrays["tokens"][lo:hi], dtype=np.int64),
                                np.asarray(self.arrays["trained"][lo:hi], dtype=bool))

    def _row(self, conversations: list[int]) -> dict[str, np.ndarray]:
        row = {"inputs": np.full(self.seq_len, self.pad_id, dtype=np.int64),
               "labels": np.full(self.seq_len, IGNORE_LABEL_ID, dtype=np.int64)}
        if self.pack:
            row["segment_ids"] = np.zeros(self.seq_len, dtype=np.int64)  # 0: padding
            row["position_ids"] = np.arange(self.seq_len, dtype=np.int64)
        at = 0
        for segment, i in enumerate(conversations, start=1):
            inputs, labels = self._pairs(i)
            n = len(inputs)
            row["inputs"][at:at + n], row["labels"][at:at + n] = inputs, labels
            if self.pack:
                row["segment_ids"][at:at + n] = segment
                row["position_ids"][at:at + n] = np.arange(n)
            at += n
        return row

    def _collate(self, rows: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
        while len(rows) < self.local_batch_size:  # a short last test batch: empty rows, nothing to score
            rows.append(self._row([]))
        return {k: torch.from_numpy(np.stack([r[k] for r in rows]).astype(np.int32)) for k in rows[0]}

    def _starts_new_row(self, row: list[int], used: int, n: int) -> bool:
        """Does a conversation of n positions go to the next row? Always, unless packing and it fits."""
        return bool(row) and (not self.pack or used + n > self.seq_len)

    def _train_row(self) -> list[int]:
        conversations, used = [], 0
        while True:
            order, pos = self.stream.peek()
            n = int(self.lengths[order[pos]])
            if self._starts_new_row(conversations, used, n):
                return conversations
            self.stream.advance()
            conversations.append(int(order[pos]))
            used += n

    def _test_rows(self) -> list[list[int]]:
        rows, current, used = [], [], 0
        for i, n in enumerate(self.lengths):
            if self._starts_new_row(current, used, n):
                rows.append(current)
                current, used = [], 0
            current.append(i)
            used += int(n)
        return rows + ([current] if current else [])

    def __iter__(self) -> Iterator[tuple[str, dict[str, torch.Tensor], int]]:
        """Yields (set name, local batch, global number of real rows in the batch)."""
        if self.split == "train":
            while True:
                rows = [self._train_row() for _ in range(self.global_batch_size)]
                mine = rank_rows(0, len(rows), self.rank, self.local_batch_size)
                yield "train", self._collate([self._row(rows[r]) for r in mine]), len(rows)
        else:
            rows = self._test_rows()
            for start in range(0, len(rows), self.global_batch_size):
                end = min(start + self.global_batch_size, len(rows))
                mine = rank_rows(start, end, self.rank, self.local_batch_size)
                yield "valid", self._collate([self._row(rows[r]) for r in mine]), end - start
