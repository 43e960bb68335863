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
