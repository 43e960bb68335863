"""Training controls: gradient clipping, float16 with a loss scaler (CUDA), best / final checkpoints and
checkpoint_keep_last in a real run, and the checks on these options."""
import copy
import json

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose, tiny_cfg
from models import build_model
from models.ema import EMA
from pretrain import train, train_step
from utils.checkpoint import find_checkpoint, load_checkpoint
from utils.run import resume_config
from utils.train_state import TrainState

B, SEQ, VOCAB = 4, 8, 6
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="float16 training with a loss scaler needs CUDA")


def tiny_model(device="cpu", dtype="float32"):
    torch.manual_seed(0)
    arch = dict(name="trm", hidden_size=16, num_heads=2, expansion=2, L_layers=1, H_cycles=2, L_cycles=1,
                halt_max_steps=2, puzzle_emb_ndim=0, forward_dtype=dtype, seq_len=SEQ, vocab_size=VOCAB)
    return build_model(arch).to(device)


def tiny_batch(device="cpu"):
    g = torch.Generator().manual_seed(0)
    return {k: torch.randint(0, VOCAB, (B, SEQ), generator=g, dtype=torch.int32).to(device)
            for k in ("inputs", "labels")} | {"puzzle_identifiers": torch.zeros(B, dtype=torch.int32, device=device)}


def step_with(model, optimizer, scaler, **cfg) -> dict:
    """One train_step of `model` on the tiny batch at the optimizer's own learning rate."""
    state = TrainState(model, [optimizer], [optimizer.param_groups[0]["lr"]], None, scaler)
    cfg = OmegaConf.create({"grad_accum_steps": 1, "global_batch_size": B, **cfg})
    torch.manual_seed(1)
    return train_step(state, model, tiny_batch(next(model.parameters()).device), cfg, schedule=lambda step: 1.0)


def test_grad_clip_scales_the_gradient_to_the_limit_and_logs_the_norm_before():
    reference = tiny_model()
    b = tiny_batch()
    torch.manual_seed(1)
    _, loss, _, _ = reference(reference.initial_carry(b), b)
    (loss / B).backward()
    grads = {n: p.grad for n, p in reference.named_parameters() if p.grad is not None}
    norm = torch.cat([g.flatten() for g in grads.values()]).norm()

    model = tiny_model()
    before = copy.deepcopy(model.state_dict())
    sgd = torch.optim.SGD(model.parameters(), lr=1.0)  # the update is the (clipped) gradient itself
    metrics = step_with(model, sgd, torch.amp.GradScaler("cpu", enabled=False), grad_clip=float(norm) / 10)
    torch.testing.assert_close(metrics["grad_norm"], norm)
    after = model.state_dict()
    for name, grad in grads.items():
        torch.testing.assert_close(before[name] - after[name], grad / 10, msg=lambda m: f"{name}: {m}")
    assert "grad_norm" not in step_with(tiny_model(), sgd, torch.amp.GradScaler("cpu", enabled=False), grad_clip=None)


def test_float16_training_on_the_cpu_is_a_clear_error(sudoku_dir, tmp_path):
    with pytest.raises(ValueError, match="arch.forward_dtype=float16 trains on CUDA only .* on cpu train with "
                                         "bfloat16 or float32"):
        train(tiny_cfg(sudoku_dir, tmp_path, "arch.forward_dtype=float16", "device=cpu"))


def test_option_checks(sudoku_dir, tmp_path):
    with pytest.raises(ValueError, match="grad_clip=-1.0: must be > 0"):
        train(tiny_cfg(sudoku_dir, tmp_path, "grad_clip=-1.0"))
    with pytest.raises(ValueError, match="curriculum.start_stage=1: this run's data have no curriculum stages"):
        train(tiny_cfg(sudoku_dir, tmp_path, "curriculum.start_stage=1"))


