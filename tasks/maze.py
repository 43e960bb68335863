"""Maze: a square grid, 30x30 by default (the official data); an n x n maze is a string of n*n characters, row by
row: '#' wall, ' ' open, 'S' start, 'G' goal; in the answer the cells of the path between S and G are 'o'. Tokens:
0 = PAD, then '#', ' ', 'S', 'G', 'o' = 1..5 (the official TRM encoding). The codec, shortest paths (solver and
checker), the generator and the text form of a puzzle; the augmentation is the 8 dihedral transforms of
tasks/common.py."""
from __future__ import annotations

import math
from collections import deque
from typing import Sequence

import numpy as np

from tasks.common import PuzzleText

SIZE = 30  # the official grid; the size of any other maze follows from its length
CHARSET = "# SGo"  # token = index + 1; 0 = PAD
WALL, OPEN, START, GOAL, PATH = CHARSET
_TOKEN = np.zeros(256, np.uint8)
_TOKEN[[ord(ch) for ch in CHARSET]] = np.arange(1, len(CHARSET) + 1)


# ----------------------------------------------------------------------------- encoding


def check_size(size: int) -> int:
    """`size`, the side of a square maze, when it has room for a start and a goal (>= 2)."""
    if size < 2:
        raise ValueError(f"size must be >= 2 (the side of the square maze), got {size}")
    return size


def maze_size(length: int) -> int:
    """The side n of a maze of `length` = n*n characters."""
    n = math.isqrt(length)
    if n * n != length:
        raise ValueError(f"a maze is a square of n x n characters (n >= 2, e.g. {SIZE * SIZE} for {SIZE}x{SIZE}), "
                         f"got {length}")
    return check_size(n)


def encode_maze(text: str) -> np.ndarray:
    """n x n-character maze -> [n*n] uint8 tokens (1..5)."""
    maze_size(len(text))
    bad = set(text) - set(CHARSET)
    if bad:
        raise ValueError(f"maze characters must be in {CHARSET!r}, got {''.join(sorted(bad))!r}")
    return _TOKEN[np.frombuffer(text.encode(), np.uint8)]


def decode_maze(tokens: np.ndarray | Sequence[int]) -> str:
    """[n*n] tokens -> maze string; tokens outside 1..5 (PAD) become '?'."""
    chars = np.array(["?", *CHARSET])
    t = np.asarray(tokens).reshape(-1).astype(np.int64)
    return "".join(chars[np.where((t >= 1) & (t <= len(CHARSET)), t, 0)])


# ----------------------------------------------------------------------------- paths


def _neighbours(i: int, n: int):
    r, c = divmod(i, n)
    if r > 0:
        yield i - n
    if r < n - 1:
        yield i + n
    if c > 0:
        yield i - 1
    if c < n - 1:
        yield i + 1


def endpoints(maze: str) -> tuple[int, int]:
    if maze.count(START) != 1 or maze.count(GOAL) != 1:
        raise ValueError(f"a maze needs exactly one {START!r} and one {GOAL!r}")
    return maze.index(START), maze.index(GOAL)


def bfs(maze: str, source: int) -> tuple[list[int], list[int], list[int]]:
    """Distances (-1: unreachable), a BFS parent and the number of shortest paths (capped at 2) from `source`
    through every non-wall cell."""
    n = maze_size(len(maze))
    dist, parent, count = [-1] * len(maze), [-1] * len(maze), [0] * len(maze)
    dist[source], count[source] = 0, 1
    queue = deque([source])
    while queue:
        i = queue.popleft()
        for j in _neighbours(i, n):
            if maze[j] == WALL:
                continue
            if dist[j] < 0:
                dist[j], parent[j] = dist[i] + 1, i
                queue.append(j)
            if dist[j] == dist[i] + 1:
                count[j] = min(count[j] + count[i], 2)
    return dist, parent, count


def solve_maze(question: str) -> str | None:
    """The answer: `question` with a shortest S-G path marked 'o' (None when G cannot be reached)."""
    s, g = endpoints(question)
    dist, parent, _ = bfs(question, s)
    if dist[g] < 0:
        return None
    cells = list(question)
    i = parent[g]
    while i != s:
        cells[i] = PATH
        i = parent[i]
    return "".join(cells)


