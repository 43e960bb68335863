"""Layers, recursion, ACT halting, losses, sparse embedding + sign-SGD, EMA, transformer baseline."""
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import shared_path
from constants import IGNORE_LABEL_ID
from models import build_model
from models.ema import EMA
from models.layers import (Attention, Block, RotaryEmbedding, SeqInfo, SwiGLU, rms_norm, rotate, swiglu_width,
                           trunc_normal_)
from models.losses import log_stablemax, softmax_cross_entropy, stablemax_cross_entropy
from models.sparse_embedding import SignSGD, SparseEmbedding
from utils.official import import_official

SEQ, VOCAB, B = 12, 7, 3


def tiny(name="trm", **overrides):
    arch = dict(name=name, hidden_size=32, num_heads=4, expansion=2, L_layers=2, H_cycles=3, L_cycles=2,
                halt_max_steps=4, puzzle_emb_ndim=32, puzzle_emb_len=2, forward_dtype="float32",
                seq_len=SEQ, vocab_size=VOCAB, num_puzzle_identifiers=5, batch_size=B)
    arch.update(overrides)
    torch.manual_seed(0)
    return build_model(arch)


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"inputs": torch.randint(0, VOCAB, (B, SEQ), generator=g, dtype=torch.int32),
            "labels": torch.randint(0, VOCAB, (B, SEQ), generator=g, dtype=torch.int32),
            "puzzle_identifiers": torch.tensor([1, 2, 1], dtype=torch.int32)}


# ---- layers

def test_trunc_normal_has_requested_std_and_bounds():
    x = trunc_normal_(torch.empty(200_000), std=0.5)
    assert abs(x.std().item() - 0.5) < 0.01
    assert x.abs().max().item() <= 2 * 0.5 / math.sqrt(0.7737413) + 1e-6  # truncation at 2 corrected stds


def test_rms_norm_formula():
    x = torch.randn(4, 10)
    expected = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-5)
    torch.testing.assert_close(rms_norm(x), expected)


def test_swiglu_width_rounds_up_to_256():
    assert swiglu_width(512, 4) == 1536  # round(1365.3) -> 1536
    assert swiglu_width(97, 4) == 512
    assert SwiGLU(64, 4).gate_up_proj.weight.shape == (2 * 256, 64)


