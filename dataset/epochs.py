"""Seeded, resumable sampling shared by the dataset iterators (puzzles and chat)."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np


class EpochStream:
    """An endless pass over `size` items: epoch e reads a plan drawn from (seed, e) (by default a permutation
    of the items), position by position. (epoch, position) is the whole state: saving it and loading it into a
    new stream continues exactly, and no global RNG is involved."""

    def __init__(self, size: int, seed: int, make_plan: Callable[[np.random.Generator], Any] | None = None):
        if size <= 0:
            raise ValueError("nothing to sample from: the split is empty")
        self.size, self.seed = size, seed
        self.make_plan = make_plan or (lambda rng: rng.permutation(size))
        self.epoch, self.position = 0, 0
        self._plan_epoch, self._plan = -1, None

    def peek(self) -> tuple[Any, int]:
        """The current epoch's plan and the position to read next in it, without moving on."""
        if self.position == self.size:
            self.epoch, self.position = self.epoch + 1, 0
        if self._plan_epoch != self.epoch:
            self._plan_epoch, self._plan = self.epoch, self.make_plan(np.random.default_rng([self.seed, self.epoch]))
        return self._plan, self.position

    def advance(self) -> tuple[Any, int]:
        """Like peek, then move one position on."""
        plan, position = self.peek()
        self.position += 1
        return plan, position

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "size": self.size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """A position in a pass over items of another number (the data were rebuilt) is refused: it would read
        other data (or past the end). Checkpoints saved before the size was: their position is checked."""
        size, position = int(state.get("size", self.size)), int(state["position"])
        if size != self.size or not 0 <= position <= self.size:
            where = (f"in a pass over {size} items; this data has {self.size}" if size != self.size else
                     f"{position}, past this data's {self.size} items")
            raise ValueError(f"resume: the checkpoint's data position is {where} (was it rebuilt or changed since "
                             "the run started?)")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def rank_rows(start: int, end: int, rank: int, local_batch_size: int) -> range:
    """This rank's share of the global batch made of rows [start, end): the rows of a full batch are split
    in equal consecutive slices; a short last batch leaves the later ranks fewer (or no) rows."""
    lo = min(start + rank * local_batch_size, end)
    return range(lo, min(lo + local_batch_size, end))
