"""The faster formulations compute the same maths as the plain ones (speed itself lives in benchmarks/)."""
import pytest
import torch
import torch.nn.functional as F

from models.layers import Attention, CastedLinear, SwiGLU, full_attention, rope_tables, rotate


def plain_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.float().chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (x.float() * cos.unsqueeze(-2) + rotated * sin.unsqueeze(-2)).to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_is_bitwise_the_rotate_half_formula(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 3, 8, generator=g).to(dtype)
    angles = torch.randn(5, 8, generator=g)
    assert torch.equal(rotate(x, rope_tables(angles.cos(), angles.sin())), plain_rope(x, angles.cos(), angles.sin()))
    per_sample = torch.randn(2, 5, 8, generator=g)  # [B, S, D] tables (packed rows)
    assert torch.equal(rotate(x, rope_tables(per_sample.cos(), per_sample.sin())),
                       plain_rope(x, per_sample.cos(), per_sample.sin()))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_full_attention_matches_sdpa_forward_and_backward(dtype, tol):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 19, 16, generator=g).to(dtype).requires_grad_() for _ in range(3))
    grad = torch.randn(2, 4, 19, 16, generator=g).to(dtype)
    ours = full_attention(q, k, v)
    (d_ours := torch.autograd.grad(ours, (q, k, v), grad))
    # the reference in float32 from the same inputs: ours is within the dtype's round-off of it
    qf, kf, vf = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref = F.scaled_dot_product_attention(qf, kf, vf)
    d_ref = torch.autograd.grad(ref, (qf, kf, vf), grad.float())
    torch.testing.assert_close(ours.float(), ref, atol=tol, rtol=tol)
    for a, b in zip(d_ours, d_ref):
        torch.testing.assert_close(a.float(), b, atol=tol * 2, rtol=tol * 2)


def test_attention_module_uses_sdpa_semantics_on_cpu():
    torch.manual_seed(0)
    attn = Attention(32, 4)
    x = torch.randn(2, 7, 32)
    qkv = attn.qkv_proj(x).view(2, 7, 12, 8)
    q, k, v = (t.transpose(1, 2) for t in qkv.split(4, dim=2))
    expected = attn.o_proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 7, 32))
    torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)


def test_casted_linear_reuses_its_no_grad_cast_until_the_weight_changes():
    torch.manual_seed(0)
    layer = CastedLinear(8, 4)
    x = torch.randn(3, 8, dtype=torch.bfloat16)
    with torch.no_grad():
        first = layer.cast_weight(torch.bfloat16)
        assert layer.cast_weight(torch.bfloat16) is first  # reused within a step
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight.to(torch.bfloat16)), atol=0, rtol=0)
        layer.weight.add_(1.0)  # an optimizer step (in place)
        again = layer.cast_weight(torch.bfloat16)
        assert again is not first and torch.equal(again, layer.weight.to(torch.bfloat16))
        layer.weight.data = torch.randn(4, 8)  # a new tensor (as loading code may assign): no stale cast
        assert torch.equal(layer.cast_weight(torch.bfloat16), layer.weight.to(torch.bfloat16))
    # with autograd the cast is made afresh, so the gradient reaches the float32 weight
    layer(x).float().sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.dtype == torch.float32



@pytest.mark.parametrize("transposed", [False, True], ids=["rows", "mlp_t"])
def test_swiglu_big_no_grad_pass_computes_the_fused_projections_maths(transposed):
    """Without autograd, activations of 2^17 elements or more take the two-matmul form too (the no-grad cycles
    and evaluation of training-sized batches): the fused projection's outputs."""
    g = torch.Generator().manual_seed(0)
    mlp = SwiGLU(128, 4)
    x = torch.randn(64, 128, 128, generator=g)
    x = x.transpose(1, 2) if transposed else x
    with torch.no_grad():
        gate, up = F.linear(x, mlp.gate_up_proj.weight).chunk(2, dim=-1)
        torch.testing.assert_close(mlp(x), F.linear(F.silu(gate) * up, mlp.down_proj.weight), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("transposed", [False, True], ids=["rows", "mlp_t"])
def test_swiglu_training_pass_computes_the_fused_projections_maths(dtype, tol, transposed):
    """Training on the CPU runs gate and up as two matmuls (no concatenated gradient in backward): the same
    outputs as one matmul with the fused weight, and the same gradients within round-off."""
    g = torch.Generator().manual_seed(0)
    mlp = SwiGLU(16, 4)
    x = torch.randn(3, 16, 7, generator=g).to(dtype)
    x = (x.transpose(1, 2) if transposed else x.transpose(1, 2).contiguous()).requires_grad_()  # [3, 7, 16]
    grad = torch.randn(3, 7, 16, generator=g).to(dtype)

    def fused(x: torch.Tensor) -> torch.Tensor:
        gate, up = F.linear(x, mlp.gate_up_proj.weight.to(dtype)).chunk(2, dim=-1)
        return F.linear(F.silu(gate) * up, mlp.down_proj.weight.to(dtype))

    grads = []
    for f in (mlp, fused):
        out = f(x)
        out.backward(grad)
        grads.append((out.detach(), x.grad, mlp.gate_up_proj.weight.grad, mlp.down_proj.weight.grad))
        x.grad = None
        mlp.zero_grad()
    assert torch.equal(grads[0][0], grads[1][0])
    for ours, reference in zip(grads[0][1:], grads[1][1:]):
        torch.testing.assert_close(ours, reference, rtol=tol, atol=tol)
