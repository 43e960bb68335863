"""ARC-AGI: grid encoding, augmentations and their inverses (hand-made and real tasks), the builder's
splits and metadata, the evaluator's voting / pass@k / submission, and a tiny training run."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FLOAT32, ROOT, arc_data_dir, compose, grid_task, write_tasks
from dataset.build_arc_dataset import ArcBuildConfig, build
from dataset.puzzle_dataset import PuzzleDataset
from evaluators.arc import (ArcCollector, Prediction, VotePool, as_grid, make_submission, pass_at_k, rank_candidates,
                            rank_votes)
from generate import main as generate_main, run_task
from pretrain import train
from tasks.arc import (EOS, IDENTITY, PAD, Augmentation, Pair, Task, decode_grid, draw_augmentations, encode_grid,
                       grid_offset, load_arc_metadata, load_combined)
from tasks.common import dihedral, inverse_dihedral
from utils.checkpoint import load_checkpoint
from utils.run import resume_config


ARC_DIR = arc_data_dir()
needs_real_data = pytest.mark.skipif(ARC_DIR is None, reason="real ARC files not found (set ARC_DATA_DIR or put "
                                     "them in ../shared/data/arc-agi)")


# ----------------------------------------------------------------------------- encoding and augmentation


def test_every_grid_size_encodes_and_decodes():
    rng = np.random.default_rng(0)
    for h in range(1, 31):
        for w in range(1, 31):
            grid = rng.integers(0, 10, (h, w)).astype(np.uint8)
            offset = (int(rng.integers(31 - h)), int(rng.integers(31 - w)))
            tokens = encode_grid(grid, offset)
            canvas = tokens.reshape(30, 30)
            r, c = offset
            assert np.array_equal(canvas[r:r + h, c:c + w], grid + 2)
            if r + h < 30:
                assert (canvas[r + h, c:c + w] == EOS).all()
            if c + w < 30:
                assert (canvas[r:r + h, c + w] == EOS).all()
            assert (canvas == PAD).sum() == 900 - h * w - (w if r + h < 30 else 0) - (h if c + w < 30 else 0)
            assert grid_offset(tokens) == offset
            assert np.array_equal(decode_grid(tokens), grid)
            assert np.array_equal(decode_grid(tokens, offset), grid)


def test_grids_that_do_not_fit_or_malformed_predictions():
    with pytest.raises(ValueError, match="does not fit"):
        encode_grid(np.zeros((3, 3), np.uint8), (28, 0))
    assert decode_grid(np.zeros(900, np.uint8)) is None  # all PAD
    tokens = encode_grid(np.ones((3, 3), np.uint8)).reshape(30, 30).copy()
    tokens[1, 0] = EOS  # a hole in the first column: the crop stops at row 1
    assert decode_grid(tokens.reshape(-1), (0, 0)).shape == (1, 3)
    tokens[1, 1] = PAD  # and a hole inside the rectangle: not a grid
    tokens[1, 0] = 3
    assert decode_grid(tokens.reshape(-1), (0, 0)) is None


def test_the_eight_dihedral_transforms_are_distinct_and_invert():
    grid = np.arange(12).reshape(3, 4)
    images = [dihedral(grid, t) for t in range(8)]
    assert len({(g.shape, g.tobytes()) for g in images}) == 8
    assert {g.shape for g in images} == {(3, 4), (4, 3)}
    for t, g in enumerate(images):
        assert np.array_equal(inverse_dihedral(g, t), grid)
    with pytest.raises(ValueError):
        dihedral(grid, 8)


def test_augmentation_keeps_black_and_inverts():
    rng = np.random.default_rng(1)
    grid = rng.integers(0, 10, (5, 7)).astype(np.uint8)
    for t in range(8):
        aug = Augmentation(t, (0, *(int(c) for c in rng.permutation(9) + 1)))
        out = aug.apply(grid)
        assert np.array_equal(out == 0, dihedral(grid == 0, t))  # black stays black, and only black
        assert np.array_equal(aug.invert(out), grid)


def test_duplicate_augmentations_are_removed():
    # one cell of one colour: the 8 transforms coincide and only the colour can change -> 9 distinct copies
    task = Task("dot", "training", [Pair(np.array([[3]], np.uint8), np.array([[3]], np.uint8))],
                [Pair(np.array([[3]], np.uint8), None)])
    augs = draw_augmentations(task, 20, np.random.default_rng(0))
    assert augs[0] == IDENTITY and len(augs) == 9
    assert len({a.apply(np.array([[3]], np.uint8)).item() for a in augs}) == 9
    # an asymmetric task reaches the requested count
    big = Task("t", "training", [Pair(np.arange(6, dtype=np.uint8).reshape(2, 3), np.ones((1, 1), np.uint8))], [])
    assert len(draw_augmentations(big, 50, np.random.default_rng(0))) == 51


@needs_real_data
@pytest.mark.parametrize("subset", ["training", "evaluation", "concept", "training2", "evaluation2"])
def test_every_real_pair_round_trips_through_augmentation_and_encoding(subset):
    tasks = load_combined(str(ARC_DIR / "arc-agi"), subset)
    assert len(tasks) >= 100
    rng = np.random.default_rng(0)
    for task in tasks:
        for pair in task.train + task.test:
            aug = Augmentation(int(rng.integers(8)), (0, *(int(c) for c in rng.permutation(9) + 1)))
            grids = [g for g in (pair.input, pair.output) if g is not None]
            moved = [aug.apply(g) for g in grids]
            h, w = max(g.shape[0] for g in moved), max(g.shape[1] for g in moved)
            offset = (int(rng.integers(31 - h)), int(rng.integers(31 - w)))
            for g, m in zip(grids, moved):
                tokens = encode_grid(m, offset)
                assert np.array_equal(aug.invert(decode_grid(tokens, offset)), g), task.id


# ----------------------------------------------------------------------------- builder


@pytest.fixture(scope="module")
def tiny_arc(tmp_path_factory) -> tuple[Path, Path]:
    """Two training tasks and two evaluation tasks (one with two test inputs), 3 augmentations each."""
    src = tmp_path_factory.mktemp("arc-src")
    write_tasks(src, "training", {"tr1": grid_task(1), "tr2": grid_task(2, n_test=2)})
    write_tasks(src, "evaluation", {"ev1": grid_task(3), "ev2": grid_task(4, n_train=3, n_test=2)})
    out = tmp_path_factory.mktemp("arc") / "arc-tiny"
    build(ArcBuildConfig(output_dir=str(out), input_dir=str(src), subsets=["training", "evaluation"],
                         test_set="evaluation", num_aug=3, seed=0, quiet=True))
    return src, out


def test_builder_splits_identifiers_and_inverse_metadata(tiny_arc):
    src, out = tiny_arc
    meta = load_arc_metadata(out)
    tasks = {p.stem: json.loads(p.read_text()) for p in sorted(src.glob("*/*.json"))}
    assert meta.tasks == ["tr1", "tr2", "ev1", "ev2"] and set(meta.test_inputs) == {"ev1", "ev2"}
    names = json.loads((out / "identifiers.json").read_text())
    assert names[0] == "<blank>" and len(names) == 1 + 4 * 4 == len(meta.task_index)
    for split in ("train", "test"):
        a = {k: np.load(out / split / f"all__{k}.npy") for k in ("inputs", "labels", "puzzle_identifiers",
                                                                    "puzzle_indices", "group_indices")}
        meta_json = json.loads((out / split / "dataset.json").read_text())
        assert meta_json["seq_len"] == 900 and meta_json["vocab_size"] == 12 and meta_json["num_puzzle_identifiers"] == 17
        ids = a["puzzle_identifiers"]
        assert len(set(ids.tolist())) == len(ids)  # every augmented puzzle has its own identifier
        assert len(a["group_indices"]) - 1 == (4 if split == "train" else 2)  # a group per task
        for p, identifier in enumerate(ids):
            task = meta.tasks[meta.task_index[identifier]]
            aug = meta.augmentation(int(identifier))
            # training tasks train on all their pairs; test tasks on their demonstrations only
            if split == "train":
                expected = tasks[task]["train"] + (tasks[task]["test"] if task.startswith("tr") else [])
            else:
                expected = tasks[task]["test"]
            rows = range(a["puzzle_indices"][p], a["puzzle_indices"][p + 1])
            assert len(rows) == len(expected)
            got = []
            for r in rows:
                offset = grid_offset(a["inputs"][r])
                if split == "test":
                    assert offset == (0, 0)  # test inputs are not translated (the default)
                x, y = (aug.invert(decode_grid(a[k][r], offset)).tolist() for k in ("inputs", "labels"))
                got.append({"input": x, "output": y})
            assert sorted(map(json.dumps, got)) == sorted(map(json.dumps, expected))


def test_builder_is_seeded(tiny_arc, tmp_path):
    src, out = tiny_arc
    again = tmp_path / "again"
    build(ArcBuildConfig(output_dir=str(again), input_dir=str(src), subsets=["training", "evaluation"],
                         test_set="evaluation", num_aug=3, seed=0, quiet=True))
    for split in ("train", "test"):
        for k in ("inputs", "labels", "puzzle_identifiers"):
            assert np.array_equal(np.load(out / split / f"all__{k}.npy"), np.load(again / split / f"all__{k}.npy"))


@needs_real_data
def test_real_build_inverts_every_row(tmp_path):
    out = tmp_path / "arc2-eval"
    build(ArcBuildConfig(output_dir=str(out), input_prefix=str(ARC_DIR / "arc-agi"), subsets=["evaluation2"],
                         test_set="evaluation2", num_aug=2, seed=0, quiet=True))
    meta = load_arc_metadata(out)
    demos = json.loads((ARC_DIR / "arc-agi_evaluation2_challenges.json").read_text())
    a = {k: np.load(out / "train" / f"all__{k}.npy") for k in ("inputs", "labels", "puzzle_identifiers",
                                                                  "puzzle_indices")}
    example_puzzle = np.repeat(np.arange(len(a["puzzle_identifiers"])), np.diff(a["puzzle_indices"]))
    for r in range(len(a["inputs"])):
        identifier = int(a["puzzle_identifiers"][example_puzzle[r]])
        task, aug = meta.tasks[meta.task_index[identifier]], meta.augmentation(identifier)
        offset = grid_offset(a["inputs"][r])
        pair = {"input": aug.invert(decode_grid(a["inputs"][r], offset)).tolist(),
                "output": aug.invert(decode_grid(a["labels"][r], offset)).tolist()}
        assert pair in demos[task]["train"]
    assert len(meta.test_inputs) == 120


def top_left_per_puzzle(out: Path) -> tuple[list[int], list[int]]:
    """(examples at the top left, examples) of every puzzle of a build's train split."""
    inputs, indices = (np.load(out / "train" / f"all__{k}.npy") for k in ("inputs", "puzzle_indices"))
    at_origin = [grid_offset(x) == (0, 0) for x in inputs]
    spans = list(zip(indices[:-1], indices[1:]))
    return [sum(at_origin[a:b]) for a, b in spans], [b - a for a, b in spans]


