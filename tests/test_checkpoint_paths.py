"""Checkpoint paths as users type them: run directories, `latest`, `best`, `final`, `.pt` left off, and shell globs
that did not expand (the newest matching run directory is taken and named); which step files a run keeps."""
import json
import os
from pathlib import Path

import pytest

from utils.checkpoint import RunCheckpoints, find_checkpoint, write_alias


@pytest.fixture
def project(tmp_path) -> Path:
    """Two runs of one project: A (steps 300, 1000, 2000) and B (500, 1000), B written last; C holds none."""
    runs = {"trm_chat-A": (300, 1000, 2000), "trm_chat-B": (500, 1000), "trm_chat-C": ()}
    for age, (run, steps) in enumerate(runs.items()):
        (tmp_path / run).mkdir()
        for step in steps:
            (tmp_path / run / f"step_{step}.pt").write_bytes(b"")
        (tmp_path / run / "config.yaml").write_text("")
        os.utime(tmp_path / run, (1000 + age, 1000 + age))  # C is the newest directory, but holds no checkpoint
    return tmp_path


def test_a_glob_takes_the_newest_run_directory_and_says_so(project, capsys):
    assert find_checkpoint(f"{project}/trm_chat-*/step_1000") == f"{project}/trm_chat-B/step_1000.pt"
    assert f"matches 2 run directories; using the newest, {project}/trm_chat-B" in capsys.readouterr().err
    os.utime(project / "trm_chat-A", (5000, 5000))
    assert find_checkpoint(f"{project}/trm_chat-*/step_1000") == f"{project}/trm_chat-A/step_1000.pt"
    assert find_checkpoint(f"{project}/trm_chat-*") == f"{project}/trm_chat-A/step_2000.pt"
    assert find_checkpoint(f"{project}/*/latest") == f"{project}/trm_chat-A/step_2000.pt"
    # only runs holding the step count: B alone has step_500
    assert find_checkpoint(f"{project}/trm_chat-*/step_500.pt") == f"{project}/trm_chat-B/step_500.pt"


def test_steps_are_ordered_by_number_and_latest_is_the_highest(project):
    run = project / "trm_chat-A"
    assert find_checkpoint(f"{run}/step_*") == f"{run}/step_2000.pt"  # not step_300 (by name)
    assert find_checkpoint(f"{run}/latest") == find_checkpoint(f"{run}/latest.pt") == f"{run}/step_2000.pt"
    assert find_checkpoint(str(run)) == f"{run}/step_2000.pt"
    assert find_checkpoint(f"{run}/step_300") == f"{run}/step_300.pt"


@pytest.mark.parametrize("path, message", [
    ("trm_chat-A/step_7", "trm_chat-A/step_7: no such checkpoint; {p}/trm_chat-A holds step_300.pt, step_1000.pt, "
                          "step_2000.pt"),
    ("nomatch-*/step_1000", "nomatch-*/step_1000: the pattern matches no checkpoint file or run directory"),
    ("trm_chat-*/step_7", "trm_chat-*/step_7: the pattern matches no checkpoint"),
    ("trm_chat-C/latest", "trm_chat-C: run directory holds no step_<N>.pt checkpoint"),
    ("nowhere/latest", "nowhere/latest: no such checkpoint file or run directory"),
])
def test_paths_that_name_no_checkpoint_are_clear_errors(project, path, message):
    with pytest.raises(FileNotFoundError) as error:
        find_checkpoint(f"{project}/{path}")
    assert message.format(p=project) in str(error.value)


# ---------------------------------------------------------------- best, final and keep_last

