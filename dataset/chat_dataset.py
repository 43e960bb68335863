"""Batches of tokenized conversations (written by dataset/build_chat_dataset.py) for the trainer.

On disk, per split: `tokens.npy` (all conversations back to back), `trained.npy` (True where the token
is a training target: assistant text and assistant end tokens) and `offsets.npy` (CSR: conversation i
is tokens[offsets[i]:offsets[i+1]]), memory-mapped. Each conversation becomes next-token pairs in
`dataset/token_dataset.py:next_token_pairs`, the only place where the shift happens. A row holds one
conversation padded to seq_len, or with `pack=True` several whole conversations back to back; then
`segment_ids` keep attention inside each conversation and `position_ids` restart at 0 for each.
"""
from __future__ import annotations

import os

import numpy as np

from dataset.common import check_offsets
from dataset.epochs import EpochStream
from dataset.token_dataset import TokenDataset, next_token_pairs, single_paths


class ChatDataset(TokenDataset):
    kind = "chat"

    def __init__(self, path: str, split: str, global_batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, pack: bool = False, seq_len: int | None = None):
        super().__init__(path, split, global_batch_size, seed, rank, world_size, pack)
        self.seq_len = int(seq_len or self.metadata["max_length"])  # longer rows than built for: more packing
        self.arrays = {"tokens": self._load_tokens(), "trained": self._load("trained"),
                       "offsets": self._load("offsets", mmap=False)}
        file = os.path.join(self.split_dir, "{}.npy").format
        if self.arrays["trained"].dtype != bool or len(self.arrays["trained"]) != len(self.arrays["tokens"]):
            raise ValueError(f"{file('trained')}: expected {len(self.arrays['tokens'])} booleans (one per token), "
                             f"got {len(self.arrays['trained'])} of dtype {self.arrays['trained'].dtype}")
        offsets = self.arrays["offsets"]
        check_offsets(file("offsets"), offsets, max(len(offsets) - 1, 0), len(self.arrays["tokens"]))
        lengths = np.diff(self.arrays["offsets"]) - 1  # input positions of each conversation
        if len(lengths) and lengths.max() > self.seq_len:
            raise ValueError(f"{self.split_dir}: a conversation has {lengths.max()} positions, more than the "
                             f"row length {self.seq_len} (dataset.seq_len): rebuild the dataset with --max-length "
                             f"{self.seq_len} or raise dataset.seq_len")
        self.lengths = lengths
        self.stream = EpochStream(len(lengths), seed) if split == "train" else None

    @property
    def examples_per_epoch(self) -> float:
        """Rows per epoch (packed rows estimated from the token count)."""
        if self.pack:
            return max(1.0, float(self.lengths.sum()) / self.seq_len)
        return float(len(self.lengths))

    def _pairs(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.arrays["offsets"][i], self.arrays["offsets"][i + 1]
        return next_token_pairs(np.asarray(self.arrays["tokens"][lo:hi], dtype=np.int64),
                                np.asarray(self.arrays["trained"][lo:hi], dtype=bool))

    def _row(self, conversations: list[int]) -> dict[str, np.ndarray]:
        row, at = self._blank_row(), 0
        for segment, i in enumerate(conversations, start=1):
            inputs, labels = self._pairs(i)
            n = len(inputs)
            row["inputs"][at:at + n], row["labels"][at:at + n] = inputs, labels
            if self.pack:
                row["segment_ids"][at:at + n] = segment
                row["position_ids"][at:at + n] = np.arange(n)
            at += n
        return row

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


def open_chat(cfg, rank: int, world_size: int) -> tuple[ChatDataset, ChatDataset]:
    train_path, test_path = single_paths(cfg)
    kwargs = dict(global_batch_size=cfg.global_batch_size, seed=cfg.seed, rank=rank, world_size=world_size,
                  pack=cfg.dataset.pack, seq_len=cfg.dataset.get("seq_len"))
    return ChatDataset(train_path, "train", **kwargs), ChatDataset(test_path, "test", **kwargs)
