"""The tables and plots of docs/results.md, from the runs of examples/results.py (its `report` command).

The page's prose is written by hand; each generated block sits between `<!-- generated:NAME -->` and
`<!-- /generated:NAME -->` and is replaced whole. A block whose runs are missing says which command makes them.
"""
from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: works on machines without a display
import matplotlib.pyplot as plt  # noqa: E402

from examples.results import (ABLATIONS, CHAT_MODELS, CYCLES, FIGURES, LRS, MAX_ACT_STEPS, MODELS, PAGE, Job,
                              ablation_jobs, best_lr, chat_jobs, eval_file, final_jobs, pretrain_job,
                              recurs_at_test_time, trained_act_steps)
from tasks.synthetic import FAMILIES
from utils.sweep_summary import heat_map, markdown_table
from utils.tournament import compute_per_step

SETS = {"test": "test, 35-45 clues", "clues30-34": "30-34 clues", "clues25-29": "25-29 clues",
        "clues22-24": "22-24 clues", "hard-list": "hard list (--hard-list, e.g. top95)"}


def mean_sd(values: list[float], percent: bool = True, digits: int = 1) -> str:
    """'81.5 ± 2.1' over seeds (sample standard deviation), in percent."""
    if not values:
        return "-"
    scale = 100 if percent else 1
    if len(values) == 1:
        return f"{scale * values[0]:.{digits}f}"
    return f"{scale * statistics.mean(values):.{digits}f} ± {scale * statistics.stdev(values):.{digits}f}"


def load_evals(jobs: list[Job], act_steps: int) -> dict[str, list[dict]]:
    """Set name -> the scores of every job scored on it with `act_steps` ACT steps."""
    out = {}
    for name in SETS:
        files = [eval_file(j, name, act_steps) for j in jobs]
        if scores := [json.loads(f.read_text()) for f in files if f.exists()]:
            out[name] = scores
    return out


def finished(jobs: list[Job]) -> list[Job]:
    return [j for j in jobs if j.summary() is not None]


def seed_jobs(seeds: int, experiment: str = "recursion") -> dict[str, list[Job]]:
    """Per model, its finished runs at the chosen learning rate."""
    return {model: finished(jobs) for model, jobs in final_jobs(seeds, experiment).items()}


def budget(experiment: str) -> str:
    """What the experiment's runs cost: their count and their summed wall time."""
    walls = [json.loads(f.read_text())["wall_s"] for f in Job(experiment, "").run_dir.glob("*/summary.json")]
    return f"{len(walls)} training runs, {sum(walls) / 60:.0f} min of run time in all (summed over the runs)."


# ---------------------------------------------------------------- the blocks

def recursion_block(seeds: int, experiment: str = "recursion") -> str:
    rows, more_steps = [], []
    for model, jobs in seed_jobs(seeds, experiment).items():
        sweep = [Job(experiment, f"{model}-lr{lr:g}-s0").summary() for lr in LRS]
        if not jobs:
            rows.append([model, MODELS[model][1]] + ["-"] * 7)
            continue
        s = jobs[0].summary()
        layers = s["config"]["arch"]["L_layers"] * s["passes_per_act_step"]
        test = load_evals(jobs, trained_act_steps(jobs[0])).get("test", [])
        rows.append([
            model, MODELS[model][1], f"{s['parameters'] / 1e3:.0f}k", str(layers),
            " / ".join("-" if x is None else f"{100 * x['test']['test/exact_accuracy']:.1f}" for x in sweep),
            f"{best_lr(model, experiment):g}",
            mean_sd([t["exact_accuracy"] for t in test]) + f" (n={len(test)})",
            mean_sd([t["accuracy"] for t in test]),
            f"{statistics.mean(j.summary()['wall_s'] for j in jobs):.0f}",
        ])
        if experiment != "recursion" and (longer := load_evals(jobs, MAX_ACT_STEPS).get("test")):
            more_steps.append(f"{model} {mean_sd([t['exact_accuracy'] for t in longer])}% (n={len(longer)})")
    text = markdown_table(["run", "model", "parameters", "layer applications per ACT step",
                           "validation exact % at lr " + " / ".join(f"{lr:g}" for lr in LRS), "chosen lr",
                           "test exact %", "test token %", "wall s"], rows)
    if more_steps:  # (section 3 has these for the Sudoku models)
        text += f"\n\nTest exact accuracy with {MAX_ACT_STEPS} ACT steps: " + ", ".join(more_steps) + "."
    return text + "\n\n" + budget(experiment)


