"""What the grid tasks share: the 8 symmetries of a square (augmentation of ARC and Maze, undone by the
evaluators) and the text form of a puzzle that generate.py --puzzle reads and prints."""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

# t = 0..3 rotate by t * 90 degrees counter-clockwise, t = 4..7 do the same then transpose.
NUM_DIHEDRAL = 8


def dihedral(grid: np.ndarray, t: int) -> np.ndarray:
    """Apply symmetry t (0..7) to the last two axes of `grid`."""
    if not 0 <= t < NUM_DIHEDRAL:
        raise ValueError(f"dihedral transform must be in 0..7, got {t}")
    out = np.rot90(grid, t % 4, axes=(-2, -1))
    return np.ascontiguousarray(np.swapaxes(out, -2, -1) if t >= 4 else out)


def inverse_dihedral(grid: np.ndarray, t: int) -> np.ndarray:
    """Undo dihedral(., t)."""
    if not 0 <= t < NUM_DIHEDRAL:
        raise ValueError(f"dihedral transform must be in 0..7, got {t}")
    out = np.swapaxes(grid, -2, -1) if t >= 4 else grid
    return np.ascontiguousarray(np.rot90(out, -(t % 4), axes=(-2, -1)))


@dataclass(frozen=True)
class PuzzleText:
    """How one task's puzzles read from text, map to the model's tokens, print and are checked."""
    name: str
    seq_len: int
    parse: Callable[[str, str], list[int]]  # (text, where) -> tokens
    cells: Callable[[list[int]], list[str]]  # tokens -> one character per cell
    width: int
    check: Callable[[list[int], list[int]], bool]  # (puzzle tokens, predicted tokens) -> solved
    box: int = 0  # Sudoku: draw the 3x3 boxes
    square: bool = False  # any n x n grid (Maze): seq_len and width are one size's, for_seq_len gives the others

    def for_seq_len(self, seq_len: int) -> PuzzleText:
        """This text form for a run whose puzzles have `seq_len` cells (its dataset's seq_len)."""
        if seq_len == self.seq_len:
            return self
        width = math.isqrt(seq_len)
        if not self.square or width * width != seq_len:
            raise ValueError(f"this run's puzzles have {seq_len} cells: not {self.name} puzzles "
                             f"({self.seq_len} cells{', or any n x n' if self.square else ''})")
        return dataclasses.replace(self, seq_len=seq_len, width=width)

    def read(self, text: str) -> list[int]:
        """The puzzle in `text`, or in the file named by it."""
        if os.path.isfile(text):
            with open(text) as f:
                where, tokens = text, self.parse(f.read().strip("\n"), text)
        elif os.path.isdir(text):
            raise ValueError(f"{text}: a directory, not a puzzle file")
        elif text.endswith(".txt") or os.sep in text:  # no puzzle has these: a file name
            raise FileNotFoundError(f"{text}: no such puzzle file")
        else:
            where, tokens = "puzzle", self.parse(text, "puzzle")
        if len(tokens) != self.seq_len:
            raise ValueError(f"{where}: this run's {self.name} puzzles have {self.seq_len} cells "
                             f"({self.seq_len // self.width} lines of {self.width}), got {len(tokens)}")
        return tokens

    def show(self, tokens: list[int]) -> str:
        cells = self.cells(tokens)
        rows = [cells[i:i + self.width] for i in range(0, len(cells), self.width)]
        if not self.box:
            return "\n".join("".join(row) for row in rows)
        b = self.box
        lines = [" | ".join(" ".join(row[i:i + b]) for i in range(0, len(row), b)) for row in rows]
        rule = "-+-".join("-" * (2 * b - 1) for _ in range(self.width // b))
        out = []
        for r, line in enumerate(lines):
            out += [rule, line] if r and r % b == 0 else [line]
        return "\n".join(out)
