"""The experiments of the results page (docs/results.md): every table there is written by this script.

    python examples/results.py recursion   # 1. recursion vs depth vs width, with a learning-rate sweep each
    python examples/results.py ablations   # 1. the paper's ablations of the TRM-MLP (HRM-style, single z, EMA)
    python examples/results.py maze        # 1. section 1's MLP models on 9x9 mazes, with the same sweep
    python examples/results.py cycles      # 2. H_cycles x L_cycles of the TRM-MLP
    python examples/results.py test_time   # 3-4. more ACT steps at test time, harder puzzles (section 1's models)
    python examples/results.py test_time --hard-list top95.txt   # also a list of hard puzzles you have
    python examples/results.py chat        # 5. trm_chat vs transformer_chat on the synthetic tasks, stories first
    python examples/results.py report      # rewrite the generated tables and plots of docs/results.md
    python examples/results.py all         # every experiment, then the report
    python examples/results.py verify --run cycles/H1-L1-s0   # train a finished run again and compare, bit for bit

Each training run is a `pretrain.py` process under checkpoints/results-<experiment>/<run>, logging to W&B (offline
unless a key is configured) in the group results-<experiment>. The script is resumable: a finished run
(summary.json) or evaluation (eval_<set>_act<K>.json) is skipped, an interrupted run continues from its last
checkpoint, so rerunning a command after a crash (or with more --seeds) only does what is missing. Runs are found by
name, and a run started with other settings (a budget changed here) is refused, naming what to remove. Runs go
--jobs at a time with --threads threads each (two one-thread runs train ~20% more steps per second than one
two-thread run on a 2-core CPU; a run's result does not depend on either).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dataset.build_maze_dataset import MazeBuildConfig, build as build_maze  # noqa: E402
from dataset.build_sudoku_dataset import SudokuBuildConfig, build, read_list_file  # noqa: E402
from utils.cli import exit_on_bad_input  # noqa: E402

PAGE = ROOT / "docs" / "results.md"
FIGURES = ROOT / "docs" / "results"
SUDOKU = OmegaConf.load(ROOT / "config" / "dataset" / "sudoku.yaml").dataset  # the default job's data and builder
TRAIN_DATA = SUDOKU.build_path
# held-out puzzle sets under HELD_OUT: name -> (clues, seed of the generator); 200 test puzzles each, no training rows
HELD_OUT = "data/results"
EVAL_SETS = {"valid": ((35, 45), 101), "clues30-34": ((30, 34), 102), "clues25-29": ((25, 29), 103),
             "clues22-24": ((22, 24), 104)}
LRS = (1e-3, 3e-3, 1e-2)
MAX_ACT_STEPS = 16  # test-time recursion: evaluate up to this many ACT steps

# section 1: name -> (overrides, what it is); TRMs run 2 layers H_cycles(L_cycles + 1) = 6 times per ACT step
MODELS = {
    "trm_mlp": (["arch=trm_mlp"], "TRM-MLP, 2 layers, H 2 x L 2, up to 4 ACT steps"),
    "transformer_mlp_2L": (["arch=transformer", "arch.mlp_t=true", "arch.pos_encodings=none", "arch.L_layers=2"],
                           "transformer, MLP mixer, 2 layers (the TRM's parameters), 1 pass"),
    "transformer_mlp_12L": (["arch=transformer", "arch.mlp_t=true", "arch.pos_encodings=none", "arch.L_layers=12"],
                            "transformer, MLP mixer, 12 layers (the TRM's layer applications per ACT step)"),
    "trm_att": (["arch=trm"], "TRM, attention + RoPE, 2 layers, H 2 x L 2, up to 4 ACT steps"),
    "transformer_att_2L": (["arch=transformer", "arch.L_layers=2"], "transformer, attention, 2 layers, 1 pass"),
    "transformer_att_12L": (["arch=transformer", "arch.L_layers=12"], "transformer, attention, 12 layers"),
}
# section 1, the paper's ablations (its Table 1) of the TRM-MLP, at the rate chosen for it: name -> (overrides, what)
ABLATIONS = {
    "separate_fH": (["arch.H_layers=2"], "z_H updated by its own 2-layer network (HRM's f_H and f_L)"),
    "one_step_gradient": (["arch.one_step_gradient=true"], "gradient through the last z_L and z_H updates only (HRM)"),
    "hrm_style": (["arch.H_layers=2", "arch.one_step_gradient=true"], "both: HRM's two networks and 1-step gradient"),
    "single_z": (["arch.single_z=true"], "one latent for the reasoning and the answer"),
    "ema": (["ema=true", "ema_rate=0.99"], "an EMA of the weights, rate 0.99 (the paper: 0.999 over ~60x the steps)"),
}
# section 1 on mazes: the MLP models on generated MAZE_SIZE x MAZE_SIZE mazes (the paper's 30x30, 900 tokens, is
# beyond this CPU budget), each with the learning-rate sweep, chosen on held-out mazes
MAZE_SIZE, MAZE_MIN_PATH = 9, 12  # 5 x 5 maze cells (11x11 at 18 steps: 0% exact for the TRM-MLP at this budget)
MAZE_DATA, MAZE_VALID = f"data/results/maze-{MAZE_SIZE}x{MAZE_SIZE}", f"{HELD_OUT}/maze-valid"
MAZE_BUILD = {**OmegaConf.to_container(OmegaConf.load(ROOT / "config" / "dataset" / "maze.yaml").dataset.build),
              "size": MAZE_SIZE, "min_path_length": MAZE_MIN_PATH}
# the experiments with a learning-rate sweep: name -> (models, the data overrides of every run, which include the
# held-out set the rate is chosen on; the report scores the test split)
SWEPT = {
    "recursion": (tuple(MODELS), [f"data_paths_test=[{HELD_OUT}/valid]"]),
    "maze": (("trm_mlp", "transformer_mlp_2L", "transformer_mlp_12L"),
             ["dataset=maze", f"dataset.build_path={MAZE_DATA}", f"dataset.build.size={MAZE_SIZE}",
              f"dataset.build.min_path_length={MAZE_MIN_PATH}", f"data_paths_test=[{MAZE_VALID}]"]),
}
CYCLES = [(h, l) for h in (1, 2, 3) for l in (1, 2, 4)]

# section 5: chat models on the synthetic task suite (byte tokenizer), levels 1-2, all at width 64
TASKS, STORIES = "data/tasks", "data/results/stories"
CHAT_STEPS = 1000  # training (or fine-tuning) steps of every chat run; lower it to fit the CPU time
PRETRAIN_STEPS = 600  # steps on the stories before fine-tuning
CHAT_MODELS = {  # the TRM applies its 2 layers H_cycles(L_cycles + 1) = 4 times per token: 8 layer applications
    "transformer_2L": (["arch=transformer_chat", "arch.L_layers=2"], "transformer_chat, 2 layers, 1 pass"),
    "trm_H2L1": (["arch=trm_chat", "arch.L_layers=2", "arch.H_cycles=2", "arch.L_cycles=1"],
                 "trm_chat, 2 layers, H 2 x L 1 (the transformer's parameters)"),
    "transformer_8L": (["arch=transformer_chat", "arch.L_layers=8"],
                       "transformer_chat, 8 layers (the TRM's layer applications per token)"),
}
STORIES_MODELS = ("transformer_2L", "trm_H2L1")  # also pretrained on the stories, then fine-tuned as the others
# constant lr after warmup, so `epochs` (only a bound here) does not shape the schedule; max_steps ends each run,
# with its one evaluation (eval_at_end)
CHAT_COMMON = ["--config-name=cfg_chat", "arch.hidden_size=64", "global_batch_size=8", "lr=1e-3", "lr_min_ratio=1.0",
               "lr_warmup_steps=20", "epochs=50", "eval_interval=50"]
CHAT_TASKS = ["dataset=tasks", "dataset.stages=[{name: levels1-2, difficulty: 2}]", "dataset.eval_prompts=[]",
              "dataset.probes=[data/tasks/probes/chat/level1,data/tasks/probes/chat/level2]", f"max_steps={CHAT_STEPS}"]
CHAT_STORIES = ["dataset=text", f"data_paths=[{STORIES}]", "dataset.eval_prompts=[]", f"max_steps={PRETRAIN_STEPS}"]
# defaults the page's runs were trained with that have changed since (the default job now keeps an EMA): a run
# gets them unless its own overrides set the key, so its recorded overrides still train it the same way (the ema
# ablation, which sets its own, was retrained when the EMA became bias-corrected)
PAGE_DEFAULTS = ["ema=false"]


@dataclass
class Job:
    experiment: str
    name: str
    overrides: list[str] = field(default_factory=list)

    @property
    def run_dir(self) -> Path:
        return ROOT / "checkpoints" / f"results-{self.experiment}" / self.name

    def summary(self) -> dict | None:
        path = self.run_dir / "summary.json"
        return json.loads(path.read_text()) if path.exists() else None


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def run_process(args: list[str], log_file: Path, threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with open(log_file, "a") as out:
        code = subprocess.call([sys.executable, *args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    if code != 0:
        raise RuntimeError(f"{' '.join(args[:3])} ... failed (exit {code}); see {log_file}")


def check_settings(job: Job) -> None:
    """A run is reused by name: refuse one that was started with other overrides (a budget changed since), and
    record them for a new one in <experiment dir>/<run>.overrides.json."""
    saved = job.run_dir.parent / f"{job.name}.overrides.json"
    if saved.exists() and json.loads(saved.read_text()) != job.overrides:
        raise ValueError(f"{job.run_dir}: started with other settings ({saved}); remove both to train it with these")
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(job.overrides))


def train(job: Job, threads: int) -> dict:
    """Train `job` to its end (resuming a run that was interrupted); returns its summary."""
    check_settings(job)
    if (summary := job.summary()) is not None:
        return summary
    run = job.run_dir
    resume = [f"resume={run}"] if any(run.glob("step_*.pt")) else []
    if run.exists() and not resume:  # killed before its first checkpoint: nothing to keep
        shutil.rmtree(run)
    run.parent.mkdir(parents=True, exist_ok=True)
    log(f"train {job.experiment}/{job.name}{' (resuming)' if resume else ''}")
    start = time.time()
    own = {o.split("=", 1)[0] for o in job.overrides}
    pinned = [d for d in PAGE_DEFAULTS if d.split("=", 1)[0] not in own]
    run_process(["pretrain.py", *pinned, *job.overrides, f"checkpoint_dir={ROOT / 'checkpoints'}",
                 f"project_name=results-{job.experiment}", f"run_name={job.name}",
                 f"logger.group=results-{job.experiment}", "checkpoint_keep_last=1", *resume],
                run.parent / f"{job.name}.log", threads)
    log(f"done {job.experiment}/{job.name} in {time.time() - start:.0f} s")
    return job.summary()


def eval_file(job: Job, set_name: str, act_steps: int) -> Path:
    return job.run_dir / f"eval_{set_name}_act{act_steps}.json"


def evaluate(job: Job, sets: dict[str, str], act_steps: int, threads: int) -> None:
    """Score the final checkpoint of `job` on the test split of each set (name -> path) it has not been scored on,
    with `act_steps` ACT steps: <run>/eval_<set>_act<K>.json."""
    missing = {name: path for name, path in sets.items() if not eval_file(job, name, act_steps).exists()}
    if not missing:
        return
    log(f"evaluate {job.experiment}/{job.name} ({act_steps} ACT steps) on {', '.join(missing)}")
    out = job.run_dir / f"eval_act{act_steps}.tmp.json"
    run_process(["generate.py", "--checkpoint", str(job.run_dir / "final"), "--evaluate", *missing.values(),
                 "--act-steps", str(act_steps), "--output-file", str(out)], job.run_dir.parent / f"{job.name}.log",
                threads)
    scores = json.loads(out.read_text())
    for name, path in missing.items():
        eval_file(job, name, act_steps).write_text(json.dumps(scores[path], indent=1))
    out.unlink()


def build_data(hard_list: str | None = None) -> dict[str, str]:
    """The training data and the held-out sets (built once; the generator is seeded); `hard_list`: a file of
    puzzles, one per line (e.g. the public "top95" list), scored as the set `hard-list`."""
    if not (ROOT / TRAIN_DATA / "train" / "dataset.json").exists():
        build(SudokuBuildConfig(output_dir=str(ROOT / TRAIN_DATA), **OmegaConf.to_container(SUDOKU.build)))
    paths = {"test": TRAIN_DATA}
    for name, ((low, high), seed) in EVAL_SETS.items():
        path = f"{HELD_OUT}/{name}"
        if not (ROOT / path / "test" / "dataset.json").exists():
            build(SudokuBuildConfig(output_dir=str(ROOT / path), seed=seed, num_train=1, num_test=200, min_clues=low,
                                    max_clues=high, quiet=True))
        paths[name] = path
    if hard_list:
        paths["hard-list"] = build_list_set(hard_list, paths["valid"])
    check_disjoint(paths, TRAIN_DATA)
    return paths


def build_maze_data() -> dict[str, str]:
    """The maze training data and its held-out validation mazes (built once, seeded)."""
    if not (ROOT / MAZE_DATA / "train" / "dataset.json").exists():
        build_maze(MazeBuildConfig(**{**MAZE_BUILD, "output_dir": str(ROOT / MAZE_DATA)}))
    if not (ROOT / MAZE_VALID / "test" / "dataset.json").exists():
        build_maze(MazeBuildConfig(**{**MAZE_BUILD, "output_dir": str(ROOT / MAZE_VALID), "seed": 101, "num_train": 1,
                                      "num_test": 200, "quiet": True}))
    paths = {"test": MAZE_DATA, "valid": MAZE_VALID}
    check_disjoint(paths, MAZE_DATA)
    return paths


def build_list_set(hard_list: str, donor: str) -> str:
    """A test-only dataset of the puzzles in `hard_list`, through the builder's list source (which needs a train
    split: one puzzle of `donor`'s test split, never scored)."""
    import numpy as np

    path = f"{HELD_OUT}/hard-list"
    if not (ROOT / path / "test" / "dataset.json").exists():
        first = np.load(ROOT / donor / "test" / "all__inputs.npy")[0]  # tokens: 1 blank, 2..10 the digits 1..9
        train_file = ROOT / HELD_OUT / "hard-list-train.txt"
        train_file.parent.mkdir(parents=True, exist_ok=True)
        train_file.write_text("".join("." if v == 1 else str(v - 1) for v in first) + "\n")
        build(SudokuBuildConfig(output_dir=str(ROOT / path), source="list", train_file=str(train_file),
                                test_file=hard_list))
    return path


