"""torchrun on the CPU (Gloo, 2 processes): the same training as one process with the same global batch, one
checkpoint, exact resume; and the collectives of utils/distributed.py and the sparse embedding's sign-SGD."""
import json
import os
import shutil
import subprocess
import sys
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import ROOT, TINY, compose, compose_chat, grid_task, tiny_cfg, with_puzzle_ids, write_tasks
from utils.checkpoint import load_checkpoint

PROJECT = "Sudoku-ids-ACT-torch"
# 8 steps (2 epochs of 4) with an evaluation and a checkpoint after each epoch; exploration on (its draws must
# not depend on the number of ranks), EMA on
COMMON = ["epochs=2", "eval_interval=1", "ema=true", "arch.halt_exploration_prob=0.5", "compile=false", "device=cpu",
          "arch.forward_dtype=float32"]  # the comparisons are float32 round-off


def torchrun(*overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(ROOT / "pretrain.py"), *overrides], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def runs(sudoku_dir, tmp_path_factory):
    """One process for 8 steps; torchrun with 2 processes for 4 steps, then resumed under torchrun to 8."""
    from pretrain import train  # imported here: the spawned processes of the last test import this module

    tmp = tmp_path_factory.mktemp("ddp")
    data = with_puzzle_ids(sudoku_dir, tmp / "sudoku-ids")
    train(tiny_cfg(data, tmp, *COMMON, "run_name=one"))
    args = [f"data_paths=[{data}]", f"checkpoint_dir={tmp}", *TINY, *COMMON]
    torchrun(*args, "max_steps=4", "run_name=two")
    two = tmp / PROJECT / "two"
    files_after_4 = sorted(os.listdir(two))
    first_checkpoint = tmp / "two_step_4.pt"
    shutil.copy(two / "step_4.pt", first_checkpoint)
    torchrun(*args[:2], "logger.mode=disabled", f"resume={two}", "max_steps=null")
    return tmp / PROJECT, files_after_4, first_checkpoint


def assert_same_state(a: dict, b: dict) -> None:
    assert a["step"] == b["step"] and a["data"] == b["data"]
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])  # same exploration draws as one process
    for key in ("model", "ema", "carry"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            x, y = a[key][name], b[key][name]
            if x.is_floating_point():  # latents pass through many more float32 operations than the weights
                tol = 5e-4 if key == "carry" else 1e-5
                torch.testing.assert_close(x, y, rtol=tol, atol=tol, msg=lambda m: f"{key}.{name}: {m}")
            else:
                assert torch.equal(x, y), f"{key}.{name} differs"


def test_two_processes_train_like_one_and_write_one_checkpoint(runs):
    root, files_after_4, first_checkpoint = runs
    # rank 0 alone writes: one checkpoint (named best and final), one config (and its group choices), one metrics
    # log, one summary
    assert files_after_4 == ["best.json", "config.yaml", "final.json", "hydra_choices.yaml", "metrics.jsonl",
                             "step_4.pt", "summary.json"]
    one, two = load_checkpoint(str(root / "one" / "step_4.pt")), load_checkpoint(str(first_checkpoint))
    assert_same_state(two, one)
    # the puzzle embedding rows were trained, identically
    table = two["model"]["model.inner.puzzle_emb.weights"]
    assert (table[1:].abs() > 0).all()
    torch.testing.assert_close(table, one["model"]["model.inner.puzzle_emb.weights"], rtol=0, atol=1e-6)


def test_resume_under_torchrun_continues_like_one_process(runs):
    root, _, _ = runs
    assert_same_state(load_checkpoint(str(root / "two" / "step_8.pt")), load_checkpoint(str(root / "one" / "step_8.pt")))


def test_metrics_are_reduced_over_ranks(runs):
    root, _, _ = runs
    def lines(run: str) -> list[dict]:
        return [json.loads(line) for line in (root / run / "metrics.jsonl").read_text().splitlines()]

    one, two = lines("one"), lines("two")
    assert [m["step"] for m in one] == [m["step"] for m in two]
    for a, b in zip(one, two):
        assert a.keys() == b.keys()
        for k in a.keys() - {"train/samples_per_s", "time/eval_s"}:  # (timings)
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5), k
    final = two[-1]
    assert final["test/count"] == 16  # every test example counted once over both ranks


# ---------------------------------------------------------------- collectives, with 2 Gloo processes

def _collectives(rank: int, init_file: str) -> None:
    from models.sparse_embedding import SignSGD, SparseEmbedding
    from utils.distributed import barrier, broadcast_object, gather_rows, reduce_sums, sharded, sum_gradients

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        mine = slice(2 * rank, 2 * rank + 2)
        # gathering the carry: rows in rank order, booleans too, on rank 0 only
        halted = torch.tensor([True, False, False, True])
        got = gather_rows(halted[mine])
        assert (got is None) if rank else torch.equal(got, halted)
        # summed gradients and metric sums
        p = torch.nn.Parameter(torch.zeros(3))
        p.grad = torch.full((3,), float(rank + 1))
        sum_gradients([p])
        assert torch.equal(p.grad, torch.full((3,), 3.0))
        assert reduce_sums({"count": torch.tensor(rank + 1.0)})["count"].item() == 3.0
        assert broadcast_object(f"rank {rank}") == "rank 0"
        barrier(timeout=timedelta(minutes=5))  # the long wait for a dataset build: its own group
        # work dealt over the ranks: each does its share, everyone gets all the results in order
        work = sharded(lambda items, tag: [f"{tag}{x} by {rank}" for x in items])
        assert work(list("abc"), "#") == ["#a by 0", "#b by 1", "#c by 0"]
        assert work(list("a"), "#") == ["#a by 0"]  # rank 1 has nothing to do

        # sign-SGD: ranks holding parts of the global batch end with the table of one process holding all of it
        ids = torch.tensor([1, 2, 1, 3])  # id 1 on both ranks: gradients summed across ranks before the sign
        grads = torch.tensor([[1.0, -3.0], [0.5, 0.5], [-2.0, 1.0], [0.0, -1.0]])

        def trained(world_size: int, rows: slice) -> torch.Tensor:
            emb = SparseEmbedding(5, 2, batch_size=rows.stop - rows.start, init_std=0.0, cast_to=torch.float32)
            emb.weights.fill_(1.0)
            opt = SignSGD(emb, lr=0.1, weight_decay=0.5, world_size=world_size)
            emb(ids[rows]).backward(grads[rows])
            opt.step()
            return emb.weights

        expected = torch.ones(5, 2)
        expected[[1, 2, 3]] = expected[[1, 2, 3]] * (1 - 0.05) - 0.1 * torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, -1.0]])
        torch.testing.assert_close(trained(1, slice(0, 4)), expected)
        torch.testing.assert_close(trained(2, mine), expected)
        dist.barrier()  # neither process leaves while the other still talks to it
    finally:
        dist.destroy_process_group()


