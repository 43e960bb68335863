"""Maze: the generator's labels are shortest paths (checked by a BFS written here), the path checker, the
encoding, the CSV reader and the builder's dihedral augmentation."""
from collections import deque

import numpy as np
import pytest

from conftest import compose
from dataset.build_maze_dataset import MazeBuildConfig, build, read_csv_file, write_csv
from pretrain import train
from tasks.common import inverse_dihedral
from tasks.maze import decode_maze, encode_maze, generate_maze, is_shortest_path, solve_maze


def grid_distance(maze: str, allowed: str) -> int | None:
    """Steps from S to G over cells whose character is in `allowed` (a BFS on the 30x30 array)."""
    g = np.array(list(maze)).reshape(30, 30)
    start = tuple(np.argwhere(g == "S")[0])
    dist = {start: 0}
    queue = deque([start])
    while queue:
        r, c = queue.popleft()
        if g[r, c] == "G":
            return dist[(r, c)]
        for nr, nc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
            if 0 <= nr < 30 and 0 <= nc < 30 and (nr, nc) not in dist and g[nr, nc] in allowed:
                dist[(nr, nc)] = dist[(r, c)] + 1
                queue.append((nr, nc))
    return None


@pytest.mark.parametrize("openings", [0, 8])
def test_generated_labels_are_shortest_paths(openings):
    rng = np.random.default_rng(openings)
    for _ in range(10):
        question, answer = generate_maze(rng, min_path_length=60, openings=openings)
        assert question.count("S") == question.count("G") == 1 and "o" not in question
        assert all(q == a or (q == " " and a == "o") for q, a in zip(question, answer))
        shortest = grid_distance(question, " SG")
        assert shortest is not None and shortest >= 60
        # the marked cells alone connect S to G, with exactly the shortest number of steps
        assert answer.count("o") == shortest - 1
        assert grid_distance(answer, "oSG") == shortest
        assert is_shortest_path(question, answer)


def test_difficulty_knob_and_impossible_requests():
    rng = np.random.default_rng(0)
    lengths = [generate_maze(rng, min_path_length=150)[1].count("o") + 1 for _ in range(5)]
    assert min(lengths) >= 150
    with pytest.raises(ValueError, match="min_path_length"):
        generate_maze(rng, min_path_length=10_000, max_tries=2)


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
    with pytest.raises(ValueError, match="900 characters"):
        encode_maze("#")
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


def test_malformed_csv_names_the_line(tmp_path):
    q = open_maze()
    path = tmp_path / "bad.csv"
    write_csv(path, [q, q], [solve_maze(q), q.replace("G", "o")])
    with pytest.raises(ValueError, match=r"bad.csv:3: answer: .*exactly one"):
        read_csv_file(str(path))
    path.write_text("a,b\n")
    with pytest.raises(ValueError, match="header"):
        read_csv_file(str(path))


def test_maze_dataset_is_built_on_first_run_and_trains(tmp_path):
    data = tmp_path / "maze-gen"
    cfg = compose("dataset=maze", f"dataset.build_path={data}", f"checkpoint_dir={tmp_path}", "dataset.build.num_train=4",
                  "dataset.build.num_test=2", "dataset.build.min_path_length=30", "arch=trm", "arch.hidden_size=32",
                  "arch.num_heads=2", "arch.puzzle_emb_ndim=0", "arch.H_cycles=1", "arch.L_cycles=1",
                  "arch.halt_max_steps=2", "global_batch_size=4", "max_steps=1", "logger.mode=disabled")
    results = train(cfg)
    assert (data / "train" / "dataset.json").exists() and results["test/count"] == 2