def ablations_block(seeds: int) -> str:
    """The TRM-MLP of section 1 and its ablations: test exact accuracy, and its difference to the TRM-MLP's."""
    variants = {"trm_mlp": ("the TRM-MLP of the table above", seed_jobs(seeds)["trm_mlp"])}
    for name, jobs in ablation_jobs(seeds).items():
        variants[name] = (ABLATIONS[name][1], finished(jobs))
    rows, baseline = [], None
    for name, (what, jobs) in variants.items():
        test = load_evals(jobs, trained_act_steps(jobs[0])).get("test", []) if jobs else []
        exact = [t["exact_accuracy"] for t in test]
        if not exact:
            rows.append([name, what] + ["-"] * 5)
            continue
        baseline = statistics.mean(exact) if name == "trm_mlp" else baseline
        delta = "-" if name == "trm_mlp" or baseline is None else f"{100 * (statistics.mean(exact) - baseline):+.1f}"
        rows.append([name, what, f"{jobs[0].summary()['parameters'] / 1e3:.0f}k", mean_sd(exact) + f" (n={len(exact)})",
                     delta, mean_sd([t["accuracy"] for t in test]),
                     f"{statistics.mean(j.summary()['wall_s'] for j in jobs):.0f}"])
    return markdown_table(["run", "change", "parameters", "test exact %", "vs TRM-MLP (points)", "test token %",
                           "wall s"], rows) + "\n\n" + budget("ablations")


def cycles_block(seeds: int) -> str:
    cells, rows = [], []
    for h, l in CYCLES:
        runs = [s for s in (Job("cycles", f"H{h}-L{l}-s{seed}").summary() for seed in range(seeds)) if s]
        if not runs:
            rows.append([str(h), str(l)] + ["-"] * 5)
            continue
        exact = [s["test"]["test/exact_accuracy"] for s in runs]
        passes = runs[0]["passes_per_act_step"]
        cells.append({"H_cycles": h, "L_cycles": l, "exact_accuracy": statistics.mean(exact),
                      "sd": statistics.stdev(exact) if len(exact) > 1 else 0.0, "passes_per_act_step": passes})
        rows.append([str(h), str(l), str(passes), str(4 * passes), mean_sd(exact) + f" (n={len(runs)})",
                     mean_sd([s["test"]["test/accuracy"] for s in runs]),
                     f"{statistics.mean(s['wall_s'] for s in runs):.0f}"])
    header = ["H_cycles", "L_cycles", "network passes per ACT step", "passes per test sample (4 ACT steps)",
              "test exact %", "test token %", "wall s"]
    text = markdown_table(header, rows) + "\n\n" + budget("cycles")
    if len(cells) >= 2:
        FIGURES.mkdir(parents=True, exist_ok=True)
        heat_map(cells, "exact_accuracy", str(FIGURES / "cycles_exact.png"),
                 "TRM-MLP test exact accuracy, mean over seeds")
        compute_plot(cells, FIGURES / "cycles_compute.png")
        text += "\n\n![exact accuracy over H_cycles x L_cycles](results/cycles_exact.png)" \
                "\n![exact accuracy against network passes](results/cycles_compute.png)"
    return text


