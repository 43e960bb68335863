"""Test-time puzzle embeddings (evaluators/arc_fit.py): a new task's copies and their placement, fitting that
moves only the new rows, seeded answers, generate.py --arc-task, the resumable set evaluator, and (slow) fitting
that solves tasks of a synthetic family the model never trained on."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, arc_data_dir, grid_task, with_nan_ema, write_tasks
from evaluators.arc_fit import FitSettings, fresh_rows, main as set_main, solve_task, task_rows
from generate import main as generate_main
from models import build_model
from tasks.arc import Task, decode_grid, grid_offset, parse_task
from utils.checkpoint import load_trained_model, save_checkpoint

ARCH = dict(name="trm", hidden_size=16, num_heads=1, expansion=2, L_layers=1, H_cycles=1, L_cycles=1,
            halt_max_steps=1, puzzle_emb_ndim=16, puzzle_emb_len=1, pos_encodings="none", forward_dtype="float32")
RUN_CONFIG = {"dataset": {"name": "puzzle", "task": "arc", "build": {"num_aug": 1, "translate_all": False}},
              "puzzle_emb_lr": 0.1, "puzzle_emb_weight_decay": 0.0, "data_paths": []}


@pytest.fixture(scope="module")
def arc_run(tmp_path_factory) -> Path:
    """A run directory holding an (untrained) ARC model's checkpoint, as pretrain.py writes it."""
    run = tmp_path_factory.mktemp("arc-run")
    model_config = {**ARCH, "seq_len": 900, "vocab_size": 12, "num_puzzle_identifiers": 7}
    torch.manual_seed(0)
    model = build_model(model_config)
    save_checkpoint(str(run / "step_1.pt"), {"model": model.state_dict(), "ema": None, "step": 1,
                                             "model_config": model_config, "config": RUN_CONFIG})
    return run


def task(seed: int, n_test: int = 1) -> Task:
    return parse_task(f"t{seed}", "unseen", grid_task(seed, n_train=3, n_test=n_test))


def test_a_new_task_becomes_copies_placed_as_training_places_them():
    t = task(1, n_test=2)
    rows = task_rows(t, FitSettings(num_aug=4, seed=0))
    ids = rows.demos["puzzle_identifiers"].numpy()
    assert ids.tolist() == [i for i in range(1, 6) for _ in range(3)]  # the task and 4 copies, 3 demonstrations each
    assert rows.tests["puzzle_identifiers"].tolist() == [i for i in range(1, 6) for _ in range(2)]
    for copy in range(5):  # the official rule: one demonstration of every copy at the top left
        offsets = [grid_offset(x) for x in rows.demos["inputs"][ids == copy + 1].numpy()]
        assert offsets.count((0, 0)) >= 1
    for x, identifier, k in zip(rows.tests["inputs"].numpy(), rows.tests["puzzle_identifiers"].tolist(), [0, 1] * 5):
        assert grid_offset(x) == (0, 0)  # test inputs at the top left, and their augmentation undone is the original
        assert np.array_equal(rows.meta.augmentation(identifier).invert(decode_grid(x)), t.test[k].input)
    # the labels of the test rows are the known outputs, so that scores can be checked
    assert (rows.tests["labels"] >= 0).any() and (rows.demos["labels"] == -100).any()
    # seeded per task: the same copies alone or with others, another seed other copies
    again = task_rows(t, FitSettings(num_aug=4, seed=0))
    assert torch.equal(again.demos["inputs"], rows.demos["inputs"])
    assert not torch.equal(task_rows(t, FitSettings(num_aug=4, seed=1)).demos["inputs"], rows.demos["inputs"])


def test_fitting_moves_only_the_new_rows_and_is_seeded(arc_run):
    model, checkpoint = load_trained_model(str(arc_run), "cpu")
    network = {k: v.clone() for k, v in model.state_dict().items() if "puzzle_emb" not in k}
    settings = FitSettings.from_run(checkpoint, steps=3, batch_size=4)
    assert (settings.num_aug, settings.lr, settings.weight_decay) == (1, 0.1, 0.0)  # the run's
    first = solve_task(model, task(2), settings, torch.device("cpu"))
    rows = model.state_dict()["model.inner.puzzle_emb.weights"].clone()
    assert rows.shape == (3, 16)  # the blank row and the task's 2 copies
    assert (rows[0] == 0).all() and (rows[1:] != 0).any()  # new rows start at zero, as in training; fitted ones moved
    assert rows[1:].abs().max().item() == pytest.approx(0.3)  # 3 sign-SGD steps of 0.1
    for k, v in model.state_dict().items():
        if "puzzle_emb" not in k:
            assert torch.equal(v, network[k]), f"{k} changed: the network must stay frozen"
    assert all(p.requires_grad for p in model.parameters())  # and is handed back trainable
    second = solve_task(model, task(2), settings, torch.device("cpu"))
    assert torch.equal(model.state_dict()["model.inner.puzzle_emb.weights"], rows)
    assert second.candidates == first.candidates and second.loss == first.loss
    # no steps: the untrained rows
    solve_task(model, task(2), FitSettings.from_run(checkpoint, steps=0), torch.device("cpu"))
    assert (model.state_dict()["model.inner.puzzle_emb.weights"] == 0).all()
    assert fresh_rows(build_model({**ARCH, "puzzle_emb_ndim": 0, "seq_len": 900, "vocab_size": 12}), 3) is None


