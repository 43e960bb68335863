"""examples/results.py and its report: the choices it makes (learning rate, resume, leaks) and the page it writes,
on fabricated run directories (training itself is tested elsewhere)."""
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import examples.results as results
import examples.results_report as report
from conftest import compose


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(results, "ROOT", tmp_path)
    return tmp_path


def write_summary(job: results.Job, exact: float, token: float = 0.9, **extra) -> None:
    job.run_dir.mkdir(parents=True, exist_ok=True)
    summary = {"test": {"test/exact_accuracy": exact, "test/accuracy": token}, "wall_s": 10.0, "parameters": 1000,
               "passes_per_act_step": 6, "config": {"arch": {"L_layers": 2}}, **extra}
    (job.run_dir / "summary.json").write_text(json.dumps(summary))


def test_the_learning_rate_is_chosen_on_validation_and_the_seeds_follow_it(root):
    assert results.best_lr("trm_mlp") is None and results.final_jobs(3)["trm_mlp"] == []  # sweep not run
    for lr, exact in zip(results.LRS, (0.5, 0.7, 0.7)):
        write_summary(results.Job("recursion", f"trm_mlp-lr{lr:g}-s0"), exact, token=0.8 if lr == 0.01 else 0.9)
    assert results.best_lr("trm_mlp") == 3e-3  # tie on exact accuracy: the better token accuracy
    jobs = results.final_jobs(3)["trm_mlp"]
    assert [j.name for j in jobs] == ["trm_mlp-lr0.003-s0", "trm_mlp-lr0.003-s1", "trm_mlp-lr0.003-s2"]
    assert "lr=0.003" in jobs[2].overrides and "seed=2" in jobs[2].overrides
    assert "data_paths_test=[data/results/valid]" in jobs[2].overrides  # the test sets choose nothing


def test_a_finished_run_is_skipped_and_an_interrupted_one_resumes(root, monkeypatch):
    calls = []
    monkeypatch.setattr(results, "run_process", lambda args, log, threads: calls.append(args))
    done, killed, fresh = (results.Job("cycles", name, ["seed=0"]) for name in ("done", "killed", "fresh"))
    write_summary(done, 0.5)
    killed.run_dir.mkdir(parents=True)
    (killed.run_dir / "step_100.pt").write_bytes(b"")
    fresh.run_dir.mkdir(parents=True)
    (fresh.run_dir / "metrics.jsonl").write_text("")  # killed before its first checkpoint
    for job in (done, killed, fresh):
        results.train(job, threads=1)
    assert len(calls) == 2
    assert f"resume={killed.run_dir}" in calls[0]
    assert not any(a.startswith("resume=") for a in calls[1]) and not fresh.run_dir.exists()
    with pytest.raises(ValueError, match="done: started with other settings"):  # a budget changed since
        results.train(results.Job("cycles", "done", ["seed=0", "max_steps=10"]), threads=1)


def test_runs_keep_the_defaults_the_page_was_trained_with(root, monkeypatch):
    """The default job now keeps an EMA; the page's runs do not, unless their overrides ask for one."""
    calls = []
    monkeypatch.setattr(results, "run_process", lambda args, log, threads: calls.append(args[1:]))
    monkeypatch.setattr(results, "best_lr", lambda model, experiment="recursion": 3e-3)
    ablations = results.ablation_jobs(1)
    for job in (results.final_jobs(1)["trm_mlp"][0], ablations["ema"][0], results.chat_jobs(1)["trm_H2L1"][0]):
        results.train(job, threads=1)
    baseline, ema, chat = (compose(*(a for a in args if not a.startswith("--")),
                                   config="cfg_chat" if "--config-name=cfg_chat" in args else "cfg_pretrain")
                           for args in calls)
    assert compose().ema is True and not baseline.ema and not chat.ema
    assert ema.ema is True and ema.ema_rate == 0.99


