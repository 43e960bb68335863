"""Tournament search: named variants trained in elimination rounds, most of the budget going to the best.

    python -m utils.tournament examples/tournament.yaml          # rerun the same command to resume after a kill
    python -m utils.tournament examples/tournament.yaml --stop-after 1

Round 1 trains every variant for its step budget; each later round resumes the survivors of the round before
from their checkpoints (pretrain.py resume=, an exact continuation) for that round's steps more. After every
round the `keep` best by `metric` (mode min or max) go on. Each training run is a pretrain.py process (under
`launcher`, e.g. torchrun, when given) in <output_dir>/runs/<variant>, all logged to one W&B group.

The state (the metric of each variant at the end of each round, who was eliminated when) is written atomically
to <output_dir>/tournament.json after every run, so a killed tournament rerun with the same command retrains
nothing that finished: a finished round is read back, a run killed mid-round resumes from its last checkpoint.
Outputs, rewritten after every round: bracket.md and bracket.csv (variant, parameters, compute per step, the
metric at the end of each round, the round it was eliminated in) and bracket.png (the metric against steps for
every variant, from each run's metrics.jsonl).

Why a script and not a Hydra entry: a tournament drives many pretrain.py runs, each composed by Hydra from its
own overrides (and resumed from its own saved config); its own spec is a short list of those override lists and
rounds, which a YAML file states directly, and every run being its own process lets each one use torchrun.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from utils.checkpoint import run_steps
from utils.files import atomic_write
from utils.plot_metrics import read_metrics
from utils.sweep_summary import SUMMARY_FILE, fmt, markdown_table, to_csv

PRETRAIN = Path(__file__).resolve().parent.parent / "pretrain.py"
STATE_FILE = "tournament.json"
SPEC_KEYS = {"name", "output_dir", "config_name", "overrides", "variants", "rounds", "metric", "mode", "launcher",
             "nproc", "wandb_group"}


# ---------------------------------------------------------------- the spec

@dataclass
class Round:
    steps: int  # trained in this round
    keep: int | None  # survivors; None in the last round


@dataclass
class Spec:
    name: str
    output_dir: str
    variants: dict[str, list[str]]  # name -> pretrain.py overrides
    rounds: list[Round]
    metric: str
    mode: str = "min"
    config_name: str = "cfg_pretrain"
    overrides: list[str] = field(default_factory=list)  # for every variant
    launcher: list[str] = field(default_factory=list)  # prefix of `pretrain.py ...`; empty: this Python
    wandb_group: str = ""

    def targets(self) -> list[int]:
        """The step every survivor of round r has reached at its end."""
        return [sum(r.steps for r in self.rounds[:k + 1]) for k in range(len(self.rounds))]

    def fingerprint(self) -> str:
        """What a state file must have been written for (the launcher and the W&B group may change)."""
        key = [self.config_name, self.overrides, self.variants, [vars(r) for r in self.rounds], self.metric, self.mode]
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def load_spec(path: str, output_dir: str | None = None) -> Spec:
    """The tournament file, checked: one clear error naming the file and the key for anything wrong."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such tournament file")
    with open(path) as f:
        try:
            raw = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of name, variants, rounds, metric, ...")
    if unknown := set(raw) - SPEC_KEYS:
        raise ValueError(f"{path}: unknown key(s) {sorted(unknown)}; known: {sorted(SPEC_KEYS)}")

    def strings(value, key: str) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
            raise ValueError(f"{path}: {key} must be a list of pretrain.py overrides (key=value), got {value!r}")
        return [str(v) for v in value]

    variants = raw.get("variants")
    if not isinstance(variants, dict) or len(variants) < 2:
        raise ValueError(f"{path}: variants must map at least two names to override lists")
    variants = {str(name): strings(v, f"variants.{name}") for name, v in variants.items()}
    rounds_raw = raw.get("rounds")
    if not isinstance(rounds_raw, list) or not rounds_raw:
        raise ValueError(f"{path}: rounds must be a list of {{steps, keep}}")
    rounds, alive = [], len(variants)
    for k, r in enumerate(rounds_raw, start=1):
        if not isinstance(r, dict) or set(r) - {"steps", "keep"} or not isinstance(r.get("steps"), int) \
                or r["steps"] < 1:
            raise ValueError(f"{path}: rounds[{k - 1}] must be {{steps: N >= 1, keep: M}}, got {r!r}")
        keep = r.get("keep")
        last = k == len(rounds_raw)
        if last and keep is not None:
            raise ValueError(f"{path}: rounds[{k - 1}] is the last round: no keep (it ranks the finalists)")
        if not last and (not isinstance(keep, int) or not 1 <= keep < alive):
            raise ValueError(f"{path}: rounds[{k - 1}].keep must be between 1 and {alive - 1} (the {alive} "
                             f"variants it starts with, less one), got {keep!r}")
        rounds.append(Round(r["steps"], keep))
        alive = keep or alive
    if not isinstance(raw.get("metric"), str):
        raise ValueError(f"{path}: metric must name a logged evaluation metric, e.g. test/loss")
    if raw.get("mode", "min") not in ("min", "max"):
        raise ValueError(f"{path}: mode must be min (losses) or max (accuracies), got {raw['mode']!r}")
    launcher = raw.get("launcher")
    if launcher is not None and raw.get("nproc") is not None:
        raise ValueError(f"{path}: give launcher or nproc, not both")
    if raw.get("nproc") is not None:
        if not isinstance(raw["nproc"], int) or raw["nproc"] < 1:
            raise ValueError(f"{path}: nproc must be a number of processes >= 1, got {raw['nproc']!r}")
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={raw['nproc']}"]
    elif isinstance(launcher, str):
        launcher = shlex.split(launcher)
    name = str(raw.get("name") or Path(path).stem)
    return Spec(name=name, output_dir=output_dir or str(raw.get("output_dir") or f"checkpoints/tournaments/{name}"),
                variants=variants, rounds=rounds, metric=raw["metric"], mode=raw.get("mode", "min"),
                config_name=str(raw.get("config_name", "cfg_pretrain")),
                overrides=strings(raw.get("overrides"), "overrides"),
                launcher=strings(launcher, "launcher"), wandb_group=str(raw.get("wandb_group") or name))