def check_disjoint(paths: dict[str, str], train_data: str) -> None:
    """No held-out puzzle may be a training row of `train_data` (its train split holds every augmented copy)."""
    import numpy as np

    train = {row.tobytes() for row in np.load(ROOT / train_data / "train" / "all__inputs.npy")}
    for name, path in paths.items():
        test = np.load(ROOT / path / "test" / "all__inputs.npy")
        leaked = sum(row.tobytes() in train for row in test)
        if leaked:
            raise ValueError(f"{path}: {leaked} of its {len(test)} test puzzles are rows of {train_data}'s train split")


def in_parallel(fn, items, jobs: int) -> list:
    with ThreadPoolExecutor(jobs) as pool:
        return list(pool.map(fn, items))


def train_all(jobs: list[Job], args) -> None:
    in_parallel(lambda j: train(j, args.threads), jobs, args.jobs)


def trained_act_steps(job: Job) -> int:
    """The ACT steps a finished run trained with (its halt_max_steps): the budget it is scored at."""
    return job.summary()["config"]["arch"]["halt_max_steps"]


def act_budgets(job: Job) -> tuple[int, ...]:
    """The ACT steps a run is scored with: its trained budget, and MAX_ACT_STEPS when more steps can matter."""
    trained = trained_act_steps(job)
    return (trained, MAX_ACT_STEPS) if recurs_at_test_time(job) else (trained,)