def test_a_held_out_puzzle_that_is_a_training_row_is_refused(root):
    rows = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for path, data in ((results.TRAIN_DATA + "/train", rows), ("data/results/valid/test", rows[:1] + 100),
                       ("data/results/leaky/test", rows[2:])):
        (root / path).mkdir(parents=True)
        np.save(root / path / "all__inputs.npy", data)
    results.check_disjoint({"valid": "data/results/valid"}, results.TRAIN_DATA)
    with pytest.raises(ValueError, match="data/results/leaky: 1 of its 1 test puzzles are rows of"):
        results.check_disjoint({"valid": "data/results/valid", "leaky": "data/results/leaky"}, results.TRAIN_DATA)


def test_the_report_replaces_only_its_blocks(root, monkeypatch, tmp_path):
    page = tmp_path / "results.md"
    page.write_text("prose before\n<!-- generated:cycles -->\nold table\n<!-- /generated:cycles -->\nprose after\n")
    monkeypatch.setattr(report, "PAGE", page)
    monkeypatch.setattr(report, "FIGURES", tmp_path / "figures")
    monkeypatch.setattr(report, "CYCLES", [(1, 1), (2, 2)])
    for seed, exact in enumerate((0.2, 0.4)):
        write_summary(results.Job("cycles", f"H2-L2-s{seed}"), exact)
    report.write_report(seeds=3)
    text = page.read_text()
    assert text.startswith("prose before\n") and text.endswith("prose after\n") and "old table" not in text
    assert "| 2 | 2 | 6 | 24 | 30.0 ± 14.1 (n=2) |" in text  # mean and sample deviation of the two seeds
    assert "| 1 | 1 | - |" in text  # a cell not run yet


def test_a_hard_list_becomes_a_test_only_set(root, sudoku_dir):
    listed = np.load(Path(sudoku_dir) / "test" / "all__inputs.npy")[1:4]  # [0] is the donor
    hard = root / "top3.txt"
    hard.write_text("".join("".join("." if v == 1 else str(v - 1) for v in row) + "\n" for row in listed))
    path = results.build_list_set(str(hard), donor=sudoku_dir)
    built = np.load(root / path / "test" / "all__inputs.npy")
    assert sorted(map(bytes, built)) == sorted(map(bytes, listed))  # every listed puzzle, nothing else
    assert len(np.load(root / path / "train" / "all__inputs.npy")) == 1  # the donor puzzle, never scored


def chat_summary(job: results.Job, loss: float, probes: dict[str, float], arch: str = "transformer") -> None:
    write_summary(job, 0.0, test={"test/loss": loss, **{f"test/probe/{k}": v for k, v in probes.items()}},
                  parameters=164994, passes_per_act_step=1, seq_len=256,
                  config={"arch": {"name": arch, "L_layers": 2}, "global_batch_size": 8})


def test_the_chat_block_averages_families_then_seeds(root):
    jobs = results.chat_jobs(3)
    chat_summary(jobs["transformer_2L"][0], 2.0, {"arithmetic_L1": 0.2, "counting_L1": 0.4,
                                                  "arithmetic_L2": 0.0, "counting_L2": 1.0})
    chat_summary(jobs["transformer_2L"][1], 2.5, {"arithmetic_L1": 0.4, "counting_L1": 0.6,
                                                  "arithmetic_L2": 0.5, "counting_L2": 0.5})
    text = report.chat_block(seeds=3)
    # level 1: family means 0.3 and 0.5 over the seeds; level 2: 0.5 and 0.5; 6 x 165k x 8 x 256 FLOP per step
    assert "| transformer_2L | transformer_chat, 2 layers, 1 pass | 165k | 2 (1 x 2) | 2.0 | 2.250 ± 0.354 | " \
           "40.0 ± 14.1 (n=2) | 50.0 ± 0.0 | 10 |" in text
    assert "| transformer_8L | transformer_chat, 8 layers (the TRM's layer applications per token) | - |" in text
    assert "| arithmetic | 25 | - | - | - | - |" in text and "| counting | 75 | - |" in text  # level 2, per family
    assert report.chat_block(seeds=0) == "(not run yet: `python examples/results.py chat`)"


