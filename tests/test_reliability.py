"""Fault injection: bad config values, NaN in training, reused run names, foreign checkpoints, corrupted splits,
killed builds and full disks each end in one clear line (or are handled), and never leave a checkpoint or a
dataset that loads wrong."""
import copy
import json
import os
import re
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import (FLOAT32, ROOT, TINY, TINY_LM, build_tiny, compose, compose_chat, run_cli,
                      tiny_cfg, with_puzzle_ids, write_records)
from models.losses import ACTLossHead
from pretrain import start_run, train, train_step
from utils.checkpoint import find_checkpoint, load_checkpoint, load_trained_model, save_checkpoint
from utils.distributed import init_distributed
from utils.nonfinite import NonFiniteTraining
from utils.run import resume_config

PROJECT = "Sudoku-tiny-ACT-torch"


def logged(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- config checked at start

@pytest.mark.parametrize("config, override, message", [
    *(("cfg_pretrain", override, message) for override, message in [
        ("global_batch_size=0", "global_batch_size=0: must be a whole number >= 1"),
        ("eval_interval=0", "eval_interval=0: must be > 0"),
        ("log_interval=0", "log_interval=0: must be a whole number >= 1"),
        ("lr=-1", "lr=-1: must be >= 0"),
        ("lr=nan", "lr=nan: must be a number"),
        ("ema_rate=2", r"ema_rate=2: must lie in \[0, 1\)"),
        ("max_steps=-1", "max_steps=-1: must be a whole number >= 1"),
        ("max_steps=0", "max_steps=0: must be a whole number >= 1"),
        ("epochs=0", "epochs=0: must be > 0"),
        ("eval_interval=null", "eval_interval=null: must be a number"),
        ("global_batch_size=null", "global_batch_size=null: must be a number"),
        ("grad_accum_steps=0", "grad_accum_steps=0: must be a whole number >= 1"),
        ("max_bad_steps=0", "max_bad_steps=0: must be a whole number >= 1"),
        ("run_name=1e3", "run_name=1000.0: was read as a float; quote it"),
        ("run_name=nan", "run_name=nan: was read as a float"),
        ("device=gpu", "device=gpu: must be auto, cpu, cuda"),
        ("ema=maybe", "ema=maybe: must be true or false"),
        ("arch.H_cycles=null", "H_cycles=null: must be a whole number"),
        ("arch.expansion=-1", "expansion=-1: must be > 0"),
        ("arch.mlp_t=1", "mlp_t=1: must be true or false"),
        ("+arch.causal=true", "mlp_t mixes the whole sequence and cannot be causal"),
    ]),
    *(("cfg_chat", override, message) for override, message in [  # language datasets' options
        ("dataset.seq_len=-5", "dataset.seq_len=-5: must be a whole number >= 1"),
        ("dataset.seq_len=abc", "dataset.seq_len=abc: must be a number"),
        ("dataset.pack=maybe", "dataset.pack=maybe: must be true or false"),
        ("dataset.max_new_tokens=null", "dataset.max_new_tokens=null: must be a number"),
    ]),
])
def test_bad_config_values_are_one_line_errors_before_any_work(tmp_path, config, override, message):
    cfg = compose(f"data_paths=[{tmp_path / 'never-built'}]", f"checkpoint_dir={tmp_path}", override, config=config)
    with pytest.raises(ValueError, match=message):
        train(cfg)
    assert not (tmp_path / "never-built").exists() and list(tmp_path.iterdir()) == []  # nothing built or written


@pytest.mark.parametrize("override, message", [
    ("dataset.build.min_clues=null", "dataset.build.min_clues=null: must be a whole number"),
    ("dataset.build.num_aug=1k", "dataset.build.num_aug='1k': must be a whole number"),
    ("+dataset.build.bogus=1", r"dataset.build: unknown option\(s\) \['bogus'\] for the sudoku builder"),
    ("dataset.task=nosuch", "dataset.task: unknown task 'nosuch'"),
])
def test_bad_dataset_build_options_are_one_line_errors_before_building(tmp_path, override, message):
    cfg = compose(f"dataset.build_path={tmp_path / 'data'}", f"checkpoint_dir={tmp_path}", override)
    with pytest.raises(ValueError, match=message):
        train(cfg)
    assert list(tmp_path.iterdir()) == []  # nothing built or written


EXPERIMENTS = sorted((ROOT / "config" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("overrides", [[f"+experiment={p.stem}"] for p in EXPERIMENTS]
                         + [["--config-name=cfg_chat"], []], ids=lambda o: o[0] if o else "default")
def test_every_shipped_config_passes_the_checks(overrides):
    from utils.config_check import check_config

    check_config(compose_chat() if overrides == ["--config-name=cfg_chat"] else compose(*overrides))


def test_a_typo_in_data_paths_is_an_error_not_a_new_dataset(tmp_path):
    """dataset=sudoku builds only at dataset.build_path: a missing data_paths=[...] names the way to build there."""
    proc = run_cli(f"data_paths=[{tmp_path / 'sudoku-gen-1k-typo'}]", f"checkpoint_dir={tmp_path}", "logger.mode=disabled")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: dataset directory {tmp_path / 'sudoku-gen-1k-typo'} not found (build it with dataset/build_*_dataset.py "
        f"or set data_paths=[...]); to build a new dataset there with dataset.build's options, set "
        f"dataset.build_path={tmp_path / 'sudoku-gen-1k-typo'} instead of data_paths"]
    assert not (tmp_path / "sudoku-gen-1k-typo").exists()


def test_dataset_build_path_builds_there_and_data_paths_follows(tmp_path):
    data = tmp_path / "built-here"
    results = train(compose(f"dataset.build_path={data}", f"checkpoint_dir={tmp_path}", "dataset.build.num_train=8",
                            "dataset.build.num_test=4", "dataset.build.num_aug=0", *TINY, FLOAT32))
    assert (data / "train" / "dataset.json").exists() and results["test/count"] == 4


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_machine_without_it_is_a_one_line_error_from_the_command_line(tmp_path):
    proc = run_cli("device=cuda", f"checkpoint_dir={tmp_path}", f"data_paths=[{tmp_path / 'none'}]")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == ["error: device=cuda: CUDA is not available on this machine "
                                                "(device=cpu or auto)"]


# ----------------------------------------------------------------------------- non-finite steps

def poison(monkeypatch, bad_calls) -> list[int]:
    """ACTLossHead.forward returns a NaN loss on the training calls numbered in `bad_calls` (a set, or all from
    an int on); returns the list of calls made."""
    original, calls = ACTLossHead.forward, []

    def forward(self, *args, **kwargs):
        carry, loss, metrics, outputs = original(self, *args, **kwargs)
        if self.training:
            calls.append(len(calls) + 1)
            if calls[-1] in bad_calls if isinstance(bad_calls, set) else calls[-1] >= bad_calls:
                loss = loss * float("nan")
        return carry, loss, metrics, outputs
    monkeypatch.setattr(ACTLossHead, "forward", forward)
    return calls


def test_a_non_finite_step_is_skipped_and_training_recovers(sudoku_dir, tmp_path, monkeypatch, capsys):
    calls = poison(monkeypatch, {3})
    train(tiny_cfg(sudoku_dir, tmp_path, "max_steps=5", "run_name=r", "eval_at_end=false"))
    run_dir = tmp_path / PROJECT / "r"
    assert len(calls) == 6  # five steps trained, one skipped
    assert "step 3: non-finite loss or gradient, step skipped (1 in a row, 1 in all" in capsys.readouterr().out
    losses = [m["train/lm_loss"] for m in logged(run_dir) if "train/lm_loss" in m]
    assert len(losses) == 5 and all(np.isfinite(losses))
    assert [m.get("train/skipped_steps") for m in logged(run_dir)][-1] == 1
    final = load_checkpoint(str(run_dir / "step_5.pt"))
    assert final["step"] == 5 and all(torch.isfinite(v).all() for v in final["model"].values())


def test_too_many_bad_steps_stop_naming_the_last_good_checkpoint(sudoku_dir, tmp_path, monkeypatch):
    train(tiny_cfg(sudoku_dir, tmp_path, "max_steps=2", "run_name=r", "eval_at_end=false"))
    run_dir = tmp_path / PROJECT / "r"
    calls = poison(monkeypatch, 1)  # every step from here on
    overrides = [f"resume={run_dir}", "max_steps=8", "max_bad_steps=3"]
    with pytest.raises(NonFiniteTraining, match=f"step 3: 3 steps in a row .* Last good checkpoint: "
                                                f"{run_dir / 'step_2.pt'}"):
        train(resume_config(compose(*overrides), overrides))
    assert len(calls) == 3 and sorted(p.name for p in run_dir.glob("step_*")) == ["step_2.pt"]


TORCHRUN_NAN = """
import os, sys
sys.path.insert(0, {root!r})
from models.losses import ACTLossHead
original, calls = ACTLossHead.forward, []
def forward(self, *args, **kwargs):  # rank 1 alone sees a NaN loss on its 2nd step (its gradients stay finite)
    carry, loss, metrics, outputs = original(self, *args, **kwargs)
    if self.training:
        calls.append(1)
        if len(calls) == 2 and os.environ["RANK"] == "1":
            loss = loss + float("nan")
    return carry, loss, metrics, outputs
ACTLossHead.forward = forward
import runpy
runpy.run_path({root!r} + "/pretrain.py", run_name="__main__")
"""


def test_under_torchrun_every_rank_skips_the_step_one_rank_found_bad(sudoku_dir, tmp_path):
    script = tmp_path / "nan_on_rank_1.py"
    script.write_text(TORCHRUN_NAN.format(root=str(ROOT)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script), *tiny_cfg_args(sudoku_dir, tmp_path), "max_steps=3", "run_name=r",
                           "eval_at_end=false", "device=cpu", "compile=false"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("non-finite loss or gradient, step skipped") == 1  # said once, by rank 0
    run_dir = tmp_path / PROJECT / "r"
    assert [m.get("train/skipped_steps") for m in logged(run_dir)][-1] == 1
    assert load_checkpoint(str(run_dir / "step_3.pt"))["step"] == 3


@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_a_skipped_step_leaves_weights_optimizers_ema_and_puzzle_embeddings_untouched(sudoku_dir, tmp_path, where):
    data = with_puzzle_ids(sudoku_dir, tmp_path / "ids")
    cfg = tiny_cfg(data, tmp_path, "ema=true", "run_name=r")
    d, device = init_distributed("cpu")
    run = start_run(cfg, d, device, None)
    state, batches = run.state, iter(run.train_data)
    assert train_step(state, run.forward, next(batches)[1], cfg, run.schedule) is not None  # optimizer state
    before = copy.deepcopy((state.model.state_dict(), [o.state_dict() for o in state.optimizers],
                            state.ema.state_dict(), state.carry.state_dict(), state.step))

    def bad_forward(carry, batch, rows):
        carry, loss, metrics, outputs = run.forward(carry, batch, rows)
        if where == "loss":
            return carry, loss * float("inf"), metrics, outputs
        weight = state.model.model.inner.lm_head.weight
        return carry, loss + torch.sqrt(weight.flatten()[0] * 0), metrics, outputs  # finite loss, NaN gradient

    assert train_step(state, bad_forward, next(batches)[1], cfg, run.schedule) is None
    after = (state.model.state_dict(), [o.state_dict() for o in state.optimizers], state.ema.state_dict(),
             state.carry.state_dict(), state.step)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    assert train_step(state, run.forward, next(batches)[1], cfg, run.schedule) is not None and state.step == 2


def test_a_checkpoint_is_never_written_with_non_finite_weights(sudoku_dir, tmp_path):
    from utils.train_state import save_run_checkpoint

    cfg = tiny_cfg(sudoku_dir, tmp_path, "run_name=r", "ema=false")  # generation then loads the raw weights
    d, device = init_distributed("cpu")
    run = start_run(cfg, d, device, None)
    with torch.no_grad():
        run.state.model.model.inner.lm_head.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteTraining, match="step_0.pt: not written: the weight .*lm_head.weight holds NaN"):
        save_run_checkpoint(run.state, run.train_data, cfg, run.model_config, run.run_dir, device, True)
    assert not list(Path(run.run_dir).glob("step_*"))
    # a NaN checkpoint written before this guard existed is refused by generation
    run.state.model.model.inner.lm_head.weight.data.zero_()
    save_run_checkpoint(run.state, run.train_data, cfg, run.model_config, run.run_dir, device, True)
    ckpt = load_checkpoint(str(Path(run.run_dir) / "step_0.pt"))
    ckpt["model"] = {k: v.clone() for k, v in ckpt["model"].items()}
    ckpt["model"]["model.inner.lm_head.weight"][0, 0] = float("nan")
    save_checkpoint(str(tmp_path / "old" / "step_9.pt"), ckpt)
    with pytest.raises(ValueError, match="step_9.pt: not usable .*: the weight model.inner.lm_head.weight holds NaN"):
        load_trained_model(str(tmp_path / "old"))
    # and so is a run that would start from it (it trained on NaN until max_bad_steps stopped it, blaming the lr)
    with pytest.raises(ValueError, match="step_9.pt: not usable .*: the weight model.inner.lm_head.weight holds NaN"):
        train(tiny_cfg(sudoku_dir, tmp_path, "run_name=from_nan", f"init_from={tmp_path / 'old'}", "max_steps=2"))


def test_a_checkpoint_whose_puzzle_embedding_was_cut_to_fit_is_refused_with_advice_that_applies(sudoku_dir, tmp_path):
    """Before a puzzle embedding wider than its positions was refused, it was cut to fit: such a checkpoint no longer
    loads (generation, resume). The advice for a config, raising puzzle_emb_len, would build another model than the
    one trained (or fail on the weights' sizes): the error names the file and what can be done with it."""
    train(tiny_cfg(sudoku_dir, tmp_path, "max_steps=1", "run_name=old", "eval_at_end=false"))
    run = tmp_path / PROJECT / "old"
    # as it was written then: puzzle_emb_ndim twice what its one position holds, the dimensions cut off still zero
    ckpt = load_checkpoint(str(run / "step_1.pt"))
    key = "model.inner.puzzle_emb.weights"
    ckpt["model"] = {**ckpt["model"], key: torch.cat([ckpt["model"][key], torch.zeros_like(ckpt["model"][key])], 1)}
    ckpt["model_config"] = {**ckpt["model_config"], "puzzle_emb_ndim": 64}
    save_checkpoint(str(run / "step_1.pt"), ckpt)
    config = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(config.replace("puzzle_emb_ndim: 32", "puzzle_emb_ndim: 64"))
    advice = (r"step_1.pt: puzzle_emb_ndim=64 does not fit in puzzle_emb_len=1 positions of hidden_size=32 \(32\): "
              r"written before .* Load it with the code before commit 07443d3, or train it again with "
              r"arch.puzzle_emb_len=0 \(as many positions as it needs\)$")
    with pytest.raises(ValueError, match=advice):
        load_trained_model(str(run))
    overrides = [f"resume={run}", "max_steps=2"]
    with pytest.raises(ValueError, match=advice):
        train(resume_config(compose(*overrides), overrides))
    # a good checkpoint that this command's overrides make too wide gets the config's advice
    train(tiny_cfg(sudoku_dir, tmp_path, "max_steps=1", "run_name=good", "eval_at_end=false"))
    overrides = [f"resume={tmp_path / PROJECT / 'good'}", "arch.hidden_size=16"]
    with pytest.raises(ValueError, match=r"does not fit .*; raise puzzle_emb_len \(0: as many as it needs\)$"):
        train(resume_config(compose(*overrides), overrides))


def test_the_checkpoint_is_saved_before_evaluating_and_a_resume_runs_the_evaluation(sudoku_dir, tmp_path,
                                                                                     monkeypatch):
    from evaluators.puzzle import PuzzleEvaluator

    working = PuzzleEvaluator.evaluate

    def broken(*args, **kwargs):
        raise ValueError("the evaluation failed")
    monkeypatch.setattr(PuzzleEvaluator, "evaluate", broken)
    with pytest.raises(ValueError, match="the evaluation failed"):
        train(tiny_cfg(sudoku_dir, tmp_path, "max_steps=3", "run_name=r"))
    run_dir = tmp_path / PROJECT / "r"
    assert load_checkpoint(str(run_dir / "step_3.pt"))["step"] == 3
    written = (run_dir / "step_3.pt").stat()
    # resumed from that checkpoint (the run's last step), the evaluation it missed runs, once; the final one is kept
    # (the file the resume read, not written again)
    monkeypatch.setattr(PuzzleEvaluator, "evaluate", working)
    overrides = [f"resume={run_dir}"]
    results = train(resume_config(compose(*overrides), overrides))
    assert results["test/count"] > 0
    again = (run_dir / "step_3.pt").stat()
    assert (again.st_ino, again.st_mtime_ns) == (written.st_ino, written.st_mtime_ns)
    evaluated = lambda: [r["step"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())  # noqa: E731
                         if "test/exact_accuracy" in r]
    assert evaluated() == [3]
    assert find_checkpoint(str(run_dir / "final")).endswith("step_3.pt")
    # resumed again (further), a step whose evaluation is logged is not evaluated twice
    overrides = [f"resume={run_dir}", "max_steps=4"]
    train(resume_config(compose(*overrides), overrides))
    assert evaluated() == [3, 4]


# ----------------------------------------------------------------------------- runs never merge

def test_a_new_run_never_writes_into_an_existing_run(sudoku_dir, tmp_path):
    train(tiny_cfg(sudoku_dir, tmp_path, "max_steps=2", "run_name=exp1", "eval_at_end=false"))
    run_dir = tmp_path / PROJECT / "exp1"
    files = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    with pytest.raises(ValueError, match=f"{run_dir} already holds a run: continue it with resume={run_dir}, or "
                                         "start a new run with another run_name"):
        train(tiny_cfg(sudoku_dir, tmp_path, "max_steps=1", "run_name=exp1", "arch.hidden_size=16"))
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == files
    # a write killed mid-save leaves a .tmp file: resuming removes it
    (run_dir / "step_3.pt.tmp").write_bytes(b"half a checkpoint")
    overrides = [f"resume={run_dir}", "max_steps=3", "eval_at_end=false"]
    train(resume_config(compose(*overrides), overrides))
    assert not list(run_dir.glob("*.tmp")) and (run_dir / "step_3.pt").exists()


@pytest.mark.parametrize("content, what", [
    ({"model.inner.lm_head.weight": torch.zeros(2, 2)}, "a bare state dict of 1 tensors"),
    (torch.zeros(3), r"a single tensor of shape \[3\]"),
    ({"model": {}, "note": "x"}, r"a dict without \['optimizers', 'step'\]"),
])
def test_resume_of_a_checkpoint_that_is_not_ours_suggests_init_from(tmp_path, content, what):
    file = tmp_path / "foreign" / "step_5.pt"
    save_checkpoint(str(file), content)
    overrides = [f"resume={file}"]
    with pytest.raises(ValueError, match=f"resume={file}: {what}.* use init_from={file}"):
        resume_config(compose(*overrides), overrides)


def test_size_mismatches_name_the_first_differing_parameter(sudoku_dir, tmp_path):
    train(tiny_cfg(sudoku_dir, tmp_path, "max_steps=1", "run_name=r", "eval_at_end=false"))
    run_dir = tmp_path / PROJECT / "r"
    # (the run's 32-wide puzzle embedding takes 2 positions of 16: in 1 it would not fit, a clear error of its own)
    overrides = [f"resume={run_dir}", "arch.hidden_size=16", "arch.puzzle_emb_len=2"]
    shapes = r"parameter \S+ is \[(\d+, )?32\] in the checkpoint but \[(\d+, )?16\] in this model"
    with pytest.raises(ValueError, match=f"resume: {shapes}"):
        train(resume_config(compose(*overrides), overrides))
    with pytest.raises(ValueError, match=f"step_1.pt: {shapes}"):
        train(tiny_cfg(sudoku_dir, tmp_path, "max_steps=1", "run_name=r2", "arch.hidden_size=16",
                       f"init_from={run_dir}"))


# ----------------------------------------------------------------------------- datasets checked when opened

def corrupt_inputs(split: Path) -> None:
    inputs = np.load(split / "all__inputs.npy")
    inputs[3, 5] = 99
    np.save(split / "all__inputs.npy", inputs)


def short_rows(split: Path) -> None:
    np.save(split / "all__inputs.npy", np.load(split / "all__inputs.npy")[:, :80])


def float_labels(split: Path) -> None:
    np.save(split / "all__labels.npy", np.load(split / "all__labels.npy").astype(np.float32))


def bad_index(split: Path) -> None:
    indices = np.load(split / "all__puzzle_indices.npy")
    indices[-1] += 1
    np.save(split / "all__puzzle_indices.npy", indices)


def truncated(split: Path) -> None:
    data = (split / "all__labels.npy").read_bytes()
    (split / "all__labels.npy").write_bytes(data[:len(data) // 2])


@pytest.mark.parametrize("damage, file, message", [
    (corrupt_inputs, "all__inputs.npy", r"must lie in \[0, 11\), got \d+..99"),
    (short_rows, "all__inputs.npy", r"must have shape \[N, 81\] \(seq_len\), got \[\d+, 80\]"),
    (float_labels, "all__labels.npy", "must be an integer array, got dtype float32"),
    (bad_index, "all__puzzle_indices.npy", "must start at 0 and end at"),
    (truncated, "all__labels.npy", "not a readable .npy array"),
])
def test_a_corrupted_split_is_a_one_line_error_naming_the_file(sudoku_dir, tmp_path, damage, file, message):
    data = tmp_path / "data"
    shutil.copytree(sudoku_dir, data)
    damage(data / "test")
    with pytest.raises(ValueError, match=f"{data / 'test' / file}.* {message}"):
        train(tiny_cfg(str(data), tmp_path, "max_steps=1", "run_name=r"))
    assert not (tmp_path / "Data-ACT-torch").exists()  # refused before any training


@pytest.mark.parametrize("file, message", [("tokens.npy", r"token ids must lie in \[0, \d+\)"),
                                           ("trained.npy", r"booleans \(one per token\)")])
def test_a_corrupted_chat_split_is_a_one_line_error_naming_the_file(tmp_path, file, message):
    out, _ = build_tiny(tmp_path)
    path = out / "train" / file
    array = np.load(path)
    if file == "tokens.npy":
        array[0] = 60000  # above the vocabulary
    np.save(path, array if file == "tokens.npy" else array[:-1])
    with pytest.raises(ValueError, match=f"{path}: .*{message}"):
        train(compose_chat(*TINY_LM, f"data_paths=[{out}]", f"checkpoint_dir={tmp_path}", "max_steps=1"))


# ----------------------------------------------------------------------------- builds

KILL_AT_FSYNC = """
import os, sys
sys.path.insert(0, {root!r})
count, kill_at = [0], {k}
real = os.fsync
def fsync(fd):
    count[0] += 1
    if count[0] == kill_at:
        os._exit(9)  # as kill -9: no cleanup runs
    real(fd)
os.fsync = fsync
{build}
"""

BUILDS = {
    "sudoku": ("from dataset.build_sudoku_dataset import SudokuBuildConfig, build\n"
               "build(SudokuBuildConfig(output_dir={out!r}, num_train=8, num_test=4, min_clues=45, max_clues=50, "
               "seed={seed}, quiet=True))"),
    "chat": ("from dataset.build_chat_dataset import ChatBuildConfig, build\n"
             "build(ChatBuildConfig(input_file={records!r}, output_dir={out!r}, max_length=64, train_split=0.5, "
             "seed={seed}))"),
}


def build_in_process(kind: str, out: Path, seed: int, kill_at: int, records: str) -> int:
    script = KILL_AT_FSYNC.format(root=str(ROOT), k=kill_at,
                                  build=BUILDS[kind].format(out=str(out), seed=seed, records=records))
    return subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120).returncode


def snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


# the k-th file write of a build (sudoku: 13 files, chat: 7 with fsync): first, middle, the last one
@pytest.mark.parametrize("kind, kill_at", [("sudoku", 1), pytest.param("sudoku", 7, marks=pytest.mark.slow),
                                           ("sudoku", 13), ("chat", 1), pytest.param("chat", 4, marks=pytest.mark.slow),
                                           ("chat", 7)])
def test_a_killed_rebuild_leaves_the_previous_dataset_whole(tmp_path, kind, kill_at):
    records = write_records(tmp_path / "records", [{"conversations": [{"from": "human", "value": f"question {i}"},
                                                                       {"from": "gpt", "value": f"answer {i}"}]}
                                                    for i in range(6)])
    out = tmp_path / "data"
    assert build_in_process(kind, out, seed=0, kill_at=0, records=records) == 0
    before = snapshot(out)
    assert build_in_process(kind, out, seed=1, kill_at=kill_at, records=records) == 9  # killed mid-build
    assert snapshot(out) == before  # the old dataset, whole: never a mix of two builds
    assert build_in_process(kind, out, seed=1, kill_at=0, records=records) == 0
    assert snapshot(out) != before and sorted(p.name for p in tmp_path.iterdir()) == ["data", "records"]


def test_a_build_refuses_an_output_directory_that_holds_something_else(tmp_path):
    from dataset.build_sudoku_dataset import SudokuBuildConfig, build

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="mine: exists and holds no dataset"):
        build(SudokuBuildConfig(output_dir=str(tmp_path / "mine"), num_train=4, num_test=2, quiet=True))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_the_list_source_removes_repeats_before_splitting(tmp_path, capsys):
    from dataset.build_sudoku_dataset import SudokuBuildConfig, build, generate_set, _rng

    puzzles, _ = generate_set(6, _rng(0, "train"), 40, 45, None)
    lines = ["".join(map(str, p)) for p in puzzles.puzzles.tolist()]
    (tmp_path / "list.txt").write_text("\n".join(lines * 4) + "\n")
    build(SudokuBuildConfig(output_dir=str(tmp_path / "out"), source="list", train_file=str(tmp_path / "list.txt"),
                            test_fraction=0.25))
    assert "18 duplicates" in capsys.readouterr().out
    train_rows = {bytes(r) for r in np.load(tmp_path / "out" / "train" / "all__inputs.npy").tolist()}
    test_rows = {bytes(r) for r in np.load(tmp_path / "out" / "test" / "all__inputs.npy").tolist()}
    assert len(train_rows) + len(test_rows) == 6 and not train_rows & test_rows


def test_the_text_builder_skips_a_file_that_is_not_utf8_naming_it(tmp_path, capsys):
    from dataset.build_text_dataset import TextBuildConfig, build as build_text

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "good.txt").write_text("a story\n\nanother story\n")
    (tmp_path / "in" / "bad.txt").write_bytes(b"caf\xe9 latin-1")
    config = dict(input=[str(tmp_path / "in")], output_dir=str(tmp_path / "out"), doc_separator="blank-line",
                  train_split=1.0)
    assert build_text(TextBuildConfig(**config))["bad_records"] == {"not_utf8": 1}
    assert f"1 not_utf8 (e.g. {tmp_path / 'in' / 'bad.txt'} (byte 3))" in capsys.readouterr().out
    with pytest.raises(ValueError, match=f"{tmp_path / 'in' / 'bad.txt'} \\(byte 3\\): not utf8"):
        build_text(TextBuildConfig(**config, strict=True))


# ----------------------------------------------------------------------------- disks

def tiny_cfg_args(data: str, tmp: Path) -> list[str]:
    """tiny_cfg's overrides, for the command line."""
    return [f"data_paths=[{data}]", f"checkpoint_dir={tmp}", *TINY, FLOAT32]


def test_a_full_disk_at_save_time_is_one_line_and_leaves_no_partial_file(sudoku_dir, tmp_path):
    def small_files():  # the checkpoint (~100 KB) does not fit, the config and metrics do
        resource.setrlimit(resource.RLIMIT_FSIZE, (32_000, 32_000))

    args = [str(ROOT / "pretrain.py"), *tiny_cfg_args(sudoku_dir, tmp_path), "max_steps=2",
            "run_name=r", "eval_at_end=false"]
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120,
                          preexec_fn=small_files)
    run_dir = tmp_path / PROJECT / "r"
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {run_dir / 'step_2.pt'}: cannot write it "
                                                           "(File too large); ")
    assert proc.stderr.strip().endswith("MiB free there") and not list(run_dir.glob("*.tmp"))