def recurs_at_test_time(job: Job) -> bool:
    """Whether more ACT steps can change the run's answer: a one-step model keeps no latent state between them."""
    return trained_act_steps(job) > 1


# ---------------------------------------------------------------- the experiments

def recursion_jobs(seeds: int, experiment: str = "recursion",
                   models: tuple[str, ...] | None = None) -> tuple[list[Job], dict[str, list[Job]]]:
    """(the learning-rate sweep at seed 0, then per model its jobs at the chosen rate for every seed)."""
    names, data = SWEPT[experiment]
    sweep = [Job(experiment, f"{m}-lr{lr:g}-s0", [*MODELS[m][0], f"lr={lr}", "seed=0", *data])
             for m in models or names for lr in LRS]
    return sweep, {m: [Job(experiment, f"{m}-lr{{lr}}-s{s}", [*MODELS[m][0], "lr={lr}", f"seed={s}", *data])
                       for s in range(seeds)] for m in models or names}


def best_lr(model: str, experiment: str = "recursion") -> float | None:
    """The rate whose seed-0 run reached the best validation exact accuracy (then token accuracy); None while a
    run of the sweep is unfinished."""
    scores = {}
    for lr in LRS:
        summary = Job(experiment, f"{model}-lr{lr:g}-s0").summary()
        if summary is None:
            return None
        scores[lr] = (summary["test"]["test/exact_accuracy"], summary["test"]["test/accuracy"])
    return max(scores, key=scores.get)


