"""On-disk puzzle dataset format shared by all builders and the loader.

Layout (one directory per split):
    <output_dir>/identifiers.json             names of the puzzle identifiers
    <output_dir>/<split>/dataset.json         PuzzleDatasetMetadata
    <output_dir>/<split>/<set>__inputs.npy    [num_examples, seq_len]
    <output_dir>/<split>/<set>__labels.npy    [num_examples, seq_len]
    <output_dir>/<split>/<set>__puzzle_identifiers.npy  [num_puzzles] int32
    <output_dir>/<split>/<set>__puzzle_indices.npy      [num_puzzles + 1] int32, examples of each puzzle
    <output_dir>/<split>/<set>__group_indices.npy       [num_groups + 1] int32, puzzles of each group

dataset.json is written last: its presence means the split is complete. A build writes into a temporary
sibling directory renamed into place when it is complete (staged_output).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Hashable, Iterator

import numpy as np

from utils.cli import exit_on_bad_input
from utils.files import TMP_SUFFIX, atomic_write, make_dir

ARRAY_NAMES = ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices")


@dataclass
class PuzzleDatasetMetadata:
    pad_id: int
    ignore_label_id: int | None
    blank_identifier_id: int
    vocab_size: int
    seq_len: int
    num_puzzle_identifiers: int
    total_groups: int
    mean_puzzle_examples: float
    total_puzzles: int
    sets: list[str]


# Expected JSON types per field, for load_metadata's checks (bool is an int in Python, so it is excluded).
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "pad_id": (int,),
    "ignore_label_id": (int, type(None)),
    "blank_identifier_id": (int,),
    "vocab_size": (int,),
    "seq_len": (int,),
    "num_puzzle_identifiers": (int,),
    "total_groups": (int,),
    "mean_puzzle_examples": (int, float),
    "total_puzzles": (int,),
    "sets": (list,),
}


PUZZLE_CSV_HEADER = ["source", "question", "answer", "rating"]  # the official Sudoku-Extreme and Maze-Hard files


def puzzle_csv_rows(path: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, row) of every non-blank data row of an official puzzle CSV, after checking its header; a
    missing or unreadable file is a FileNotFoundError / ValueError naming it."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or [h.strip() for h in header] != PUZZLE_CSV_HEADER:
                raise ValueError(f"{path}:1: expected the header {','.join(PUZZLE_CSV_HEADER)}, "
                                 f"got {','.join(header or [])!r}")
            for row in reader:
                if row:  # tolerate blank lines
                    yield reader.line_num, row
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except (UnicodeDecodeError, csv.Error, IsADirectoryError) as e:
        raise ValueError(f"{path}: cannot read the CSV ({e})") from None


def run_build_cli(build: Callable[[Any], None], config_class: type, args: argparse.Namespace) -> None:
    """The end of a builder's CLI: its options (named like the config fields) -> config -> build; bad input or
    a full disk exits with one line `error: ...` and status 1."""
    with exit_on_bad_input():
        build(config_class(**{k.replace("-", "_"): v for k, v in vars(args).items()}))


def token_dtype(vocab_size: int) -> type:
    """The smallest array type for token ids: uint16 when every id fits (half the disk and page cache)."""
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32


def save_arrays(directory: Path, arrays: dict[str, np.ndarray]) -> None:
    """One .npy file per array, each written atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        atomic_write(directory / f"{name}.npy", lambda f, a=array: np.save(f, a))


DEFAULT_TRAIN_SPLIT = 0.95


def add_split_arguments(ap: argparse.ArgumentParser, unit: str) -> None:
    """The options of a builder that splits its input into train/ and valid/ (see resolve_train_split)."""
    ap.add_argument("--train-split", type=float,
                    help=f"share of the {unit}s for training (default {DEFAULT_TRAIN_SPLIT}, the rest validates; "
                         f"1 = no validation split); not with --valid-file")
    ap.add_argument("--valid-file", nargs="+",
                    help=f"read the validation {unit}s from these files/directories instead of splitting them off "
                         "the input (which then all goes to training)")
    ap.add_argument("--subsample-size", type=int, help=f"use this many {unit}s of the input (seeded choice)")
    ap.add_argument("--seed", type=int, default=0)


def resolve_train_split(train_split: float | None, valid_file: list[str] | None) -> float:
    """The share of the input for training: DEFAULT_TRAIN_SPLIT when not given, and all of it when the validation
    split comes from its own file(s), which any smaller share would contradict."""
    if not valid_file:
        return DEFAULT_TRAIN_SPLIT if train_split is None else train_split
    if train_split not in (None, 1):
        raise ValueError(f"--train-split {train_split} conflicts with --valid-file: the validation split comes "
                         "from its own file(s) and the whole input trains; drop --train-split")
    return 1.0


def check_splits_not_empty(sizes: dict[str, int], unit: str, sources: dict[str, str], validates: bool,
                           note: str = "") -> None:
    """An empty train split, or an empty valid split when validation was asked for (validates), is an error here
    rather than in training later. `sources` names each split's input; `note` says how it was split."""
    for split, n in sizes.items():
        if n == 0 and (split == "train" or validates):
            raise ValueError(f"{sources[split]}: the {split} split has no {unit}{note}")