def is_shortest_path(question: str, answer: str) -> bool:
    """`answer` is `question` with open cells marked 'o' that form a shortest path from S to G. (Any path
    through all the marked cells with as many cells as the shortest distance is a shortest path.)"""
    if len(answer) != len(question) or set(answer) - set(CHARSET):
        return False
    for q, a in zip(question, answer):
        if q != a and not (q == OPEN and a == PATH):
            return False
    s, g = endpoints(question)
    dist = bfs(question, s)[0][g]
    marked = answer.count(PATH)
    if dist < 0 or marked != dist - 1:
        return False
    walls_except_path = "".join(ch if ch in (START, GOAL, PATH) else WALL for ch in answer)
    return bfs(walls_except_path, s)[0][g] == dist


# ----------------------------------------------------------------------------- generator


def generate_maze(rng: np.random.Generator, min_path_length: int, openings: int = 0,
                  max_tries: int = 100, size: int = SIZE) -> tuple[str, str]:
    """A random `size` x `size` maze with a unique shortest S-G path of >= `min_path_length` steps, and its answer.

    A perfect maze (depth-first backtracker) on the (size+1)//2 x (size+1)//2 cells at even coordinates (30x30:
    15x15 cells, row and column 29 stay walls), then `openings` extra walls knocked down to make loops (more
    routes, only one of them shortest)."""
    cells = (check_size(size) + 1) // 2
    span = 2 * cells - 1  # the rows and columns the cells and the walls between them take
    for _ in range(max_tries):
        grid = np.full((size, size), WALL)
        seen = np.zeros((cells, cells), bool)
        stack = [(int(rng.integers(cells)), int(rng.integers(cells)))]
        seen[stack[0]] = True
        grid[stack[0][0] * 2, stack[0][1] * 2] = OPEN
        while stack:
            r, c = stack[-1]
            options = [(r + dr, c + dc) for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1))
                       if 0 <= r + dr < cells and 0 <= c + dc < cells and not seen[r + dr, c + dc]]
            if not options:
                stack.pop()
                continue
            nr, nc = options[int(rng.integers(len(options)))]
            seen[nr, nc] = True
            grid[r + nr, c + nc] = OPEN  # the wall between the two cells
            grid[nr * 2, nc * 2] = OPEN
            stack.append((nr, nc))
        # walls between two cells (one odd coordinate, the other even) that can be knocked down
        walls = [(r, c) for r in range(span) for c in range(span) if (r + c) % 2 and grid[r, c] == WALL]
        for k in rng.permutation(len(walls))[:openings]:
            grid[walls[k]] = OPEN
        maze = grid.reshape(-1)
        open_cells = np.flatnonzero(maze == OPEN)
        start = int(open_cells[rng.integers(len(open_cells))])
        dist, _, count = bfs("".join(maze), start)
        far = [i for i in open_cells.tolist() if dist[i] >= min_path_length and count[i] == 1]
        if not far:
            continue
        maze[start], maze[far[int(rng.integers(len(far)))]] = START, GOAL
        question = "".join(maze)
        return question, solve_maze(question)
    raise ValueError(f"no {size}x{size} maze with a unique shortest path of >= min_path_length={min_path_length} steps "
                     f"in {max_tries} tries; lower min_path_length or openings, or raise size")


# ----------------------------------------------------------------------------- text


def encode_text(text: str, where: str) -> list[int]:
    """A maze in text (n lines of n, or one line of n*n) -> the model's tokens."""
    rows = text.splitlines() if "\n" in text else [text]  # spaces are open cells: keep them
    try:
        if len(rows) > 1 and any(len(row) != len(rows) for row in rows):
            short, long = min(map(len, rows)), max(map(len, rows))
            raise ValueError(f"a maze is n lines of n characters, got {len(rows)} lines of {short}"
                             f"{f' to {long}' if long > short else ''} characters")
        return encode_maze("".join(rows)).tolist()
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


# 30x30; generate.py sizes it to the run's mazes (PuzzleText.for_seq_len)
TEXT = PuzzleText("maze", SIZE * SIZE, encode_text, lambda t: list(decode_maze(t)), SIZE,
                  lambda p, y: is_shortest_path(decode_maze(p), decode_maze(y)), square=True)