def compute_plot(cells: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for c in cells:
        x = 4 * c["passes_per_act_step"]
        ax.errorbar(x, 100 * c["exact_accuracy"], yerr=100 * c["sd"], fmt="o", color="C0", capsize=3)
        ax.annotate(f"H{c['H_cycles']} L{c['L_cycles']}", (x, 100 * c["exact_accuracy"]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("network passes per test sample (4 ACT steps)")
    ax.set_ylabel("test exact accuracy, % (mean ± sd)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def test_time_evals(seeds: int) -> dict[str, dict[str, list[dict]]]:
    """TRM model -> set name -> its seeds' 16-step scores."""
    evals = {model: load_evals(jobs, MAX_ACT_STEPS) for model, jobs in seed_jobs(seeds).items()
             if jobs and recurs_at_test_time(jobs[0])}
    return {model: sets for model, sets in evals.items() if sets}


def test_time_block(seeds: int) -> str:
    evals = test_time_evals(seeds)
    rows = []
    for model, sets in evals.items():
        for name, runs in sets.items():
            at = lambda k: mean_sd([r[f"exact_accuracy@step{k}"] for r in runs])  # noqa: E731
            rows.append([model, SETS[name], f"{len(runs)}", at(1), at(4), at(8), at(16),
                         mean_sd([r["halt_step"] for r in runs], percent=False),
                         mean_sd([r["halt_exact_accuracy"] for r in runs])])
    if not rows:
        return "(not run yet: `python examples/results.py test_time`)"
    plot_act_steps(evals, FIGURES / "test_time.png")
    return markdown_table(["model", "puzzles", "seeds", "exact % after 1 ACT step", "4 (trained)", "8", "16",
                           "halting head stops at step", "exact % where it stops"], rows) + \
        "\n\n![exact accuracy against ACT steps at test time](results/test_time.png)"


def plot_act_steps(evals: dict[str, dict[str, list[dict]]], path: Path) -> None:
    FIGURES.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(evals), figsize=(5 * len(evals), 3.6), squeeze=False)
    for ax, (model, sets) in zip(axes[0], evals.items()):
        for i, (name, runs) in enumerate(sets.items()):
            ys = [100 * statistics.mean(r[f"exact_accuracy@step{k}"] for r in runs)
                  for k in range(1, MAX_ACT_STEPS + 1)]
            ax.plot(range(1, MAX_ACT_STEPS + 1), ys, marker="o", markersize=3, label=SETS[name], color=f"C{i}")
        ax.axvline(4, color="gray", linestyle="--", linewidth=1)
        ax.set_ylim(0, max(5.0, 1.08 * max(max(line.get_ydata()) for line in ax.get_lines())))
        ax.set_title(f"{model} (trained with 4 ACT steps)", fontsize=10)
        ax.set_xlabel("ACT steps at test time")
        ax.set_ylabel("exact accuracy, %")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def difficulty_block(seeds: int) -> str:
    rows = []
    names = []
    for model, jobs in seed_jobs(seeds).items():
        if not (jobs and (trained := load_evals(jobs, trained_act_steps(jobs[0])))):
            continue
        more = load_evals(jobs, MAX_ACT_STEPS) if recurs_at_test_time(jobs[0]) else {}
        names = names or list(trained)
        row = [model]
        for name in names:
            cell = mean_sd([e["exact_accuracy"] for e in trained.get(name, [])])
            if name in more:
                cell += f" / {mean_sd([e['exact_accuracy'] for e in more[name]])}"
            row.append(cell)
        rows.append(row)
    if not rows:
        return "(not run yet: `python examples/results.py test_time`)"
    return markdown_table(["model"] + [SETS[n] for n in names], rows)


def probe_mean(summary: dict, level: int) -> float | None:
    """Mean held-out accuracy over the families probed at `level` (test/probe/<family>_L<level>)."""
    values = [v for k, v in summary["test"].items() if k.startswith("test/probe/") and k.endswith(f"_L{level}")]
    return statistics.mean(values) if values else None


def chat_block(seeds: int) -> str:
    """Per variant: its size and compute, validation loss and mean held-out accuracy at levels 1 and 2; then the
    level-2 accuracy per family."""
    runs = {name: [s for s in (j.summary() for j in jobs) if s] for name, jobs in chat_jobs(seeds).items()}
    if not any(runs.values()):
        return "(not run yet: `python examples/results.py chat`)"
    rows, family_rows = [], {f: [f] for f in FAMILIES}
    for name, summaries in runs.items():
        model = name.removeprefix("stories_")
        description = CHAT_MODELS[model][1] + (", pretrained on the stories" if model != name else "")
        for f in FAMILIES:
            values = [s["test"][f"test/probe/{f}_L2"] for s in summaries if f"test/probe/{f}_L2" in s["test"]]
            family_rows[f].append(f"{100 * statistics.mean(values):.0f}" if values else "-")
        if not summaries:
            rows.append([name, description] + ["-"] * 7)
            continue
        s, pretrain = summaries[0], [pretrain_job(model, k).summary() for k in range(seeds)] if model != name else []
        passes, gflop = compute_per_step(s)
        wall = f"{statistics.mean(x['wall_s'] for x in summaries):.0f}"
        if pretrain := [x for x in pretrain if x]:
            wall += f" + {statistics.mean(x['wall_s'] for x in pretrain):.0f}"
        at = lambda level: [m for m in (probe_mean(x, level) for x in summaries) if m is not None]  # noqa: E731
        rows.append([name, description, f"{s['parameters'] / 1e3:.0f}k",
                     f"{passes * s['config']['arch']['L_layers']} ({passes} x {s['config']['arch']['L_layers']})",
                     "-" if gflop is None else f"{gflop:.1f}",
                     mean_sd([x["test"]["test/loss"] for x in summaries], percent=False, digits=3),
                     mean_sd(at(1)) + f" (n={len(summaries)})", mean_sd(at(2)), wall])
    header = ["run", "model", "parameters", "layer applications per token (passes x layers)", "GFLOP per step",
              "validation loss", "held-out % level 1", "held-out % level 2", "wall s (+ pretraining)"]
    return markdown_table(header, rows) + \
        "\n\nHeld-out accuracy (%) per family at level 2, mean over seeds:\n\n" + \
        markdown_table(["family", *runs], list(family_rows.values())) + "\n\n" + budget("chat")


BLOCKS = {"recursion": recursion_block, "ablations": ablations_block,
          "maze": lambda seeds: recursion_block(seeds, "maze"), "cycles": cycles_block, "test_time": test_time_block,
          "difficulty": difficulty_block, "chat": chat_block}


def write_report(seeds: int) -> None:
    page = PAGE.read_text()
    for name, block in BLOCKS.items():
        start, end = f"<!-- generated:{name} -->", f"<!-- /generated:{name} -->"
        if start not in page:
            print(f"warning: {PAGE} has no {start} block", file=sys.stderr)
            continue
        page = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: f"{start}\n{block(seeds)}\n{end}", page,
                      flags=re.DOTALL)
    PAGE.write_text(page)
    print(f"wrote {PAGE}")