def split_indices(n: int, train_split: float, seed: int, subsample: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split of n items (conversations, documents) into train and validation indices.

    Both splits get at least one item when train_split < 1 and there are two or more."""
    if not 0 < train_split <= 1:
        raise ValueError(f"--train-split must be in (0, 1], got {train_split}")
    order = np.random.default_rng(seed).permutation(n)
    if subsample:
        order = order[:subsample]
    n_train = len(order) if train_split == 1 else min(len(order) - 1, max(1, round(train_split * len(order))))
    return order[:n_train], order[n_train:]


def drop_training_copies(splits: dict[str, list], unit: str,
                         key: Callable[[Any], Hashable] = lambda item: item) -> tuple[int, str]:
    """Remove from splits["valid"] every item equal to a training one (corpora repeat documents, and generated
    tasks repeat problems): validation would otherwise score memorisation. The training split is left as it is.
    Says how many went (`unit`: what an item is); returns that count and a note for check_splits_not_empty
    ("" when none went)."""
    train = {key(item) for item in splits["train"]}
    valid = splits["valid"]
    splits["valid"] = [item for item in valid if key(item) not in train]
    copies = len(valid) - len(splits["valid"])
    if not copies:
        return 0, ""
    print(f"valid: left out {copies} {unit} that are also in the training split")
    return copies, f"; {copies} validation {unit} left out as copies of training ones"


def check_offsets(name: str, offsets: np.ndarray, length: int, end: int) -> None:
    """CSR offsets: `length` + 1 of them, from 0 to `end`, strictly increasing."""
    if offsets.ndim != 1 or offsets.shape[0] != length + 1:
        raise ValueError(f"{name} must have shape [{length + 1}], got {list(offsets.shape)}")
    if offsets[0] != 0 or offsets[-1] != end:
        raise ValueError(f"{name} must start at 0 and end at {end}, got {offsets[0]} .. {offsets[-1]}")
    if length and np.any(np.diff(offsets) <= 0):
        raise ValueError(f"{name} must be strictly increasing (every entry needs at least one member)")


CHECK_ROWS = 1 << 16


def check_set(name: str, arrays: dict[str, np.ndarray], meta: PuzzleDatasetMetadata,
              where: Callable[[str], str] | None = None) -> tuple[int, int, int]:
    """Validate one set's arrays against the metadata (shapes, dtypes, id ranges, the index arrays); returns
    (examples, puzzles, groups). `where(key)` names an array in messages (a loader: its file)."""
    where = where or (lambda key: f"set {name!r}: {key}")
    if set(arrays) != set(ARRAY_NAMES):
        raise ValueError(f"set {name!r} needs exactly the arrays {list(ARRAY_NAMES)}, got {sorted(arrays)}")
    a = {k: np.asarray(v) for k, v in arrays.items()}
    inputs, labels = a["inputs"], a["labels"]
    for key in ARRAY_NAMES:
        if not np.issubdtype(a[key].dtype, np.integer):
            raise ValueError(f"{where(key)} must be an integer array, got dtype {a[key].dtype}")
    if inputs.ndim != 2 or inputs.shape[1] != meta.seq_len:
        raise ValueError(f"{where('inputs')} must have shape [N, {meta.seq_len}] (seq_len), got {list(inputs.shape)}")
    if labels.shape != inputs.shape:
        raise ValueError(f"{where('labels')} shape {list(labels.shape)} differs from the inputs' {list(inputs.shape)}")
    for start in range(0, len(inputs), CHECK_ROWS):  # in blocks: a full-size boolean mask of ARC's ~4M rows is GBs
        x, y = inputs[start:start + CHECK_ROWS], labels[start:start + CHECK_ROWS]
        if x.min() < 0 or x.max() >= meta.vocab_size:
            raise ValueError(f"{where('inputs')} must lie in [0, {meta.vocab_size}), got {x.min()}..{x.max()} "
                             f"in rows {start}..{start + len(x) - 1} (vocab_size {meta.vocab_size})")
        bad_labels = (y < 0) | (y >= meta.vocab_size)
        if meta.ignore_label_id is not None:
            bad_labels &= y != meta.ignore_label_id
        if np.any(bad_labels):
            raise ValueError(f"{where('labels')} must lie in [0, {meta.vocab_size}) or equal ignore_label_id")

    ids = a["puzzle_identifiers"]
    if ids.ndim != 1:
        raise ValueError(f"{where('puzzle_identifiers')} must be 1-D, got shape {list(ids.shape)}")
    if ids.size and (ids.min() < 0 or ids.max() >= meta.num_puzzle_identifiers):
        raise ValueError(f"{where('puzzle_identifiers')} must lie in [0, {meta.num_puzzle_identifiers})")
    num_examples, num_puzzles = inputs.shape[0], ids.shape[0]
    check_offsets(where("puzzle_indices"), a["puzzle_indices"], num_puzzles, num_examples)
    num_groups = a["group_indices"].shape[0] - 1
    check_offsets(where("group_indices"), a["group_indices"], num_groups, num_puzzles)
    return num_examples, num_puzzles, num_groups


DATASET_ENTRIES = ("dataset.json", "identifiers.json", "train", "test", "valid", "tokenizer")  # what builds write


def check_output_dir(output_dir: str | os.PathLike) -> Path:
    """The absolute path of a build's output directory, after refusing one it must not replace: a file, or a
    directory that holds files but no dataset. Builders call this first, before their long work."""
    out = Path(os.path.abspath(output_dir))
    if out.exists() and not out.is_dir():
        raise ValueError(f"{output_dir}: exists and is not a directory; give a new or empty directory")
    if out.is_dir() and any(out.iterdir()) and not any((out / name).exists() for name in DATASET_ENTRIES):
        raise ValueError(f"{output_dir}: exists and holds no dataset; a build replaces its output directory "
                         "whole, so give a new or empty one")
    return out


@contextmanager
def staged_output(output_dir: str | os.PathLike) -> Iterator[Path]:
    """The directory a build writes into: a temporary sibling that replaces `output_dir` only once the build is
    complete, so an interrupted build leaves the previous dataset (or none) whole, never a mix that loads.
    Leftovers of killed builds (the *.tmp siblings) go first."""
    out = check_output_dir(output_dir)
    staging, replaced = (out.with_name(f"{out.name}.{what}{TMP_SUFFIX}") for what in ("building", "replaced"))
    for leftover in (staging, replaced):
        shutil.rmtree(leftover, ignore_errors=True)
    make_dir(staging)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        os.replace(out, replaced)
    os.replace(staging, out)
    shutil.rmtree(replaced, ignore_errors=True)


def save_split(
    output_dir: str | os.PathLike,
    split: str,
    metadata: PuzzleDatasetMetadata,
    sets: dict[str, dict[str, np.ndarray]],
) -> Path:
    """Validate and write one split; returns the split directory."""
    if not split or os.sep in split or split in (".", ".."):
        raise ValueError(f"invalid split name {split!r}")
    if list(sets) != list(metadata.sets):
        raise ValueError(f"metadata.sets {metadata.sets} does not match the given sets {list(sets)}")
    totals = np.zeros(3, dtype=np.int64)
    for name, arrays in sets.items():
        if not name or "__" in name or os.sep in name:
            raise ValueError(f"invalid set name {name!r}")
        totals += check_set(name, arrays, metadata)
    examples, puzzles, groups = (int(x) for x in totals)
    if metadata.total_puzzles != puzzles or metadata.total_groups != groups:
        raise ValueError(
            f"metadata says {metadata.total_puzzles} puzzles in {metadata.total_groups} groups, "
            f"the arrays hold {puzzles} puzzles in {groups} groups"
        )
    if puzzles and abs(metadata.mean_puzzle_examples - examples / puzzles) > 1e-6:
        raise ValueError(f"mean_puzzle_examples is {metadata.mean_puzzle_examples}, arrays give {examples / puzzles}")

    split_dir = Path(output_dir) / split
    split_dir.mkdir(parents=True, exist_ok=True)
    meta_path = split_dir / "dataset.json"
    # Remove the completion marker first: a crash while rewriting must not leave old metadata over new arrays.
    meta_path.unlink(missing_ok=True)
    for name, arrays in sets.items():
        for key in ARRAY_NAMES:
            arr = np.asarray(arrays[key])
            if key != "inputs" and key != "labels":
                arr = arr.astype(np.int32)
            atomic_write(split_dir / f"{name}__{key}.npy", lambda f, arr=arr: np.save(f, arr))
    text = json.dumps(dataclasses.asdict(metadata), indent=2) + "\n"
    atomic_write(meta_path, lambda f: f.write(text.encode()))
    return split_dir


def save_identifiers(output_dir: str | os.PathLike, names: list[str]) -> None:
    """identifiers.json maps puzzle identifier ids to names (id 0 is the blank identifier)."""
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    text = json.dumps(list(names)) + "\n"
    atomic_write(Path(output_dir) / "identifiers.json", lambda f: f.write(text.encode()))


def load_metadata(split_dir: str | os.PathLike) -> PuzzleDatasetMetadata:
    split_dir = Path(split_dir)
    path = split_dir / "dataset.json"
    if not split_dir.is_dir():
        raise FileNotFoundError(f"dataset split directory not found: {split_dir}")
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (the split was never built or its build did not finish)")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    missing = [k for k in _FIELD_TYPES if k not in raw]
    unknown = [k for k in raw if k not in _FIELD_TYPES]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing}")
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}")
    for key, types in _FIELD_TYPES.items():
        value = raw[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise ValueError(f"{path}: {key} has the wrong type ({type(value).__name__}: {value!r})")
    if not all(isinstance(s, str) for s in raw["sets"]):
        raise ValueError(f"{path}: sets must be a list of strings, got {raw['sets']!r}")
    return PuzzleDatasetMetadata(**raw)
