"""Sudoku: grids are flat arrays of 81 cells in row-major order, 0 = blank, 1..9 = digits; on disk a cell is
value + 1 (0 = PAD, 1 = blank, 2..10 = digits 1..9, the official TRM encoding). The solver, the generator of
unique-solution puzzles, the validity-preserving augmentation and the text form of a puzzle."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from tasks.common import PuzzleText


# ----------------------------------------------------------------------------- solver
# Bitmask backtracking: every empty cell keeps a 9-bit mask of its candidate digits. Placing a digit removes it
# from the 20 peers and places any peer left with one candidate (naked singles); when nothing is forced the
# search branches on the empty cell with the fewest candidates.

_ROW = [i // 9 for i in range(81)]
_COL = [i % 9 for i in range(81)]
_BOX = [(i // 27) * 3 + (i % 9) // 3 for i in range(81)]
_POPCOUNT = [bin(m).count("1") for m in range(512)]
_BITS = [[1 << d for d in range(9) if m >> d & 1] for m in range(512)]  # candidate bits, low digit first
_DIGIT = {1 << d: d + 1 for d in range(9)}
_FULL = 0x1FF
_PEERS = [  # the 20 cells sharing a row, column or box with each cell
    [j for j in range(81) if j != i and (_ROW[i] == _ROW[j] or _COL[i] == _COL[j] or _BOX[i] == _BOX[j])]
    for i in range(81)
]


@dataclass
class SolveResult:
    num_solutions: int  # capped at the search limit
    solution: list[int] | None  # the first solution found
    dead_ends: int  # guesses that ran into a contradiction: a difficulty measure


def find_conflict(grid: Sequence[int]) -> str | None:
    """Describe the first repeated digit in a row, column or box, or None when the clues agree."""
    for kind, unit_of in (("row", _ROW), ("column", _COL), ("box", _BOX)):
        seen: dict[tuple[int, int], int] = {}
        for i, v in enumerate(grid):
            if v:
                key = (unit_of[i], v)
                if key in seen:
                    return f"digit {v} appears twice in {kind} {unit_of[i] + 1}"
                seen[key] = i
    return None


def solve(grid: Sequence[int], limit: int = 2, rng: np.random.Generator | None = None) -> SolveResult:
    """Search for up to `limit` solutions. With `rng`, candidates are tried in random order."""
    cells = [int(v) for v in grid]
    if len(cells) != 81 or min(cells) < 0 or max(cells) > 9:
        raise ValueError("a grid is 81 values in 0..9")
    return _solve(cells, limit, rng)


def _solve(cells: list[int], limit: int, rng: np.random.Generator | None) -> SolveResult:
    """solve() on a list it may modify, without input checks (the generator calls this thousands of times)."""
    ROW, COL, BOX, POPCOUNT, BITS, DIGIT, PEERS = _ROW, _COL, _BOX, _POPCOUNT, _BITS, _DIGIT, _PEERS
    rows, cols, boxes = [0] * 9, [0] * 9, [0] * 9
    for i, v in enumerate(cells):
        if v:
            bit = 1 << (v - 1)
            r, c, b = ROW[i], COL[i], BOX[i]
            if (rows[r] | cols[c] | boxes[b]) & bit:
                return SolveResult(0, None, 0)
            rows[r] |= bit
            cols[c] |= bit
            boxes[b] |= bit
    empties = [i for i in range(81) if not cells[i]]
    cand = [0] * 81  # candidate digits of each empty cell
    for i in empties:
        cand[i] = _FULL & ~(rows[ROW[i]] | cols[COL[i]] | boxes[BOX[i]])
    solutions: list[list[int]] = []
    dead_ends = 0

    def assign(i: int, bit: int) -> bool:
        """Place a digit, drop it from the peers' candidates, then place the peers left with one candidate.
        False on a contradiction (a cell without candidates)."""
        cells[i] = DIGIT[bit]
        forced = []
        for p in PEERS[i]:  # eliminate everywhere first: a forced peer must see all of this placement
            cp = cand[p]
            if cp & bit and not cells[p]:
                cp ^= bit
                cand[p] = cp
                if not cp:
                    return False
                if POPCOUNT[cp] == 1:
                    forced.append(p)
        for p in forced:
            if not cells[p] and not assign(p, cand[p]):
                return False
        return True

    def search() -> bool:  # True once `limit` solutions are found
        nonlocal dead_ends
        best, best_count = -1, 10
        for i in empties:  # after propagation every empty cell has >= 2 candidates
            if not cells[i]:
                count = POPCOUNT[cand[i]]
                if count < best_count:
                    best, best_count = i, count
                    if count == 2:
                        break
        if best < 0:
            solutions.append(cells.copy())
            return len(solutions) >= limit
        bits = BITS[cand[best]]
        if rng is not None:
            bits = [bits[t] for t in rng.permutation(best_count)]
        saved_cells, saved_cand = cells.copy(), cand.copy()  # cheaper to restore than an undo log
        for bit in bits:
            if assign(best, bit):
                if search():
                    return True
            else:
                dead_ends += 1
            cells[:] = saved_cells
            cand[:] = saved_cand
        return False

    for i in empties:  # place the cells forced by the clues alone
        if not cells[i] and (not cand[i] or (POPCOUNT[cand[i]] == 1 and not assign(i, cand[i]))):
            return SolveResult(0, None, 1)
    search()
    return SolveResult(len(solutions), solutions[0] if solutions else None, dead_ends)


def is_valid_solution(solution: Sequence[int], puzzle: Sequence[int] | None = None) -> bool:
    """A complete grid with every row, column and box a permutation of 1..9 (and agreeing with `puzzle`)."""
    grid = np.asarray(solution).reshape(9, 9)
    digits = np.arange(1, 10)
    boxes = grid.reshape(3, 3, 3, 3).transpose(0, 2, 1, 3).reshape(9, 9)
    if not all(np.array_equal(np.sort(g, axis=1), np.broadcast_to(digits, (9, 9))) for g in (grid, grid.T, boxes)):
        return False
    if puzzle is not None:
        p = np.asarray(puzzle).reshape(9, 9)
        return bool(np.all((p == 0) | (p == grid)))
    return True


def rate(puzzle: Sequence[int]) -> int:
    """Difficulty: guesses that failed while proving uniqueness (an exhaustive search, so relabelling the
    digits does not change it). 0 means naked singles alone solve the puzzle."""
    return solve(puzzle, limit=2).dead_ends


# ----------------------------------------------------------------------------- generator


def random_full_grid(rng: np.random.Generator) -> list[int]:
    result = _solve([0] * 81, 1, rng)
    assert result.solution is not None  # the empty grid always has a solution
    return result.solution


def _stays_unique(puzzle: list[int], cell: int, value: int) -> bool:
    """`puzzle` (with `cell` just blanked) had a unique solution holding `value` at `cell`:
    it stays unique iff no other digit at `cell` leads to a solution."""
    used = 0
    for j in _PEERS[cell]:
        if puzzle[j]:
            used |= 1 << (puzzle[j] - 1)
    others = _FULL & ~used & ~(1 << (value - 1))
    for bit in _BITS[others]:  # usually none while many clues remain: the cell is forced by its peers
        trial = puzzle.copy()
        trial[cell] = _DIGIT[bit]
        if _solve(trial, 1, None).num_solutions:
            return False
    return True


def generate_puzzle(rng: np.random.Generator, min_clues: int, max_clues: int) -> tuple[list[int], list[int]] | None:
    """Random full grid, then blank cells in random order while the solution stays unique, until a
    target clue count drawn from [min_clues, max_clues]. None when the grid cannot get down to max_clues."""
    solution = random_full_grid(rng)
    target = int(rng.integers(min_clues, max_clues + 1))
    puzzle = solution.copy()
    clues = 81
    for cell in rng.permutation(81).tolist():
        if clues <= target:
            break
        value = puzzle[cell]
        puzzle[cell] = 0
        if _stays_unique(puzzle, cell, value):
            clues -= 1
        else:
            puzzle[cell] = value
    return (puzzle, solution) if clues <= max_clues else None


# ----------------------------------------------------------------------------- augmentation


def augment(
    puzzle: np.ndarray, solution: np.ndarray, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """`count` random validity-preserving transforms of one puzzle, the same transform for puzzle and solution:
    relabel digits 1..9 (blank stays blank), transpose with probability 1/2, permute the bands and the rows
    inside each band, permute the stacks and the columns inside each stack. Returns two [count, 81] arrays."""
    digit_map = np.zeros((count, 10), dtype=np.uint8)
    digit_map[:, 1:] = rng.permuted(np.tile(np.arange(1, 10, dtype=np.uint8), (count, 1)), axis=1)
    transpose = rng.random(count) < 0.5

    def line_permutation() -> np.ndarray:  # [count, 9]: new line -> old line, bands kept whole
        blocks = rng.permuted(np.tile(np.arange(3), (count, 1)), axis=1)
        inner = rng.permuted(np.tile(np.arange(3), (count, 3, 1)), axis=2)
        return (blocks[:, :, None] * 3 + inner).reshape(count, 9)

    row_perm, col_perm = line_permutation(), line_permutation()
    # New cell (r, c) reads old cell (row_perm[r], col_perm[c]) of the (possibly transposed) grid.
    source_cell = (row_perm[:, :, None] * 9 + col_perm[:, None, :]).reshape(count, 81)

    def apply(grid: np.ndarray) -> np.ndarray:
        grid = np.asarray(grid, dtype=np.uint8).reshape(9, 9)
        base = np.where(transpose[:, None], grid.T.reshape(1, 81), grid.reshape(1, 81))
        moved = np.take_along_axis(base, source_cell, axis=1)
        return np.take_along_axis(digit_map, moved.astype(np.intp), axis=1)

    return apply(puzzle), apply(solution)


# ----------------------------------------------------------------------------- text


BLANK_CHARS = ".0"
PUZZLE_CHARS = ".0123456789"


def check_grid_string(text: str, where: str, what: str, allowed: str) -> None:
    """Raise a precise error for a malformed 81-character grid string."""
    if len(text) != 81:
        raise ValueError(f"{where}: {what} has {len(text)} characters, expected 81")
    for pos, ch in enumerate(text, 1):
        if ch not in allowed:
            expected = "1-9, '.' or '0' for a blank" if "." in allowed else "1-9"
            raise ValueError(f"{where}: {what} has invalid character {ch!r} at position {pos} (expected {expected})")


def parse_digits(text: str) -> list[int]:
    return [0 if ch in BLANK_CHARS else ord(ch) - 48 for ch in text]


def parse_sudoku(text: str, where: str = "puzzle") -> list[int]:
    """81 cells (1-9, '.' or '0' blank; whitespace ignored) -> digits with 0 for blanks; clear error otherwise."""
    text = "".join(text.split())
    check_grid_string(text, where, "the grid", PUZZLE_CHARS)
    return parse_digits(text)


def encode_text(text: str, where: str) -> list[int]:
    """A puzzle in text -> the model's tokens; clues that break the rules are an error (no solution exists)."""
    grid = parse_sudoku(text, where)
    if conflict := find_conflict(grid):
        raise ValueError(f"{where}: the clues conflict ({conflict}): no solution exists")
    return [d + 1 for d in grid]


TEXT = PuzzleText("Sudoku", 81, encode_text, lambda t: [str(v - 1) if v > 1 else "." for v in t], 9,
                  lambda p, y: is_valid_solution([max(v - 1, 0) for v in y], [max(v - 1, 0) for v in p]), box=3)