def test_the_stories_runs_fine_tune_their_pretraining_run_on_the_same_budget(root, monkeypatch):
    jobs = results.chat_jobs(3)
    for seed, (plain, stories) in enumerate(zip(jobs["trm_H2L1"], jobs["stories_trm_H2L1"])):
        pretrain = results.pretrain_job("trm_H2L1", seed)
        assert stories.overrides == [*plain.overrides, f"init_from={pretrain.run_dir.relative_to(results.ROOT)}"]
        assert f"data_paths=[{results.STORIES}]" in pretrain.overrides and f"seed={seed}" in pretrain.overrides
    trained = []
    monkeypatch.setattr(results, "build_chat_data", lambda: None)
    monkeypatch.setattr(results, "train", lambda job, threads: trained.append(job.name))
    results.run_chat(SimpleNamespace(seeds=2, jobs=1, threads=1), {})
    assert len(trained) == 2 * (len(results.CHAT_MODELS) + 2 * len(results.STORIES_MODELS))
    assert max(trained.index(f"pretrain_{m}-s{s}") for m in results.STORIES_MODELS for s in (0, 1)) < \
        min(trained.index(f"stories_{m}-s{s}") for m in results.STORIES_MODELS for s in (0, 1))


def test_the_ablations_train_at_the_trm_mlps_rate_and_report_the_difference_to_it(root, monkeypatch):
    assert results.ablation_jobs(2)["single_z"] == []  # the TRM-MLP's sweep has not chosen a rate yet
    for lr, exact in zip(results.LRS, (0.5, 0.4, 0.3)):
        write_summary(results.Job("recursion", f"trm_mlp-lr{lr:g}-s0"), exact, config={"arch": {"halt_max_steps": 4}})
    jobs = results.ablation_jobs(2)
    assert [j.name for j in jobs["single_z"]] == ["single_z-s0", "single_z-s1"]
    assert {"arch=trm_mlp", "arch.single_z=true", "lr=0.001", "seed=1"} <= set(jobs["single_z"][1].overrides)

    def finish(job, exact):  # a finished run and its scores on the test split (what evaluate() writes)
        if job.summary() is None:  # (seed 0 of the TRM-MLP is its sweep's run)
            write_summary(job, 0.0, config={"arch": {"halt_max_steps": 4}})
        results.eval_file(job, "test", 4).write_text(json.dumps({"exact_accuracy": exact, "accuracy": 0.9}))

    for job, exact in zip(results.final_jobs(2)["trm_mlp"], (0.8, 0.6)):
        finish(job, exact)
    finish(jobs["single_z"][0], 0.5)
    text = report.ablations_block(seeds=2)
    assert "| trm_mlp | the TRM-MLP of the table above | 1k | 70.0 ± 14.1 (n=2) | - |" in text
    assert "| single_z | one latent for the reasoning and the answer | 1k | 50.0 (n=1) | -20.0 |" in text
    assert "| hrm_style | both: HRM's two networks and 1-step gradient | - |" in text  # not run yet


def test_the_maze_runs_sweep_and_choose_on_their_own_data(root):
    sweep, _ = results.recursion_jobs(2, "maze")
    assert {j.name.split("-lr")[0] for j in sweep} == {"trm_mlp", "transformer_mlp_2L", "transformer_mlp_12L"}
    assert all({"dataset=maze", f"data_paths_test=[{results.MAZE_VALID}]"} <= set(j.overrides) for j in sweep)
    for experiment, scores in (("maze", (0.1, 0.2, 0.3)), ("recursion", (0.3, 0.2, 0.1))):
        for lr, exact in zip(results.LRS, scores):
            write_summary(results.Job(experiment, f"trm_mlp-lr{lr:g}-s0"), exact)
    assert results.best_lr("trm_mlp", "maze") == 1e-2 and results.best_lr("trm_mlp") == 1e-3
    assert results.final_jobs(2, "maze")["trm_mlp"][1].run_dir == root / "checkpoints/results-maze/trm_mlp-lr0.01-s1"


