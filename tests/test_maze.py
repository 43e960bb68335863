"""Maze: the generator's labels are shortest paths (checked by a BFS written here) at any square size, the path
checker, the encoding, the CSV reader, the builder's dihedral augmentation and the text form of a small maze."""
import json
import math
from collections import deque

import numpy as np
import pytest

from conftest import FLOAT32, TINY, compose, generate, offline_build_error
from dataset.build_maze_dataset import MazeBuildConfig, build, main, read_csv_file, write_csv
from pretrain import train
from tasks.common import inverse_dihedral
from tasks import sudoku
from tasks.maze import TEXT, decode_maze, encode_maze, generate_maze, is_shortest_path, solve_maze


def grid_distance(maze: str, allowed: str) -> int | None:
    """Steps from S to G over cells whose character is in `allowed` (a BFS on the n x n array)."""
    n = math.isqrt(len(maze))
    g = np.array(list(maze)).reshape(n, n)
    start = tuple(np.argwhere(g == "S")[0])
    dist = {start: 0}
    queue = deque([start])
    while queue:
        r, c = queue.popleft()
        if g[r, c] == "G":
            return dist[(r, c)]
        for nr, nc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
            if 0 <= nr < n and 0 <= nc < n and (nr, nc) not in dist and g[nr, nc] in allowed:
                dist[(nr, nc)] = dist[(r, c)] + 1
                queue.append((nr, nc))
    return None


@pytest.mark.parametrize("size, min_path_length, openings", [(30, 60, 0), (30, 60, 8), (11, 16, 0), (11, 16, 4),
                                                             (12, 16, 0), (9, 12, 2)])
def test_generated_labels_are_shortest_paths(size, min_path_length, openings):
    rng = np.random.default_rng(openings)
    for _ in range(10):
        question, answer = generate_maze(rng, min_path_length=min_path_length, openings=openings, size=size)
        assert len(question) == len(answer) == size * size
        assert question.count("S") == question.count("G") == 1 and "o" not in question
        assert all(q == a or (q == " " and a == "o") for q, a in zip(question, answer))
        shortest = grid_distance(question, " SG")
        assert shortest is not None and shortest >= min_path_length
        # the marked cells alone connect S to G, with exactly the shortest number of steps
        assert answer.count("o") == shortest - 1
        assert grid_distance(answer, "oSG") == shortest
        assert is_shortest_path(question, answer)


@pytest.mark.parametrize("size", [9, 11, 12, 30])
def test_perfect_maze_uses_every_cell_at_even_coordinates(size):
    """(size+1)//2 cells a side at even coordinates, all joined by one tree of passages: 30x30 has 15x15 cells
    (row and column 29 stay walls), 11x11 has 6x6 (rows and columns 0 and 10 hold cells)."""
    cells = (size + 1) // 2
    g = np.array(list(generate_maze(np.random.default_rng(size), 1, size=size)[0])).reshape(size, size)
    is_open = g != "#"
    assert is_open[::2, ::2].all() and is_open[::2, ::2].shape == (cells, cells)
    assert is_open.sum() == 2 * cells * cells - 1  # a tree: one passage fewer than cells
    assert not is_open[1::2, 1::2].any() and not is_open[2 * cells - 1:].any() and not is_open[:, 2 * cells - 1:].any()


def test_difficulty_knob_and_impossible_requests():
    rng = np.random.default_rng(0)
    lengths = [generate_maze(rng, min_path_length=150)[1].count("o") + 1 for _ in range(5)]
    assert min(lengths) >= 150
    with pytest.raises(ValueError, match="min_path_length"):
        generate_maze(rng, min_path_length=10_000, max_tries=2)
    with pytest.raises(ValueError, match=r"no 11x11 maze .* min_path_length=100 .*raise size"):
        generate_maze(rng, min_path_length=100, size=11)
    for too_small in (lambda: generate_maze(rng, min_path_length=1, size=1), lambda: encode_maze("S")):
        with pytest.raises(ValueError, match=r"^size must be >= 2 \(the side of the square maze\), got 1$"):
            too_small()  # the builder's one-line error too (test_builder_cli_refuses_a_bad_size...)


def open_maze() -> str:
    """A hand-made maze: an open 3x3 room (S top left, G bottom right) inside walls."""
    g = np.full((30, 30), "#")
    g[1:4, 1:4] = " "
    g[1, 1], g[3, 3] = "S", "G"
    return "".join(g.reshape(-1))


def mark(maze: str, cells: list[tuple[int, int]]) -> str:
    chars = list(maze)
    for r, c in cells:
        chars[r * 30 + c] = "o"
    return "".join(chars)


