"""Helpers shared by the test modules (which import from the project and from here, never from each other)."""
import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("WANDB_MODE", "disabled")  # tests never talk to W&B


@pytest.fixture(scope="session")
def sudoku_dir(tmp_path_factory) -> str:
    """A tiny generated Sudoku dataset (64 train puzzles x 3, 16 test), built once per session."""
    from dataset.build_sudoku_dataset import SudokuBuildConfig, build

    out = tmp_path_factory.mktemp("data") / "sudoku-tiny"
    build(SudokuBuildConfig(output_dir=str(out), num_train=64, num_test=16, min_clues=45, max_clues=50,
                            num_aug=2, seed=0, quiet=True))
    return str(out)


def compose(*overrides: str, config: str = "cfg_pretrain"):
    """The config pretrain.py would see for these command-line overrides (config="cfg_chat": with
    --config-name cfg_chat)."""
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "config"), version_base="1.3"):
        return hydra_compose(config, overrides=list(overrides))


def compose_chat(*overrides: str):
    return compose(*overrides, config="cfg_chat")


# ----------------------------------------------------------------------------- puzzle runs

# a TRM small enough to train in seconds on the CPU
TINY = ["arch.hidden_size=32", "arch.num_heads=2", "arch.puzzle_emb_len=1", "arch.H_cycles=2", "arch.L_cycles=1",
        "arch.halt_max_steps=3", "global_batch_size=16", "lr=3e-3", "puzzle_emb_lr=3e-3", "lr_warmup_steps=5",
        "logger.mode=disabled", "log_interval=1", "epochs=100", "eval_interval=100"]


# a causal transformer for the language-model runs
TINY_LM = ["arch=transformer_chat", "arch.hidden_size=16", "arch.num_heads=2", "arch.L_layers=1", "global_batch_size=4",
           "logger.mode=disabled", "lr_warmup_steps=0", "epochs=100", "eval_interval=100"]


FLOAT32 = "arch.forward_dtype=float32"  # exactness checks are float32 round-off (auto is bfloat16 on some CPUs)


def tiny_cfg(data: str, tmp: Path, *extra: str):
    return compose(f"data_paths=[{data}]", f"checkpoint_dir={tmp}", *TINY, FLOAT32, *extra)


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "pretrain.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def with_puzzle_ids(src: str, dst: Path) -> str:
    """The tiny Sudoku with 5 puzzle identifiers shared by many rows (the generated one has only the blank id),
    so that the sign-SGD update of the puzzle embedding sums gradients of equal ids across ranks."""
    from dataset.common import load_metadata, save_split

    for split in ("train", "test"):
        meta = load_metadata(os.path.join(src, split))
        arrays = {f: np.load(os.path.join(src, split, f"all__{f}.npy"))
                  for f in ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices")}
        arrays["puzzle_identifiers"] = (np.arange(len(arrays["puzzle_identifiers"])) % 5 + 1).astype(np.int32)
        meta.num_puzzle_identifiers = 6
        save_split(dst, split, meta, {"all": arrays})
    return str(dst)


# ----------------------------------------------------------------------------- chat data

CONVERSATIONS = [
    {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                       {"from": "gpt", "value": "Hello!"}, {"from": "human", "value": "Bye"},
                       {"from": "gpt", "value": "See you."}]},
    {"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]},
    {"conversations": [{"from": "narrator", "value": "x"}, {"from": "gpt", "value": "y"}]},  # unknown role
    {"conversations": [{"from": "human", "value": "  "}, {"from": "gpt", "value": "y"}]},  # empty turn
]


def write_records(tmp_path: Path, records) -> str:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(records))
    return str(path)


def build_tiny(tmp_path, records=CONVERSATIONS, **kw) -> tuple[Path, dict]:
    """A chat dataset built from `records` (all of them train)."""
    from dataset.build_chat_dataset import ChatBuildConfig, build as build_chat

    out = tmp_path / "built"
    cfg = dict(input_file=write_records(tmp_path, records), output_dir=str(out), max_length=64, train_split=1.0)
    return out, build_chat(ChatBuildConfig(**{**cfg, **kw}))


@pytest.fixture(scope="module")
def synthetic_chat(tmp_path_factory) -> str:
    """600 synthetic conversations (examples/make_synthetic_chat.py), built once per test module."""
    from dataset.build_chat_dataset import ChatBuildConfig, build as build_chat

    spec = importlib.util.spec_from_file_location("synth", ROOT / "examples" / "make_synthetic_chat.py")
    synth = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(synth)
    tmp = tmp_path_factory.mktemp("chat")
    train_records, _, _ = synth.generate(600, seed=0)
    (tmp / "train.json").write_text(json.dumps(train_records))
    build_chat(ChatBuildConfig(input_file=str(tmp / "train.json"), output_dir=str(tmp / "built"), max_length=128,
                               train_split=0.9))
    return str(tmp / "built")


