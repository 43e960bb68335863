"""Opening the data of a run: one open_* function per dataset kind (cfg.dataset.name), each next to its
loader, and the dispatch the trainer calls."""
from __future__ import annotations

from omegaconf import DictConfig

from dataset.chat_dataset import open_chat
from dataset.mixture import open_mixture
from dataset.puzzle_dataset import open_puzzle
from dataset.text_dataset import open_text

OPENERS = {"puzzle": open_puzzle, "chat": open_chat, "text": open_text, "mixture": open_mixture}


def open_data(cfg: DictConfig, rank: int, world_size: int):
    """(train, test) iterators for cfg.dataset.name; both yield (set name, batch, global batch size)
    (a mixture's test data is a dict of them, one per source)."""
    if cfg.dataset.name not in OPENERS:
        raise ValueError(f"dataset.name: unknown dataset kind {cfg.dataset.name!r}; choose one of {sorted(OPENERS)}")
    return OPENERS[cfg.dataset.name](cfg, rank, world_size)