def test_path_checker_accepts_any_shortest_path_and_rejects_the_rest():
    q = open_maze()
    assert is_shortest_path(q, mark(q, [(1, 2), (1, 3), (2, 3)]))  # along the top, then down
    assert is_shortest_path(q, mark(q, [(2, 1), (3, 1), (3, 2)]))  # down, then along the bottom
    assert is_shortest_path(q, solve_maze(q))
    assert not is_shortest_path(q, mark(q, [(1, 2), (1, 3)]))  # broken
    assert not is_shortest_path(q, mark(q, [(1, 2), (2, 2), (2, 1), (3, 1), (3, 2)]))  # too long
    assert not is_shortest_path(q, mark(q, [(1, 2), (2, 2), (3, 2), (0, 0)]))  # through a wall
    assert not is_shortest_path(q, q.replace("G", " "))


def test_encoding_round_trip_and_errors():
    q = open_maze()
    tokens = encode_maze(solve_maze(q))
    assert tokens.shape == (900,) and set(tokens.tolist()) == {1, 2, 3, 4, 5}
    assert decode_maze(tokens) == solve_maze(q)
    assert decode_maze(np.zeros(900, np.int64)) == "?" * 900
    with pytest.raises(ValueError, match="square of n x n characters .*got 899"):
        encode_maze("#" * 899)
    with pytest.raises(ValueError, match="got 1$"):
        encode_maze("#")
    small = solve_maze(generate_maze(np.random.default_rng(0), 10, size=11)[0])
    assert encode_maze(small).shape == (121,) and decode_maze(encode_maze(small)) == small
    with pytest.raises(ValueError, match="'x'"):
        encode_maze("x" * 900)


def test_builder_augments_train_with_the_eight_symmetries(tmp_path):
    out = tmp_path / "maze"
    cfg = MazeBuildConfig(output_dir=str(out), num_train=3, num_test=2, min_path_length=40, seed=1, quiet=True,
                          save_csv=str(tmp_path / "csv"))
    build(cfg)
    a = {k: np.load(out / "train" / f"all__{k}.npy") for k in ("inputs", "labels", "group_indices")}
    assert a["inputs"].shape == (24, 900) and a["group_indices"].tolist() == [0, 8, 16, 24]
    questions, answers = read_csv_file(str(tmp_path / "csv" / "train.csv"))
    for i in range(3):
        copies = a["inputs"][8 * i:8 * i + 8].reshape(8, 30, 30)
        assert len({c.tobytes() for c in copies}) == 8
        for t in range(8):
            assert decode_maze(inverse_dihedral(copies[t], t).reshape(-1)) == questions[i]
            label = decode_maze(inverse_dihedral(a["labels"][8 * i + t].reshape(30, 30), t).reshape(-1))
            assert label == answers[i] and is_shortest_path(questions[i], label)
    assert np.load(out / "test" / "all__inputs.npy").shape == (2, 900)  # test is not augmented

    # the CSV it saved builds the same dataset, and the same seed gives the same mazes
    again = tmp_path / "from-csv"
    build(MazeBuildConfig(output_dir=str(again), source="csv", train_file=str(tmp_path / "csv" / "train.csv"),
                          test_file=str(tmp_path / "csv" / "test.csv"), quiet=True))
    for split in ("train", "test"):
        for k in ("inputs", "labels"):
            assert np.array_equal(np.load(out / split / f"all__{k}.npy"), np.load(again / split / f"all__{k}.npy"))


@pytest.mark.parametrize("options, message", [
    (["--size", "11", "--min-path-length", "100"], "error: no 11x11 maze with a unique shortest path of >= "
     "min_path_length=100 steps in 100 tries; lower min_path_length or openings, or raise size"),
    (["--size", "1"], "error: size must be >= 2 (the side of the square maze), got 1")])
def test_builder_cli_refuses_a_bad_size_or_path_length_in_one_line(tmp_path, options, message):
    with pytest.raises(SystemExit) as exit_:
        main(["--output-dir", str(tmp_path / "out"), "--num-train", "2", "--num-test", "1", *options])
    assert exit_.value.code == message and list(tmp_path.iterdir()) == []


def test_malformed_csv_names_the_line(tmp_path):
    q = open_maze()
    path = tmp_path / "bad.csv"
    write_csv(path, [q, q], [solve_maze(q), q.replace("G", "o")])
    with pytest.raises(ValueError, match=r"bad.csv:3: answer: .*exactly one"):
        read_csv_file(str(path))
    with pytest.raises(ValueError, match=r"bad.csv:2: question: size 11 \(--size, dataset.build.size\): a maze has 121 "
                                         r"characters, got 900"):
        read_csv_file(str(path), size=11)
    path.write_text("a,b\n")
    with pytest.raises(ValueError, match="header"):
        read_csv_file(str(path))