# ----------------------------------------------------------------------------- generate.py

@pytest.fixture(scope="session")
def chat_run(tmp_path_factory) -> Path:
    """A causal TRM trained for a few steps on a tiny chat dataset, as pretrain.py writes it (shared: tests that
    change a run change a copy)."""
    from dataset.build_chat_dataset import ChatBuildConfig, build
    from pretrain import train

    tmp = tmp_path_factory.mktemp("gen")
    records = [{"conversations": [{"from": "human", "value": f"What is {a} + {b}?"},
                                  {"from": "gpt", "value": f"{a} + {b} = {a + b}."}]}
               for a in range(8) for b in range(8)]
    (tmp / "chat.json").write_text(json.dumps(records))
    build(ChatBuildConfig(input_file=str(tmp / "chat.json"), output_dir=str(tmp / "data"), max_length=64))
    overrides = [f"data_paths=[{tmp / 'data'}]", f"checkpoint_dir={tmp}", "run_name=run", "arch.hidden_size=32",
                 "arch.num_heads=2", "arch.halt_max_steps=2", "global_batch_size=8", "max_steps=3",
                 "logger.mode=disabled", "dataset.max_new_tokens=2"]
    train(compose_chat(*overrides))
    return next(tmp.glob("*/run"))


def generate(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """`python generate.py ARGS` in this process (much faster than a subprocess), output captured."""
    import generate as cli

    out, err = io.StringIO(), io.StringIO()
    saved_stdin, sys.stdin = sys.stdin, io.StringIO(stdin or "")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(list(args))
            except SystemExit as e:  # as the interpreter ends: a message goes to stderr with status 1
                code = e.code if isinstance(e.code, int) else int(e.code is not None)
                if isinstance(e.code, str):
                    print(e.code, file=sys.stderr)
    finally:
        sys.stdin = saved_stdin
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def with_nan_ema(run: Path, dst: Path) -> Path:
    """A copy of the run directory `run` at `dst` whose checkpoints' EMA weights are NaN: a tool loads it only with
    the raw weights (--no-ema)."""
    import shutil

    import torch

    from utils.checkpoint import load_checkpoint, save_checkpoint

    shutil.copytree(run, dst)
    for file in dst.glob("step_*.pt"):
        state = load_checkpoint(str(file))
        state["ema"] = {k: torch.full_like(v, float("nan")) for k, v in state["model"].items() if v.is_floating_point()}
        save_checkpoint(str(file), state)
    return dst


def offline_build_error(monkeypatch, module, function: str, main, out: Path) -> str:
    """The error a builder's `main` exits with for `--source csv` when `module.function` (its hub download) fails."""
    def offline(*args, **kwargs):
        raise ConnectionError("offline")
    monkeypatch.setattr(module, function, offline)
    with pytest.raises(SystemExit) as exit_:
        main(["--source", "csv", "--output-dir", str(out)])
    return str(exit_.value.code)


def shared_path(*parts: str) -> Path | None:
    """A path in the project's reference material (../shared beside the clone, or /work/shared), when this
    machine has it."""
    for base in (ROOT.parent / "shared", Path("/work/shared")):
        if base.joinpath(*parts).exists():
            return base.joinpath(*parts)
    return None


# ----------------------------------------------------------------------------- ARC tasks

def arc_data_dir() -> Path | None:
    """The real ARC-AGI files (Kaggle layout), when this machine has them."""
    for candidate in (os.environ.get("ARC_DATA_DIR"), shared_path("data", "arc-agi")):
        if candidate and (Path(candidate) / "arc-agi_training_challenges.json").is_file():
            return Path(candidate)
    return None


def write_tasks(root: Path, subset: str, tasks: dict) -> None:
    (root / subset).mkdir(parents=True, exist_ok=True)
    for name, task in tasks.items():
        (root / subset / f"{name}.json").write_text(json.dumps(task))


def grid_task(seed: int, n_train: int = 2, n_test: int = 1, with_outputs: bool = True) -> dict:
    """A task whose output is the input flipped left-right."""
    rng = np.random.default_rng(seed)

    def pair():
        x = rng.integers(0, 10, (int(rng.integers(1, 6)), int(rng.integers(1, 6))))
        return {"input": x.tolist(), "output": x[:, ::-1].tolist()}
    test = [pair() for _ in range(n_test)]
    if not with_outputs:
        test = [{"input": p["input"]} for p in test]
    return {"train": [pair() for _ in range(n_train)], "test": test}