def final_jobs(seeds: int, experiment: str = "recursion") -> dict[str, list[Job]]:
    """Per model, its runs at the chosen learning rate, one per seed (none while its sweep is unfinished)."""
    out = {}
    for model, jobs in recursion_jobs(seeds, experiment)[1].items():
        lr = best_lr(model, experiment)
        out[model] = [] if lr is None else [
            Job(j.experiment, j.name.format(lr=f"{lr:g}"), [o.format(lr=lr) for o in j.overrides]) for j in jobs]
    return out


def run_recursion(args, data: dict[str, str], experiment: str = "recursion") -> list[Job]:
    train_all(recursion_jobs(args.seeds, experiment)[0], args)
    jobs = [job for jobs in final_jobs(args.seeds, experiment).values() for job in jobs]
    train_all(jobs, args)
    return jobs


def run_maze(args, _) -> None:
    """Section 1's sweep and seeds on mazes, then the test split scored as in section 3 (more ACT steps too)."""
    data = build_maze_data()
    work = [(job, steps) for job in run_recursion(args, data, "maze") for steps in act_budgets(job)]
    in_parallel(lambda w: evaluate(w[0], {"test": data["test"]}, w[1], args.threads), work, args.jobs)


def ablation_jobs(seeds: int) -> dict[str, list[Job]]:
    """Per ablation, its runs at the TRM-MLP's chosen rate, one per seed (none while its sweep is unfinished)."""
    lr = best_lr("trm_mlp")
    return {name: [] if lr is None else [
        Job("ablations", f"{name}-s{s}", [*MODELS["trm_mlp"][0], *overrides, f"lr={lr}", f"seed={s}",
                                          *SWEPT["recursion"][1]])
        for s in range(seeds)] for name, (overrides, _) in ABLATIONS.items()}


