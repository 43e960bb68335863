"""Sweeps: a Hydra multirun trains each combination in its own directory; utils.sweep_summary collects them."""
import csv
import json
import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import TINY, compose, run_cli
from models import build_model
from utils.sweep_summary import main as summary_main, network_passes_per_act_step, summarize


def test_multirun_of_two_runs_gives_two_directories_and_a_two_row_summary(sudoku_dir, tmp_path):
    tiny = [o for o in TINY if not o.startswith("arch.H_cycles=")]
    proc = run_cli("-m", "arch.H_cycles=1,2", f"data_paths=[{sudoku_dir}]", f"checkpoint_dir={tmp_path}", *tiny,
                   "max_steps=2", "compile=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep_dir,) = (tmp_path / "multirun").iterdir()
    runs = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir())
    # readable names: job number and the job's overrides, without the path-like ones (data_paths, checkpoint_dir)
    assert len(runs) == 2 and runs[0].startswith("0_arch.H_cycles=1,") and runs[1].startswith("1_arch.H_cycles=2,")
    assert not any("data_paths" in r or "checkpoint_dir" in r for r in runs)
    for run in runs:
        assert {"config.yaml", "metrics.jsonl", "step_2.pt", "summary.json"} <= set(os.listdir(sweep_dir / run))

    rows = summarize(str(sweep_dir))
    assert [(r["H_cycles"], r["L_cycles"]) for r in rows] == [(1, 1), (2, 1)]
    with open(sweep_dir / "sweep_summary.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 2 and [int(r["H_cycles"]) for r in table] == [1, 2]
    for r, h in zip(table, (1, 2)):
        assert int(r["passes_per_act_step"]) == h * (1 + 1)  # H_cycles * (L_cycles + 1)
        assert float(r["act_steps_test"]) == 3 and int(r["train_steps"]) == 2
        assert 0.0 <= float(r["accuracy"]) <= 1.0 and float(r["wall_s"]) > 0 and int(r["parameters"]) > 0
    assert len((sweep_dir / "sweep_summary.md").read_text().strip().splitlines()) == 2 + 2  # header, rule, 2 rows
    assert (sweep_dir / "sweep_exact_accuracy.png").stat().st_size > 0


def fake_run(sweep_dir: Path, name: str, h: int, l: int, accuracy: float) -> None:
    run = sweep_dir / name
    run.mkdir(parents=True)
    summary = {"config": {"arch": {"name": "trm", "H_cycles": h, "L_cycles": l}, "lr": 1e-3},
               "test": {"test/exact_accuracy": accuracy, "test/accuracy": 0.9, "test/steps": 4.0},
               "train": {"train/steps": 2.5}, "parameters": 1000, "passes_per_act_step": h * (l + 1), "steps": 10,
               "world_size": 1, "wall_s": 12.5}
    (run / "summary.json").write_text(json.dumps(summary))


def test_summary_table_and_heat_map_over_the_grid(tmp_path, capsys):
    for i, (h, l) in enumerate([(2, 4), (1, 2), (2, 2), (1, 4)]):
        fake_run(tmp_path, f"{i}_run", h, l, accuracy=h / 10 + l / 100)
    (tmp_path / "4_crashed").mkdir()  # a job that never finished: reported, left out
    summary_main([str(tmp_path), "--metric", "test/exact_accuracy", "--out", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert "4_crashed" in err and "without summary.json" in err
    lines = (tmp_path / "out" / "sweep_summary.md").read_text().splitlines()
    assert lines[0].startswith("| H_cycles | L_cycles | exact_accuracy | accuracy | parameters | passes_per_act_step |")
    # sorted by H_cycles then L_cycles; lr did not vary, so it is no column
    assert [line.strip("| ").split(" | ")[:4] for line in lines[2:]] == [
        ["1", "2", "0.1200", "0.9000"], ["1", "4", "0.1400", "0.9000"], ["2", "2", "0.2200", "0.9000"],
        ["2", "4", "0.2400", "0.9000"]]
    with open(tmp_path / "out" / "sweep_summary.csv") as f:
        assert [r["run"] for r in csv.DictReader(f)] == ["1_run", "3_run", "2_run", "0_run"]
    assert "lr" not in lines[0] and out.startswith(lines[0])
    assert (tmp_path / "out" / "sweep_exact_accuracy.png").exists()


def test_summary_of_a_directory_without_runs_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "empty", tmp_path / "missing"):
        with pytest.raises(SystemExit) as exit_info:
            summary_main([str(path)])
        message = str(exit_info.value.code)
        assert message.startswith("error:") and str(path) in message and "\n" not in message
    fake_run(tmp_path / "one", "0_run", 1, 1, 0.5)
    with pytest.raises(SystemExit, match="not a column"):
        summary_main([str(tmp_path / "one"), "--metric", "nope"])
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(SystemExit, match=f"^error: {tmp_path / 'notes.txt'}: cannot create the directory"):
        summary_main([str(tmp_path / "one"), "--out", str(tmp_path / "notes.txt")])


@pytest.mark.parametrize("arch, expected", [(("trm",), 3 * (2 + 1)), (("trm", "arch.H_layers=1"), 3 * (2 + 1)),
                                            (("transformer",), 1)])
def test_network_passes_per_act_step_are_counted(arch, expected):
    # the transformer applies its blocks once per step whatever H_cycles and L_cycles say; with its own z_H network
    # (H_layers) a TRM still makes H_cycles * (L_cycles + 1) passes, of either network
    cfg = compose(f"arch={arch[0]}", *arch[1:], "arch.H_cycles=3", "arch.L_cycles=2",
                  "arch.hidden_size=16", "arch.num_heads=2", "arch.forward_dtype=float32")
    model = build_model(OmegaConf.to_container(cfg.arch, resolve=True), seq_len=6, vocab_size=8,
                        num_puzzle_identifiers=2)
    batch = {"inputs": torch.ones(2, 6, dtype=torch.int32), "labels": torch.ones(2, 6, dtype=torch.int32),
             "puzzle_identifiers": torch.ones(2, dtype=torch.int32)}
    assert network_passes_per_act_step(model, batch, torch.device("cpu")) == expected