def test_best_and_final_name_the_step_files_their_json_names(project):
    run = project / "trm_chat-A"
    write_alias(str(run), "best", str(run / "step_1000.pt"), metric="test/loss", mode="min", value=1.5)
    write_alias(str(run), "final", str(run / "step_2000.pt"))
    assert json.loads((run / "best.json").read_text())["checkpoint"] == "step_1000.pt"
    assert find_checkpoint(f"{run}/best") == find_checkpoint(f"{run}/best.pt") == f"{run}/step_1000.pt"
    assert find_checkpoint(f"{run}/final") == f"{run}/step_2000.pt"
    # a glob: the newest run directory that has a best (B, written last, has none)
    assert find_checkpoint(f"{project}/trm_chat-*/best") == f"{run}/step_1000.pt"
    with pytest.raises(FileNotFoundError, match="trm_chat-B/best: no best.json in the run directory"):
        find_checkpoint(f"{project}/trm_chat-B/best")
    (run / "step_1000.pt").unlink()
    with pytest.raises(FileNotFoundError, match="best.json names step_1000.pt, which no longer exists"):
        find_checkpoint(f"{run}/best")


def evaluate_and_save(keeper: RunCheckpoints, run: Path, step: int, metrics: dict, final: bool = False) -> bool:
    """What the trainer does after an evaluation at `step`: save step_<step>.pt, then tell the keeper."""
    best = keeper.improved(metrics)
    (run / f"step_{step}.pt").write_bytes(b"")
    keeper.saved(str(run / f"step_{step}.pt"), best, final)
    return best


def test_keep_last_deletes_old_step_files_but_never_the_best_or_final(tmp_path):
    keeper = RunCheckpoints(str(tmp_path), keep_last=2)
    losses = {100: 3.0, 200: 2.0, 300: 2.5, 400: 2.2, 500: 2.1}
    assert [evaluate_and_save(keeper, tmp_path, s, {"test/loss": v, "test/accuracy": 0.1}) for s, v in losses.items()] \
        == [True, True, False, False, False]  # auto: no exact_accuracy here, so the lowest loss
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_200.pt", "step_400.pt", "step_500.pt"]
    assert json.loads((tmp_path / "best.json").read_text()) == {"checkpoint": "step_200.pt", "step": 200,
                                                                "metric": "test/loss", "mode": "min", "value": 2.0}
    evaluate_and_save(keeper, tmp_path, 600, {"test/loss": 1.0}, final=True)
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_500.pt", "step_600.pt"]  # the old best went
    assert find_checkpoint(f"{tmp_path}/best") == find_checkpoint(f"{tmp_path}/final") == f"{tmp_path}/step_600.pt"
    # a resumed run (from step 600) keeps its best so far: 1.5 does not beat 1.0
    resumed = RunCheckpoints(str(tmp_path), keep_last=1, resumed_at=600)
    assert not evaluate_and_save(resumed, tmp_path, 700, {"test/loss": 1.5})
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_600.pt", "step_700.pt"]


def test_best_by_accuracy_and_by_a_chosen_metric(tmp_path):
    puzzles = RunCheckpoints(str(tmp_path / "a"))  # auto: exact accuracy, highest
    assert [puzzles.improved({"test/exact_accuracy": v, "test/lm_loss": 1.0}) for v in (0.1, 0.3, 0.3, 0.2, 0.5)] \
        == [True, True, False, False, True]
    chosen = RunCheckpoints(str(tmp_path / "b"), metric="chat/loss")
    assert [chosen.improved({"test/loss": 1.0, "test/chat/loss": v}) for v in (2.0, 1.0, 1.5)] == [True, True, False]
    assert not RunCheckpoints(str(tmp_path / "c")).improved({"test/loss": float("nan")})
    with pytest.raises(ValueError, match=r"no validation metric 'los'; choose one of \['loss'\]"):
        RunCheckpoints(str(tmp_path / "d"), metric="los").improved({"test/loss": 1.0})
    with pytest.raises(ValueError, match="checkpoint_best_mode must be auto, min or max, got 'lowest'"):
        RunCheckpoints(str(tmp_path), mode="lowest")
    with pytest.raises(ValueError, match="checkpoint_keep_last must be >= 1"):
        RunCheckpoints(str(tmp_path), keep_last=0)
