"""Logger mode resolution and the metrics.jsonl file."""
import json

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