def run_ablations(args, data: dict[str, str]) -> None:
    """Against section 1's TRM-MLP runs (trained here first if missing), scored as they are on the test split."""
    train_all(recursion_jobs(args.seeds, models=("trm_mlp",))[0], args)
    jobs = final_jobs(args.seeds)["trm_mlp"] + [j for jobs in ablation_jobs(args.seeds).values() for j in jobs]
    train_all(jobs, args)
    in_parallel(lambda job: evaluate(job, {"test": data["test"]}, trained_act_steps(job), args.threads), jobs,
                args.jobs)


def cycles_jobs(seeds: int) -> list[Job]:
    return [Job("cycles", f"H{h}-L{l}-s{s}", ["arch=trm_mlp", f"arch.H_cycles={h}", f"arch.L_cycles={l}", f"seed={s}"])
            for s in range(seeds) for h, l in CYCLES]


def run_cycles(args, data: dict[str, str]) -> None:
    train_all(cycles_jobs(args.seeds), args)


def run_test_time(args, data: dict[str, str]) -> None:
    sets = {k: v for k, v in data.items() if k != "valid"}
    work = [(job, steps) for jobs in final_jobs(args.seeds).values() for job in jobs
            for steps in act_budgets(job)]
    in_parallel(lambda w: evaluate(w[0], sets, w[1], args.threads), work, args.jobs)