# ---------------------------------------------------------------- the state

def load_state(spec: Spec) -> dict[str, Any]:
    path = Path(spec.output_dir) / STATE_FILE
    if not path.exists():
        return {"fingerprint": spec.fingerprint(), "variants": {v: {"metrics": {}, "eliminated_in": None}
                                                                for v in spec.variants}}
    state = json.loads(path.read_text())
    if state.get("fingerprint") != spec.fingerprint():
        raise ValueError(f"{path} was written for another tournament (its variants, rounds, overrides or metric "
                         "differ): give another output_dir, or delete that directory to start again")
    return state


def save_state(spec: Spec, state: dict[str, Any]) -> None:
    atomic_write(Path(spec.output_dir) / STATE_FILE, lambda f: f.write(json.dumps(state, indent=1).encode()))


def ranked(names: list[str], metrics: dict[str, float], mode: str) -> list[str]:
    """Best first; a missing or NaN metric ranks last; ties keep the spec's order."""
    def key(name: str) -> float:
        value = metrics.get(name)
        if value is None or math.isnan(value):
            return math.inf
        return value if mode == "min" else -value
    return sorted(names, key=key)


# ---------------------------------------------------------------- runs

def run_dir(spec: Spec, variant: str) -> Path:
    return Path(spec.output_dir) / "runs" / variant


def command(spec: Spec, variant: str, target: int, resume: bool) -> list[str]:
    """The pretrain.py command line that trains `variant` to step `target` (from scratch, or resumed)."""
    where = ["checkpoint_dir=" + spec.output_dir, "project_name=runs", f"run_name={variant}"]
    run = [*where, *spec.overrides, *spec.variants[variant], "eval_at_end=true"] if not resume else \
        [f"resume={run_dir(spec, variant)}"]
    launcher = spec.launcher or [sys.executable]
    return [*launcher, str(PRETRAIN), "--config-name", spec.config_name, *run, f"max_steps={target}",
            f"logger.group={spec.wandb_group}"]