def test_an_unwritable_checkpoint_dir_is_one_line_before_training(sudoku_dir, tmp_path):
    (tmp_path / "a-file").write_text("")
    proc = run_cli(*tiny_cfg_args(sudoku_dir, tmp_path / "a-file" / "checkpoints"), "max_steps=2")
    assert proc.returncode == 1
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {tmp_path / 'a-file' / 'checkpoints'}") and "MiB free there" in line


@pytest.mark.parametrize("builder, options", [
    ("sudoku", ["--num-train", "32", "--num-test", "8", "--min-clues", "45", "--max-clues", "50"]),
    ("maze", ["--num-train", "4", "--num-test", "2", "--min-path-length", "30"])])
def test_a_full_disk_during_a_build_is_one_line_and_leaves_nothing(tmp_path, builder, options):
    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (2_000, 2_000))

    proc = subprocess.run([sys.executable, "-m", f"dataset.build_{builder}_dataset", "--output-dir",
                           str(tmp_path / "out"), *options],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, preexec_fn=small_files)
    assert proc.returncode == 1
    assert re.fullmatch(r"error: \S+all__inputs.npy: cannot write it \(File too large\); [\d,]+ MiB free there",
                        proc.stderr.strip())
    assert list(tmp_path.iterdir()) == []  # no dataset, no staging directory


