"""Build a Maze dataset (30x30 by default, any n x n) in the on-disk format of dataset/common.py.

Sources:
  generate  built-in seeded generator (default, offline): the label is the shortest path, which is unique
  csv       the official Maze-Hard CSV files (source,question,answer,rating): local train/test files, or
            without them train.csv/test.csv of the hub dataset sapientinc/maze-30x30-hard-1k (downloaded)

Examples:
  python -m dataset.build_maze_dataset --output-dir data/maze-30x30-gen-1k --num-train 1000 --num-test 1000 \\
      --min-path-length 110
  python -m dataset.build_maze_dataset --size 11 --output-dir data/maze-11x11-gen-1k --min-path-length 20
  python -m dataset.build_maze_dataset --source csv --output-dir data/maze-30x30-hard-1k

A 30x30 maze is a 900-character string, row by row: '#' wall, ' ' open, 'S' start, 'G' goal; in the answer the
cells of the path between S and G are 'o'. Tokens: 0 = PAD, then '#', ' ', 'S', 'G', 'o' = 1..5 (the
official TRM encoding). Each train maze and its 7 other dihedral transforms form one group; the test split
is not augmented. The maze itself (encoding, shortest paths, generator) lives in tasks/maze.py.
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dataset.common import (PUZZLE_CSV_HEADER, PuzzleDatasetMetadata, check_output_dir, puzzle_csv_rows,  # noqa: E402
                            run_build_cli, save_identifiers, save_split, staged_output)
from tasks.common import NUM_DIHEDRAL, dihedral  # noqa: E402
from tasks.maze import CHARSET, OPEN, PATH, SIZE, check_size, encode_maze, endpoints, generate_maze  # noqa: E402
from utils.files import make_dir  # noqa: E402


# ----------------------------------------------------------------------------- CSV


def read_csv_file(path: str, size: int = SIZE) -> tuple[list[str], list[str]]:
    """Questions and answers of a maze CSV (the official ones: 30x30), each row checked."""
    questions, answers = [], []
    for line, row in puzzle_csv_rows(path):
        where = f"{path}:{line}"
        if len(row) != 4:
            raise ValueError(f"{where}: expected 4 columns, got {len(row)}")
        _, question, answer, _ = row
        for name, text in (("question", question), ("answer", answer)):
            try:
                if len(text) != size * size:
                    raise ValueError(f"size {size} (--size, dataset.build.size): a maze has {size * size} "
                                     f"characters, got {len(text)}")
                encode_maze(text)
                endpoints(text)
            except ValueError as e:
                raise ValueError(f"{where}: {name}: {e}") from None
        if PATH in question or any(q != a and not (q == OPEN and a == PATH) for q, a in zip(question, answer)):
            raise ValueError(f"{where}: the answer must be the question with open cells marked {PATH!r}")
        questions.append(question)
        answers.append(answer)
    return questions, answers


def download_csv(repo: str, split: str) -> str:
    """Local path of `<split>.csv` of a hub dataset repository (downloaded once into the hub cache)."""
    try:
        from huggingface_hub import hf_hub_download  # imported lazily: only this path needs it (and the network)
        return hf_hub_download(repo, f"{split}.csv", repo_type="dataset")
    except Exception as e:  # missing package, network, authentication, missing file: all end the same way
        raise ValueError(f"cannot download {split}.csv from {repo} ({type(e).__name__}: {e}); pass local files "
                         "instead (--train-file/--test-file; in pretrain.py +experiment=maze_hard "
                         "dataset.build.train_file/test_file)") from None


def write_csv(path: Path, questions: list[str], answers: list[str], source: str = "generated") -> None:
    make_dir(path.parent)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(PUZZLE_CSV_HEADER)
        for q, a in zip(questions, answers):
            writer.writerow([source, q, a, a.count(PATH) + 1])  # rating: the path length


# ----------------------------------------------------------------------------- build


@dataclass
class MazeBuildConfig:
    output_dir: str = "data/maze-30x30-gen-1k"
    source: str = "generate"  # generate | csv
    seed: int = 0
    augment: bool = True  # the 8 dihedral transforms of every train maze (test: never)
    subsample_size: int | None = None  # random subset of the train mazes
    train_file: str | None = None  # csv source: local files, or both None to download them from source_repo
    test_file: str | None = None
    source_repo: str = "sapientinc/maze-30x30-hard-1k"
    size: int = SIZE  # the side of the square grid: generate makes size x size mazes, csv files must hold them
    num_train: int = 1000  # generate source
    num_test: int = 1000
    min_path_length: int = 110  # difficulty: shortest path steps from S to G
    openings: int = 0  # extra walls removed from the perfect maze (loops)
    save_csv: str | None = None  # generate: also write DIR/train.csv and DIR/test.csv
    quiet: bool = False


def _split_arrays(questions: list[str], answers: list[str], augment: bool, size: int) -> dict[str, np.ndarray]:
    copies = NUM_DIHEDRAL if augment else 1
    q = np.stack([encode_maze(x) for x in questions]).reshape(-1, size, size)
    a = np.stack([encode_maze(x) for x in answers]).reshape(-1, size, size)
    inputs = np.stack([dihedral(q, t) for t in range(copies)], 1).reshape(-1, size * size)  # maze-major order
    labels = np.stack([dihedral(a, t) for t in range(copies)], 1).reshape(-1, size * size)
    total = len(inputs)
    return {"inputs": inputs, "labels": labels, "puzzle_identifiers": np.zeros(total, np.int32),
            "puzzle_indices": np.arange(total + 1, dtype=np.int32),
            "group_indices": np.arange(0, total + 1, copies, dtype=np.int32)}


def build(config: MazeBuildConfig) -> None:
    """Write `<output_dir>/{train,test}` and identifiers.json."""
    cfg = config
    if cfg.source not in ("generate", "csv"):
        raise ValueError(f"unknown source {cfg.source!r} (generate or csv)")
    if cfg.source == "csv" and (cfg.train_file is None) != (cfg.test_file is None):
        raise ValueError("the csv source needs both train_file and test_file (or neither, to download source_repo)")
    if cfg.min_path_length < 1 or cfg.openings < 0 or cfg.seed < 0:
        raise ValueError("min_path_length must be >= 1, openings and seed >= 0")
    if cfg.source == "generate" and (cfg.num_train < 1 or cfg.num_test < 0):
        raise ValueError(f"num_train must be >= 1 and num_test >= 0, got {cfg.num_train} and {cfg.num_test}")
    if cfg.save_csv is not None and Path(cfg.save_csv).is_file():
        raise ValueError(f"--save-csv {cfg.save_csv}: a file, not a directory")
    check_size(cfg.size)
    check_output_dir(cfg.output_dir)
    say = (lambda *_: None) if cfg.quiet else print
    start = time.perf_counter()
    if cfg.source == "generate":
        splits = {}
        for k, (split, count) in enumerate((("train", cfg.num_train), ("test", cfg.num_test))):
            rng = np.random.default_rng([cfg.seed, k])
            mazes = [generate_maze(rng, cfg.min_path_length, cfg.openings, size=cfg.size) for _ in range(count)]
            splits[split] = list(zip(*mazes))
        train, test = splits["train"], splits["test"]
    elif cfg.train_file is not None:
        train, test = read_csv_file(cfg.train_file, cfg.size), read_csv_file(cfg.test_file, cfg.size)
    else:
        train, test = (read_csv_file(download_csv(cfg.source_repo, split), cfg.size) for split in ("train", "test"))
    if not train or not train[0]:
        raise ValueError("no train mazes")
    if cfg.subsample_size is not None and cfg.subsample_size < len(train[0]):
        pick = np.sort(np.random.default_rng([cfg.seed, 2]).choice(len(train[0]), cfg.subsample_size, replace=False))
        train = [[xs[i] for i in pick] for xs in train]

    with staged_output(cfg.output_dir) as out:
        for split, (questions, answers), augment in (("train", train, cfg.augment), ("test", test, False)):
            arrays = _split_arrays(list(questions), list(answers), augment, cfg.size)
            metadata = PuzzleDatasetMetadata(
                pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=len(CHARSET) + 1,
                seq_len=cfg.size * cfg.size,
                num_puzzle_identifiers=1, total_groups=len(questions), mean_puzzle_examples=1,
                total_puzzles=len(arrays["inputs"]), sets=["all"])
            save_split(out, split, metadata, {"all": arrays})
        save_identifiers(out, ["<blank>"])
    if cfg.source == "generate" and cfg.save_csv:  # after the dataset: a directory inside the output one stays
        for split, (qs, ans) in splits.items():
            write_csv(Path(cfg.save_csv) / f"{split}.csv", list(qs), list(ans))
    copies = f"{NUM_DIHEDRAL} copies each" if cfg.augment else "not augmented"
    say(f"wrote {cfg.output_dir}: {len(train[0])} train mazes ({copies}), "
        f"{len(test[0]) if test else 0} test mazes, in {time.perf_counter() - start:.1f} s")


def main(argv: Sequence[str] | None = None) -> None:
    d = MazeBuildConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", choices=["generate", "csv"], default=d.source)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--no-augment", dest="augment", action="store_false", help="no dihedral copies of train mazes")
    p.add_argument("--subsample-size", type=int, default=None)
    p.add_argument("--train-file", default=None)
    p.add_argument("--test-file", default=None)
    p.add_argument("--source-repo", default=d.source_repo, help="csv without files: hub dataset to download")
    p.add_argument("--num-train", type=int, default=d.num_train)
    p.add_argument("--num-test", type=int, default=d.num_test)
    p.add_argument("--size", type=int, default=d.size, help="side of the square maze (generate: the mazes made; "
                   "csv: what the files hold)")
    p.add_argument("--min-path-length", type=int, default=d.min_path_length, help="generate: difficulty")
    p.add_argument("--openings", type=int, default=d.openings, help="generate: extra walls removed (loops)")
    p.add_argument("--save-csv", default=None, help="generate: also write DIR/train.csv and DIR/test.csv")
    p.add_argument("--quiet", action="store_true")
    run_build_cli(build, MazeBuildConfig, p.parse_args(argv))


if __name__ == "__main__":
    main()