def build_chat_data() -> None:
    """The task suite (data/tasks) and the stories as a text dataset (data/results/stories), both with the byte
    tokenizer, so a stories run's weights fine-tune on the tasks (init_from checks it); each built once, seeded."""
    from dataset.build_text_dataset import TextBuildConfig, build as build_text
    from examples import make_synthetic_tasks, make_synthetic_text

    if not (ROOT / TASKS / "chat" / "dataset.json").exists():
        make_synthetic_tasks.main(["--output-dir", str(ROOT / TASKS)])
    if not (ROOT / STORIES / "dataset.json").exists():
        raw = ROOT / "data" / "results" / "stories-raw"
        make_synthetic_text.main(["--output-dir", str(raw)])
        build_text(TextBuildConfig(input=[str(raw / "stories.jsonl")], output_dir=str(ROOT / STORIES)))


def pretrain_job(model: str, seed: int) -> Job:
    overrides = [*CHAT_COMMON, *CHAT_STORIES, *CHAT_MODELS[model][0], f"seed={seed}"]
    return Job("chat", f"pretrain_{model}-s{seed}", overrides)


def chat_jobs(seeds: int) -> dict[str, list[Job]]:
    """Per variant, its runs on the tasks (one per seed); stories_<model> starts from pretrain_<model>-s<seed>."""
    out = {m: [Job("chat", f"{m}-s{s}", [*CHAT_COMMON, *CHAT_TASKS, *o, f"seed={s}"]) for s in range(seeds)]
           for m, (o, _) in CHAT_MODELS.items()}
    for m in STORIES_MODELS:  # init_from relative to the repository (the runs' working directory)
        starts = [f"init_from={pretrain_job(m, s).run_dir.relative_to(ROOT)}" for s in range(seeds)]
        out[f"stories_{m}"] = [Job("chat", f"stories_{m}-s{s}", [*run.overrides, starts[s]])
                               for s, run in enumerate(out[m])]
    return out


def run_chat(args, data: dict[str, str]) -> None:
    build_chat_data()
    jobs = chat_jobs(args.seeds)
    first = [pretrain_job(m, s) for m in STORIES_MODELS for s in range(args.seeds)] + \
        [j for m in CHAT_MODELS for j in jobs[m]]
    train_all(first, args)
    train_all([j for m in STORIES_MODELS for j in jobs[f"stories_{m}"]], args)