def test_collectives_and_sign_sgd_across_two_processes(tmp_path):
    mp.spawn(_collectives, args=(str(tmp_path / "init"),), nprocs=2)


def test_arc_predictions_are_gathered_to_rank_zero(tmp_path):
    """Under torchrun every rank evaluates its share of the augmented test inputs; rank 0 votes over all of
    them: the submission and pass@k equal those of one process."""
    from dataset.build_arc_dataset import ArcBuildConfig, build
    from pretrain import train

    write_tasks(tmp_path / "src", "training", {"tr1": grid_task(1)})
    write_tasks(tmp_path / "src", "evaluation", {"ev1": grid_task(3), "ev2": grid_task(4, n_train=3, n_test=2)})
    data = tmp_path / "arc"
    build(ArcBuildConfig(output_dir=str(data), input_dir=str(tmp_path / "src"), subsets=["training", "evaluation"],
                         test_set="evaluation", num_aug=3, seed=0, quiet=True))
    args = ["dataset=arc", f"data_paths=[{data}]", f"checkpoint_dir={tmp_path}", *TINY, "arch.puzzle_emb_ndim=32",
            "max_steps=2", "compile=false", "device=cpu", "arch.forward_dtype=float32"]
    single = train(compose(*args, "run_name=one"))
    torchrun(*args, "run_name=two")
    runs = tmp_path / "Arc-ACT-torch"
    assert (runs / "one" / "submission_step_2.json").read_text() == (runs / "two" / "submission_step_2.json").read_text()
    final = [json.loads(line) for line in (runs / "two" / "metrics.jsonl").read_text().splitlines()][-1]
    for k in ("test/pass@1", "test/pass@2", "test/arc_tasks", "test/count"):
        assert final[k] == pytest.approx(single[k]), k


def test_chat_under_torchrun_trains_and_answers_like_one_process(synthetic_chat, tmp_path):
    """The chat path under torchrun (packed rows, no puzzle embedding): the same weights and validation loss as
    one process, and the evaluation prompts, shared out over the ranks, get the same replies."""
    args = [f"data_paths=[{synthetic_chat}]", f"checkpoint_dir={tmp_path}", "arch.hidden_size=32", "arch.num_heads=2",
            "global_batch_size=8", "dataset.max_new_tokens=6", "max_steps=4", "epochs=50", "eval_interval=50",
            "logger.mode=disabled", "compile=false", "device=cpu", "arch.forward_dtype=float32"]  # float32 round-off
    from pretrain import train

    single = compose_chat(*args, "run_name=one")
    results = train(single)
    torchrun("--config-name", "cfg_chat", *args, "run_name=two")
    runs = next(tmp_path.glob("*/one")).parent
    a, b = (load_checkpoint(str(runs / run / "step_4.pt")) for run in ("one", "two"))
    for name in a["model"]:
        torch.testing.assert_close(a["model"][name], b["model"][name], rtol=1e-5, atol=1e-5)
    final = [json.loads(line) for line in (runs / "two" / "metrics.jsonl").read_text().splitlines()][-1]
    assert final["test/loss"] == pytest.approx(results["test/loss"], rel=1e-4)
    assert final["test/tokens"] == results["test/tokens"]
    replies = [(runs / run / "samples.jsonl").read_text().splitlines() for run in ("one", "two")]
    assert len(replies[0]) == len(single.dataset.eval_prompts) >= 3 and replies[1] == replies[0]


def test_cuda_ranks_get_their_local_gpu_and_both_backends(monkeypatch):
    """The CUDA branch of init_distributed, without a GPU: device per local rank, a clear error when a node runs
    more processes than it has GPUs, and NCCL with Gloo beside it for CPU tensors."""
    import utils.distributed as ud

    monkeypatch.setattr(ud, "select_device", lambda preference: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert ud.rank_device("auto", 0) == torch.device("cuda", 0)
    assert ud.rank_device("cuda", 1) == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"LOCAL_RANK=2 .* 2 visible CUDA device\(s\).*--nproc-per-node 2"):
        ud.rank_device("auto", 2)
    assert ud.process_group_backend(torch.device("cuda", 1)) == "cpu:gloo,cuda:nccl"
    assert ud.process_group_backend(torch.device("cpu")) == "gloo"
    monkeypatch.setattr(ud, "select_device", lambda preference: torch.device("mps"))
    with pytest.raises(ValueError, match="need CUDA or the CPU, not mps"):
        ud.rank_device("mps", 0)
