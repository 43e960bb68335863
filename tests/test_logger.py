"""Logger mode resolution, the metrics.jsonl file and TensorBoard."""
import json
import sys

import pytest

from utils.logger import RunLogger, resolve_mode


def test_auto_mode_is_offline_without_a_key_and_online_with_one(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    assert resolve_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode("auto") == "online"
    assert resolve_mode("disabled") == "disabled"
    with pytest.raises(ValueError, match="logger.mode"):
        resolve_mode("sometimes")


def test_metrics_are_appended_as_json_lines(tmp_path):
    logger = RunLogger(str(tmp_path), "p", "r", {}, mode="disabled")
    logger.log({"train/loss": 1.5, "train/acc": float("nan")}, step=3)
    logger.log({"test/exact_accuracy": 0.25}, step=4)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == [{"step": 3, "train/loss": 1.5, "train/acc": None}, {"step": 4, "test/exact_accuracy": 0.25}]
    RunLogger(str(tmp_path / "x"), "p", "r", {}, mode="disabled", enabled=False).log({"a": 1.0}, step=1)
    assert not (tmp_path / "x" / "metrics.jsonl").exists()


def tensorboard_scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_gets_the_same_scalars_and_a_resume_replaces_the_steps_after_its_checkpoint(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is optional (requirements-dev.txt installs it)")
    logger = RunLogger(str(tmp_path), "p", "r", {}, mode="disabled", tensorboard=True)
    for step in (1, 2, 3):
        logger.log({"train/loss": 1.0 / step, "train/lr": 0.5}, step)
    logger.finish()
    assert tensorboard_scalars(tmp_path / "tb") == {"train/loss": [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))],
                                                    "train/lr": [(1, 0.5), (2, 0.5), (3, 0.5)]}
    resumed = RunLogger(str(tmp_path), "p", "r", {}, mode="disabled", resumed_at=1, tensorboard=True)
    for step in (2, 3):
        resumed.log({"train/loss": 2.0}, step)
    resumed.finish()
    assert tensorboard_scalars(tmp_path / "tb")["train/loss"] == [(1, 1.0), (2, 2.0), (3, 2.0)]


def test_without_tensorboard_installed_the_run_logs_the_rest_and_says_why(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as when it is not installed
    logger = RunLogger(str(tmp_path), "p", "r", {}, mode="disabled", tensorboard=True)
    logger.log({"train/loss": 1.0}, step=1)
    assert "logger.tensorboard=true: the tensorboard package is not installed (pip install tensorboard)" in \
        capsys.readouterr().out
    assert (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "tb").exists()
