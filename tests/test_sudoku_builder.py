"""Tests of the Sudoku dataset builder and the on-disk dataset format (CPU, a few seconds)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import offline_build_error
from dataset.build_sudoku_dataset import SudokuBuildConfig, build, generate_set, main
from dataset.common import PuzzleDatasetMetadata, load_metadata, save_split
from tasks.sudoku import augment, find_conflict, is_valid_solution, rate, solve

REPO = Path(__file__).resolve().parent.parent

# A well-known puzzle with a unique solution.
PUZZLE = "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79"
SOLUTION = "534678912672195348198342567859761423426853791713924856961537284287419635345286179"


def grid(text: str) -> list[int]:
    return [0 if ch in ".0" else int(ch) for ch in text]


def text(cells) -> str:
    return "".join("." if v == 0 else str(v) for v in np.asarray(cells).tolist())


def two_solution_puzzle() -> list[int]:
    """The known solution with a 'deadly rectangle' blanked: two rows of one band and two columns of
    different stacks holding a, b / b, a, so swapping a and b gives a second solution."""
    sol = grid(SOLUTION)
    for r1 in range(9):
        for r2 in range(r1 + 1, (r1 // 3 + 1) * 3):
            for c1 in range(9):
                for c2 in range((c1 // 3 + 1) * 3, 9):
                    a, b = sol[r1 * 9 + c1], sol[r1 * 9 + c2]
                    if sol[r2 * 9 + c1] == b and sol[r2 * 9 + c2] == a:
                        puzzle = sol.copy()
                        for cell in (r1 * 9 + c1, r1 * 9 + c2, r2 * 9 + c1, r2 * 9 + c2):
                            puzzle[cell] = 0
                        return puzzle
    raise AssertionError("the known solution has no deadly rectangle")


def no_solution_puzzle() -> list[int]:
    """The known puzzle plus a clue that breaks no rule on its own but differs from the unique solution."""
    puzzle, sol = grid(PUZZLE), grid(SOLUTION)
    for cell in range(81):
        if puzzle[cell] == 0:
            for digit in range(1, 10):
                trial = puzzle.copy()
                trial[cell] = digit
                if digit != sol[cell] and find_conflict(trial) is None:
                    return trial
    raise AssertionError("no such clue")


def write_csv(path: Path, rows: list[tuple[str, str, str, object]]) -> Path:
    lines = ["source,question,answer,rating"] + [",".join(map(str, row)) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def csv_rows(ps, ratings) -> list[tuple[str, str, str, int]]:
    return [("gen", text(p), text(s), int(r)) for p, s, r in zip(ps.puzzles, ps.solutions, ratings)]


def csv_args(path: Path, out: Path) -> list[str]:
    """CLI arguments building from one CSV used as both train and test file."""
    return ["--source", "csv", "--train-file", str(path), "--test-file", str(path), "--output-dir", str(out)]


def csv_config(out: Path, path: Path, **kw) -> SudokuBuildConfig:
    return SudokuBuildConfig(output_dir=str(out), source="csv", train_file=str(path), test_file=str(path),
                             quiet=True, **kw)


def load_split(split_dir: Path) -> dict[str, np.ndarray]:
    names = ["inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices"]
    return {n: np.load(split_dir / f"all__{n}.npy") for n in names}


@pytest.fixture(scope="module")
def puzzles():
    ps, _ = generate_set(16, np.random.default_rng(123), 24, 32)
    return ps


# ----------------------------------------------------------------------------- solver


def test_solver_solves_known_puzzle():
    result = solve(grid(PUZZLE))
    assert result.num_solutions == 1
    assert text(result.solution) == SOLUTION
    assert is_valid_solution(result.solution, grid(PUZZLE))


def test_uniqueness_detection():
    assert solve(two_solution_puzzle(), limit=3).num_solutions == 2
    assert solve(no_solution_puzzle()).num_solutions == 0
    assert solve([0] * 81, limit=2).num_solutions == 2  # the empty grid: capped at the limit
    assert not is_valid_solution(grid(SOLUTION[1:] + SOLUTION[0]))


# ----------------------------------------------------------------------------- generator


def test_generated_puzzles_are_unique_and_in_clue_range(puzzles):
    assert len(puzzles) == 16 and len({p.tobytes() for p in puzzles.puzzles}) == 16
    for p, s, r in zip(puzzles.puzzles, puzzles.solutions, puzzles.ratings):
        result = solve(p)
        assert result.num_solutions == 1
        assert result.solution == s.tolist()
        assert is_valid_solution(s, p)
        assert 24 <= np.count_nonzero(p) <= 32
        assert r == rate(p) >= 0


def test_generator_discards_grids_that_keep_too_many_clues():
    ps, discarded = generate_set(3, np.random.default_rng(0), 23, 23)
    assert np.count_nonzero(ps.puzzles, axis=1).tolist() == [23, 23, 23]
    assert discarded > 0  # some random grids cannot lose that many clues and keep a unique solution


def test_generator_skips_excluded_puzzles():
    first, _ = generate_set(4, np.random.default_rng(9), 26, 30)
    taken = {p.tobytes() for p in first.puzzles}
    again, discarded = generate_set(4, np.random.default_rng(9), 26, 30, exclude=taken)
    assert discarded >= 4  # the same stream proposes the excluded puzzles first
    assert len(again) == 4 and not taken & {p.tobytes() for p in again.puzzles}


def test_generate_build_is_reproducible(tmp_path):
    def run(seed: int, name: str) -> Path:
        out = tmp_path / name
        build(SudokuBuildConfig(output_dir=str(out), num_train=6, num_test=3, num_aug=2, seed=seed, quiet=True))
        return out

    a, b, c = run(7, "a"), run(7, "b"), run(8, "c")
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 1 + 2 * 6  # identifiers.json, then dataset.json and 5 arrays per split
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    assert not np.array_equal(np.load(a / "train/all__inputs.npy"), np.load(c / "train/all__inputs.npy"))
    # train and test never share a puzzle
    train = {row.tobytes() for row in np.load(a / "train/all__inputs.npy")}
    assert not train & {row.tobytes() for row in np.load(a / "test/all__inputs.npy")}


# ----------------------------------------------------------------------------- augmentation


def test_augmentation_keeps_validity_and_changes_the_grid(puzzles):
    def blank_profile(p: np.ndarray, axis: int) -> list[int]:  # sorted blank counts of the rows (axis 1) or columns
        return sorted((p == 0).reshape(9, 9).sum(axis).tolist())

    # A puzzle whose rows and columns differ in blank counts: line permutations keep each profile,
    # a transpose swaps them.
    k = next(k for k, p in enumerate(puzzles.puzzles) if blank_profile(p, 1) != blank_profile(p, 0))
    puzzle, solution = puzzles.puzzles[k], puzzles.solutions[k]
    aug_p, aug_s = augment(puzzle, solution, 40, np.random.default_rng(0))
    assert aug_p.shape == aug_s.shape == (40, 81)
    transposed = 0
    for p, s in zip(aug_p, aug_s):
        assert is_valid_solution(s, p)
        assert np.count_nonzero(p == 0) == np.count_nonzero(puzzle == 0)
        assert solve(p).solution == s.tolist()  # still exactly one solution
        assert not np.array_equal(p, puzzle) and not np.array_equal(s, solution)
        if blank_profile(p, 1) == blank_profile(puzzle, 0):
            transposed += 1
        else:
            assert blank_profile(p, 1) == blank_profile(puzzle, 1)
    assert 5 < transposed < 35
    # Digits are relabelled: how often each digit is a clue gets permuted.
    counts = np.bincount(puzzle, minlength=10)
    assert sum(not np.array_equal(np.bincount(p, minlength=10), counts) for p in aug_p) > 30
    again = augment(puzzle, solution, 40, np.random.default_rng(0))
    assert np.array_equal(again[0], aug_p) and np.array_equal(again[1], aug_s)


# ----------------------------------------------------------------------------- on-disk format


def test_on_disk_format(tmp_path, puzzles):
    csv_path = write_csv(tmp_path / "train.csv", csv_rows(puzzles, puzzles.ratings))
    out = tmp_path / "data"
    build(csv_config(out, csv_path, num_aug=3))

    assert json.loads((out / "identifiers.json").read_text()) == ["<blank>"]
    for split, copies in (("train", 4), ("test", 1)):
        meta = load_metadata(out / split)
        assert meta == PuzzleDatasetMetadata(
            pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=11, seq_len=81,
            num_puzzle_identifiers=1, total_groups=16, mean_puzzle_examples=1,
            total_puzzles=16 * copies, sets=["all"],
        )  # fmt: skip
        a = load_split(out / split)
        n = 16 * copies
        assert a["inputs"].shape == a["labels"].shape == (n, 81)
        assert a["puzzle_identifiers"].shape == (n,) and not a["puzzle_identifiers"].any()
        assert a["inputs"].dtype == a["labels"].dtype == np.uint8  # as the official builder writes them
        assert a["puzzle_indices"].dtype == a["group_indices"].dtype == np.int32
        assert np.array_equal(a["puzzle_indices"], np.arange(n + 1))
        assert np.array_equal(a["group_indices"], np.arange(0, n + 1, copies))
        assert a["inputs"].min() >= 1 and a["inputs"].max() <= 10
        assert a["labels"].min() >= 2 and a["labels"].max() <= 10
        clue = a["inputs"] != 1
        assert np.array_equal(a["inputs"][clue], a["labels"][clue])
        # aug index 0 of each group is the original, in the official encoding (value + 1)
        originals = a["inputs"][a["group_indices"][:-1]]
        assert np.array_equal(originals, puzzles.puzzles + 1)
        assert np.array_equal(a["labels"][a["group_indices"][:-1]], puzzles.solutions + 1)
        for x, y in zip(a["inputs"], a["labels"]):
            assert is_valid_solution(y - 1, x - 1)


def test_save_split_and_load_metadata_errors(tmp_path):
    meta = PuzzleDatasetMetadata(0, 0, 0, 11, 81, 1, total_groups=1, mean_puzzle_examples=1, total_puzzles=2,
                                 sets=["all"])
    arrays = {
        "inputs": np.ones((2, 81), np.uint8),
        "labels": np.full((2, 81), 2, np.uint8),
        "puzzle_identifiers": np.zeros(2, np.int32),
        "puzzle_indices": np.array([0, 1, 2]),
        "group_indices": np.array([0, 2]),
    }
    save_split(tmp_path, "train", meta, {"all": arrays})
    assert load_metadata(tmp_path / "train") == meta
    assert not list((tmp_path / "train").glob("*.tmp"))

    with pytest.raises(ValueError, match="puzzle_indices"):
        save_split(tmp_path, "bad", meta, {"all": {**arrays, "puzzle_indices": np.array([0, 2, 1])}})
    with pytest.raises(ValueError, match="group_indices"):
        save_split(tmp_path, "bad", meta, {"all": {**arrays, "group_indices": np.array([0, 1])}})
    with pytest.raises(ValueError, match="shape"):
        save_split(tmp_path, "bad", meta, {"all": {**arrays, "labels": np.ones((2, 80), np.uint8)}})
    with pytest.raises(ValueError, match="inputs must lie"):
        save_split(tmp_path, "bad", meta, {"all": {**arrays, "inputs": np.full((2, 81), 11, np.uint8)}})
    assert not (tmp_path / "bad" / "dataset.json").exists()

    with pytest.raises(FileNotFoundError, match="missing_split"):
        load_metadata(tmp_path / "missing_split")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="dataset.json"):
        load_metadata(tmp_path / "empty")
    raw = json.loads((tmp_path / "train/dataset.json").read_text())
    (tmp_path / "train/dataset.json").write_text(json.dumps({k: v for k, v in raw.items() if k != "seq_len"}))
    with pytest.raises(ValueError, match="missing key.*seq_len"):
        load_metadata(tmp_path / "train")
    (tmp_path / "train/dataset.json").write_text(json.dumps({**raw, "extra": 1}))
    with pytest.raises(ValueError, match="unknown key.*extra"):
        load_metadata(tmp_path / "train")


# ----------------------------------------------------------------------------- csv source


def test_csv_source_reads_dot_blanks(tmp_path):
    path = write_csv(tmp_path / "train.csv", [("x", PUZZLE, SOLUTION, 4), ("y", PUZZLE.replace(".", "0"), SOLUTION, 0)])
    out = tmp_path / "data"
    main(csv_args(path, out) + ["--quiet"])
    inputs = np.load(out / "train/all__inputs.npy")
    expected = np.array(grid(PUZZLE)) + 1
    assert np.array_equal(inputs, np.stack([expected, expected]))
    assert np.count_nonzero(inputs[0] == 1) == PUZZLE.count(".")


@pytest.mark.parametrize(
    "question, answer, rating, message",
    [
        (PUZZLE[:80], SOLUTION, 1, "question has 80 characters, expected 81"),
        (PUZZLE[:80] + "x", SOLUTION, 1, "question has invalid character 'x' at position 81"),
        (PUZZLE, SOLUTION[:80] + "0", 1, "answer has invalid character '0' at position 81 (expected 1-9)"),
        (PUZZLE, SOLUTION[1:] + SOLUTION[0], 1, "answer is not a valid Sudoku grid (digit 6 appears twice in row 1)"),
        ("1" + PUZZLE[1:], SOLUTION, 1, "answer disagrees with the question at row 1, column 1"),
        (PUZZLE, SOLUTION, "hard", "rating must be an integer"),
    ],
)
def test_csv_malformed_row_names_file_and_line(tmp_path, question, answer, rating, message):
    path = write_csv(tmp_path / "broken.csv", [("ok", PUZZLE, SOLUTION, 0), ("bad", question, answer, rating)])
    with pytest.raises(SystemExit) as exc:
        main(csv_args(path, tmp_path / "o"))
    assert f"broken.csv:3: {message}" in str(exc.value)
    assert str(exc.value).startswith("error: ")
    assert not (tmp_path / "o").exists()


def test_cli_script_exits_nonzero_with_one_line(tmp_path):
    path = write_csv(tmp_path / "short.csv", [("bad", PUZZLE[:80], SOLUTION, 0)])
    for launcher in (["dataset/build_sudoku_dataset.py"], ["-m", "dataset.build_sudoku_dataset"]):
        proc = subprocess.run(
            [sys.executable, *launcher, *csv_args(path, tmp_path / "o")],
            cwd=REPO, capture_output=True, text=True, timeout=60,
        )
        assert proc.returncode == 1
        assert proc.stderr.strip() == f"error: {path}:2: question has 80 characters, expected 81"


def test_a_directory_given_as_the_csv_file_is_a_one_line_error(tmp_path):
    (tmp_path / "csvs").mkdir()
    with pytest.raises(SystemExit) as exc:
        main(csv_args(tmp_path / "csvs", tmp_path / "o"))
    assert str(exc.value).startswith(f"error: {tmp_path / 'csvs'}: cannot read the CSV ([Errno 21] Is a directory")


def test_an_output_dir_that_is_a_file_is_refused_before_the_build_and_kept(tmp_path, monkeypatch):
    """A build replaces its output directory whole: given a file instead, it stops before any work, file intact."""
    import dataset.build_sudoku_dataset as builder

    monkeypatch.setattr(builder, "generate_set", lambda *a, **k: pytest.fail("the build started"))
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    with pytest.raises(SystemExit) as exc:
        main(["--output-dir", str(notes), "--num-train", "2", "--num-test", "1"])
    assert exc.value.code == f"error: {notes}: exists and is not a directory; give a new or empty directory"
    assert notes.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_subsample_and_min_difficulty(tmp_path, puzzles):
    ratings = np.arange(len(puzzles))  # 0..15
    path = write_csv(tmp_path / "t.csv", csv_rows(puzzles, ratings))

    def run(name: str, **kw) -> np.ndarray:
        out = tmp_path / name
        build(csv_config(out, path, **kw))
        return np.load(out / "train/all__inputs.npy") - 1

    hard = run("hard", min_difficulty=10)
    assert np.array_equal(hard, puzzles.puzzles[10:])
    assert load_metadata(tmp_path / "hard/test").total_groups == 6  # the filter applies to test too

    sub = run("sub", subsample_size=5, seed=3)
    assert len(sub) == 5 and len({r.tobytes() for r in sub}) == 5
    originals = {p.tobytes() for p in puzzles.puzzles}
    assert all(r.tobytes() in originals for r in sub)
    assert np.array_equal(sub, run("sub_again", subsample_size=5, seed=3))
    assert not np.array_equal(sub, run("sub_other", subsample_size=5, seed=4))
    assert load_metadata(tmp_path / "sub/test").total_groups == 16  # test is never subsampled


# ----------------------------------------------------------------------------- list source


def test_list_source_rejects_bad_puzzles(tmp_path, puzzles, capsys):
    good = [text(p) for p in puzzles.puzzles[:6]]
    lines = ["# header comment", good[0], "", text(two_solution_puzzle()), good[1].replace(".", "0"),
             text(no_solution_puzzle()), good[2], "." * 81, good[3], good[4], good[5]]  # fmt: skip
    path = tmp_path / "puzzles.txt"
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "data"
    build(SudokuBuildConfig(output_dir=str(out), source="list", train_file=str(path), test_fraction=0.34, seed=1))
    printed = capsys.readouterr().out
    assert "rejected 3 of 9 puzzles: 1 with no solution, 2 with several solutions, 0 duplicates (lines 4, 6, 8)" in printed

    train, test = load_split(out / "train"), load_split(out / "test")
    assert len(train["inputs"]) == 4 and len(test["inputs"]) == 2
    written = {r.tobytes() for r in np.concatenate([train["inputs"], test["inputs"]]) - 1}
    assert written == {p.tobytes() for p in puzzles.puzzles[:6]}
    for x, y in zip(train["inputs"], train["labels"]):
        assert solve(x - 1).solution == (y - 1).tolist()


@pytest.mark.parametrize(
    "line, message",
    [
        (PUZZLE + "1", "puzzle has 82 characters, expected 81"),
        (PUZZLE[:-1] + "?", "puzzle has invalid character '?' at position 81 (expected 1-9, '.' or '0' for a blank)"),
        ("55" + PUZZLE[2:], "the clues conflict (digit 5 appears twice in row 1)"),
    ],
)
def test_list_source_invalid_line(tmp_path, line, message):
    path = tmp_path / "list.txt"
    path.write_text(f"# comment\n{PUZZLE}\n{line}\n")
    with pytest.raises(ValueError) as exc:
        build(SudokuBuildConfig(output_dir=str(tmp_path / "o"), source="list", train_file=str(path), quiet=True))
    assert str(exc.value) == f"{path}:3: {message}"


def test_hub_source_goes_through_datasets(tmp_path, monkeypatch):
    """The hub path with `datasets.load_dataset` pointed at local files (the tests have no network)."""
    datasets = pytest.importorskip("datasets")
    real_load = datasets.load_dataset
    repo_dir = tmp_path / "repo"
    repo_dir.mkdir()
    write_csv(repo_dir / "train.csv", [("a", PUZZLE, SOLUTION, 3)])
    write_csv(repo_dir / "test.csv", [("b", PUZZLE.replace(".", "0"), SOLUTION, 0)])
    asked = []

    def load_local(name, data_files, split, **kwargs):
        asked.append((name, data_files))
        local = {k: str(repo_dir / v) for k, v in data_files.items()}
        return real_load("csv", data_files=local, split=split, cache_dir=str(tmp_path / "cache"), **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", load_local)
    out = tmp_path / "data"
    build(SudokuBuildConfig(output_dir=str(out), source="csv", source_repo="someone/sudoku", quiet=True))
    assert asked == [("someone/sudoku", {"train": "train.csv"}), ("someone/sudoku", {"test": "test.csv"})]
    for split in ("train", "test"):
        a = load_split(out / split)
        assert np.array_equal(a["inputs"], [np.array(grid(PUZZLE)) + 1])
        assert np.array_equal(a["labels"], [np.array(grid(SOLUTION)) + 1])


def test_unreachable_hub_names_the_local_file_options(tmp_path, monkeypatch):
    import datasets

    error = offline_build_error(monkeypatch, datasets, "load_dataset", main, tmp_path / "out")
    assert error.endswith("pass local files instead (--train-file/--test-file)")
