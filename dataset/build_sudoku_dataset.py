"""Build the Sudoku puzzle dataset in the on-disk format of dataset/common.py.

Sources:
  generate  built-in generator of unique-solution puzzles (default, offline, seeded)
  csv       the official Sudoku-Extreme CSV (source,question,answer,rating), local or from the hub
  list      one 81-character puzzle per line, answers computed by the solver

Examples:
  python -m dataset.build_sudoku_dataset --output-dir data/sudoku-gen --num-train 1000 --num-aug 1000
  python -m dataset.build_sudoku_dataset --source csv --output-dir data/sudoku-extreme-1k-aug-1000 \\
      --subsample-size 1000 --num-aug 1000

Grids are flat arrays of 81 cells in row-major order, 0 = blank, 1..9 = digits.
On disk a cell is value + 1: 0 = PAD, 1 = blank, 2..10 = digits 1..9 (the official TRM encoding). The solver,
the generator and the augmentation live in tasks/sudoku.py.
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dataset.common import (PUZZLE_CSV_HEADER, PuzzleDatasetMetadata, check_output_dir, puzzle_csv_rows,  # noqa: E402
                            run_build_cli, save_identifiers, save_split, staged_output)
from tasks.sudoku import (PUZZLE_CHARS, augment, check_grid_string, find_conflict, generate_puzzle,  # noqa: E402
                          parse_digits, rate, solve)
from utils.files import make_dir  # noqa: E402


# ----------------------------------------------------------------------------- puzzle sets


@dataclass
class PuzzleSet:
    puzzles: np.ndarray  # [N, 81] uint8, 0 = blank
    solutions: np.ndarray  # [N, 81] uint8, 1..9
    ratings: np.ndarray  # [N] int64

    def __len__(self) -> int:
        return len(self.puzzles)

    def take(self, index: np.ndarray) -> PuzzleSet:
        return PuzzleSet(self.puzzles[index], self.solutions[index], self.ratings[index])

    @staticmethod
    def from_lists(puzzles: list[list[int]], solutions: list[list[int]], ratings: list[int]) -> PuzzleSet:
        return PuzzleSet(
            np.array(puzzles, np.uint8).reshape(-1, 81),
            np.array(solutions, np.uint8).reshape(-1, 81),
            np.array(ratings, np.int64),
        )


def _rng(seed: int, stream: str) -> np.random.Generator:
    """One independent generator per purpose, so e.g. changing --num-aug never changes the puzzles."""
    streams = ["train", "test", "split", "subsample", "augment"]
    return np.random.default_rng([seed, streams.index(stream)])


def generate_set(
    count: int,
    rng: np.random.Generator,
    min_clues: int,
    max_clues: int,
    min_difficulty: int | None = None,
    exclude: set[bytes] | None = None,
) -> tuple[PuzzleSet, int]:
    """`count` distinct unique-solution puzzles not in `exclude`; also returns how many were discarded."""
    seen = set(exclude or ())
    puzzles, solutions, ratings = [], [], []
    discarded, max_attempts = 0, 50 * count + 1000
    while len(puzzles) < count:
        if len(puzzles) + discarded >= max_attempts:
            raise ValueError(
                f"only {len(puzzles)} of {count} puzzles met the constraints after {max_attempts} attempts "
                f"(clues {min_clues}..{max_clues}, min difficulty {min_difficulty}); relax them"
            )
        made = generate_puzzle(rng, min_clues, max_clues)
        if made is None:
            discarded += 1
            continue
        puzzle, solution = made
        key = bytes(puzzle)
        rating = rate(puzzle)
        if key in seen or (min_difficulty is not None and rating < min_difficulty):
            discarded += 1
            continue
        seen.add(key)
        puzzles.append(puzzle)
        solutions.append(solution)
        ratings.append(rating)
    return PuzzleSet.from_lists(puzzles, solutions, ratings), discarded


def _split_arrays(ps: PuzzleSet, num_aug: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Each original puzzle and its `num_aug` augmentations form one group; every puzzle is one example."""
    copies = 1 + num_aug
    total = len(ps) * copies
    inputs = np.empty((total, 81), np.uint8)
    labels = np.empty((total, 81), np.uint8)
    for i in range(len(ps)):
        start = i * copies
        inputs[start], labels[start] = ps.puzzles[i], ps.solutions[i]  # aug index 0: the original
        if num_aug:
            inputs[start + 1 : start + copies], labels[start + 1 : start + copies] = augment(
                ps.puzzles[i], ps.solutions[i], num_aug, rng
            )
    return {
        "inputs": inputs + 1,  # 0 = PAD, 1 = blank, 2..10 = digits
        "labels": labels + 1,
        "puzzle_identifiers": np.zeros(total, np.int32),
        "puzzle_indices": np.arange(total + 1, dtype=np.int32),
        "group_indices": np.arange(0, total + 1, copies, dtype=np.int32),
    }


