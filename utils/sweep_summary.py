"""Sweep summaries: each run writes <run_dir>/summary.json at its end; this module collects a sweep's runs into
a CSV, a markdown table and a heat map of one metric over H_cycles x L_cycles.

    python pretrain.py -m arch.H_cycles=1,2,3 arch.L_cycles=2,4,6     # a Hydra sweep, one directory per run
    python -m utils.sweep_summary checkpoints/multirun/<date-time> [--metric exact_accuracy] [--out DIR]
"""
from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from utils.cli import exit_on_bad_input
from utils.files import atomic_write, make_dir

SUMMARY_FILE = "summary.json"
RECURSION_KEYS = ("arch.H_cycles", "arch.L_cycles")  # always shown: the heat map's axes
METRICS = ("exact_accuracy", "accuracy", "lm_loss", "loss", "perplexity")  # shown when the runs report them


# ---------------------------------------------------------------- written by each run (pretrain.py)

@torch.no_grad()
def network_passes_per_act_step(model, batch: dict[str, torch.Tensor], device: torch.device) -> int:
    """How many times one ACT step (in evaluation) runs the network, counted on one sample: TRM runs its
    blocks H_cycles * (L_cycles + 1) times (counting H_level's runs where z_H has its own), the transformer once."""
    calls = 0

    def count(*_):
        nonlocal calls
        calls += 1

    inner = model.model.inner
    handles = [level.register_forward_hook(count) for level in (inner.L_level, inner.H_level) if level is not None]
    was_training = model.training
    model.eval()
    try:
        one = {k: v[:1].to(device) for k, v in batch.items()}
        model(model.initial_carry(one), one)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return calls


def write_run_summary(run_dir: str, cfg: DictConfig, results: dict[str, float], train_metrics: dict[str, float],
                      **compute: float) -> None:
    """<run_dir>/summary.json: the resolved config, the final test and training metrics and the compute."""
    summary = {"config": OmegaConf.to_container(cfg, resolve=True), "test": results, "train": train_metrics,
               **compute}
    atomic_write(Path(run_dir) / SUMMARY_FILE, lambda f: f.write(json.dumps(summary, indent=1).encode()))


# ---------------------------------------------------------------- collecting a sweep

def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for k, v in tree.items():
        flat.update(flatten(v, f"{prefix}{k}."))
    return {k.rstrip("."): v for k, v in flat.items()}


def load_runs(sweep_dir: str) -> list[tuple[str, dict]]:
    """(run name, summary) of every finished run below `sweep_dir`; unfinished runs are reported on stderr."""
    if not os.path.isdir(sweep_dir):
        raise FileNotFoundError(f"{sweep_dir}: no such directory")
    files = sorted(glob.glob(os.path.join(sweep_dir, "**", SUMMARY_FILE), recursive=True))
    runs = []
    for file in files:
        try:
            with open(file) as f:
                runs.append((os.path.relpath(os.path.dirname(file), sweep_dir), json.load(f)))
        except json.JSONDecodeError as e:
            raise ValueError(f"{file}: not valid JSON ({e})") from e
    finished = {name.split(os.sep)[0] for name, _ in runs}
    unfinished = sorted(d for d in os.listdir(sweep_dir)
                        if os.path.isdir(os.path.join(sweep_dir, d)) and d not in finished)
    if unfinished:
        print(f"warning: {len(unfinished)} run(s) without {SUMMARY_FILE} (unfinished or failed), left out: "
              f"{', '.join(unfinished)}", file=sys.stderr)
    if not runs:
        raise ValueError(f"{sweep_dir}: no finished runs (no {SUMMARY_FILE} below it); start a sweep with "
                         "python pretrain.py -m arch.H_cycles=1,2 ...")
    return runs


def swept_keys(configs: list[dict[str, Any]]) -> list[str]:
    """H_cycles, L_cycles, then every config key whose value differs between the runs."""
    keys = sorted(set().union(*configs))
    varying = [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]
    return [k for k in RECURSION_KEYS if k in keys] + [k for k in varying if k not in RECURSION_KEYS]


def summary_rows(runs: list[tuple[str, dict]]) -> list[dict[str, Any]]:
    """One row per run: the swept values, the final test metrics and the compute."""
    configs = [flatten(s["config"]) for _, s in runs]
    keys = swept_keys(configs)
    metrics = [m for m in METRICS if any(f"test/{m}" in s["test"] for _, s in runs)]
    rows = []
    for (name, s), config in zip(runs, configs):
        test_steps = s["test"].get("test/steps")
        row = {"run": name, **{k.removeprefix("arch."): config.get(k) for k in keys}}
        row.update({m: s["test"].get(f"test/{m}") for m in metrics})
        row.update({
            "parameters": s["parameters"],
            "passes_per_act_step": s["passes_per_act_step"],
            "act_steps_test": test_steps,  # evaluation runs every ACT step
            "act_steps_train": s["train"].get("train/steps"),  # mean steps per sample at the end of training
            "passes_per_sample_test": s["passes_per_act_step"] * test_steps if test_steps is not None else None,
            "train_steps": s["steps"],
            "wall_s": s["wall_s"],
        })
        rows.append(row)

    def order(row):  # by swept values, numbers numerically
        return [(0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v)) for v in list(row.values())[1:len(keys) + 1]]
    return sorted(rows, key=order)