def test_verify_trains_a_finished_run_again_and_names_what_differs(root, monkeypatch):
    import torch

    def finish(job, weight, exact):  # a finished run as pretrain.py leaves it: final.json -> its checkpoint
        write_summary(job, exact)
        torch.save({"model": {"w": torch.tensor([weight, 2.0])}, "step": 10}, job.run_dir / "step_10.pt")
        (job.run_dir / "final.json").write_text(json.dumps({"checkpoint": "step_10.pt", "step": 10}))

    original = results.Job("cycles", "H1-L1-s0", ["arch=trm_mlp", "seed=0"])
    finish(original, 1.0, 0.5)
    results.check_settings(original)  # records its overrides, as train() does
    trained = []

    def rerun(args, log, threads, weight=1.0, exact=0.5):
        trained.append(args)
        finish(results.Job("verify", "cycles-H1-L1-s0"), weight, exact)

    monkeypatch.setattr(results, "run_process", rerun)
    assert results.verify("cycles/H1-L1-s0", threads=1) == []
    assert {"arch=trm_mlp", "seed=0", "run_name=cycles-H1-L1-s0"} <= set(trained[0])  # its own overrides, elsewhere
    for path in (root / "checkpoints/results-verify").iterdir():  # (a finished verification is reused by name)
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    monkeypatch.setattr(results, "run_process", lambda *a: rerun(*a, weight=1.5, exact=0.25))
    assert results.verify("cycles/H1-L1-s0", threads=1) == ["weights w", "test/exact_accuracy: 0.5 vs 0.25"]
    with pytest.raises(SystemExit, match="not a finished run"):
        results.verify("cycles/H9-L9-s0", threads=1)


def test_the_report_shows_every_seed_that_was_trained(root, monkeypatch):
    assert results.seeds_trained() == 0
    for seed in (0, 4):
        write_summary(results.Job("maze", f"trm_mlp-lr0.003-s{seed}"), 0.1)
    write_summary(results.Job("cycles", "H1-L1-s1"), 0.1)
    assert results.seeds_trained() == 5
    shown = []
    monkeypatch.setattr(report, "write_report", shown.append)
    results.main(["report"])
    results.main(["report", "--seeds", "2"])
    assert shown == [5, 2]


@pytest.mark.parametrize("args, message", [
    (["report", "--seeds", "-1"], "--seeds, --jobs and --threads must be >= 1, got -1, 2 and 1"),
    (["cycles", "--jobs", "0"], "--seeds, --jobs and --threads must be >= 1, got None, 0 and 1"),
    (["test_time", "--hard-list", "top95-typo.txt"], "--hard-list top95-typo.txt: no such file")])
def test_bad_options_are_usage_errors_before_any_data_is_built(root, monkeypatch, capsys, args, message):
    monkeypatch.setattr(results, "build_data", lambda *a: pytest.fail("started building"))
    with pytest.raises(SystemExit) as exit_:
        results.main(args)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_a_bad_line_in_the_hard_list_is_one_error_line_before_any_data_is_built(root, monkeypatch, tmp_path):
    bad = tmp_path / "hard.txt"
    bad.write_text("12345\n")
    monkeypatch.setattr(results, "build_data", lambda *a: pytest.fail("started building"))
    with pytest.raises(SystemExit) as exit_:
        results.main(["test_time", "--hard-list", str(bad)])
    assert str(exit_.value.code).startswith(f"error: {bad}:1: ")