def write_split(output_dir: Path, split: str, ps: PuzzleSet, num_aug: int, rng: np.random.Generator) -> int:
    arrays = _split_arrays(ps, num_aug, rng)
    total = len(arrays["inputs"])
    metadata = PuzzleDatasetMetadata(
        pad_id=0,
        ignore_label_id=0,
        blank_identifier_id=0,
        vocab_size=11,
        seq_len=81,
        num_puzzle_identifiers=1,
        total_groups=len(ps),
        mean_puzzle_examples=1,
        total_puzzles=total,
        sets=["all"],
    )
    save_split(output_dir, split, metadata, {"all": arrays})
    return total


# ----------------------------------------------------------------------------- readers


def _char_table(allowed: str) -> np.ndarray:
    table = np.zeros(256, dtype=bool)
    table[np.frombuffer(allowed.encode(), np.uint8)] = True
    return table


def read_csv_rows(name: str, rows: Iterable[tuple[int, Sequence[object]]], chunk: int = 1 << 16) -> PuzzleSet:
    """Validate (line number, [source, question, answer, rating]) rows of the Sudoku-Extreme format.
    Per-row work is kept to cheap string checks and the grid checks are vectorised, because the official
    train.csv has 3.8M rows; only a failing row is examined in detail. `name` is the file for errors."""
    questions, answers = bytearray(), bytearray()
    ratings, lines = array("q"), array("q")
    for line, row in rows:
        where = f"{name}:{line}"
        if len(row) != 4:
            raise ValueError(f"{where}: expected 4 fields (source,question,answer,rating), got {len(row)}")
        _, question, answer, rating = row
        question, answer = str(question), str(answer)
        if len(question) != 81 or not question.isascii():
            check_grid_string(question, where, "question", PUZZLE_CHARS)
        if len(answer) != 81 or not answer.isascii():
            check_grid_string(answer, where, "answer", "123456789")
        try:
            ratings.append(int(rating))
        except (TypeError, ValueError):
            raise ValueError(f"{where}: rating must be an integer, got {rating!r}") from None
        questions += question.encode()
        answers += answer.encode()
        lines.append(line)

    puzzles = np.frombuffer(questions, np.uint8).reshape(-1, 81).copy()
    solutions = np.frombuffer(answers, np.uint8).reshape(-1, 81).copy()
    puzzle_ok, answer_ok = _char_table(PUZZLE_CHARS), _char_table("123456789")
    for start in range(0, len(puzzles), chunk):
        q, a = puzzles[start : start + chunk], solutions[start : start + chunk]
        bad_chars = ~puzzle_ok[q].all(axis=1) | ~answer_ok[a].all(axis=1)
        if bad_chars.any():
            k = start + int(np.argmax(bad_chars))
            where = f"{name}:{lines[k]}"
            check_grid_string(puzzles[k].tobytes().decode(), where, "question", PUZZLE_CHARS)
            check_grid_string(solutions[k].tobytes().decode(), where, "answer", "123456789")
        np.subtract(q, ord("0"), out=q, where=q != ord("."))
        q[q == ord(".")] = 0
        a -= ord("0")
        bad = ~_valid_grids(a) | np.any((q != 0) & (q != a), axis=1)
        if bad.any():
            k = start + int(np.argmax(bad))
            where = f"{name}:{lines[k]}"
            conflict = find_conflict(solutions[k].tolist())
            if conflict:
                raise ValueError(f"{where}: answer is not a valid Sudoku grid ({conflict})")
            cell = int(np.argmax((puzzles[k] != 0) & (puzzles[k] != solutions[k])))
            raise ValueError(f"{where}: answer disagrees with the question at row {cell // 9 + 1}, column {cell % 9 + 1}")
    return PuzzleSet(puzzles, solutions, np.asarray(ratings, dtype=np.int64))