def verify(run: str, threads: int) -> list[str]:
    """Train the finished run `<experiment>/<name>` again from its recorded overrides (in
    checkpoints/results-verify/<experiment>-<name>) and compare the final weights and test metrics with it: the
    differences, none when it reproduces (as it should on the same machine with the same threads per run)."""
    from utils.checkpoint import find_checkpoint, load_checkpoint

    experiment, _, name = run.partition("/")
    if not experiment or not name or "/" in name:
        raise SystemExit(f"error: --run {run}: give a run as <experiment>/<name>, e.g. cycles/H1-L1-s0")
    original = Job(experiment, name)
    saved = original.run_dir.parent / f"{name}.overrides.json"
    if original.summary() is None or not saved.exists():
        raise SystemExit(f"error: {original.run_dir}: not a finished run with its overrides recorded ({saved.name})")
    again = Job("verify", f"{experiment}-{name}", json.loads(saved.read_text()))
    train(again, threads)
    weights = [load_checkpoint(find_checkpoint(str(job.run_dir / "final")))["model"] for job in (original, again)]
    differences = [f"weights {k}" for k in sorted(weights[0].keys() | weights[1].keys())
                   if k not in weights[0] or k not in weights[1] or not weights[0][k].equal(weights[1][k])]
    tests = [job.summary()["test"] for job in (original, again)]
    for k in sorted(tests[0].keys() | tests[1].keys()):
        a, b = tests[0].get(k), tests[1].get(k)
        if a != b and not (a != a and b != b):  # (NaN == NaN here)
            differences.append(f"{k}: {a} vs {b}")
    log(f"{run}: " + ("reproduced: the same weights, bit for bit, and the same test metrics" if not differences else
                      f"{len(differences)} differences: " + "; ".join(differences[:5])))
    return differences


def seeds_trained() -> int:
    """1 + the highest seed of any finished run of the page (0 when there is none)."""
    seeds = [int(m.group(1)) for path in (ROOT / "checkpoints").glob("results-*/*/summary.json")
             if (m := re.search(r"-s(\d+)$", path.parent.name))]
    return 1 + max(seeds, default=-1)


EXPERIMENTS = {"recursion": run_recursion, "ablations": run_ablations, "maze": run_maze, "cycles": run_cycles,
               "test_time": run_test_time, "chat": run_chat}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("experiment", choices=[*EXPERIMENTS, "report", "all", "verify"])
    ap.add_argument("--seeds", type=int, help="seeds per point, 0..N-1 (default: 3 to train; the report shows "
                    "every seed that has a finished run)")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time")
    ap.add_argument("--threads", type=int, default=1, help="threads per run")
    ap.add_argument("--hard-list", help="test_time: also score a file of puzzles, one per line (81 characters, "
                    "'.' or '0' blank), e.g. the public top95 list")
    ap.add_argument("--run", help="verify: the finished run to train again, <experiment>/<name>")
    args = ap.parse_args(argv)
    if any(n is not None and n < 1 for n in (args.seeds, args.jobs, args.threads)):
        ap.error(f"--seeds, --jobs and --threads must be >= 1, got {args.seeds}, {args.jobs} and {args.threads}")
    if args.hard_list and not os.path.isfile(args.hard_list):
        ap.error(f"--hard-list {args.hard_list}: no such file")
    if args.hard_list:
        with exit_on_bad_input():
            read_list_file(args.hard_list)  # a bad line ends the command before any data is built
    seeds_given, args.seeds = args.seeds, args.seeds or 3
    if args.experiment == "verify":
        if not args.run:
            ap.error("verify needs --run <experiment>/<name>, e.g. --run cycles/H1-L1-s0")
        sys.exit(1 if verify(args.run, args.threads) else 0)
    names = list(EXPERIMENTS) if args.experiment == "all" else [] if args.experiment == "report" else [args.experiment]
    with exit_on_bad_input():
        data = build_data(args.hard_list) if set(names) - {"chat", "maze"} else {}  # the Sudoku sets
    for name in names:
        EXPERIMENTS[name](args, data)
    if args.experiment in ("report", "all"):
        from examples.results_report import write_report
        write_report(seeds_given or max(seeds_trained(), args.seeds))


if __name__ == "__main__":
    main()
