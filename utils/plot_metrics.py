"""A PNG dashboard of a run from its metrics.jsonl, no W&B needed.

    python -m utils.plot_metrics checkpoints/<project>/<run>            # writes <run>/metrics.png
    python -m utils.plot_metrics checkpoints/<project>/<run> --watch    # redraws while the run goes on

Panels (those with data): losses, learning rate, accuracies, probes, throughput; curriculum stage changes
(`curriculum/stage`) are drawn as vertical lines on every panel.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")  # files only: works on machines without a display
import matplotlib.pyplot as plt  # noqa: E402

from utils.cli import exit_on_bad_input  # noqa: E402

Series = dict[str, tuple[list[int], list[float]]]

PANELS = {  # title: which metric names it shows
    "loss": lambda k: k.endswith("loss") and "q_" not in k,
    "learning rate": lambda k: k == "train/lr",
    "accuracy": lambda k: "accuracy" in k and "q_halt" not in k and "@" not in k,
    "probes (exact match)": lambda k: "/probe/" in k or k.startswith("probe/"),
    "throughput (samples/s)": lambda k: k.endswith("samples_per_s"),
}


def read_metrics(path: str) -> tuple[Series, list[tuple[int, int]]]:
    """(metric -> (steps, values), [(step, stage) of every stage change]); a half-written last line is skipped."""
    series: Series = defaultdict(lambda: ([], []))
    stages = []
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            step = row.pop("step")
            for key, value in row.items():
                if key == "curriculum/stage":
                    stages.append((step, int(value)))
                elif isinstance(value, (int, float)) and math.isfinite(value):
                    series[key][0].append(step)
                    series[key][1].append(value)
    return dict(series), stages


def plot(run_dir: str, output: str | None = None) -> str:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found (is {run_dir} a run directory?)")
    series, stages = read_metrics(path)
    panels = {title: sorted(k for k in series if wanted(k)) for title, wanted in PANELS.items()}
    panels = {title: keys for title, keys in panels.items() if keys}
    if not panels:
        raise ValueError(f"{path}: no metrics to plot yet")
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 3 * len(panels)), sharex=True, squeeze=False)
    for ax, (title, keys) in zip(axes[:, 0], panels.items()):
        for key in keys:
            steps, values = series[key]
            ax.plot(steps, values, marker="." if len(steps) < 50 else None, label=key)
        for step, stage in stages:
            ax.axvline(step, color="grey", linestyle="--", linewidth=1)
            ax.annotate(f"stage {stage}", (step, 1), xycoords=("data", "axes fraction"), fontsize=8, va="top")
        if title == "loss" and all(v > 0 for k in keys for v in series[k][1]):
            ax.set_yscale("log")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    axes[-1, 0].set_xlabel("step")
    fig.suptitle(os.path.basename(os.path.normpath(run_dir)))
    fig.tight_layout()
    output = output or os.path.join(run_dir, "metrics.png")
    tmp = output + ".tmp.png"  # rename: a viewer never sees a half-written image
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, output)
    return output


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m utils.plot_metrics", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--output", help="PNG path (default: <run_dir>/metrics.png)")
    ap.add_argument("--watch", action="store_true", help="redraw whenever metrics.jsonl changes (Ctrl-C stops)")
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between checks with --watch")
    args = ap.parse_args(argv)
    try:
        with exit_on_bad_input():
            print(f"wrote {plot(args.run_dir, args.output)}")
            seen = os.path.getmtime(os.path.join(args.run_dir, "metrics.jsonl"))
            while args.watch:
                time.sleep(args.interval)
                mtime = os.path.getmtime(os.path.join(args.run_dir, "metrics.jsonl"))
                if mtime != seen:
                    seen = mtime
                    print(f"wrote {plot(args.run_dir, args.output)}")
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
