"""End-to-end training: the loss falls, evaluation reports per-step accuracy, resume is exact, bad input fails clearly."""
import json
import os
from pathlib import Path

import pytest
import torch

from conftest import FLOAT32, ROOT, TINY, compose, grid_task, run_cli, tiny_cfg, with_puzzle_ids, write_tasks
from pretrain import evaluation_steps, train
from utils.checkpoint import find_checkpoint, load_checkpoint
from utils.run import new_run_dir, resume_config

def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("epochs, interval, skip, total, expected", [
    (50, 10, 0, 781, {156, 312, 469, 625, 781}),  # the default job
    (1.2, 0.1, 0, 12, set(range(1, 13))),  # 1.2 / 0.1 is 11.999999999999998 in floats: still 12
    (1, 0.1, 0, 10, set(range(1, 11))),  # 1 // 0.1 is 9.0
    (1, 0.3, 0, 30, {10, 20, 30}),  # whole intervals only, the last at the end
    (2, 0.5, 2, 8, {6, 8}),  # the first two left out
    (1, 5, 0, 7, {7}),  # an interval past the end: one evaluation, at the end
])
def test_evaluation_steps(epochs, interval, skip, total, expected):
    assert evaluation_steps(epochs, interval, skip, total) == expected


def test_tiny_training_run_lowers_loss_and_evaluates(sudoku_dir, tmp_path, capsys):
    results = train(tiny_cfg(sudoku_dir, tmp_path, "max_steps=40", "run_name=lower"))
    run_dir = tmp_path / "Sudoku-tiny-ACT-torch" / "lower"
    assert ", stopping at 40 (max_steps), batch 16;" in capsys.readouterr().out  # the schedule is longer
    losses = [m["train/lm_loss"] for m in metrics(run_dir) if "train/lm_loss" in m]
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5
    # evaluation: every sample runs halt_max_steps, accuracy after each step is reported
    assert results["test/count"] == 16 and results["test/steps"] == 3
    assert {f"test/exact_accuracy@step{k}" for k in (1, 2, 3)} <= set(results)
    assert 0.0 <= results["test/accuracy"] <= 1.0
    assert (run_dir / "config.yaml").exists() and (run_dir / "step_40.pt").exists()


def final_state(run_dir: Path) -> dict:
    return load_checkpoint(find_checkpoint(str(run_dir)))


