"""Rows of plain text (written by dataset/build_text_dataset.py) for language-model training.

The split's token stream (documents separated by end-of-text) is cut into rows of `seq_len` next-token
pairs: row i reads tokens[i*seq_len : (i+1)*seq_len + 1], so consecutive rows overlap by one token and
every token after the first is the label of exactly one position. The last row is padded. Attention
runs across documents inside a row, as in GPT-style pretraining; the end-of-text token marks the seam.
"""
from __future__ import annotations

import numpy as np

from dataset.epochs import EpochStream
from dataset.token_dataset import TokenDataset, next_token_pairs, single_paths


class TextDataset(TokenDataset):
    kind = "text"

    def __init__(self, path: str, split: str, seq_len: int, global_batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, pack: bool = False):
        super().__init__(path, split, global_batch_size, seed, rank, world_size, pack)
        if seq_len < 1:
            raise ValueError(f"dataset.seq_len must be positive, got {seq_len}")
        self.seq_len = seq_len
        self.tokens = self._load_tokens()
        self.num_rows = max(0, -(-(len(self.tokens) - 1) // seq_len))  # ceil((n - 1) / seq_len)
        self.stream = EpochStream(self.num_rows, seed) if split == "train" else None

    @property
    def examples_per_epoch(self) -> float:
        return float(self.num_rows)

    def _row(self, i: int) -> dict[str, np.ndarray]:
        row = self._blank_row()
        window = np.asarray(self.tokens[i * self.seq_len:(i + 1) * self.seq_len + 1], dtype=np.int64)
        inputs, labels = next_token_pairs(window, np.ones(len(window), dtype=bool))
        row["inputs"][:len(inputs)], row["labels"][:len(labels)] = inputs, labels
        if self.pack:  # one segment: the row attends across its documents, padding apart
            row["segment_ids"][:len(inputs)] = 1
        return row

    def _train_row(self) -> int:
        order, pos = self.stream.advance()
        return int(order[pos])

    def _test_rows(self) -> list[int]:
        return list(range(self.num_rows))


def open_text(cfg, rank: int, world_size: int) -> tuple[TextDataset, TextDataset]:
    train_path, test_path = single_paths(cfg)
    kwargs = dict(seq_len=cfg.dataset.seq_len, global_batch_size=cfg.global_batch_size, seed=cfg.seed, rank=rank,
                  world_size=world_size, pack=cfg.dataset.pack)
    return TextDataset(train_path, "train", **kwargs), TextDataset(test_path, "test", **kwargs)
