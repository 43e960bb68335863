"""Time to a result: the README's default job (`python pretrain.py`) trained to its end in each compute setting,
timed from start to exit, with the test exact accuracy it reaches.

    python benchmarks/time_to_accuracy.py [--settings float32-eager bfloat16-eager bfloat16-compiled auto]
        [--out DIR] [-- extra pretrain.py overrides, e.g. epochs=10]

Each setting runs `pretrain.py` in its own process, one after another, into a fresh directory (the dataset is
built once first, outside the timing), with a fresh torch.compile cache, so compile time counts. The table
gives the wall time, the speed-up over float32 eager, the test exact accuracy at every evaluation and the
share of the wall time spent in evaluation (the `time/eval_s` the trainer logs).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {
    "float32-eager": ["arch.forward_dtype=float32", "compile=false"],
    "bfloat16-eager": ["arch.forward_dtype=bfloat16", "compile=false"],
    "bfloat16-compiled": ["arch.forward_dtype=bfloat16", "compile=true"],
    "auto": ["arch.forward_dtype=auto", "compile=auto"],
}


def pretrain(name: str, args: list[str], env: dict[str, str]) -> str:
    """Run pretrain.py with `args`; its output. A failure ends the benchmark: the output's tail, then one line
    `error: <name>: ...` with its last line (pretrain.py's own error)."""
    done = subprocess.run([sys.executable, "pretrain.py", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        *context, last = done.stdout.strip().splitlines()[-20:] or [""]
        if context:
            print("\n".join(context), file=sys.stderr)
        sys.exit(f"error: {name}: pretrain.py failed (exit {done.returncode}): {last}")
    return done.stdout


def train(setting: str, out: Path, extra: list[str]) -> dict:
    """Run the job; returns wall seconds, the evaluations' (step, exact accuracy) and the evaluation seconds."""
    env = {**os.environ, "WANDB_MODE": "disabled", "TORCHINDUCTOR_CACHE_DIR": str(out / f"inductor-{setting}")}
    started = time.perf_counter()
    output = pretrain(setting, [*SETTINGS[setting], f"checkpoint_dir={out}", "project_name=tta",
                                f"run_name={setting}", "logger.mode=disabled", *extra], env)
    wall = time.perf_counter() - started
    records = [json.loads(line) for line in (out / "tta" / setting / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "test/exact_accuracy" in r]
    policy = next((line for line in output.splitlines() if line.startswith("policy:")), "")
    return {"wall": wall, "evals": [(r["step"], r["test/exact_accuracy"]) for r in evals],
            "eval_s": sum(r.get("time/eval_s", 0.0) for r in evals), "policy": policy}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--out", default=None, help="where the runs go (default: a temporary directory)")
    ap.add_argument("extra", nargs="*", help="pretrain.py overrides for every setting (after --)")
    args = ap.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="tta-"))
    # build the default dataset once, outside the timing (one step, no evaluation)
    pretrain("building the data", ["max_steps=1", "eval_at_end=false", f"checkpoint_dir={out}", "project_name=tta",
                       "run_name=build", "logger.mode=disabled", *args.extra], {**os.environ, "WANDB_MODE": "disabled"})

    results = {}
    for setting in args.settings:
        results[setting] = r = train(setting, out, args.extra)
        print(f"{setting}: {r['wall']:.1f} s, test exact {r['evals'][-1][1]:.1%}  {r['policy']}", flush=True)

    base = results.get("float32-eager", {}).get("wall")
    steps = [step for step, _ in next(iter(results.values()))["evals"]]
    print(f"\n| setting | wall time | vs float32 eager | evaluation share | test exact at steps {', '.join(map(str, steps))} |")
    print("|---|---|---|---|---|")
    for setting, r in results.items():
        speedup = f"{base / r['wall']:.2f}x" if base else "-"
        accs = " / ".join(f"{acc:.1%}" for _, acc in r["evals"])
        print(f"| {setting} | {r['wall']:.0f} s | {speedup} | {r['eval_s'] / r['wall']:.0%} | {accs} |")
    print(f"\nruns in {out}")


if __name__ == "__main__":
    main()