def test_official_placement_keeps_one_random_demonstration_per_puzzle_at_the_top_left(tmp_path):
    src = tmp_path / "src"
    write_tasks(src, "training", {f"t{i}": grid_task(i, n_train=4) for i in range(6)})
    kept_index = []
    for translate_all in (False, True):
        out = tmp_path / f"all-{translate_all}"
        build(ArcBuildConfig(output_dir=str(out), input_dir=str(src), subsets=["training"], test_set="training",
                             num_aug=7, translate_all=translate_all, seed=3, quiet=True))
        top_left, sizes = top_left_per_puzzle(out)
        assert sizes == [4] * 48  # the 4 demonstrations of 6 tasks x 8 copies (their test inputs: the test split)
        if translate_all:  # today's rule: a 5x5 grid lands at (0, 0) once in 26 * 26 draws
            assert sum(top_left) <= 2
        else:
            assert all(n >= 1 for n in top_left) and sum(top_left) <= 48 + 2
            inputs, indices = (np.load(out / "train" / f"all__{k}.npy") for k in ("inputs", "puzzle_indices"))
            kept_index = [next(i for i in range(4) if grid_offset(inputs[indices[p] + i]) == (0, 0)) for p in range(48)]
    assert len(set(kept_index)) == 4  # the kept demonstration is drawn, not always the first