def _valid_grids(grids: np.ndarray) -> np.ndarray:
    """[N, 81] digits -> [N] bool: every row, column and box holds each digit 1..9 once."""
    g = grids.reshape(-1, 9, 9)
    boxes = g.reshape(-1, 3, 3, 3, 3).transpose(0, 1, 3, 2, 4).reshape(-1, 9, 9)
    ok = np.ones(len(g), dtype=bool)
    for units in (g, g.transpose(0, 2, 1), boxes):
        # Nine digits in 1..9 cover all of them iff the union of their bits has nine bits set.
        masks = np.bitwise_or.reduce(np.left_shift(1, units.astype(np.int32)), axis=2)
        ok &= np.all(masks == 0b1111111110, axis=1)
    return ok


def read_csv_file(path: str) -> PuzzleSet:
    return read_csv_rows(path, puzzle_csv_rows(path))


def read_hub_csv(repo: str, split: str) -> PuzzleSet:
    """Download `<split>.csv` of a hub dataset repository through the `datasets` library."""
    try:
        import datasets  # imported lazily: only this path needs it (and the network)
    except ImportError:
        raise ValueError("the hub path needs the `datasets` package; install it or pass --train-file/--test-file") from None
    filename = f"{split}.csv"
    # Explicit string columns: inferred types would turn the all-digit answers into (overflowing) integers.
    text = datasets.Value("string")
    features = datasets.Features(source=text, question=text, answer=text, rating=datasets.Value("int64"))
    try:
        ds = datasets.load_dataset(repo, data_files={split: filename}, split=split, features=features)
    except Exception as e:  # network, authentication, missing file, bad rows: all end the same way
        raise ValueError(f"cannot load {filename} from {repo} ({type(e).__name__}: {e}); pass local files instead "
                         "(--train-file/--test-file)") from None
    rows = zip(*(ds[c] for c in PUZZLE_CSV_HEADER))
    return read_csv_rows(f"{repo}/{filename}", enumerate(rows, start=2))  # line 1 is the header


@dataclass
class ListRejections:
    no_solution: list[int]  # line numbers
    several_solutions: list[int]
    duplicates: list[int] = field(default_factory=list)  # repeats of an earlier line's puzzle

    def summary(self, total: int, path: str) -> str:
        lines = sorted(self.no_solution + self.several_solutions + self.duplicates)
        shown = ", ".join(map(str, lines[:20])) + (", ..." if len(lines) > 20 else "")
        return (
            f"{path}: rejected {len(lines)} of {total} puzzles: {len(self.no_solution)} with no solution, "
            f"{len(self.several_solutions)} with several solutions, {len(self.duplicates)} duplicates"
            + (f" (lines {shown})" if lines else "")
        )