@cuda
def test_float16_skips_a_step_whose_scaled_gradient_overflows_and_then_trains():
    model = tiny_model("cuda", "float16")
    before = copy.deepcopy(model.state_dict())
    adam = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0 ** 40)  # float16 gradients overflow at this scale
    metrics = step_with(model, adam, scaler, grad_clip=1.0)
    assert not torch.isfinite(metrics["grad_norm"]) and scaler.get_scale() == 2.0 ** 39
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the step was skipped
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0 ** 10)
    metrics = step_with(model, adam, scaler, grad_clip=1.0)
    assert torch.isfinite(metrics["grad_norm"]) and scaler.get_scale() == 2.0 ** 10
    assert not torch.equal(before["model.inner.lm_head.weight"], model.state_dict()["model.inner.lm_head.weight"])


@cuda
def test_float16_run_on_cuda_keeps_its_loss_scale_across_a_resume(sudoku_dir, tmp_path):
    """(Weights are not compared bit for bit: CUDA attention kernels need not be deterministic.)"""
    extra = ["device=cuda", "arch.forward_dtype=float16", "grad_clip=1.0", "eval_at_end=false", "compile=false"]
    train(tiny_cfg(sudoku_dir, tmp_path, "max_steps=6", "run_name=straight", *extra))
    train(tiny_cfg(sudoku_dir, tmp_path, "max_steps=3", "run_name=split", *extra))
    split = tmp_path / "Sudoku-tiny-ACT-torch" / "split"
    overrides = [f"resume={split}", "max_steps=6"]
    train(resume_config(compose(*overrides), overrides))
    a = load_checkpoint(find_checkpoint(str(tmp_path / "Sudoku-tiny-ACT-torch" / "straight")))
    b = load_checkpoint(find_checkpoint(str(split)))
    assert a["step"] == b["step"] == 6 and a["model_config"]["forward_dtype"] == "float16"
    assert a["scaler"]["scale"] > 0 and a["scaler"] == b["scaler"]  # (the growth tracker counts on after the resume)
    assert all(torch.isfinite(v).all() for v in b["model"].values() if v.is_floating_point())
    logged = [json.loads(line) for line in (split / "metrics.jsonl").read_text().splitlines()]
    assert any(0 < (r.get("train/grad_norm") or 0) < float("inf") for r in logged)


# ---------------------------------------------------------------- best and final in a run

