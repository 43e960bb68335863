"""Checkpoint paths as users type them: run directories, `latest`, `.pt` left off, and shell globs that did not
expand (the newest matching run directory is taken and named)."""
import os
from pathlib import Path

import pytest

from utils.checkpoint import find_checkpoint


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