@pytest.mark.parametrize("optimizer", ["adam_atan2", "adamw"])
def test_resume_is_exact(sudoku_dir, tmp_path, optimizer):
    extra = [f"optimizer={optimizer}", "ema=true", "arch.halt_exploration_prob=0.5", "eval_at_end=false"]
    train(tiny_cfg(sudoku_dir, tmp_path, "max_steps=12", "run_name=straight", *extra))
    train(tiny_cfg(sudoku_dir, tmp_path, "max_steps=6", "run_name=split", *extra))
    split_dir = tmp_path / "Sudoku-tiny-ACT-torch" / "split"
    with open(split_dir / "metrics.jsonl", "a") as f:  # a crash after logging steps past the last checkpoint
        f.writelines(json.dumps({"step": s, "train/lm_loss": 9.0}) + "\n" for s in (7, 8))
        f.write('{"step": 9, "train/lm')  # cut off mid-line
    # resuming needs only the run: its saved config is used, with this command line's overrides on top
    overrides = [f"resume={split_dir}", "max_steps=12"]
    train(resume_config(compose(*overrides), overrides))

    a, b = final_state(tmp_path / "Sudoku-tiny-ACT-torch" / "straight"), final_state(split_dir)
    assert a["step"] == b["step"] == 12 and a["data"] == b["data"]
    for key in ("model", "ema", "carry"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs after resume"
    # the resumed run logs steps 7.. once, as the straight run did
    train_logs = [[(m["step"], m["train/lm_loss"]) for m in metrics(tmp_path / "Sudoku-tiny-ACT-torch" / run)
                   if "train/lm_loss" in m] for run in ("straight", "split")]
    assert train_logs[1] == train_logs[0] and [s for s, _ in train_logs[0]] == list(range(1, 13))
    # and training did continue after the resume
    halfway = load_checkpoint(str(split_dir / "step_6.pt"))
    assert not torch.equal(halfway["model"]["model.inner.lm_head.weight"], b["model"]["model.inner.lm_head.weight"])


def test_resume_refuses_to_change_a_config_group(sudoku_dir, tmp_path):
    train(tiny_cfg(sudoku_dir, tmp_path, "max_steps=1", "run_name=r", "eval_at_end=false"))
    overrides = [f"resume={tmp_path / 'Sudoku-tiny-ACT-torch' / 'r'}", "arch=transformer"]
    with pytest.raises(ValueError, match="arch=transformer"):
        resume_config(compose(*overrides), overrides)


@pytest.fixture
def hydra_run(monkeypatch):
    """compose() with Hydra's runtime set as `python pretrain.py OVERRIDES` has it (the group choices)."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    def run(*overrides: str):
        with initialize_config_dir(config_dir=str(ROOT / "config"), version_base="1.3"):
            cfg = hydra_compose("cfg_pretrain", overrides=list(overrides), return_hydra_config=True)
        monkeypatch.setattr(HydraConfig.instance(), "cfg", None)  # restored after the test
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
        return cfg
    return run


def test_runs_are_named_after_the_arch_option(hydra_run, tmp_path):
    # composed without Hydra's runtime (tests): arch.name; as pretrain.py runs: the option chosen
    assert Path(new_run_dir(compose("arch=trm_chat", f"checkpoint_dir={tmp_path}"))).name.startswith("trm-2")
    assert Path(new_run_dir(hydra_run("arch=trm_chat", f"checkpoint_dir={tmp_path}"))).name.startswith("trm_chat-2")


def test_resume_latest_takes_the_newest_run_and_accepts_its_own_group_options(sudoku_dir, tmp_path, hydra_run):
    for run, age in (("old", 1000), ("new", 2000)):
        train(hydra_run(*TINY[:-4], f"data_paths=[{sudoku_dir}]", f"checkpoint_dir={tmp_path}", "optimizer=adamw",
                        "logger.mode=disabled", "max_steps=1", "eval_at_end=false", f"run_name={run}"))
        os.utime(tmp_path / "Sudoku-tiny-ACT-torch" / run, (age, age))
    project = tmp_path / "Sudoku-tiny-ACT-torch"
    assert (project / "new" / "hydra_choices.yaml").read_text().count("optimizer: adamw") == 1
    for resume in ("true", "latest"):
        overrides = [f"resume={resume}", f"data_paths=[{sudoku_dir}]", f"checkpoint_dir={tmp_path}", "max_steps=2",
                     "optimizer=adamw", "dataset=sudoku"]
        cfg = resume_config(compose(*overrides), overrides)
        assert cfg.resume == str(project / "new" / "step_1.pt") and cfg.max_steps == 2
    train(cfg)
    assert (project / "new" / "step_2.pt").exists() and not (project / "old" / "step_2.pt").exists()
    overrides = ["resume=latest", f"data_paths=[{sudoku_dir}]", f"checkpoint_dir={tmp_path}", "optimizer=adam_atan2"]
    with pytest.raises(ValueError, match="'optimizer=adam_atan2' would change .* started with optimizer=adamw"):
        resume_config(compose(*overrides), overrides)
    with pytest.raises(FileNotFoundError, match="Maze-ACT-torch/\\*/latest: the pattern matches no checkpoint"):
        overrides = ["resume=latest", "data_paths=[data/maze]", f"checkpoint_dir={tmp_path}"]
        resume_config(compose(*overrides), overrides)


def test_missing_dataset_directory_is_a_clear_error(tmp_path):
    proc = run_cli("dataset=puzzle", f"data_paths=[{tmp_path / 'nowhere'}]", "logger.mode=disabled",
                   f"checkpoint_dir={tmp_path}")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "nowhere" in last and "not found" in last


def test_unknown_arch_is_a_hydra_error(tmp_path):
    proc = run_cli("arch=nope", "logger.mode=disabled")
    assert proc.returncode != 0
    assert "arch" in proc.stderr and "nope" in proc.stderr


@pytest.mark.slow
def test_compiled_training_matches_eager(sudoku_dir, tmp_path):
    """torch.compile (compile=true) trains the same model as eager mode, up to float round-off."""
    eager = train(tiny_cfg(sudoku_dir, tmp_path, "max_steps=3", "run_name=eager", "compile=false"))
    compiled = train(tiny_cfg(sudoku_dir, tmp_path, "max_steps=3", "run_name=compiled", "compile=true"))
    a = final_state(tmp_path / "Sudoku-tiny-ACT-torch" / "eager")["model"]
    b = final_state(tmp_path / "Sudoku-tiny-ACT-torch" / "compiled")["model"]
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-4, rtol=1e-4)
    assert abs(eager["test/accuracy"] - compiled["test/accuracy"]) < 1e-3


def test_compiled_cpu_training_is_reproducible(sudoku_dir, tmp_path):
    """Same seed, same result with compile=true too: the compiled CPU kernels' atomic gradient sums made two runs
    differ (deterministic algorithms are on for the run, and off again after it)."""
    for name in ("a", "b"):
        train(tiny_cfg(sudoku_dir, tmp_path, "max_steps=20", f"run_name={name}", "compile=true", "eval_at_end=false"))
        assert not torch.are_deterministic_algorithms_enabled()
    a, b = (final_state(tmp_path / "Sudoku-tiny-ACT-torch" / name)["model"] for name in ("a", "b"))
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


@pytest.mark.parametrize("k", [2, 4])
def test_gradient_accumulation_trains_like_the_whole_batch(sudoku_dir, tmp_path, k):
    """k micro-batches per step give the step of the whole batch: weights, EMA, puzzle embeddings (sign-SGD over
    every micro-batch's rows) and the ACT carry, within float32 round-off. (Exploration off: with it on, the
    micro-batches draw their own numbers.)"""
    data = with_puzzle_ids(sudoku_dir, tmp_path / "ids")
    common = ["max_steps=6", "ema=true", "arch.halt_exploration_prob=0", "eval_at_end=false"]
    train(tiny_cfg(data, tmp_path, *common, "run_name=whole"))
    train(tiny_cfg(data, tmp_path, *common, f"grad_accum_steps={k}", "run_name=micro"))
    project = tmp_path / "Ids-ACT-torch"
    a, b = final_state(project / "whole"), final_state(project / "micro")
    assert a["step"] == b["step"] == 6
    for key in ("model", "ema", "carry"):
        for name in a[key]:
            x, y = a[key][name], b[key][name]
            if x.is_floating_point():
                tol = 5e-4 if key == "carry" else 1e-5  # latents pass through many more float32 operations
                torch.testing.assert_close(x, y, rtol=tol, atol=tol, msg=lambda m: f"{key}.{name}: {m}")
            else:
                assert torch.equal(x, y), f"{key}.{name} differs"
    with pytest.raises(ValueError, match="grad_accum_steps=3 must divide the batch of each process"):
        train(tiny_cfg(data, tmp_path, "max_steps=1", "grad_accum_steps=3"))


@pytest.mark.parametrize("task", ["sudoku", "maze", "arc"])
def test_every_puzzle_task_trains_and_evaluates_without_a_puzzle_embedding(task, sudoku_dir, tmp_path):
    """arch.puzzle_emb_ndim=0: no per-puzzle rows, no sign-SGD; the network sees the tokens alone."""
    data = tmp_path / "data"
    if task == "sudoku":
        data_args = [f"data_paths=[{with_puzzle_ids(sudoku_dir, data)}]"]  # identifiers the model now ignores
    elif task == "maze":
        data_args = ["dataset=maze", f"dataset.build_path={data}", "dataset.build.num_train=4", "dataset.build.num_test=2",
                     "dataset.build.min_path_length=30"]
    else:
        write_tasks(tmp_path / "src", "training", {"tr": grid_task(1)})
        write_tasks(tmp_path / "src", "evaluation", {"ev": grid_task(2, n_test=2)})
        data_args = ["dataset=arc", f"dataset.build_path={data}", f"dataset.build.input_dir={tmp_path / 'src'}",
                     "dataset.build.input_prefix=null", "dataset.build.subsets=[training,evaluation]",
                     "dataset.build.num_aug=1", "+dataset.build.quiet=true"]
    cfg = compose(*data_args, f"checkpoint_dir={tmp_path}", "run_name=r", *TINY, FLOAT32, "arch=trm",
                  "arch.puzzle_emb_ndim=0", "arch.H_cycles=1", "arch.halt_max_steps=1", "global_batch_size=4",
                  "max_steps=2")
    results = train(cfg)
    assert results["test/count"] > 0 and 0 <= results["test/accuracy"] <= 1
    if task == "arc":
        assert results["test/arc_tasks"] == 1 and "test/pass@2" in results
    ckpt = final_state(tmp_path / "Data-ACT-torch" / "r")
    assert not any("puzzle_emb" in k for k in ckpt["model"]) and len(ckpt["optimizers"]) == 1


def test_a_run_with_two_test_datasets_reports_their_total_and_each_and_picks_its_best(sudoku_dir, tmp_path):
    """data_paths_test with two datasets: the metrics of each (prefixed by its set) and of both together
    (unprefixed, count-weighted), so that checkpoint_best_metric=auto finds exact_accuracy. (It found no metric
    and the run stopped at its first evaluation.)"""
    from dataset.build_sudoku_dataset import SudokuBuildConfig, build

    other = tmp_path / "other"  # 8 other test puzzles: the total weighs each set by its count
    build(SudokuBuildConfig(output_dir=str(other), num_train=8, num_test=8, min_clues=45, max_clues=50, num_aug=2,
                            seed=1, quiet=True))
    results = train(tiny_cfg(sudoku_dir, tmp_path, "max_steps=2", "run_name=two",
                             f"data_paths_test=[{sudoku_dir},{other}]"))
    sets = sorted({k.removeprefix("test/").rsplit("/", 1)[0] for k in results if k.count("/") > 1})
    assert len(sets) == 2 and sorted(results[f"test/{s}/count"] for s in sets) == [8, 16]
    assert results["test/count"] == 24 and results[f"test/{sets[0]}/accuracy"] != results[f"test/{sets[1]}/accuracy"]
    for metric in ("exact_accuracy", "accuracy", "exact_accuracy@step3", "halt_step"):
        both = sum(results[f"test/{s}/{metric}"] * results[f"test/{s}/count"] for s in sets) / 24
        assert results[f"test/{metric}"] == pytest.approx(both)
    assert json.loads((tmp_path / "Sudoku-tiny-ACT-torch" / "two" / "best.json").read_text())["metric"] == \
        "test/exact_accuracy"


def test_init_from_a_run_with_an_ema_starts_from_the_ema_weights(sudoku_dir, tmp_path):
    """The weights a run with an EMA evaluates, names best, generates and exports with are the EMA's: init_from
    starts from them too (as from its Hugging Face export; it took the raw weights)."""
    from pretrain import start_run
    from utils.distributed import init_distributed

    train(tiny_cfg(sudoku_dir, tmp_path, "max_steps=3", "ema=true", "ema_rate=0.5", "run_name=a", "eval_at_end=false"))
    saved = final_state(tmp_path / "Sudoku-tiny-ACT-torch" / "a")
    d, device = init_distributed("cpu")
    run = start_run(tiny_cfg(sudoku_dir, tmp_path, f"init_from={tmp_path / 'Sudoku-tiny-ACT-torch' / 'a'}",
                             "run_name=b"), d, device, None)
    weights = dict(run.state.model.named_parameters())
    assert saved["ema"].keys() == weights.keys()
    for name, value in saved["ema"].items():
        assert not torch.equal(value, saved["model"][name]) or "q_head" in name  # (a 3-step EMA differs)
        assert torch.equal(weights[name], value), name
    assert torch.equal(run.state.model.state_dict()["model.inner.puzzle_emb.weights"],
                       saved["model"]["model.inner.puzzle_emb.weights"])  # buffers: the live ones
    run.logger.finish()


def test_ema_rate_auto_follows_the_run_length_and_is_recorded(sudoku_dir, tmp_path):
    """auto: the paper's 0.999 for its recipes' lengths (~65k steps on Sudoku), 0.99 for short runs such as the
    default job; the run's config records the number, so a resume keeps it."""
    from models.ema import auto_ema_rate

    paper = compose("+experiment=sudoku_extreme_mlp", "ema_rate=auto")
    steps = paper.epochs * 1000 / paper.global_batch_size  # 1,000 puzzle groups of one augmented example each
    assert auto_ema_rate(int(steps)) == 0.999 and auto_ema_rate(781) == 0.99 and auto_ema_rate(10_000) == 0.995
    assert compose().ema_rate == "auto"
    train(tiny_cfg(sudoku_dir, tmp_path, "max_steps=2", "ema=true", "run_name=a", "eval_at_end=false"))
    assert final_state(tmp_path / "Sudoku-tiny-ACT-torch" / "a")["config"]["ema_rate"] == 0.99