def test_a_run_names_its_best_and_final_checkpoints_and_keeps_only_the_last(sudoku_dir, tmp_path):
    """Evaluations every 2 steps (4 steps an epoch); keep_last=1 leaves the final step file and the best one;
    checkpoint_every_eval=false still saves each new best; TensorBoard gets the scalars. The best is the highest test
    loss (mode=max), so that it is not the last checkpoint as the falling loss would make it."""
    common = ["epochs=2", "eval_interval=0.5", "checkpoint_best_metric=lm_loss", "checkpoint_best_mode=max"]
    train(tiny_cfg(sudoku_dir, tmp_path, *common, "checkpoint_keep_last=1", "logger.tensorboard=true", "run_name=k"))
    run = tmp_path / "Sudoku-tiny-ACT-torch" / "k"
    evals = [(r["step"], r["test/lm_loss"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
             if "test/lm_loss" in r]
    assert [s for s, _ in evals] == [2, 4, 6, 8]
    best_step = max(evals, key=lambda e: (e[1], -e[0]))[0]
    assert best_step < 8
    assert find_checkpoint(f"{run}/best") == f"{run}/step_{best_step}.pt"
    assert find_checkpoint(f"{run}/final") == find_checkpoint(f"{run}/latest") == f"{run}/step_8.pt"
    assert {p.name for p in run.glob("step_*")} == {f"step_{best_step}.pt", "step_8.pt"}
    assert json.loads((run / "best.json").read_text())["value"] == pytest.approx(max(v for _, v in evals))
    assert list((run / "tb").glob("events.out.tfevents.*"))
    # resume= takes the names too (as init_from= and generate.py do: all go through find_checkpoint)
    overrides = [f"resume={run}/best"]
    assert resume_config(compose(*overrides), overrides).resume == f"{run}/step_{best_step}.pt"

    train(tiny_cfg(sudoku_dir, tmp_path, *common, "checkpoint_every_eval=false", "run_name=e"))
    run = tmp_path / "Sudoku-tiny-ACT-torch" / "e"
    new_bests = [s for k, (s, v) in enumerate(evals) if all(v > w for _, w in evals[:k])]  # same seed, same run
    assert {p.name for p in run.glob("step_*")} == {f"step_{s}.pt" for s in new_bests + [8]}


def puzzle_embedding_step(scaler: torch.amp.GradScaler, ema: bool = False):
    """(model, state, step): a tiny TRM with puzzle embeddings (sign-SGD) and its TrainState; step() is one
    train_step on the tiny batch with two puzzle identifiers."""
    from utils.optim import build_optimizers

    torch.manual_seed(0)
    arch = dict(name="trm", hidden_size=16, num_heads=2, expansion=2, L_layers=1, H_cycles=2, L_cycles=1,
                halt_max_steps=2, puzzle_emb_ndim=16, puzzle_emb_len=1, forward_dtype="float32", seq_len=SEQ,
                vocab_size=VOCAB, num_puzzle_identifiers=3)
    model = build_model(arch, batch_size=B)
    optimizers, lrs = build_optimizers(model, {"name": "adamw"}, 1e-2, 0.1, 0.9, 0.95, 1e-2, 0.1)
    state = TrainState(model, optimizers, lrs, EMA(model, rate=0.9) if ema else None, scaler)
    batch = tiny_batch() | {"puzzle_identifiers": torch.tensor([1, 2, 1, 2], dtype=torch.int32)}
    cfg = OmegaConf.create({"grad_accum_steps": 1, "global_batch_size": B})
    return model, state, lambda: train_step(state, model, batch, cfg, schedule=lambda step: 1.0)


def test_a_loss_scaler_overflow_in_the_puzzle_embedding_gradient_lowers_the_scale_and_skips_the_step(monkeypatch):
    """float16 (here float32 with a CPU scaler, the same code path): an overflowing scaled gradient reaches the
    puzzle embedding's rows too. The step is the scaler's to skip, lowering the scale, as for a model without
    puzzle embeddings; it was counted a bad step with the scale unchanged, so every later step overflowed as well
    and the run stopped after max_bad_steps. The losses and sign-SGD's rows are checked in one all-reduce a step."""
    import utils.nonfinite

    reduced = []
    monkeypatch.setattr(utils.nonfinite, "all_reduce_sum", lambda t: reduced.append(t) or t)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    model, state, step = puzzle_embedding_step(scaler, ema=True)
    ema = state.ema
    before = copy.deepcopy(model.state_dict())
    # the gradient of the logits overflows (as a float16 one does at too high a scale): every gradient is non-finite
    hook = model.model.inner.lm_head.register_full_backward_pre_hook(lambda _, grad: (grad[0] * float("inf"),))
    assert step() is not None
    assert scaler.get_scale() == 2.0 ** 9 and state.step == 1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # weights and puzzle rows alike
    hook.remove()
    assert step() is not None and state.step == 2
    after = model.state_dict()
    for name in ("model.inner.lm_head.weight", "model.inner.puzzle_emb.weights"):
        assert not torch.equal(before[name], after[name]) and torch.isfinite(after[name]).all()
    assert len(reduced) == 2  # one a step
    assert ema.updates == 1  # the skipped step folded nothing in: the average is of step 2's weights alone
    assert all(torch.equal(v, after[k]) for k, v in ema.state_dict().items())


def test_a_loss_scale_lowered_for_sign_sgd_waits_growth_interval_good_steps_before_it_grows():
    """The scale that an overflow of the puzzle embedding's gradient lowers grows again after growth_interval good
    steps, as after an overflow the scaler finds itself; it kept the count of good steps from before the overflow,
    so that it could grow back to the overflowing scale at the very next step."""
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=2)
    model, state, step = puzzle_embedding_step(scaler)

    def overflow(module, inputs, out):  # only sign-SGD's rows: the weights' gradients stay finite
        out = out.clone()  # (a new tensor: the hook must not stay on the embedding's scratch rows)
        out.register_hook(lambda grad: grad * float("inf"))
        return out

    scales = []
    for k in range(4):
        hook = model.model.inner.puzzle_emb.register_forward_hook(overflow) if k == 1 else None  # at step 2
        assert step() is not None
        scales.append(scaler.get_scale())
        if hook:
            hook.remove()
    assert scales == [2.0 ** 10, 2.0 ** 9, 2.0 ** 9, 2.0 ** 10]