@needs_real_data
def test_real_arc_agi_1_build_has_a_top_left_demonstration_in_every_puzzle(tmp_path):
    out = tmp_path / "arc1"
    build(ArcBuildConfig(output_dir=str(out), input_prefix=str(ARC_DIR / "arc-agi"), num_aug=1, seed=0, quiet=True))
    top_left, sizes = top_left_per_puzzle(out)
    assert len(sizes) == 2 * (400 + 400 + 160)  # every task and one augmented copy
    assert min(top_left) >= 1
    assert sum(top_left) / sum(sizes) > 0.2  # ~ one example in four; translating every one: 0.2%


@pytest.mark.parametrize("task, message", [
    ({"train": [{"input": [[1, 2], [3]], "output": [[1]]}], "test": [{"input": [[1]]}]}, "rows have different"),
    ({"train": [{"input": [[1, 12]], "output": [[1]]}], "test": [{"input": [[1]]}]}, "integers 0..9"),
    ({"train": [{"input": [[1]]}], "test": [{"input": [[1]]}]}, "no 'output'"),
    ({"test": [{"input": [[1]]}]}, "'train' and 'test'"),
    ({"train": [{"input": [[0] * 31], "output": [[1]]}], "test": [{"input": [[1]]}]}, "1..30"),
])
def test_malformed_task_is_a_clear_error_naming_the_task(tmp_path, task, message):
    write_tasks(tmp_path, "training", {"good": grid_task(0), "broken_task_42": task})
    cfg = ArcBuildConfig(output_dir=str(tmp_path / "out"), input_dir=str(tmp_path), subsets=["training"],
                         test_set="training", num_aug=1, quiet=True)
    with pytest.raises(ValueError, match=rf"task broken_task_42 .*{message}"):
        build(cfg)
    assert not (tmp_path / "out" / "train" / "dataset.json").exists()