def metric_at(spec: Spec, variant: str, step: int) -> float | None:
    """The run's `metric` logged at `step` (None when it was not)."""
    path = run_dir(spec, variant) / "metrics.jsonl"
    if not path.exists():
        return None
    series, _ = read_metrics(str(path))
    steps, values = series.get(spec.metric, ([], []))
    return values[steps.index(step)] if step in steps else None


def train(spec: Spec, variant: str, target: int, log: Path) -> float:
    """Train `variant` to step `target` (resuming its last checkpoint when it has one) and return its metric there."""
    directory = run_dir(spec, variant)
    steps = [s for s, _ in run_steps(str(directory))] if directory.is_dir() else []
    if steps and steps[-1] == target and (value := metric_at(spec, variant, target)) is not None:
        return value  # it finished before the state was saved
    if directory.exists() and not steps:
        shutil.rmtree(directory)  # killed before its first checkpoint: nothing to resume, start it again
    cmd = command(spec, variant, target, resume=bool(steps))
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log, "w") as out:
        out.write(shlex.join(cmd) + "\n")
        out.flush()
        code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"}).returncode
    if code != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-5:])
        raise RuntimeError(f"variant {variant}: pretrain.py exited with status {code} (log {log}):\n{tail}")
    reached = [s for s, _ in run_steps(str(directory))]
    if not reached or reached[-1] != target:
        raise ValueError(f"variant {variant} stopped at step {reached[-1] if reached else 0}, not {target}: its "
                         "schedule (epochs) ends before the tournament's budget; raise epochs in the overrides")
    value = metric_at(spec, variant, target)
    if value is None:
        raise ValueError(f"variant {variant}: no {spec.metric} logged at step {target} in "
                         f"{directory / 'metrics.jsonl'}; choose a metric its evaluation logs (e.g. test/loss)")
    print(f"  {variant}: {spec.metric} {value:.4f} at step {target} ({time.perf_counter() - started:.0f} s)",
          flush=True)
    return value


def run_tournament(spec: Spec, stop_after: int | None = None) -> dict[str, Any]:
    """Play the rounds not yet played (at most through round `stop_after`); returns the state."""
    Path(spec.output_dir).mkdir(parents=True, exist_ok=True)
    state = load_state(spec)
    save_state(spec, state)
    variants = state["variants"]
    for k, (rnd, target) in enumerate(zip(spec.rounds, spec.targets()), start=1):
        if stop_after is not None and k > stop_after:
            break
        alive = [v for v in spec.variants if variants[v]["eliminated_in"] is None or variants[v]["eliminated_in"] >= k]
        todo = [v for v in alive if str(k) not in variants[v]["metrics"]]
        print(f"round {k}: {', '.join(alive)} to step {target}" + ("" if todo else " (done before)"), flush=True)
        for variant in todo:
            variants[variant]["metrics"][str(k)] = train(spec, variant, target,
                                                         Path(spec.output_dir) / "logs" / f"{variant}_round{k}.log")
            save_state(spec, state)
        if rnd.keep is not None and all(variants[v]["eliminated_in"] is None for v in alive):
            order = ranked(alive, {v: variants[v]["metrics"][str(k)] for v in alive}, spec.mode)
            for variant in order[rnd.keep:]:
                variants[variant]["eliminated_in"] = k
            save_state(spec, state)
            print(f"round {k}: {', '.join(order[:rnd.keep])} go on; {', '.join(order[rnd.keep:])} out", flush=True)
        write_outputs(spec, state)
    return state


# ---------------------------------------------------------------- outputs

def compute_per_step(summary: dict[str, Any]) -> tuple[int | None, float | None]:
    """(network passes per training step, estimated GFLOP per training step) from a run's summary.json:
    2 x parameters x tokens per forward pass of the network, and 4 x that for the backward of the passes with
    gradient (TRM: the last of its H cycles; the transformer: its one pass). Attention scores are not counted, nor
    the ablation options (H_layers, one_step_gradient): an estimate for the plain TRM and transformer."""
    passes, cfg = summary.get("passes_per_act_step"), summary.get("config", {})
    seq_len = summary.get("seq_len") or cfg.get("dataset", {}).get("seq_len")
    if passes is None or not seq_len:
        return passes, None
    arch = cfg.get("arch", {})
    with_grad = passes / arch.get("H_cycles", 1) if arch.get("name") == "trm" else passes
    tokens = cfg["global_batch_size"] * seq_len
    return passes, (2 * passes + 4 * with_grad) * summary["parameters"] * tokens / 1e9