# ---------------------------------------------------------------- outputs

def fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.1f}" if abs(v) >= 100 else f"{v:.4g}" if abs(v) >= 1 else f"{v:.4f}"
    return str(v)


def to_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table of cells already formatted (no trailing newline)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def to_markdown(rows: list[dict[str, Any]]) -> str:
    """The table without the run directories (in the CSV): the swept columns name the runs."""
    header = [k for k in rows[0] if k != "run"]
    return markdown_table(header, [[fmt(r[k]) for k in header] for r in rows]) + "\n"


def heat_map(rows: list[dict[str, Any]], metric: str, path: str, title: str) -> None:
    """The metric over H_cycles (rows) x L_cycles (columns); each cell also shows the passes per ACT step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hs = sorted({r["H_cycles"] for r in rows})
    ls = sorted({r["L_cycles"] for r in rows})
    grid = [[math.nan] * len(ls) for _ in hs]
    passes = [[None] * len(ls) for _ in hs]
    for r in rows:
        i, j = hs.index(r["H_cycles"]), ls.index(r["L_cycles"])
        grid[i][j] = math.nan if r[metric] is None else r[metric]
        passes[i][j] = r["passes_per_act_step"]
    fig, ax = plt.subplots(figsize=(1.4 * len(ls) + 2.4, 1.1 * len(hs) + 1.6))
    image = ax.imshow(grid, cmap="viridis", origin="lower", aspect="auto")
    fig.colorbar(image, ax=ax, label=metric)
    ax.set_xticks(range(len(ls)), [str(v) for v in ls])
    ax.set_yticks(range(len(hs)), [str(v) for v in hs])
    ax.set_xlabel("L_cycles")
    ax.set_ylabel("H_cycles")
    ax.set_title(title, fontsize=10)
    finite = [v for row in grid for v in row if not math.isnan(v)]
    middle = (min(finite) + max(finite)) / 2 if finite else 0.0
    for i in range(len(hs)):
        for j in range(len(ls)):
            if not math.isnan(grid[i][j]):
                ax.text(j, i, f"{grid[i][j]:.3f}\n{passes[i][j]} passes", ha="center", va="center", fontsize=8,
                        color="black" if grid[i][j] > middle else "white")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summarize(sweep_dir: str, metric: str | None = None, out_dir: str | None = None) -> list[dict[str, Any]]:
    """Write sweep_summary.csv, sweep_summary.md and sweep_<metric>.png for a sweep directory; returns the rows."""
    rows = summary_rows(load_runs(sweep_dir))
    metric = (metric or next((m for m in ("exact_accuracy", "accuracy") if m in rows[0]), "")).removeprefix("test/")
    if metric not in rows[0] or metric in ("run", "H_cycles", "L_cycles"):
        raise ValueError(f"--metric {metric!r}: not a column of the summary; choose one of {list(rows[0])[1:]}")
    out = Path(out_dir or sweep_dir)
    make_dir(out)
    atomic_write(out / "sweep_summary.csv", lambda f: f.write(to_csv(rows).encode()))
    atomic_write(out / "sweep_summary.md", lambda f: f.write(to_markdown(rows).encode()))
    cells = {(r["H_cycles"], r["L_cycles"]) for r in rows}
    if len(cells) < len(rows):
        print("warning: several runs share an (H_cycles, L_cycles) cell (another key was swept too): no heat map",
              file=sys.stderr)
    else:
        heat_map(rows, metric, str(out / f"sweep_{metric}.png"), f"test {metric} ({os.path.basename(os.path.normpath(sweep_dir))})")
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m utils.sweep_summary",
                                 description="Collect a sweep's runs into a CSV, a markdown table and a heat map.")
    ap.add_argument("sweep_dir", help="the sweep directory (hydra.sweep.dir, e.g. checkpoints/multirun/<date-time>)")
    ap.add_argument("--metric", default=None, help="column drawn in the heat map (default: exact_accuracy, "
                                                   "or accuracy for chat runs)")
    ap.add_argument("--out", default=None, help="output directory (default: the sweep directory)")
    args = ap.parse_args(argv)
    with exit_on_bad_input():
        rows = summarize(args.sweep_dir, args.metric, args.out)
    print(to_markdown(rows), end="")
    print(f"{len(rows)} runs -> {args.out or args.sweep_dir}/sweep_summary.{{csv,md}} and the heat map")


if __name__ == "__main__":
    main()