def test_a_failed_write_removes_its_temporary_file(tmp_path):
    script = (f"import resource, sys; sys.path.insert(0, {str(ROOT)!r})\n"
              "import torch\nfrom utils.checkpoint import save_checkpoint\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, 10_000))\n"
              f"save_checkpoint({str(tmp_path / 'step_1.pt')!r}, {{'model': torch.zeros(100_000)}})")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert "WriteError" in proc.stderr and "step_1.pt: cannot write it (File too large)" in proc.stderr
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- generate.py

@pytest.mark.parametrize("option, value, rule", [
    ("--temperature", "nan", "temperature must be a number >= 0"),
    ("--temperature", "-1", "temperature must be a number >= 0"),
    ("--top-p", "2", r"top_p must be a number in \(0, 1\]"),
    ("--top-k", "-3", "top_k must be a whole number >= 0"),
    ("--max-new-tokens", "0", "max_new_tokens must be a whole number >= 1"),
    ("--repetition-penalty", "0", "repetition_penalty must be a number > 0"),
    ("--seed", str(2 ** 64), r"seed must be a whole number in \[-2\^63, 2\^63\)"),
])
def test_generate_refuses_bad_sampling_options(capsys, option, value, rule):
    from generate import parse_args

    with pytest.raises(SystemExit) as exit_:
        parse_args(["--checkpoint", "x", "--prompt", "hi", option, value])
    assert exit_.value.code == 2 and re.search(rule, capsys.readouterr().err)