def test_builder_cli_reports_bad_input_in_one_line(tmp_path):
    prefix = tmp_path / "arc-agi"
    Path(f"{prefix}_training_challenges.json").write_text('{"abc": {"train": [], "test": []}}')
    proc = subprocess.run([sys.executable, str(ROOT / "dataset" / "build_arc_dataset.py"), "--input-prefix",
                           str(prefix), "--subsets", "training", "--test-set", "training", "--output-dir",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and proc.stderr.strip().startswith("error: task abc")


# ----------------------------------------------------------------------------- scoring


def g(*rows):
    return as_grid(rows)


def test_voting_ranks_by_count_then_confidence():
    A, B, C = g([1]), g([2]), g([3])
    preds = [Prediction("t", 0, A, 0.1), Prediction("t", 0, B, 0.9), Prediction("t", 0, A, 0.2),
             Prediction("t", 0, C, 0.95), Prediction("t", 0, None, 1.0)]
    assert rank_candidates(preds)[("t", 0)] == [A, C, B]  # A has 2 votes; C and B one each, C more confident
    assert rank_candidates(reversed(preds))[("t", 0)] == [A, C, B]


def test_perfect_predictor_scores_100_and_constant_predictor_0():
    solutions = {"a": [g([1, 2])], "b": [g([3]), g([4, 4], [4, 4])], "c": [g([5])]}
    perfect = [Prediction(t, i, out, 0.5) for t, outs in solutions.items() for i, out in enumerate(outs)
               for _ in range(3)]
    constant = [Prediction(t, i, g([0]), 0.5) for t, outs in solutions.items() for i, _ in enumerate(outs)]
    for k in (1, 2, 5, 10):
        assert pass_at_k(rank_candidates(perfect), solutions)[f"pass@{k}"] == 1.0
        assert pass_at_k(rank_candidates(constant), solutions)[f"pass@{k}"] == 0.0


def test_pass_at_k_counts_a_task_by_its_solved_test_inputs():
    solutions = {"a": [g([1]), g([2])], "b": [g([3])]}
    wrong = g([9])
    preds = ([Prediction("a", 0, g([1]), 0.5)] * 3 + [Prediction("a", 1, wrong, 0.5)] * 3
             + [Prediction("a", 1, g([2]), 0.5)] * 2 + [Prediction("b", 0, wrong, 0.5)])
    scores = pass_at_k(rank_candidates(preds), solutions)
    assert scores["pass@1"] == pytest.approx(0.5 / 2)  # a: 1 of 2 test inputs; b: none
    assert scores["pass@2"] == pytest.approx(1.0 / 2)  # a: both with two attempts
    assert scores["arc_tasks"] == 2


def test_submission_has_two_attempts_per_test_input():
    ranked = {("a", 0): [g([1]), g([2]), g([3])], ("a", 1): [g([4])]}
    sub = make_submission(ranked, {"a": 2, "b": 1})
    assert sub == {"a": [{"attempt_1": [[1]], "attempt_2": [[2]]}, {"attempt_1": [[4]], "attempt_2": [[4]]}],
                   "b": [{"attempt_1": [[0]], "attempt_2": [[0]]}]}


def _collect(out: Path, predict) -> list[Prediction]:
    """Run the collector over the test split with `predict(batch) -> preds`."""
    collector = ArcCollector(load_arc_metadata(out))
    for set_name, batch, _ in PuzzleDataset([str(out)], "test", global_batch_size=5):
        outputs = {"preds": predict(batch), "q_halt_logits": torch.zeros(len(batch["inputs"]))}
        collector.add(set_name, batch, outputs)
    return collector.predictions


def test_collector_undoes_the_augmentations(tiny_arc):
    _, out = tiny_arc
    meta = load_arc_metadata(out)
    solutions = {t: [as_grid(o) for o in outs] for t, outs in meta.test_outputs.items()}
    labels_as_preds = _collect(out, lambda b: torch.where(b["labels"] < 0, 0, b["labels"]))
    assert len(labels_as_preds) == 4 * 3  # 4 augmented copies of 3 test inputs
    assert pass_at_k(rank_candidates(labels_as_preds), solutions)["pass@1"] == 1.0
    # predicting the input back: a wrong grid on every copy (the outputs are flipped inputs... except symmetric ones)
    echo = _collect(out, lambda b: b["inputs"])
    expected = np.mean([np.mean([as_grid(x) == as_grid(y) for x, y in zip(meta.test_inputs[t], meta.test_outputs[t])])
                        for t in meta.test_inputs])
    assert pass_at_k(rank_candidates(echo), solutions)["pass@1"] == expected
    # a gather (as under torchrun) that merges the parts of two ranks gives the same votes
    half = len(labels_as_preds) // 2
    merged = [p for part in (labels_as_preds[:half], labels_as_preds[half:]) for p in part]
    assert rank_candidates(merged) == rank_candidates(labels_as_preds)


# ----------------------------------------------------------------------------- training


def test_tiny_arc_training_run_writes_a_submission(tiny_arc, tmp_path):
    src, _ = tiny_arc
    data = tmp_path / "built-on-first-run"
    cfg = compose("dataset=arc", f"dataset.build_path={data}", f"checkpoint_dir={tmp_path}", "run_name=arc",
                  f"dataset.build.input_dir={src}", "dataset.build.input_prefix=null",
                  "dataset.build.subsets=[training,evaluation]", "dataset.build.num_aug=2", "+dataset.build.quiet=true",
                  "arch=trm", "arch.hidden_size=32", "arch.num_heads=2", "arch.puzzle_emb_ndim=32",
                  "arch.puzzle_emb_len=1", "arch.H_cycles=1", "arch.L_cycles=1", "arch.halt_max_steps=2",
                  "global_batch_size=8", "max_steps=2", "epochs=2", "eval_interval=1", "logger.mode=disabled")
    results = train(cfg)
    assert (data / "arc_tasks.json").exists()  # built through the builder registry
    assert {"test/pass@1", "test/pass@2", "test/pass@5", "test/pass@10"} <= set(results)
    assert results["test/arc_tasks"] == 2 and 0 <= results["test/pass@2"] <= 1
    assert not any("pooled" in k for k in results)  # evaluator.pool_votes is off by default
    assert load_checkpoint(str(tmp_path / "Built-on-first-run-ACT-torch" / "arc" / "step_2.pt"))["evaluator"] is None
    sub = json.loads((tmp_path / "Built-on-first-run-ACT-torch" / "arc" / "submission_step_2.json").read_text())
    assert sorted(sub) == ["ev1", "ev2"] and [len(sub[t]) for t in ("ev1", "ev2")] == [1, 2]
    for attempts in sub.values():
        for a in attempts:
            assert set(a) == {"attempt_1", "attempt_2"}
            assert all(isinstance(row, list) and all(0 <= v <= 9 for v in row) for row in a["attempt_1"])
    # its 30x30 grids are as long as a maze's: generate.py --puzzle knows the run's task and refuses it
    with pytest.raises(SystemExit) as exit_:
        generate_main(["--checkpoint", str(tmp_path / "Built-on-first-run-ACT-torch" / "arc"), "--puzzle", "x"])
    assert exit_.value.code == "error: this run's task is arc: --puzzle solves Sudoku and maze puzzles only"


@pytest.mark.parametrize("dataset, shape, task", [
    ({"task": "maze"}, (900, 12), "maze"),  # recorded: wins over everything else
    ({"build": {"builder": "arc"}}, (900, 6), "arc"),  # runs saved before dataset.task: the builder,
    ({"evaluator": "arc"}, (900, 6), "arc"),  # the evaluator,
    ({}, (900, 12), "arc"), ({}, (900, 6), "maze"), ({}, (81, 11), "sudoku"), ({}, (81, 12), None)])  # the shape
def test_generate_knows_the_task_of_old_and_new_runs(dataset, shape, task):
    assert run_task({"config": {"dataset": dataset}}, *shape) == task


# ----------------------------------------------------------------------------- pooled votes


def test_vote_pool_adds_up_and_survives_a_weights_only_checkpoint(tmp_path):
    A, B = g([1, 2]), g([3])
    pool = VotePool()
    pool.add([Prediction("t", 0, A, 0.5), Prediction("t", 0, B, 0.75), Prediction("t", 0, None, 1.0)])
    pool.add([Prediction("t", 0, B, 0.25), Prediction("t", 1, A, 1.0)])
    assert pool.evaluations == 2
    assert pool.votes == {("t", 0): {A: [1, 0.5], B: [2, 1.0]}, ("t", 1): {A: [1, 1.0]}}
    assert rank_votes(pool.votes)[("t", 0)] == [B, A]  # B leads only once the evaluations are pooled
    torch.save({"evaluator": pool.state_dict()}, tmp_path / "c.pt")
    again = VotePool()
    again.load_state_dict(torch.load(tmp_path / "c.pt", weights_only=True)["evaluator"])
    assert again.votes == pool.votes and again.evaluations == 2


def _pooled_run(src: Path, data: Path, tmp_path: Path, name: str, *extra: str) -> dict:
    cfg = compose("dataset=arc", f"dataset.build_path={data}", f"checkpoint_dir={tmp_path}", f"run_name={name}",
                  f"dataset.build.input_dir={src}", "dataset.build.input_prefix=null",
                  "dataset.build.subsets=[training,evaluation]", "dataset.build.num_aug=2", "+dataset.build.quiet=true",
                  *TINY_ARC, "global_batch_size=8", "epochs=3", "eval_interval=1.5", *extra)
    return train(cfg)


TINY_ARC = ["arch=trm", "arch.hidden_size=32", "arch.num_heads=2", "arch.puzzle_emb_ndim=32", "arch.puzzle_emb_len=1",
            "arch.H_cycles=1", "arch.L_cycles=1", "arch.halt_max_steps=1", "logger.mode=disabled", FLOAT32]


def test_pooled_votes_add_up_over_evaluations_and_resume(tiny_arc, tmp_path):
    src, _ = tiny_arc
    data = tmp_path / "arc-data"
    straight = _pooled_run(src, data, tmp_path, "straight", "evaluator.pool_votes=true")
    project = tmp_path / "Arc-data-ACT-torch"
    logs = [json.loads(line) for line in (project / "straight" / "metrics.jsonl").read_text().splitlines()]
    evals = [m for m in logs if "test/pass@2" in m]
    assert [m["step"] for m in evals] == [2, 4]
    assert [m["test/pooled/evaluations"] for m in evals] == [1, 2]
    for k in (1, 2, 5, 10):  # one evaluation pooled is that evaluation
        assert evals[0][f"test/pooled/pass@{k}"] == evals[0][f"test/pass@{k}"]
    assert straight["test/pooled/pass@2"] == evals[-1]["test/pooled/pass@2"]
    assert (project / "straight" / "submission_step_4_pooled.json").exists()
    # every checkpoint holds the votes so far: the second evaluation adds its (at most 12) well-formed predictions
    pools = [load_checkpoint(str(project / "straight" / f"step_{s}.pt"))["evaluator"] for s in (2, 4)]
    totals = [sum(v[3] for v in p["votes"]) for p in pools]
    assert [p["evaluations"] for p in pools] == [1, 2] and 0 < totals[0] < totals[1] <= totals[0] + 12
    # a run stopped after 2 steps and resumed pools the same votes
    _pooled_run(src, data, tmp_path, "split", "evaluator.pool_votes=true", "max_steps=2")
    overrides = [f"resume={project / 'split'}", "max_steps=null"]
    resumed = train(resume_config(compose(*overrides), overrides))
    assert load_checkpoint(str(project / "split" / "step_4.pt"))["evaluator"] == pools[-1]
    assert {k: v for k, v in resumed.items() if "pooled" in k} == {k: v for k, v in straight.items() if "pooled" in k}
