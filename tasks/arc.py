"""ARC-AGI: tasks of demonstration pairs and test inputs (their JSON form), the augmentations (a dihedral
transform and a permutation of the colours 1..9, black kept) and the encoding of a grid on the 30x30 canvas
(the official TRM one: a grid of h x w colours sits at (r, c), flattened row by row; 0 = PAD, 1 = end marker,
2..11 = colours 0..9; the end markers fill row r + h under the grid and column c + w right of it), plus the
metadata a built dataset keeps so that the evaluator can undo every augmentation."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks.common import NUM_DIHEDRAL, dihedral, inverse_dihedral

GRID_SIZE = 30
PAD, EOS, COLOUR_OFFSET = 0, 1, 2  # token = colour + COLOUR_OFFSET
VOCAB_SIZE = 12
SEQ_LEN = GRID_SIZE * GRID_SIZE
AUGMENTATIONS_FILE = "arc_augmentations.npz"
TASKS_FILE = "arc_tasks.json"


# ----------------------------------------------------------------------------- tasks


@dataclass
class Pair:
    input: np.ndarray  # [h, w] uint8 colours 0..9
    output: np.ndarray | None  # None when the solution is unknown


@dataclass
class Task:
    id: str
    subset: str
    train: list[Pair]
    test: list[Pair]


def parse_grid(value: Any, where: str) -> np.ndarray:
    """A JSON grid (list of equal-length rows of colours 0..9, 1..30 each way) -> uint8 array."""
    if not isinstance(value, list) or not value or not all(isinstance(row, list) for row in value):
        raise ValueError(f"{where}: a grid must be a non-empty list of rows")
    width = len(value[0])
    if any(len(row) != width for row in value):
        raise ValueError(f"{where}: rows have different lengths ({sorted({len(r) for r in value})})")
    if not 1 <= width <= GRID_SIZE or len(value) > GRID_SIZE:
        raise ValueError(f"{where}: grid is {len(value)}x{width}; ARC grids are 1..30 in each direction")
    if not all(type(v) is int and 0 <= v <= 9 for row in value for v in row):
        raise ValueError(f"{where}: cells must be integers 0..9")
    return np.array(value, dtype=np.uint8)


def parse_task(task_id: str, subset: str, raw: Any, solutions: Any = None, source: str = "") -> Task:
    """One task from its JSON object; `solutions` (a list of output grids) fills unknown test outputs."""
    where = f"task {task_id} ({source})" if source else f"task {task_id}"
    if not isinstance(raw, dict) or not isinstance(raw.get("train"), list) or not isinstance(raw.get("test"), list):
        raise ValueError(f"{where}: expected an object with 'train' and 'test' lists")
    if not raw["train"] or not raw["test"]:
        raise ValueError(f"{where}: needs at least one train pair and one test input")
    if solutions is not None and (not isinstance(solutions, list) or len(solutions) != len(raw["test"])):
        raise ValueError(f"{where}: the solutions must be a list of {len(raw['test'])} grid(s)")

    def pair(p: Any, name: str, need_output: bool, solution: Any = None) -> Pair:
        if not isinstance(p, dict) or "input" not in p:
            raise ValueError(f"{where}: {name} must be an object with an 'input' grid")
        out = p.get("output", solution)
        if out is None and need_output:
            raise ValueError(f"{where}: {name} has no 'output' grid")
        return Pair(parse_grid(p["input"], f"{where}: {name}.input"),
                    None if out is None else parse_grid(out, f"{where}: {name}.output"))

    train = [pair(p, f"train[{i}]", True) for i, p in enumerate(raw["train"])]
    test = [pair(p, f"test[{i}]", False, solutions[i] if solutions else None) for i, p in enumerate(raw["test"])]
    return Task(task_id, subset, train, test)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def load_combined(prefix: str, subset: str) -> list[Task]:
    """Tasks of `<prefix>_<subset>_challenges.json`, outputs from `_solutions.json` when it exists."""
    challenges_path = Path(f"{prefix}_{subset}_challenges.json")
    solutions_path = Path(f"{prefix}_{subset}_solutions.json")
    challenges = read_json(challenges_path)
    solutions = read_json(solutions_path) if solutions_path.exists() else {}
    if not isinstance(challenges, dict) or not isinstance(solutions, dict):
        raise ValueError(f"{challenges_path}: expected an object mapping task ids to tasks")
    return [parse_task(tid, subset, raw, solutions.get(tid), challenges_path.name)
            for tid, raw in sorted(challenges.items())]


def load_directory(root: str, subset: str) -> list[Task]:
    """Tasks of `<root>/<subset>/*.json`, one task per file, named by the file."""
    folder = Path(root) / subset
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: subset directory not found")
    files = sorted(folder.glob("*.json"))
    if not files:
        raise ValueError(f"{folder}: no task files (*.json)")
    return [parse_task(f.stem, subset, read_json(f), source=str(f)) for f in files]


# ----------------------------------------------------------------------------- augmentation


@dataclass(frozen=True)
class Augmentation:
    transform: int  # dihedral transform 0..7 (0 = identity)
    colours: tuple[int, ...]  # colours[c] = new colour of c; colours[0] == 0

    def apply(self, grid: np.ndarray) -> np.ndarray:
        return np.asarray(self.colours, np.uint8)[dihedral(grid, self.transform)]

    def invert(self, grid: np.ndarray) -> np.ndarray:
        inverse = np.argsort(np.asarray(self.colours)).astype(np.uint8)
        return inverse_dihedral(inverse[grid], self.transform)


IDENTITY = Augmentation(0, tuple(range(10)))


def task_grids(task: Task) -> list[np.ndarray]:
    return [g for p in task.train + task.test for g in (p.input, p.output) if g is not None]


def _content_key(grids: list[np.ndarray]) -> bytes:
    h = hashlib.sha256()
    for g in grids:
        h.update(np.asarray(g.shape, np.int32).tobytes())
        h.update(g.tobytes())
    return h.digest()


def draw_augmentations(task: Task, count: int, rng: np.random.Generator) -> list[Augmentation]:
    """The identity, then up to `count` random augmentations whose augmented tasks all differ (a symmetric
    task or one with few colours can have fewer distinct copies than asked for)."""
    grids = task_grids(task)
    seen = {_content_key(grids)}
    augs = [IDENTITY]
    for _ in range(10 * count):
        if len(augs) > count:
            break
        aug = Augmentation(int(rng.integers(NUM_DIHEDRAL)), (0, *(int(c) for c in rng.permutation(9) + 1)))
        key = _content_key([aug.apply(g) for g in grids])
        if key not in seen:
            seen.add(key)
            augs.append(aug)
    return augs


# ----------------------------------------------------------------------------- encoding


def encode_grid(grid: np.ndarray, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """[h, w] colours -> [900] tokens: the grid at `offset` on the canvas with its end markers."""
    h, w = grid.shape
    r, c = offset
    if not (0 <= r and r + h <= GRID_SIZE and 0 <= c and c + w <= GRID_SIZE):
        raise ValueError(f"a {h}x{w} grid at {offset} does not fit the {GRID_SIZE}x{GRID_SIZE} canvas")
    canvas = np.full((GRID_SIZE, GRID_SIZE), PAD, np.uint8)
    canvas[r:r + h, c:c + w] = grid + COLOUR_OFFSET
    if r + h < GRID_SIZE:
        canvas[r + h, c:c + w] = EOS
    if c + w < GRID_SIZE:
        canvas[r:r + h, c + w] = EOS
    return canvas.reshape(-1)


def encode_pair(pair: Pair, aug: Augmentation, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Augment a pair and encode it: at the top left, or at a random offset shared by input and output when `rng`
    is given. An unknown output encodes as all PAD."""
    x = aug.apply(pair.input)
    y = aug.apply(pair.output) if pair.output is not None else None
    offset = (0, 0)
    if rng is not None:
        h, w = (max(g.shape[d] for g in (x, y) if g is not None) for d in (0, 1))
        offset = (int(rng.integers(GRID_SIZE - h + 1)), int(rng.integers(GRID_SIZE - w + 1)))
    return encode_grid(x, offset), encode_grid(y, offset) if y is not None else np.full(SEQ_LEN, PAD, np.uint8)