def bracket_rows(spec: Spec, state: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per variant, the winner first, then by the round reached and the metric there."""
    rows = []
    for variant in spec.variants:
        entry = state["variants"][variant]
        summary_path = run_dir(spec, variant) / SUMMARY_FILE
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        passes, gflop = compute_per_step(summary)
        row = {"variant": variant, "parameters": summary.get("parameters"), "passes_per_step": passes,
               "gflop_per_step": gflop}
        for k, target in enumerate(spec.targets(), start=1):
            row[f"round {k} ({target} steps)"] = entry["metrics"].get(str(k))
        row["eliminated_in"] = entry["eliminated_in"]
        rows.append(row)
    played = {k for v in state["variants"].values() for k in v["metrics"]}
    last = max((int(k) for k in played), default=0)

    def order(row):
        reached = max((int(k) for k in state["variants"][row["variant"]]["metrics"]), default=0)
        value = state["variants"][row["variant"]]["metrics"].get(str(reached))
        value = math.inf if value is None or math.isnan(value) else value if spec.mode == "min" else -value
        return -reached, value
    rows.sort(key=order)
    if last == len(spec.rounds) and rows:
        rows[0]["eliminated_in"] = "winner"
    return rows


def to_markdown(rows: list[dict[str, Any]], metric: str) -> str:
    header = list(rows[0])
    cells = [["-" if r[k] is None else fmt(r[k]) for k in header] for r in rows]
    return (f"{metric} at the end of each round; eliminated_in: the round after which the variant stopped\n\n"
            + markdown_table(header, cells) + "\n")


TRAIN_LOSS = "train/lm_loss"  # logged every log_interval steps: the dense curve beside the evaluations


def plot(spec: Spec, state: dict[str, Any], path: Path) -> None:
    """The metric against steps for every variant (each run's evaluations) and, below, its training loss; round
    ends as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    for k, variant in enumerate(spec.variants):
        metrics = run_dir(spec, variant) / "metrics.jsonl"
        if not metrics.exists():
            continue
        series = read_metrics(str(metrics))[0]
        out = state["variants"][variant]["eliminated_in"]
        for ax, key in zip(axes, (spec.metric, TRAIN_LOSS)):
            steps, values = series.get(key, ([], []))
            label = variant + (f" (out after round {out})" if out else "")
            ax.plot(steps, values, marker=".", color=f"C{k}", label=label)
    for ax, key in zip(axes, (spec.metric, TRAIN_LOSS)):
        for target in spec.targets():
            ax.axvline(target, color="grey", linestyle="--", linewidth=1)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[0].set_title(f"tournament {spec.name}")
    axes[0].legend(fontsize=8)
    axes[1].set_xlabel("step")
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def write_outputs(spec: Spec, state: dict[str, Any]) -> None:
    out = Path(spec.output_dir)
    rows = bracket_rows(spec, state)
    atomic_write(out / "bracket.csv", lambda f: f.write(to_csv(rows).encode()))
    atomic_write(out / "bracket.md", lambda f: f.write(to_markdown(rows, spec.metric).encode()))
    plot(spec, state, out / "bracket.png")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m utils.tournament", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("spec", help="the tournament file (examples/tournament.yaml)")
    ap.add_argument("--output-dir", help="where its runs and bracket go (default: the file's output_dir)")
    ap.add_argument("--stop-after", type=int, help="play at most this many rounds now (rerun to go on)")
    args = ap.parse_args(argv)
    try:
        spec = load_spec(args.spec, args.output_dir)
        run_tournament(spec, args.stop_after)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        sys.exit(f"error: {e}")
    print((Path(spec.output_dir) / "bracket.md").read_text(), end="")
    print(f"bracket: {spec.output_dir}/bracket.{{md,csv,png}}")


if __name__ == "__main__":
    main()
