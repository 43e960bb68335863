"""Adam-atan2 against its formula, the optimizer factory, and the LR schedule."""
import math

import pytest
import torch

from models import build_model
from models.sparse_embedding import SignSGD
from utils.optim import AdamAtan2, build_optimizers, lr_factor


def test_adam_atan2_matches_formula():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5))
    lr, wd, b1, b2 = 0.01, 0.1, 0.9, 0.95
    opt = AdamAtan2([p], lr=lr, betas=(b1, b2), weight_decay=wd)
    ref, m, v = p.detach().double().clone(), torch.zeros(5, dtype=torch.float64), torch.zeros(5, dtype=torch.float64)
    for t in range(1, 6):
        g = torch.randn(5)
        p.grad = g.clone()
        opt.step()
        g = g.double()
        ref = ref * (1 - lr * wd)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        ref = ref - lr / (1 - b1**t) * torch.atan2(m, v.sqrt() / math.sqrt(1 - b2**t))
        torch.testing.assert_close(p.detach().double(), ref, atol=1e-6, rtol=0)


def test_adam_atan2_needs_no_epsilon_for_zero_gradients():
    p = torch.nn.Parameter(torch.ones(3))
    opt = AdamAtan2([p], lr=0.1)
    p.grad = torch.zeros(3)
    opt.step()
    assert torch.isfinite(p).all() and torch.equal(p.detach(), torch.ones(3))  # atan2(0, 0) = 0


def small_model():
    return build_model(dict(name="trm", hidden_size=16, num_heads=2, L_layers=1, H_cycles=1, L_cycles=1,
                            seq_len=4, vocab_size=5, puzzle_emb_ndim=16, num_puzzle_identifiers=3,
                            forward_dtype="float32"))


@pytest.mark.parametrize("name,cls", [("adam_atan2", AdamAtan2), ("adamw", torch.optim.AdamW)])
def test_factory_pairs_main_optimizer_with_sign_sgd(name, cls):
    model = small_model()
    opts, lrs = build_optimizers(model, {"name": name}, lr=1e-3, weight_decay=0.1, beta1=0.9, beta2=0.95,
                                 puzzle_emb_lr=1e-2, puzzle_emb_weight_decay=0.2)
    assert isinstance(opts[0], SignSGD) and isinstance(opts[1], cls)
    assert lrs == [1e-2, 1e-3]
    assert opts[0].param_groups[0]["weight_decay"] == 0.2 and opts[1].param_groups[0]["betas"] == (0.9, 0.95)
    main_params = {id(p) for g in opts[1].param_groups for p in g["params"]}
    assert id(model.model.inner.puzzle_emb.weights) not in main_params


def test_factory_rejects_unknown_and_unavailable_fused():
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizers(small_model(), {"name": "sgd"}, 1e-3, 0.1, 0.9, 0.95, 1e-2, 0.1)
    if not torch.cuda.is_available():  # on CPU the fused kernel can never be used
        with pytest.raises(RuntimeError, match="fused"):
            build_optimizers(small_model(), {"name": "adam_atan2", "fused": True}, 1e-3, 0.1, 0.9, 0.95, 1e-2, 0.1)


def test_lr_schedule_warmup_then_cosine():
    assert lr_factor(0, 10, 110, 0.1) == 0.0
    assert lr_factor(5, 10, 110, 0.1) == 0.5
    assert lr_factor(10, 10, 110, 0.1) == pytest.approx(1.0)
    assert lr_factor(60, 10, 110, 0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(110, 10, 110, 0.1) == pytest.approx(0.1)
    assert lr_factor(80, 10, 110, 1.0) == 1.0  # min ratio 1: constant


def test_puzzle_embeddings_still_train_after_a_device_move():
    """model.to(device) copies buffers; on a real move (CPU -> CUDA) the copy is not a leaf unless the embedding
    makes it one again, and sign-SGD would then find no gradient. `_apply(clone)` is such a move on the CPU."""
    from models.sparse_embedding import SparseEmbedding

    emb = SparseEmbedding(4, 3, batch_size=2, init_std=0.0, cast_to=torch.float32)
    emb._apply(lambda t: t.clone())  # what .to("cuda") does to every buffer
    assert emb.local_weights.is_leaf and emb.local_weights.requires_grad
    opt = SignSGD(emb, lr=0.1, weight_decay=0.0)
    emb(torch.tensor([1, 3])).sum().backward()
    opt.step()
    assert torch.equal(emb.weights, torch.tensor([[0.0] * 3, [-0.1] * 3, [0.0] * 3, [-0.1] * 3]))