@pytest.mark.parametrize("command, field", [("/temp nan", "temperature"), ("/topp 2", "top_p"), ("/topk -3", "top_k"),
                                            ("/max 0", "max_new_tokens")])
def test_chat_commands_refuse_bad_sampling_values(capsys, command, field):
    from generate import Generator
    from utils.sampling import SamplingParams

    generator = Generator.__new__(Generator)  # the commands need only the settings
    generator.params = SamplingParams()
    generator.command(command, [])
    assert capsys.readouterr().out.startswith(f"error: {field} must be") and generator.params == SamplingParams()


def test_generate_puzzle_input_errors(tmp_path):
    from tasks.sudoku import TEXT

    with pytest.raises(ValueError, match="the clues conflict \\(digit 5 appears twice in row 1\\)"):
        TEXT.read("55" + "." * 79)
    with pytest.raises(FileNotFoundError, match="/missing.txt: no such puzzle file"):
        TEXT.read("/missing.txt")
    with pytest.raises(ValueError, match=f"{tmp_path}: a directory, not a puzzle file"):
        TEXT.read(str(tmp_path))


def test_generate_output_file_into_a_missing_directory_fails_first(tmp_path, capsys):
    from generate import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--checkpoint", "x", "--input-file", "in.jsonl", "--output-file", str(tmp_path / "no" / "a.jsonl")])
    assert "does not exist" in capsys.readouterr().err
