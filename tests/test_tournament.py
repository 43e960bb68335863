"""Tournament search (utils/tournament.py): the spec's checks, the bracket table from known metrics, the command
lines (resume, torchrun), and a tiny tournament end to end: stopped after round 1 and rerun, round 1 is not
retrained, and the winner's metric equals that of one uninterrupted run (the survivors resume exactly)."""
import csv
import json
import math

import pytest
import yaml

from conftest import TINY_LM, run_cli
from utils.tournament import bracket_rows, command, load_spec, load_state, ranked, run_tournament, save_state, \
    to_csv, write_outputs


def write_spec(tmp_path, **changes) -> str:
    spec = {"name": "t", "output_dir": str(tmp_path / "out"), "config_name": "cfg_chat",
            "variants": {"a": ["arch.L_layers=1"], "b": ["arch.L_layers=2"], "c": ["arch.hidden_size=8"]},
            "rounds": [{"steps": 2, "keep": 2}, {"steps": 2, "keep": 1}, {"steps": 2}], "metric": "test/loss"}
    spec.update(changes)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


@pytest.mark.parametrize("change, message", [
    ({"colour": 1}, "unknown key"),
    ({"variants": {"a": []}}, "at least two"),
    ({"rounds": [{"steps": 2, "keep": 3}, {"steps": 2}]}, r"keep must be between 1 and 2"),
    ({"rounds": [{"steps": 2, "keep": 1}, {"steps": 2, "keep": 1}]}, "last round"),
    ({"rounds": [{"steps": 0}]}, "steps: N >= 1"),
    ({"mode": "best"}, "mode must be min"),
    ({"launcher": "torchrun", "nproc": 2}, "not both"),
    ({"variants": {"a": "arch=trm", "b": []}}, "variants.a must be a list"),
])
def test_bad_specs_are_refused_naming_the_key(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        load_spec(write_spec(tmp_path, **change))


def test_a_file_that_is_not_yaml_is_one_clear_error(tmp_path):
    (tmp_path / "bad.yaml").write_text("overrides: [a=[b], c]\n")
    with pytest.raises(ValueError, match=r"bad.yaml: not valid YAML \(while parsing a flow sequence"):
        load_spec(str(tmp_path / "bad.yaml"))


def test_commands_resume_and_run_under_torchrun(tmp_path):
    spec = load_spec(write_spec(tmp_path, nproc=2, overrides=["global_batch_size=4"]))
    first = command(spec, "b", 2, resume=False)
    assert first[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    assert "global_batch_size=4" in first and "arch.L_layers=2" in first and "max_steps=2" in first
    assert "logger.group=t" in first and "run_name=b" in first
    later = command(spec, "b", 4, resume=True)
    assert f"resume={tmp_path / 'out' / 'runs' / 'b'}" in later and "max_steps=4" in later
    assert "arch.L_layers=2" not in later  # a resumed run keeps the config it was started with
    assert load_spec(write_spec(tmp_path, launcher="torchrun --nproc-per-node 4")).launcher == \
        ["torchrun", "--nproc-per-node", "4"]


def test_ranking_and_the_bracket_table_from_known_metrics(tmp_path):
    assert ranked(["a", "b", "c"], {"a": 2.0, "b": math.nan, "c": 1.0}, "min") == ["c", "a", "b"]
    assert ranked(["a", "b", "c"], {"a": 0.2, "b": 0.9, "c": 0.5}, "max") == ["b", "c", "a"]
    spec = load_spec(write_spec(tmp_path))
    state = load_state(spec)
    known = {"a": ({"1": 3.0, "2": 2.5}, 2), "b": ({"1": 2.0, "2": 1.5, "3": 1.25}, None), "c": ({"1": 4.0}, 1)}
    for variant, (metrics, out) in known.items():
        state["variants"][variant] = {"metrics": metrics, "eliminated_in": out}
    runs = tmp_path / "out" / "runs"
    for variant, params, h in (("a", 1000, None), ("b", 2000, 3)):  # b: a TRM with H_cycles 3 and 6 passes
        (runs / variant).mkdir(parents=True)
        arch = {"name": "trm", "H_cycles": h} if h else {"name": "transformer"}
        (runs / variant / "summary.json").write_text(json.dumps(
            {"parameters": params, "passes_per_act_step": 6 if h else 1, "seq_len": 8,
             "config": {"global_batch_size": 4, "arch": arch}}))
        (runs / variant / "metrics.jsonl").write_text(
            "".join(json.dumps({"step": s, "test/loss": v, "train/lm_loss": v + 1}) + "\n"
                    for s, v in zip((2, 4, 6), known[variant][0].values())))
    write_outputs(spec, state)
    rows = bracket_rows(spec, state)
    assert [r["variant"] for r in rows] == ["b", "a", "c"]
    b, a, c = rows
    assert b["eliminated_in"] == "winner" and a["eliminated_in"] == 2 and c["eliminated_in"] == 1
    assert (b["round 1 (2 steps)"], b["round 2 (4 steps)"], b["round 3 (6 steps)"]) == (2.0, 1.5, 1.25)
    assert a["round 3 (6 steps)"] is None and c["parameters"] is None
    # 32 tokens a step; a: 1 pass with gradient, 6 x N x T; b: 6 passes forward, 2 of them (the last H cycle) backward
    assert a["gflop_per_step"] == pytest.approx(6 * 1000 * 32 / 1e9)
    assert b["gflop_per_step"] == pytest.approx((2 * 6 + 4 * 2) * 2000 * 32 / 1e9)
    with open(tmp_path / "out" / "bracket.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["variant"] for r in table] == ["b", "a", "c"] and table[0]["round 3 (6 steps)"] == "1.25"
    markdown = (tmp_path / "out" / "bracket.md").read_text()
    assert "| b | 2000 | 6 |" in markdown and "| winner |" in markdown
    assert (tmp_path / "out" / "bracket.png").stat().st_size > 0
    assert to_csv(rows).splitlines()[0].startswith("variant,parameters,passes_per_step,gflop_per_step,round 1")


@pytest.mark.slow  # 20-30 s on 2 cores: four training processes
def test_a_tiny_tournament_stops_resumes_and_continues_exactly(tmp_path, synthetic_chat):
    base = [f"data_paths=[{synthetic_chat}]", *TINY_LM, "global_batch_size=8", "epochs=1", "eval_interval=1",
            "dataset.eval_prompts=[]", "arch.forward_dtype=float32", "lr_min_ratio=1.0"]
    variants = {"transformer": ["arch.L_layers=1"],
                "trm": ["arch=trm_chat", "arch.hidden_size=16", "arch.num_heads=2", "arch.L_layers=1",
                        "arch.H_cycles=2", "arch.L_cycles=1"]}
    rounds = [{"steps": 3, "keep": 1}, {"steps": 3}]
    spec = load_spec(write_spec(tmp_path, overrides=base, variants=variants, rounds=rounds))
    state = run_tournament(spec, stop_after=1)  # as if killed after round 1
    round1 = {v: s["metrics"]["1"] for v, s in state["variants"].items()}
    assert all(math.isfinite(x) for x in round1.values())
    out = [v for v, s in state["variants"].items() if s["eliminated_in"] == 1]
    assert out == [max(round1, key=round1.get)]
    logs = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out" / "logs").iterdir()}
    assert sorted(logs) == ["transformer_round1.log", "trm_round1.log"]

    state = run_tournament(load_spec(write_spec(tmp_path, overrides=base, variants=variants, rounds=rounds)))
    for name, mtime in logs.items():  # round 1 was not trained again
        assert (tmp_path / "out" / "logs" / name).stat().st_mtime_ns == mtime
    assert {v: s["metrics"]["1"] for v, s in state["variants"].items()} == round1
    finalists = [v for v, s in state["variants"].items() if s["eliminated_in"] is None]
    assert len(finalists) == 1 and "2" in state["variants"][finalists[0]]["metrics"]
    records = [json.loads(line) for line in (tmp_path / "out" / "runs" / finalists[0] / "metrics.jsonl").open()]
    assert [r["step"] for r in records if "test/loss" in r] == [3, 6]  # each evaluation logged once
    rows = list(csv.DictReader(open(tmp_path / "out" / "bracket.csv")))
    assert rows[0]["eliminated_in"] == "winner" and rows[-1]["variant"] == out[0]

    # killed after the winner's last run ended but before the state was saved: read back, not trained again
    final_log = tmp_path / "out" / "logs" / f"{finalists[0]}_round2.log"
    mtime, final = final_log.stat().st_mtime_ns, state["variants"][finalists[0]]["metrics"].pop("2")
    save_state(spec, state)
    state = run_tournament(spec)
    assert state["variants"][finalists[0]]["metrics"]["2"] == final and final_log.stat().st_mtime_ns == mtime

    # the winner's 3 + 3 steps (a resume) equal 6 steps of one run
    winner = rows[0]["variant"]
    result = run_cli("--config-name", "cfg_chat", *base, *variants[winner], f"checkpoint_dir={tmp_path / 'straight'}",
                     "run_name=w", "max_steps=6")
    assert result.returncode == 0, result.stderr[-2000:]
    straight = [json.loads(line) for line in next((tmp_path / "straight").glob("*/w/metrics.jsonl")).open()]
    loss = next(r["test/loss"] for r in straight if r["step"] == 6 and "test/loss" in r)
    assert state["variants"][winner]["metrics"]["2"] == pytest.approx(loss, rel=1e-6)