def test_rope_rotates_pairs_and_keeps_norm():
    rope = RotaryEmbedding(8, 16)
    x = torch.randn(2, 16, 3, 8)
    y = rotate(x, rope(torch.arange(16)))
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(y[:, 0], x[:, 0])  # position 0 is not rotated
    # rotate-half layout: dims i and i + D/2 rotate together by angle pos * base^(-2i/D)
    pos, i = 5, 1
    angle = pos * 10000 ** (-2 * i / 8)
    a, b = x[:, pos, :, i], x[:, pos, :, i + 4]
    torch.testing.assert_close(y[:, pos, :, i], a * math.cos(angle) - b * math.sin(angle))


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_attention_shapes_and_gqa_matches_repeated_heads(kv_heads):
    torch.manual_seed(0)
    attn = Attention(32, 4, kv_heads)
    assert attn.qkv_proj.weight.shape == ((4 + 2 * kv_heads) * 8, 32)
    x = torch.randn(2, 5, 32)
    out = attn(x)
    assert out.shape == (2, 5, 32)
    # reference: explicit softmax attention with each kv head shared by num_heads / kv_heads query heads
    q, k, v = attn.qkv_proj(x).view(2, 5, 4 + 2 * kv_heads, 8).split([4, kv_heads, kv_heads], dim=2)
    k, v = (t.repeat_interleave(4 // kv_heads, dim=2) for t in (k, v))
    w = torch.einsum("bqhd,bkhd->bhqk", q, k).div(math.sqrt(8)).softmax(-1)
    ref = attn.o_proj(torch.einsum("bhqk,bkhd->bqhd", w, v).reshape(2, 5, 32))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_causal_attention_ignores_the_future():
    torch.manual_seed(0)
    attn = Attention(16, 2, causal=True)
    x = torch.randn(1, 6, 16)
    y = x.clone()
    y[:, 4:] = torch.randn(1, 2, 16)
    torch.testing.assert_close(attn(x)[:, :4], attn(y)[:, :4])


def test_mlp_t_block_mixes_along_sequence():
    torch.manual_seed(0)
    block = Block(16, 2, 2.0, mlp_t_len=6)
    assert not hasattr(block, "self_attn")
    assert block.mlp_t.gate_up_proj.weight.shape[1] == 6
    x = torch.randn(2, 6, 16)
    out = block(x)
    assert out.shape == x.shape
    y = x.clone()
    y[:, 5] += 1.0  # a change at one position reaches the others
    assert not torch.allclose(block(y)[:, 0], out[:, 0])


# ---- recursion and ACT

def count_calls(level):
    """Whether autograd was on at each call of `level`."""
    calls = []
    original = level.forward

    def counting(*args, **kwargs):
        calls.append(torch.is_grad_enabled())
        return original(*args, **kwargs)

    level.forward = counting
    return calls


@pytest.mark.parametrize("H,L", [(1, 1), (3, 2), (2, 6)])
def test_recursion_calls_network_H_times_L_plus_1_with_grad_only_in_last_cycle(H, L):
    model = tiny(H_cycles=H, L_cycles=L)
    calls = count_calls(model.model.inner.L_level)
    b = batch()
    _, loss, _, _ = model(model.initial_carry(b), b)
    assert len(calls) == H * (L + 1)
    assert calls == [False] * ((H - 1) * (L + 1)) + [True] * (L + 1)
    loss.backward()
    assert model.model.inner.L_level.layers[0].mlp.down_proj.weight.grad is not None


@pytest.mark.parametrize("name", ["trm", "transformer"])
def test_gradient_checkpointing_recomputes_the_last_cycle_and_gives_the_same_gradients(name):
    """The blocks of the last H cycle (the one with autograd) run again in backward, and nothing else changes:
    the same loss and gradients (the puzzle embedding's too), and far fewer activations kept for backward."""
    results = []
    for checkpointing in (False, True):
        model = tiny(name, gradient_checkpointing=checkpointing)
        blocks = [m for m in model.modules() if isinstance(m, Block)]
        calls = []
        for block in blocks:
            block.register_forward_pre_hook(lambda *_: calls.append(1))
        saved = []  # bytes autograd keeps for backward (a checkpointed application keeps its own inputs only)
        b = batch()
        torch.manual_seed(1)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.nbytes) or t, lambda t: t):
            _, loss, _, _ = model(model.initial_carry(b), b)
        forward_calls = len(calls)
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        if name == "trm":
            grads["puzzle_emb"] = model.model.inner.puzzle_emb.local_weights.grad
        results.append((loss.detach(), grads, forward_calls, len(calls) - forward_calls, sum(saved)))
    (loss_a, grads_a, fwd_a, again_a, saved_a), (loss_b, grads_b, fwd_b, again_b, saved_b) = results
    applications = 3 * (2 + 1) if name == "trm" else 1  # H_cycles x (L_cycles + 1) vs one pass
    last_cycle = (2 + 1) * 2 if name == "trm" else 2  # (L_cycles + 1) applications x L_layers, or L_layers
    assert fwd_a == fwd_b == applications * 2 and (again_a, again_b) == (0, last_cycle)
    assert saved_b < saved_a / 3
    torch.testing.assert_close(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
    for key in grads_a:
        torch.testing.assert_close(grads_a[key], grads_b[key], msg=lambda m: f"{key}: {m}")


def test_carry_is_detached_and_reset_on_halt():
    model = tiny()
    b = batch()
    carry = model.initial_carry(b)
    carry, _, _, _ = model(carry, b)
    assert not carry.inner.z_H.requires_grad and not carry.inner.z_L.requires_grad
    # a halted sample restarts from H_init / L_init and takes the new batch's data
    carry.halted[:] = torch.tensor([True, False, False])
    inner = model.model.inner
    reset = inner.reset_carry(carry.halted, carry.inner)
    torch.testing.assert_close(reset.z_H[0], inner.H_init.expand_as(reset.z_H[0]))
    torch.testing.assert_close(reset.z_H[1:], carry.inner.z_H[1:])


def test_eval_always_runs_halt_max_steps():
    model = tiny(halt_max_steps=3)
    model.model.inner.q_head.bias.data.fill_(10.0)  # would halt at once in training
    model.eval()
    b = batch()
    carry = model.initial_carry(b)
    for step in range(1, 4):
        carry, _, _, _ = model(carry, b)
        assert carry.halted.all() == (step == 3)
        assert (carry.steps == step).all()


def test_training_halts_on_q_halt_and_exploration_delays_it():
    model = tiny(halt_max_steps=4, halt_exploration_prob=0.0)
    model.model.inner.q_head.bias.data.fill_(10.0)  # q_halt > 0: halt after the first step
    b = batch()
    carry, _, _, _ = model(model.initial_carry(b), b)
    assert carry.halted.all()
    # never halting by q: runs to halt_max_steps
    model.model.inner.q_head.bias.data.fill_(-10.0)
    carry = model.initial_carry(b)
    for step in range(1, 5):
        carry, _, _, _ = model(carry, b)
        assert carry.halted.all() == (step == 4)
    # exploration with probability 1: every sample must run at least 2 steps
    model = tiny(halt_max_steps=4, halt_exploration_prob=1.0)
    model.model.inner.q_head.bias.data.fill_(10.0)
    carry, _, _, _ = model(model.initial_carry(b), b)
    assert not carry.halted.any()


def test_halted_samples_take_new_data_others_keep_theirs():
    model = tiny(halt_max_steps=2, halt_exploration_prob=0.0)
    b1, b2 = batch(1), batch(2)
    carry, _, _, _ = model(model.initial_carry(b1), b1)
    carry.halted[:] = torch.tensor([False, True, False])
    carry, _, _, _ = model(carry, b2)
    assert torch.equal(carry.data["inputs"][0], b1["inputs"][0])
    assert torch.equal(carry.data["inputs"][1], b2["inputs"][1])
    assert carry.steps.tolist() == [2, 1, 2]


def test_q_learning_continue_target_when_no_ACT_continue_is_false():
    model = tiny(no_ACT_continue=False)
    b = batch()
    _, loss, metrics, out = model(model.initial_carry(b), b)
    assert "q_continue_loss" in metrics and "target_q_continue" in out
    assert ((out["target_q_continue"] >= 0) & (out["target_q_continue"] <= 1)).all()
    loss.backward()
    assert model.model.inner.q_head.weight.grad is not None


@pytest.mark.parametrize("pos", ["rope", "learned", "none"])
def test_position_encodings_and_mlp_t_run(pos):
    model = tiny(pos_encodings=pos, mlp_t=pos == "none")
    b = batch()
    _, loss, _, out = model(model.initial_carry(b), b)
    assert out["logits"].shape == (B, SEQ, VOCAB) and torch.isfinite(loss)
    assert hasattr(model.model.inner, "embed_pos") == (pos == "learned")


def test_bfloat16_forward():
    model = tiny(forward_dtype="bfloat16")
    b = batch()
    carry, loss, _, out = model(model.initial_carry(b), b)
    assert out["logits"].dtype == torch.bfloat16 and carry.inner.z_H.dtype == torch.bfloat16
    assert out["q_halt_logits"].dtype == torch.float32 and torch.isfinite(loss)


@pytest.mark.parametrize("name,extra", [("trm", {}), ("trm", {"single_z": True}), ("transformer", {})])
def test_fresh_carry_is_the_reset_of_every_row(name, extra):
    inner = tiny(name, **extra).model.inner
    fresh = inner.fresh_carry(B, SEQ, "cpu")
    reset = inner.reset_carry(torch.ones(B, dtype=torch.bool), inner.empty_carry(B, SEQ, "cpu"))
    assert torch.equal(fresh.z_H, reset.z_H) and torch.equal(fresh.z_L, reset.z_L)


@pytest.mark.parametrize("norm_position", ["post", "pre"])
def test_transformer_is_one_pass_of_the_blocks(norm_position):
    model = tiny("transformer", halt_max_steps=1, norm_position=norm_position)
    inner = model.model.inner
    assert not hasattr(inner, "H_init")
    b = batch()
    calls = count_calls(model.model.inner.L_level)
    carry, _, _, out = model(model.initial_carry(b), b)
    assert len(calls) == 1 and carry.halted.all()
    with torch.no_grad():
        h = inner.input_embeddings(b, inner.positions(b))
        for layer in inner.L_level.layers:
            h = layer(h, SeqInfo(inner.rotary_emb(inner.positions(b))))
        h = rms_norm(h) if norm_position == "pre" else h  # pre-norm: a final norm before the head
        torch.testing.assert_close(out["logits"], inner.lm_head(h)[:, inner.prefix_len:])


def test_pre_norm_blocks_and_embeddings_compute_llamas_formula():
    """h = h + attention(norm(h)); h = h + mlp(norm(h)); the embeddings unscaled, starting at std 1 as the scaled
    post-norm ones do."""
    torch.manual_seed(0)
    block, x = Block(32, 4, 2, pre_norm=True), torch.randn(2, 5, 32)
    h = x + block.self_attn(rms_norm(x))
    torch.testing.assert_close(block(x), h + block.mlp(rms_norm(h)), rtol=0, atol=0)
    post, pre = (tiny("transformer", norm_position=p, hidden_size=64).model.inner for p in ("post", "pre"))
    b = batch()
    torch.testing.assert_close(pre.input_embeddings(b, pre.positions(b))[:, pre.prefix_len:],
                               pre.embed_tokens(b["inputs"]), rtol=0, atol=0)
    for inner in (post, pre):
        assert abs(inner.embed_scale * inner.embed_tokens.embedding_weight.std().item() - 1) < 0.1
    with pytest.raises(ValueError, match="norm_position"):
        tiny("trm", mlp_t=True, pos_encodings="none", norm_position="pre")
    with pytest.raises(ValueError, match="norm_position must be post or pre"):
        tiny("transformer", norm_position="sandwich")


# ---- losses

def test_stablemax_matches_formula():
    logits = torch.tensor([[-2.0, 0.5, 3.0], [1.0, -0.5, 0.0]])
    s = lambda v: 1 / (1 - v) if v < 0 else v + 1  # noqa: E731
    for row in range(2):
        total = sum(s(v) for v in logits[row].tolist())
        for j in range(3):
            assert abs(log_stablemax(logits.double())[row, j].item() - math.log(s(logits[row, j].item()) / total)) < 1e-12
    labels = torch.tensor([2, IGNORE_LABEL_ID])
    loss = stablemax_cross_entropy(logits, labels, labels != IGNORE_LABEL_ID)
    assert loss.dtype == torch.float64
    assert abs(loss[0].item() + math.log(s(3.0) / (s(-2.0) + s(0.5) + s(3.0)))) < 1e-12 and loss[1] == 0


def test_softmax_cross_entropy_matches_torch():
    logits, labels = torch.randn(2, 5, 7), torch.randint(0, 7, (2, 5))
    labels[0, 0] = IGNORE_LABEL_ID
    ours = softmax_cross_entropy(logits, labels, labels != IGNORE_LABEL_ID)
    ref = F.cross_entropy(logits.view(-1, 7), labels.view(-1), reduction="none", ignore_index=IGNORE_LABEL_ID)
    torch.testing.assert_close(ours.view(-1), ref)


def test_act_loss_head_totals_and_metrics():
    model = tiny(halt_max_steps=1, loss={"loss_type": "softmax_cross_entropy"})
    b = batch()
    b["labels"][2] = IGNORE_LABEL_ID  # a padding row: no loss, not counted
    _, loss, metrics, out = model(model.initial_carry(b), b)
    per_token = F.cross_entropy(out["logits"][:2].float().reshape(-1, VOCAB), b["labels"][:2].long().reshape(-1),
                                reduction="none").view(2, SEQ)
    lm = per_token.mean(-1).sum()
    q = F.binary_cross_entropy_with_logits(out["q_halt_logits"], out["seq_correct"].float(), reduction="sum")
    torch.testing.assert_close(metrics["lm_loss"], lm)
    torch.testing.assert_close(loss, lm + 0.5 * q)
    # the metric leaves the padding row out (its empty answer counts as correct); the loss above keeps it
    q_rows = F.binary_cross_entropy_with_logits(out["q_halt_logits"][:2], out["seq_correct"][:2].float(), reduction="sum")
    torch.testing.assert_close(metrics["q_halt_loss"], q_rows)
    assert metrics["count"].item() == 2
    acc = (out["logits"][:2].argmax(-1) == b["labels"][:2]).float().mean(-1).sum()
    torch.testing.assert_close(metrics["accuracy"], acc)


def test_puzzle_evaluation_metrics_leave_out_the_padded_rows():
    """The last test batch is padded (no labels, the blank identifier): the metrics are those of the real rows."""
    from evaluators.puzzle import evaluate_puzzles

    model, b = tiny(), batch()
    pad = {"inputs": torch.zeros(2, SEQ, dtype=torch.int32), "labels": torch.full((2, SEQ), IGNORE_LABEL_ID),
           "puzzle_identifiers": torch.zeros(2, dtype=torch.int32)}
    padded = {k: torch.cat([v, pad[k].to(v.dtype)]) for k, v in b.items()}
    alone, with_padding = (evaluate_puzzles(model, [("all", rows, 0)], torch.device("cpu")) for rows in (b, padded))
    assert alone["count"] == B and "q_halt_loss" in alone
    assert with_padding == pytest.approx(alone)


# ---- puzzle embedding and sign-SGD

def test_sign_sgd_updates_touched_rows_with_decay_and_sums_duplicates():
    emb = SparseEmbedding(5, 3, batch_size=3, init_std=0.0, cast_to=torch.float32)
    emb.weights.copy_(torch.arange(15, dtype=torch.float32).view(5, 3))
    before = emb.weights.clone()
    opt = SignSGD(emb, lr=0.1, weight_decay=0.5)
    out = emb(torch.tensor([1, 3, 1]))
    torch.testing.assert_close(out, before[[1, 3, 1]])
    # row 1 appears twice: grads +1 and -3 sum to -2 (sign -1); row 3 gets grad +2 (sign +1)
    (out * torch.tensor([[1.0, 1, 1], [2, 2, 2], [-3, -3, -3]])).sum().backward()
    opt.step()
    expected = before.clone()
    expected[1] = before[1] * (1 - 0.1 * 0.5) + 0.1
    expected[3] = before[3] * (1 - 0.1 * 0.5) - 0.1
    torch.testing.assert_close(emb.weights, expected)
    opt.zero_grad()
    assert emb.local_weights.grad is None


def test_puzzle_embedding_is_a_buffer_read_directly_in_eval():
    model = tiny()
    inner = model.model.inner
    assert "puzzle_emb.weights" not in dict(inner.named_parameters())
    inner.puzzle_emb.weights.data.normal_()
    inner.eval()
    ids = torch.tensor([4, 0, 2])
    torch.testing.assert_close(inner.puzzle_emb(ids), inner.puzzle_emb.weights[ids])


# ---- EMA

def test_ema_is_the_bias_corrected_average_of_the_trained_weights_and_applies_temporarily():
    model = torch.nn.Linear(2, 2)
    rate = 0.9
    ema = EMA(model, rate=rate)
    trained = []
    for step in range(1, 5):
        with torch.no_grad():
            model.weight.add_(float(step))
        trained.append(model.weight.detach().clone())
        ema.update(model)
        # Adam's correction of an average that starts at zero: the initial weights have no part in it
        weights = [(1 - rate) * rate ** (step - i) for i in range(1, step + 1)]
        expected = sum(w * t for w, t in zip(weights, trained)) / (1 - rate ** step)
        torch.testing.assert_close(ema.shadow["weight"], expected)
    with ema.applied(model):
        torch.testing.assert_close(model.weight, ema.shadow["weight"])
    torch.testing.assert_close(model.weight, trained[-1])


# ---- causal models and packed rows

def causal(name, **overrides):
    return tiny(name, **{"causal": True, "puzzle_emb_ndim": 0, "halt_max_steps": 3, **overrides})


@pytest.mark.parametrize("name, norm", [("trm", "post"), ("transformer", "post"), ("transformer", "pre")])
@pytest.mark.parametrize("pos", ["rope", "learned"])
def test_causal_models_never_look_ahead(name, norm, pos):
    model = causal(name, pos_encodings=pos, H_cycles=2, L_cycles=3, norm_position=norm).eval()
    b = batch()
    changed = {k: v.clone() for k, v in b.items()}
    t = 6
    changed["inputs"][:, t + 1:] = (changed["inputs"][:, t + 1:] + 1) % VOCAB
    carries = [model.initial_carry(b), model.initial_carry(changed)]
    with torch.no_grad():
        for step in range(3):  # every ACT step, with the carried latents
            carries[0], _, _, out_a = model(carries[0], b)
            carries[1], _, _, out_b = model(carries[1], changed)
            torch.testing.assert_close(out_a["logits"][:, : t + 1], out_b["logits"][:, : t + 1])
            assert not torch.allclose(out_a["logits"][:, t + 1:], out_b["logits"][:, t + 1:])


def test_mlp_t_cannot_be_causal():
    with pytest.raises(ValueError, match="causal"):
        causal("trm", mlp_t=True)


@pytest.mark.parametrize("name, norm", [("trm", "post"), ("transformer", "post"), ("transformer", "pre")])
def test_packed_rows_match_separate_conversations(name, norm):
    """Two conversations packed in one row (segment ids, restarting positions) give the logits each gets alone."""
    model = causal(name, halt_max_steps=1, norm_position=norm).eval()
    g = torch.Generator().manual_seed(3)
    a, c = torch.randint(1, VOCAB, (1, 5), generator=g), torch.randint(1, VOCAB, (1, 7), generator=g)

    def run(inputs, **extra):
        bt = {"inputs": inputs, "labels": inputs, **extra}
        with torch.no_grad():
            return model(model.initial_carry(bt), bt)[3]["logits"]

    packed = run(torch.cat([a, c], 1), segment_ids=torch.tensor([[1] * 5 + [2] * 7]),
                 position_ids=torch.tensor([list(range(5)) + list(range(7))]))
    torch.testing.assert_close(packed[:, :5], run(a), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed[:, 5:], run(c), atol=1e-5, rtol=1e-5)


# ---- the paper's ablations: a separate z_H network (HRM), HRM's one-step gradient, a single latent

@pytest.mark.parametrize("H_layers, one_step", [(1, False), (0, True), (1, True)])
def test_hrm_options_choose_the_z_H_network_and_the_updates_with_gradient(H_layers, one_step):
    model = tiny(H_layers=H_layers, one_step_gradient=one_step)  # H 3 x (L 2 + 1)
    inner = model.model.inner
    L_calls = count_calls(inner.L_level)
    H_calls = count_calls(inner.H_level) if H_layers else L_calls  # without H_level, z_H's updates are L_level's
    b = batch()
    _, loss, _, _ = model(model.initial_carry(b), b)
    last = [False, True] if one_step else [True, True]  # the last cycle's 2 z_L updates: gradient through which
    if H_layers:
        assert len(inner.H_level.layers) == 1 and len(inner.L_level.layers) == 2
        assert L_calls == [False] * 4 + last and H_calls == [False, False, True]
    else:
        assert inner.H_level is None and L_calls == [False] * 6 + last + [True]
    loss.backward()
    for level in (inner.L_level, inner.H_level or inner.L_level):
        assert level.layers[0].mlp.down_proj.weight.grad is not None


def test_single_z_recurses_one_latent_and_never_touches_z_H():
    model = tiny(single_z=True)
    assert not hasattr(model.model.inner, "H_init")  # as the official trm_singlez
    calls = count_calls(model.model.inner.L_level)
    b = batch()
    carry, loss, _, _ = model(model.initial_carry(b), b)
    assert calls == [False] * (2 * (2 + 1)) + [True] * (2 + 1)  # H 3 x (L 2 + 1), gradient in the last cycle
    assert not carry.inner.z_H.any()  # (the empty carry's zeros)
    assert not torch.equal(carry.inner.z_L, model.model.inner.L_init.expand_as(carry.inner.z_L))


@pytest.mark.parametrize("overrides", [dict(single_z=True, H_layers=1), dict(single_z=True, one_step_gradient=True)])
def test_single_z_refuses_the_z_H_options(overrides):
    with pytest.raises(ValueError, match="single_z"):
        tiny(**overrides)


@pytest.mark.parametrize("overrides, message", [
    (dict(puzzle_emb_ndim=96, puzzle_emb_len=2), r"puzzle_emb_ndim=96 does not fit in puzzle_emb_len=2 positions of "
                                                 r"hidden_size=32 \(64\)"),
    (dict(hidden_size=30), "hidden_size=30 must be a multiple of num_heads=4"),
    (dict(num_key_value_heads=3), "num_heads=4 must be a multiple of num_key_value_heads=3")])
def test_sizes_that_do_not_fit_are_clear_errors(overrides, message):
    """A puzzle embedding wider than its positions was cut to fit without a word (its other dimensions never
    trained); head sizes that do not divide failed an assert."""
    with pytest.raises(ValueError, match=message):
        tiny(**overrides)
    tiny(puzzle_emb_ndim=64, puzzle_emb_len=2)  # exactly fills them
    tiny(puzzle_emb_ndim=96, puzzle_emb_len=0)  # 0: as many positions as it needs


@pytest.mark.parametrize("option", [dict(H_layers=1), dict(one_step_gradient=True), dict(single_z=True)])
def test_the_transformer_refuses_the_recursion_options(option):
    (key, value), = option.items()
    with pytest.raises(ValueError, match=f"^arch.{key}={value}: options of the TRM's recursion"):
        tiny("transformer", **option)


OFFICIAL = shared_path("reference", "TinyRecursiveModels")


@pytest.mark.skipif(OFFICIAL is None, reason="needs the official code in ../shared/reference/TinyRecursiveModels")
@pytest.mark.parametrize("variant", ["hrm", "trm_singlez"])
def test_ablations_compute_what_the_official_code_computes(variant):
    """Our HRM-style and single-z options against the official hrm.py and trm_singlez.py with the same weights:
    the logits and Q-logits of every ACT step in evaluation, and the gradients of one training step."""
    # (hrm.py's puzzle embedding takes ceil(puzzle_emb_ndim / hidden_size) = 1 positions)
    # float64 (the official code still runs its norms and rotary tables in float32: 1e-6 apart after one step, as
    # its TRM, up to 1e-4 after 4 ACT steps of the single latent; a different computation is off by 0.1 or more)
    ours = tiny(forward_dtype="float64", **(dict(H_layers=2, one_step_gradient=True, puzzle_emb_len=1)
                                           if variant == "hrm" else dict(single_z=True)))
    with torch.no_grad():  # a puzzle embedding that is not all zeros
        ours.model.inner.puzzle_emb.weights.normal_()
    module, = import_official(OFFICIAL, f"models.recursive_reasoning.{variant}")
    cls = module.HierarchicalReasoningModel_ACTV1 if variant == "hrm" else module.TinyRecursiveReasoningModel_ACTV1
    c = ours.model.config
    theirs = cls(dict(batch_size=B, seq_len=SEQ, puzzle_emb_ndim=c.puzzle_emb_ndim, puzzle_emb_len=c.puzzle_emb_len,
                      num_puzzle_identifiers=c.num_puzzle_identifiers, vocab_size=VOCAB, H_cycles=c.H_cycles,
                      L_cycles=c.L_cycles, H_layers=c.H_layers, L_layers=c.L_layers, hidden_size=c.hidden_size,
                      expansion=c.expansion, num_heads=c.num_heads, pos_encodings=c.pos_encodings,
                      halt_max_steps=c.halt_max_steps, halt_exploration_prob=0.1, forward_dtype="float64"))
    theirs.load_state_dict(ours.model.state_dict())  # the same names and shapes: its checkpoints load into ours

    b = batch()
    ours.eval(), theirs.eval()
    ours_carry, their_carry = ours.model.initial_carry(b), theirs.initial_carry(b)
    with torch.no_grad():
        for _ in range(c.halt_max_steps):
            ours_carry, ours_out = ours.model(ours_carry, b)
            their_carry, their_out = theirs(their_carry, b)
            for key in ("logits", "q_halt_logits", "q_continue_logits"):
                torch.testing.assert_close(ours_out[key], their_out[key], atol=1e-3, rtol=0)  # (logits ~2)

    # training: one inner step from fresh latents, the same loss on both sides
    grads = []
    for model in (ours.model, theirs):
        model.train()
        model.zero_grad()
        reset = torch.ones(B, dtype=torch.bool)
        start = model.inner.reset_carry(reset, model.inner.empty_carry(B, SEQ, "cpu") if model is ours.model
                                        else model.inner.empty_carry(B))
        _, logits, (q_halt, _) = model.inner(start, b)
        (logits.square().mean() + q_halt.sum()).backward()
        grads.append({k: p.grad for k, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 5
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], atol=1e-6, rtol=1e-3, msg=k)