def test_maze_dataset_is_built_on_first_run_and_trains(tmp_path):
    data = tmp_path / "maze-gen"
    cfg = compose("dataset=maze", f"dataset.build_path={data}", f"checkpoint_dir={tmp_path}",
                  "dataset.build.num_train=4", "dataset.build.num_test=2", "dataset.build.min_path_length=30",
                  "arch=trm", "arch.hidden_size=32", "arch.num_heads=2", "arch.puzzle_emb_ndim=0", "arch.H_cycles=1",
                  "arch.L_cycles=1", "arch.halt_max_steps=2", "global_batch_size=4", "max_steps=1",
                  "logger.mode=disabled")
    results = train(cfg)
    assert (data / "train" / "dataset.json").exists() and results["test/count"] == 2


def test_text_form_takes_the_size_of_the_run():
    question = generate_maze(np.random.default_rng(0), 12, size=11)[0]
    small = TEXT.for_seq_len(121)
    assert (small.seq_len, small.width) == (121, 11) and TEXT.for_seq_len(900) is TEXT
    tokens, answer = encode_maze(question).tolist(), encode_maze(solve_maze(question)).tolist()
    assert small.check(tokens, answer) and not small.check(tokens, tokens)
    assert small.show(tokens) == "\n".join(question[i:i + 11] for i in range(0, 121, 11))
    with pytest.raises(ValueError,
                       match=r"this run's puzzles have 120 cells: not maze puzzles \(900 cells, or any n x n\)"):
        TEXT.for_seq_len(120)
    with pytest.raises(ValueError, match=r"this run's puzzles have 121 cells: not Sudoku puzzles \(81 cells\)"):
        sudoku.TEXT.for_seq_len(121)


def test_small_maze_dataset_trains_and_generate_reads_its_grid(tmp_path):
    """dataset.build.size=11 through pretrain.py's build path, then generate.py --puzzle on that run."""
    data = tmp_path / "maze-11x11"
    train(compose("dataset=maze", f"dataset.build_path={data}", "dataset.build.size=11", "dataset.build.num_train=4",
                  "dataset.build.num_test=2", "dataset.build.min_path_length=12", f"checkpoint_dir={tmp_path}",
                  "run_name=run", *TINY, FLOAT32, "arch.halt_max_steps=2", "global_batch_size=4", "max_steps=2"))
    assert json.loads((data / "train" / "dataset.json").read_text())["seq_len"] == 121
    assert np.load(data / "train" / "all__inputs.npy").shape == (32, 121)
    maze = decode_maze(np.load(data / "test" / "all__inputs.npy")[0])
    rows = [maze[i:i + 11] for i in range(0, 121, 11)]
    (tmp_path / "maze.txt").write_text("\n".join(rows) + "\n")
    run = str(next(tmp_path.glob("*/run")))
    for puzzle in (str(tmp_path / "maze.txt"), maze):  # 11 lines of 11, or one line of 121
        result = generate("--checkpoint", run, "--puzzle", puzzle)
        assert result.returncode == 0, result.stderr
        blocks = result.stdout.strip("\n").split("\n\n")  # the puzzle, one grid per ACT step, the verdict
        assert blocks[0] == "maze:\n" + "\n".join(rows) and len(blocks) == 4
        for k, block in enumerate(blocks[1:3], start=1):
            header, *grid = block.split("\n")
            assert header.startswith(f"ACT step {k}: ") and len(grid) == 11 and {len(r) for r in grid} == {11}
        assert blocks[3] == ("valid solution" if is_shortest_path(maze, "".join(grid)) else "not a valid solution")

    for puzzle, message in [("#" * 120, "puzzle: a maze is a square of n x n characters (n >= 2, e.g. 900 for "
                                         "30x30), got 120"),
                            ("\n".join(rows[:10]),
                             "puzzle: a maze is n lines of n characters, got 10 lines of 11 characters"),
                            ("\n".join(rows[:10] + [rows[10][:9]]), "puzzle: a maze is n lines of n characters, got "
                                                                  "11 lines of 9 to 11 characters"),
                            ("#" * 900, "puzzle: this run's maze puzzles have 121 cells (11 lines of 11), got 900")]:
        result = generate("--checkpoint", run, "--puzzle", puzzle)
        assert result.returncode == 1 and result.stderr == f"error: {message}\n", result.stderr


def test_unreachable_hub_names_the_local_file_options(tmp_path, monkeypatch):
    import huggingface_hub

    error = offline_build_error(monkeypatch, huggingface_hub, "hf_hub_download", main, tmp_path / "out")
    assert error.endswith("pass local files instead (--train-file/--test-file; in pretrain.py "
                          "+experiment=maze_hard dataset.build.train_file/test_file)")
