"""The benchmark scripts' command lines: a bad option is a one-line error before anything is timed."""
import subprocess
import sys

import pytest

from conftest import ROOT
from utils.official import import_official


@pytest.mark.parametrize("script, options, code, message", [
    ("train_throughput.py", ["--device", "gpu"], 1, "error: --device gpu: not a device (auto, cpu, cuda, cuda:N or mps)"),
    ("train_throughput.py", ["--steps", "0"], 2, "--batch-size, --steps and --rounds must be >= 1"),
    ("serve_load.py", ["run", "--clients", "0"], 2, "--clients, --requests and --max-tokens must be >= 1"),
    ("generation.py", ["--device", "gpu"], 1, "error: --device gpu: not a device (auto, cpu, cuda, cuda:N or mps)"),
    ("generation.py", ["--new", "0"], 2, "--prompt, --new, --repeats and --batch-sizes must be >= 1")])
def test_a_bad_option_is_one_line(script, options, code, message):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *options], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == code and proc.stderr.strip().splitlines()[-1].endswith(message), proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_path_that_is_not_the_official_clone_is_named(tmp_path):
    """benchmarks/train_throughput.py --official PATH (and the compatibility tests) import from it."""
    with pytest.raises(FileNotFoundError, match=f"^{tmp_path}: not a clone of the official TinyRecursiveModels"):
        import_official(tmp_path, "models.recursive_reasoning.trm")


@pytest.mark.parametrize("failing, name", [("run_name=build", "building the data"),
                                           ("run_name=bfloat16-eager", "bfloat16-eager")])
def test_a_failed_run_of_time_to_accuracy_is_named_in_one_line(tmp_path, monkeypatch, capsys, failing, name):
    """benchmarks/time_to_accuracy.py: when building the data or a setting's run fails, the output's tail, then one
    line naming what failed with pretrain.py's error, status 1, and no later run (nothing trains here)."""
    from benchmarks import time_to_accuracy

    started = []

    def pretrain(command, **kwargs):
        started.append(command)
        if failing in command:
            return subprocess.CompletedProcess(command, 1, "loading the data\nerror: data/x: no such dataset\n")
        return subprocess.CompletedProcess(command, 0, "")

    monkeypatch.setattr(time_to_accuracy.subprocess, "run", pretrain)
    with pytest.raises(SystemExit) as exit_:
        time_to_accuracy.main(["--settings", "bfloat16-eager", "float32-eager", "--out", str(tmp_path)])
    assert exit_.value.code == f"error: {name}: pretrain.py failed (exit 1): error: data/x: no such dataset"
    assert capsys.readouterr().err == "loading the data\n"
    assert failing in started[-1]  # nothing runs after the failure