def read_list_file(path: str) -> tuple[PuzzleSet, ListRejections, int]:
    """Puzzles one per line ('.' or '0' for blanks); returns the uniquely solvable ones, the rejections
    and the number of puzzles read."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except (UnicodeDecodeError, OSError) as e:
        raise ValueError(f"{path}: cannot read ({e})") from None
    puzzles, solutions, ratings = [], [], []
    rejected = ListRejections([], [])
    total, seen = 0, set()
    for line_no, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{line_no}"
        check_grid_string(line, where, "puzzle", PUZZLE_CHARS)
        grid = parse_digits(line)
        conflict = find_conflict(grid)
        if conflict:
            raise ValueError(f"{where}: the clues conflict ({conflict})")
        total += 1
        if bytes(grid) in seen:  # a repeat could land on both sides of the train/test split
            rejected.duplicates.append(line_no)
            continue
        seen.add(bytes(grid))
        result = solve(grid, limit=2)
        if result.num_solutions == 0:
            rejected.no_solution.append(line_no)
        elif result.num_solutions > 1:
            rejected.several_solutions.append(line_no)
        else:
            puzzles.append(grid)
            solutions.append(result.solution)
            ratings.append(result.dead_ends)
    return PuzzleSet.from_lists(puzzles, solutions, ratings), rejected, total


def write_csv(path: Path, ps: PuzzleSet, source: str = "generated") -> None:
    """Write puzzles in the official Sudoku-Extreme CSV format ('.' for blanks)."""
    make_dir(path.parent)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(PUZZLE_CSV_HEADER)
        for puzzle, solution, rating in zip(ps.puzzles, ps.solutions, ps.ratings):
            question = "".join("." if v == 0 else str(v) for v in puzzle.tolist())
            writer.writerow([source, question, "".join(map(str, solution.tolist())), int(rating)])


# ----------------------------------------------------------------------------- build


@dataclass
class SudokuBuildConfig:
    output_dir: str = "data/sudoku-generated"
    source: str = "generate"  # generate | csv | list
    seed: int = 0
    num_aug: int = 0  # augmented copies per train puzzle (test is never augmented)
    subsample_size: int | None = None  # random subset of the train puzzles
    min_difficulty: int | None = None  # keep puzzles with rating >= this (generate: a constraint on drafts)
    # csv / list sources
    train_file: str | None = None
    test_file: str | None = None
    source_repo: str = "sapientinc/sudoku-extreme"  # csv without local files: hub dataset
    test_fraction: float = 0.1  # list source without --test-file: seeded share of puzzles held out
    # generate source
    num_train: int = 1000
    num_test: int = 200
    min_clues: int = 22
    max_clues: int = 30
    save_csv: str | None = None  # directory for train.csv / test.csv of the generated puzzles
    quiet: bool = False


def _check_config(cfg: SudokuBuildConfig) -> None:
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ValueError(message)

    need(cfg.source in ("generate", "csv", "list"), f"unknown source {cfg.source!r} (generate, csv or list)")
    need(bool(cfg.output_dir), "an output directory is required")
    need(cfg.seed >= 0, f"seed must be >= 0, got {cfg.seed}")
    need(cfg.num_aug >= 0, f"num_aug must be >= 0, got {cfg.num_aug}")
    need(cfg.subsample_size is None or cfg.subsample_size >= 1, f"subsample_size must be >= 1: {cfg.subsample_size}")
    if cfg.source == "generate":
        need(cfg.num_train >= 1, f"num_train must be >= 1: {cfg.num_train}")
        need(cfg.num_test >= 0, f"num_test must be >= 0: {cfg.num_test}")
        # No 9x9 Sudoku with fewer than 17 clues has a unique solution.
        clues = f"{cfg.min_clues}, {cfg.max_clues}"
        need(17 <= cfg.min_clues <= cfg.max_clues <= 81, f"need 17 <= min_clues <= max_clues <= 81, got {clues}")
        need(cfg.train_file is None and cfg.test_file is None, "--train-file/--test-file need --source csv or list")
    elif cfg.source == "csv":
        need(
            (cfg.train_file is None) == (cfg.test_file is None),
            "the csv source needs both --train-file and --test-file (or neither, to load --source-repo)",
        )
    else:
        need(cfg.train_file is not None, "the list source needs --train-file")
        need(0.0 <= cfg.test_fraction < 1.0, f"test_fraction must be in [0, 1), got {cfg.test_fraction}")
    need(cfg.save_csv is None or cfg.source == "generate", "--save-csv only applies to --source generate")
    need(cfg.save_csv is None or not Path(cfg.save_csv).is_file(), f"--save-csv {cfg.save_csv}: a file, not a directory")


def build(config: SudokuBuildConfig) -> None:
    """Build `<output_dir>/{train,test}` and `<output_dir>/identifiers.json` as described in the module docstring."""
    cfg = config
    _check_config(cfg)
    check_output_dir(cfg.output_dir)
    say = (lambda *_: None) if cfg.quiet else print
    start = time.perf_counter()

    if cfg.source == "generate":
        clue_args = (cfg.min_clues, cfg.max_clues, cfg.min_difficulty)
        train, train_discarded = generate_set(cfg.num_train, _rng(cfg.seed, "train"), *clue_args)
        seen = {bytes(p) for p in train.puzzles.tolist()}  # test puzzles must differ from train puzzles
        test, test_discarded = generate_set(cfg.num_test, _rng(cfg.seed, "test"), *clue_args, exclude=seen)
        say(
            f"generated {len(train)} + {len(test)} puzzles in {time.perf_counter() - start:.1f} s "
            f"(discarded {train_discarded + test_discarded} drafts: too many clues, duplicate or too easy)"
        )
    elif cfg.source == "csv":
        if cfg.train_file is not None:
            train, test = read_csv_file(cfg.train_file), read_csv_file(cfg.test_file)
        else:
            train, test = read_hub_csv(cfg.source_repo, "train"), read_hub_csv(cfg.source_repo, "test")
    else:
        train, rejected, total = read_list_file(cfg.train_file)
        say(rejected.summary(total, cfg.train_file))
        if cfg.test_file is not None:
            test, rejected, total = read_list_file(cfg.test_file)
            say(rejected.summary(total, cfg.test_file))
            held_out = {bytes(p) for p in test.puzzles.tolist()}
            kept = np.array([bytes(p) not in held_out for p in train.puzzles.tolist()], dtype=bool)
            if not kept.all():
                say(f"{cfg.train_file}: removed {int((~kept).sum())} puzzles that are also in {cfg.test_file}")
                train = train.take(np.flatnonzero(kept))
        else:
            order = _rng(cfg.seed, "split").permutation(len(train))
            num_test = min(int(round(cfg.test_fraction * len(train))), max(len(train) - 1, 0))
            test, train = train.take(np.sort(order[:num_test])), train.take(np.sort(order[num_test:]))

    if cfg.source != "generate" and cfg.min_difficulty is not None:  # generate applied it to its drafts
        kept = [ps.take(np.flatnonzero(ps.ratings >= cfg.min_difficulty)) for ps in (train, test)]
        say(
            f"min difficulty {cfg.min_difficulty}: kept {len(kept[0])} of {len(train)} train, "
            f"{len(kept[1])} of {len(test)} test puzzles"
        )
        train, test = kept

    if cfg.subsample_size is not None and cfg.subsample_size < len(train):
        pick = _rng(cfg.seed, "subsample").choice(len(train), size=cfg.subsample_size, replace=False)
        train = train.take(np.sort(pick))
        say(f"subsampled {cfg.subsample_size} train puzzles")
    if len(train) == 0:
        raise ValueError("no train puzzles left to write (check the input files and --min-difficulty)")

    with staged_output(cfg.output_dir) as out:
        train_total = write_split(out, "train", train, cfg.num_aug, _rng(cfg.seed, "augment"))
        test_total = write_split(out, "test", test, 0, _rng(cfg.seed, "augment"))
        save_identifiers(out, ["<blank>"])

    if cfg.save_csv:  # after the dataset: a directory inside the output one is not replaced with it
        write_csv(Path(cfg.save_csv) / "train.csv", train)
        write_csv(Path(cfg.save_csv) / "test.csv", test)
        say(f"wrote {cfg.save_csv}/train.csv and test.csv")
    say(
        f"wrote {cfg.output_dir}: train {len(train)} groups / {train_total} puzzles "
        f"({cfg.num_aug} augmentations each), "
        f"test {test_total} puzzles, in {time.perf_counter() - start:.1f} s"
    )


def main(argv: Sequence[str] | None = None) -> None:
    d = SudokuBuildConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", choices=["generate", "csv", "list"], default=d.source)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--num-aug", type=int, default=d.num_aug, help="augmented copies per train puzzle")
    p.add_argument("--subsample-size", type=int, default=None, help="random subset of the train puzzles")
    p.add_argument("--min-difficulty", type=int, default=None, help="keep puzzles with rating >= this")
    p.add_argument("--train-file", default=None, help="csv: Sudoku-Extreme CSV; list: one puzzle per line")
    p.add_argument("--test-file", default=None)
    p.add_argument("--source-repo", default=d.source_repo, help="csv without files: hub dataset to download")
    p.add_argument("--test-fraction", type=float, default=d.test_fraction, help="list without --test-file")
    p.add_argument("--num-train", type=int, default=d.num_train, help="generate: train puzzles")
    p.add_argument("--num-test", type=int, default=d.num_test, help="generate: test puzzles")
    p.add_argument("--min-clues", type=int, default=d.min_clues, help="generate: fewest clues")
    p.add_argument("--max-clues", type=int, default=d.max_clues, help="generate: most clues")
    p.add_argument("--save-csv", default=None, help="generate: also write DIR/train.csv and DIR/test.csv")
    p.add_argument("--quiet", action="store_true")
    run_build_cli(build, SudokuBuildConfig, p.parse_args(argv))


if __name__ == "__main__":
    main()