def real_task(tmp_path: Path) -> tuple[Path, int, int]:
    """The first ARC-AGI-1 evaluation task with its solutions, as one task file (skips without the files)."""
    if (arc := arc_data_dir()) is None:
        pytest.skip("real ARC files not found (set ARC_DATA_DIR or put them in ../shared/data/arc-agi)")
    challenges = json.loads((arc / "arc-agi_evaluation_challenges.json").read_text())
    solutions = json.loads((arc / "arc-agi_evaluation_solutions.json").read_text())
    name = sorted(challenges)[0]
    raw = challenges[name]
    for pair, output in zip(raw["test"], solutions[name]):
        pair["output"] = output
    (tmp_path / f"{name}.json").write_text(json.dumps(raw))
    return tmp_path / f"{name}.json", len(raw["train"]), len(raw["test"])


@pytest.mark.parametrize("source", ["synthetic", "arc-agi-1"])
def test_generate_arc_task_prints_the_top_two_answers_and_whether_they_are_right(source, arc_run, tmp_path, capsys):
    if source == "synthetic":
        path, demos, tests = tmp_path / "flip.json", 2, 2
        path.write_text(json.dumps(grid_task(5, n_train=demos, n_test=tests)))
    else:
        path, demos, tests = real_task(tmp_path)
    assert generate_main(["--checkpoint", str(arc_run), "--arc-task", str(path), "--fit-steps", "2",
                          "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    assert f"task {path.stem}: {demos} demonstrations, 1 augmentations, 2 fitting steps (lr 0.1)" in out
    for i in range(tests):
        assert f"test {i}, attempt 1:" in out or f"test {i}: no well-formed grid" in out
        assert f"test {i}: wrong" in out or f"test {i}: correct" in out
    # bad task files: one line naming the file and what is wrong
    (tmp_path / "bad.json").write_text(json.dumps({"train": [{"input": [[1, 2], [3]], "output": [[1]]}],
                                                   "test": [{"input": [[1]]}]}))
    with pytest.raises(SystemExit) as exit_:
        generate_main(["--checkpoint", str(arc_run), "--arc-task", str(tmp_path / "bad.json")])
    assert str(exit_.value.code).startswith(f"error: task bad ({tmp_path / 'bad.json'}): train[0].input: rows")


def test_the_set_evaluator_writes_a_submission_and_resumes_per_task(arc_run, tmp_path, capsys):
    write_tasks(tmp_path / "src", "evaluation2", {"a": grid_task(6), "b": grid_task(7, n_test=2),
                                                  "c": grid_task(8, with_outputs=False)})
    def args(steps: int = 1) -> list[str]:
        return [str(arc_run), "--tasks", str(tmp_path / "src"), "--subset", "evaluation2", "--fit-steps", str(steps),
                "--batch-size", "4", "--output-dir", str(tmp_path / "out")]
    assert set_main(args()) == 0
    out = tmp_path / "out"
    submission = json.loads((out / "submission.json").read_text())
    assert sorted(submission) == ["a", "b", "c"] and [len(submission[t]) for t in "abc"] == [1, 2, 1]
    scores = json.loads((out / "scores.json").read_text())
    assert scores["arc_tasks"] == 2  # c has no outputs
    assert "over the 2 with known outputs: pass@1" in capsys.readouterr().out
    # a rerun answers only the tasks without an answer file
    kept = (out / "answers" / "a.json").stat().st_mtime_ns
    (out / "answers" / "b.json").unlink()
    assert set_main(args()) == 0
    assert (out / "answers" / "a.json").stat().st_mtime_ns == kept and (out / "answers" / "b.json").exists()
    assert json.loads((out / "submission.json").read_text()) == submission
    # other settings into the same directory: refused before any work
    with pytest.raises(SystemExit) as exit_:
        set_main(args(steps=2))
    assert str(exit_.value.code).startswith("error: ") and "answered with other settings" in exit_.value.code


def test_the_set_evaluator_uses_the_raw_weights_with_no_ema(arc_run, tmp_path):
    write_tasks(tmp_path / "src", "evaluation2", {"a": grid_task(1)})
    run = with_nan_ema(arc_run, tmp_path / "run")
    args = [str(run), "--tasks", str(tmp_path / "src"), "--subset", "evaluation2", "--fit-steps", "1",
            "--batch-size", "4", "--output-dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_:  # the EMA weights, by default
        set_main(args)
    assert str(exit_.value.code).startswith("error: ") and "not usable" in exit_.value.code
    assert set_main([*args, "--no-ema"]) == 0


# ----------------------------------------------------------------------------- does fitting help?

FIXTURE = ROOT / "tests" / "fixtures" / "arc_paint"


@pytest.mark.slow
def test_fitted_rows_solve_unseen_tasks_that_untrained_rows_do_not():
    """A tiny TRM trained on 16 tasks of examples/make_synthetic_arc.py (each paints a grid's shapes in its own
    colour; tests/fixtures/README.md says how it was trained) answers the family's 8 tasks it never saw."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_synthetic_arc", ROOT / "examples" / "make_synthetic_arc.py")
    synth = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(synth)
    _, unseen = synth.make_tasks(16, 8)
    model, checkpoint = load_trained_model(str(FIXTURE), "cpu")
    tasks = [parse_task(name, "unseen", raw) for name, raw in unseen.items()]
    solved = {}  # tasks solved at the first attempt (README: 0 of 8 with untrained rows, 3 of 8 fitted)
    for steps in (0, 40):
        settings = FitSettings.from_run(checkpoint, steps=steps, batch_size=8)
        solved[steps] = sum(solve_task(model, t, settings, torch.device("cpu")).scores()["pass@1"] for t in tasks)
    assert solved[40] >= solved[0] + 2, solved
