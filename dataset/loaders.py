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
    train, test = OPENERS[cfg.dataset.name](cfg, rank, world_size)
    fields = train.model_fields()  # the model is built for the training data: the test data must fit it
    for name, data in test.items() if isinstance(test, dict) else [("test", test)]:
        for key, value in data.model_fields().items():
            if value != fields[key] if key == "seq_len" else value > fields[key]:  # ids: the model's tables suffice
                raise ValueError(f"the {name} data's {key}={value} does not fit the model built for the training "
                                 f"data's {key}={fields[key]} (data_paths_test={list(cfg.data_paths_test)})")
    return train, test