def encode_demonstrations(pairs: list[Pair], aug: Augmentation, rng: np.random.Generator | None,
                          translate_all: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
    """The demonstrations of one augmented puzzle, encoded as training sees them. With `rng` (translation on),
    the official rule: one demonstration drawn at random stays at the top left, where the test inputs are
    scored, and the others move to random offsets; `translate_all` moves every one. Without `rng`, all stay
    at the top left."""
    keep = -1 if rng is None or translate_all else int(rng.integers(len(pairs)))
    return [encode_pair(p, aug, None if i == keep else rng) for i, p in enumerate(pairs)]


def grid_offset(tokens: np.ndarray) -> tuple[int, int] | None:
    """Top-left corner of the grid on an encoded canvas (the first row and column holding a colour)."""
    colour = np.asarray(tokens).reshape(GRID_SIZE, GRID_SIZE) >= COLOUR_OFFSET
    if not colour.any():
        return None
    return int(colour.any(1).argmax()), int(colour.any(0).argmax())


def _run_length(mask: np.ndarray) -> int:
    """How many leading entries of a 1-D bool array are True."""
    return len(mask) if mask.all() else int(mask.argmin())


def decode_grid(tokens: np.ndarray, offset: tuple[int, int] | None = None) -> np.ndarray | None:
    """[900] tokens -> [h, w] colours, cropped at the end markers from `offset` (default: the canvas's own top
    left colour). None when there is no rectangle of colours there (a malformed prediction)."""
    canvas = np.asarray(tokens).reshape(GRID_SIZE, GRID_SIZE)
    offset = grid_offset(canvas) if offset is None else offset
    if offset is None:
        return None
    r, c = offset
    colour = (canvas >= COLOUR_OFFSET) & (canvas < COLOUR_OFFSET + 10)
    h, w = _run_length(colour[r:, c]), _run_length(colour[r, c:])  # the runs of colours down and right of (r, c)
    if h == 0 or w == 0 or not colour[r:r + h, c:c + w].all():
        return None
    return (canvas[r:r + h, c:c + w] - COLOUR_OFFSET).astype(np.uint8)


# ----------------------------------------------------------------------------- metadata for the evaluator


@dataclass
class ArcMetadata:
    """What it takes to undo the augmentation of any puzzle identifier and score the test set."""
    tasks: list[str]
    task_index: np.ndarray  # [num identifiers] (-1: blank)
    transform: np.ndarray  # [num identifiers]
    colours: np.ndarray  # [num identifiers, 10]
    test_inputs: dict[str, list[np.ndarray]]
    test_outputs: dict[str, list[np.ndarray | None]]

    def augmentation(self, identifier: int) -> Augmentation:
        return Augmentation(int(self.transform[identifier]), tuple(int(c) for c in self.colours[identifier]))


def load_arc_metadata(dataset_dir: str | os.PathLike) -> ArcMetadata:
    root = Path(dataset_dir)
    aug_path, tasks_path = root / AUGMENTATIONS_FILE, root / TASKS_FILE
    if not aug_path.is_file() or not tasks_path.is_file():
        raise FileNotFoundError(f"{root}: {AUGMENTATIONS_FILE} / {TASKS_FILE} not found; the ARC evaluator needs "
                                "a dataset built by dataset/build_arc_dataset.py")
    with np.load(aug_path) as z:
        arrays = {k: z[k] for k in ("task_index", "transform", "colours")}
    info = read_json(tasks_path)
    tests = info["test_tasks"]
    return ArcMetadata(
        tasks=info["tasks"], **arrays,
        test_inputs={t: [np.array(g, np.uint8) for g in v["test_inputs"]] for t, v in tests.items()},
        test_outputs={t: [None if g is None else np.array(g, np.uint8) for g in v["test_outputs"]]
                      for t, v in tests.items()})


TEXT = None  # generate.py --puzzle does not read ARC tasks
