"""A family of ARC-like tasks for trying test-time puzzle embeddings on a CPU: every task recolours the shapes
of a grid (its non-black cells) into one colour, the colour varying per task. A model trained on some tasks of
the family can answer a task it never saw only through a fitted embedding row: the test input alone does not
say which colour to paint.

    python examples/make_synthetic_arc.py --output-dir data/recolour-src --num-train 16 --num-unseen 8

writes <output-dir>/training/<task>.json (to train on, dataset/build_arc_dataset.py --input-dir) and
<output-dir>/unseen/<task>.json (tasks for generate.py --arc-task or python -m evaluators.arc --tasks).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils.cli import output_directory  # noqa: E402

COLOURS = range(1, 10)  # black stays black under the augmentations, so the rules leave it alone


def recolour_task(colour: int, rng: np.random.Generator, n_train: int = 3, size: tuple[int, int] = (3, 5)) -> dict:
    """Demonstrations and one test pair: random grids whose non-black cells all become `colour`."""
    def pair() -> dict:
        h, w = (int(rng.integers(size[0], size[1] + 1)) for _ in range(2))
        x = rng.choice([0, *COLOURS], (h, w))
        x.flat[rng.choice(h * w, 2, replace=False)] = rng.choice(list(COLOURS), 2)  # never all black
        return {"input": x.tolist(), "output": np.where(x > 0, colour, 0).tolist()}
    return {"train": [pair() for _ in range(n_train)], "test": [pair()]}


def make_tasks(num_train: int, num_unseen: int, seed: int = 0) -> tuple[dict[str, dict], dict[str, dict]]:
    """(training tasks, unseen tasks), each painting in a colour drawn at random."""
    rng = np.random.default_rng(seed)
    tasks = {}
    for i in range(num_train + num_unseen):
        colour = int(rng.choice(list(COLOURS)))
        tasks[f"paint_{i:03d}_in_{colour}"] = recolour_task(colour, rng)
    names = list(tasks)
    return {n: tasks[n] for n in names[:num_train]}, {n: tasks[n] for n in names[num_train:]}


def write(root: Path, subset: str, tasks: dict[str, dict]) -> None:
    (root / subset).mkdir(parents=True, exist_ok=True)
    for name, task in tasks.items():
        (root / subset / f"{name}.json").write_text(json.dumps(task))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", type=output_directory, required=True)
    p.add_argument("--num-train", type=int, default=16)
    p.add_argument("--num-unseen", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.num_train < 1 or args.num_unseen < 0:
        p.error("need --num-train >= 1 and --num-unseen >= 0")
    train, unseen = make_tasks(args.num_train, args.num_unseen, args.seed)
    write(Path(args.output_dir), "training", train)
    write(Path(args.output_dir), "unseen", unseen)
    print(f"wrote {len(train)} training and {len(unseen)} unseen tasks to {args.output_dir}")


if __name__ == "__main__":
    main()
