"""Building blocks shared by every model: casted linear/embedding, RMS norm, RoPE, attention, SwiGLU."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from models.kv_cache import KVCache

CosSin = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class SeqInfo:
    """What one application of the network needs besides the hidden states, the same for every application of
    an ACT step: rotary tables of the positions (`RotaryEmbedding(positions)`), the attention mask (bool
    [B, 1, S, S_keys], True = may attend; it replaces the causal flag: packed rows give it causality and their
    boundaries) and the cache of earlier positions' keys/values (generation)."""
    cos_sin: CosSin | None = None
    mask: torch.Tensor | None = None
    cache: KVCache | None = None


NO_SEQ_INFO = SeqInfo()


def trunc_normal_(tensor: torch.Tensor, std: float = 1.0, lower: float = -2.0, upper: float = 2.0) -> torch.Tensor:
    """Truncated normal in units of std, rescaled so the *truncated* distribution has the requested std.

    torch.nn.init.trunc_normal_ truncates but keeps the std of the untruncated normal; TRM (like JAX's
    LeCun init) corrects for the variance the truncation removes.
    """
    with torch.no_grad():
        if std == 0:
            return tensor.zero_()
        cdf_lo, cdf_hi = (math.erf(b / math.sqrt(2)) for b in (lower, upper))
        mass = (cdf_hi - cdf_lo) / 2
        pdf = lambda v: math.exp(-0.5 * v * v) / math.sqrt(2 * math.pi)  # noqa: E731
        var = 1 - (upper * pdf(upper) - lower * pdf(lower)) / mass - ((pdf(upper) - pdf(lower)) / mass) ** 2
        scale = std / math.sqrt(var)
        # inverse-CDF sampling: uniform in erf space, then erfinv
        tensor.uniform_(cdf_lo, cdf_hi).erfinv_().mul_(math.sqrt(2) * scale)
        return tensor.clamp_(lower * scale, upper * scale)


class CastedLinear(nn.Module):
    """Linear layer whose float32 master weight is cast to the input dtype at use (bf16 compute, fp32 storage)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.weight = nn.Parameter(trunc_normal_(torch.empty(out_features, in_features), std=in_features**-0.5))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

        self._cast: tuple[tuple, torch.Tensor] | None = None  # ((version, address, dtype), the cast weight)

    def cast_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """The weight in `dtype`. Without autograd (the recursion's no-grad cycles) the cast is made once per weight
        update, not at every application: the optimizer's in-place step bumps the weight's version."""
        w = self.weight
        if w.dtype == dtype:
            return w
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return w.to(dtype)
        cached = self._cast
        key = (w._version, w.data_ptr(), dtype)  # an in-place update or a new tensor (.data = ...) invalidates it
        if cached is None or cached[0] != key:
            with torch.no_grad():
                self._cast = cached = (key, w.to(dtype))
        return cached[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias
        if bias is not None and bias.dtype != x.dtype:
            bias = bias.to(x.dtype)
        return F.linear(x, self.cast_weight(x.dtype), bias)


class CastedEmbedding(nn.Module):
    def __init__(self, num_embeddings: int, dim: int, init_std: float, cast_to: torch.dtype):
        super().__init__()
        self.cast_to = cast_to
        # name kept from the official code so its checkpoints load unchanged
        self.embedding_weight = nn.Parameter(trunc_normal_(torch.empty(num_embeddings, dim), std=init_std))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        w = self.embedding_weight
        return F.embedding(ids, w if w.dtype == self.cast_to else w.to(self.cast_to))


# computed as they are; narrower dtypes are widened to float32 for the norm
WIDE = (torch.float32, torch.float64)


def rms_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Weightless RMS norm over the last axis, computed in float32 (float64 inputs stay float64). Written out
    rather than torch's rms_norm, whose bf16 backward is slower on the CPU; no cast ops when none are needed."""
    dtype = x.dtype
    if dtype not in WIDE:
        x = x.float()
    y = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)
    return y if dtype in WIDE else y.to(dtype)


def rope_tables(cos: torch.Tensor, sin: torch.Tensor) -> CosSin:
    """The rotary tables as `rotate` takes them: cos/sin [..., D] -> [..., 1, D] each (a heads axis), with
    rotate-half's sign folded into sin: x * cos + rotate_half(x) * sin with rotate_half(x) = (-x2, x1) equals
    x * cos + roll(x) * (-s1, s2), since (-a) * b == a * (-b) exactly."""
    half = sin.shape[-1] // 2
    return cos.unsqueeze(-2), torch.cat((-sin[..., :half], sin[..., half:]), dim=-1).unsqueeze(-2)


class RotaryEmbedding(nn.Module):
    """Rotary tables of every position in the 'rotate half' layout (each frequency repeated over both halves),
    kept in the form `rotate` takes, so a forward pass only looks its positions up."""

    def __init__(self, head_dim: int, max_positions: int, base: float = 10000.0):
        super().__init__()
        inv_freq = base ** -(torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        freqs = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)
        angles = torch.cat((freqs, freqs), dim=-1)
        cos, signed_sin = rope_tables(angles.cos(), angles.sin())
        self.register_buffer("cos", cos, persistent=False)  # [max_positions, 1, head_dim]
        self.register_buffer("signed_sin", signed_sin, persistent=False)

    def forward(self, positions: torch.Tensor) -> CosSin:
        """The tables of `positions` ([S], or [B, S] per sample), shared by every application of the network."""
        return self.cos[positions], self.signed_sin[positions]


def rotate(x: torch.Tensor, tables: CosSin) -> torch.Tensor:
    """RoPE on x [B, S, H, D] with tables from `rope_tables`, computed in float32 (float64 inputs stay float64)."""
    cos, signed_sin = tables
    dtype = x.dtype
    if dtype != cos.dtype:
        x = x.to(torch.promote_types(dtype, cos.dtype))
        cos, signed_sin = cos.to(x.dtype), signed_sin.to(x.dtype)
    y = x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin
    return y if y.dtype == dtype else y.to(dtype)


class Attention(nn.Module):
    """Multi-head attention with a fused qkv projection and grouped-query heads (num_kv_heads <= num_heads)."""

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int | None = None, causal: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads or num_heads
        assert hidden_size % num_heads == 0, "hidden_size must be divisible by num_heads"
        assert num_heads % self.num_kv_heads == 0, "num_heads must be a multiple of num_key_value_heads"
        self.head_dim = hidden_size // num_heads
        self.causal = causal
        self.qkv_proj = CastedLinear(hidden_size, (num_heads + 2 * self.num_kv_heads) * self.head_dim)
        self.o_proj = CastedLinear(num_heads * self.head_dim, hidden_size)

    def forward(self, x: torch.Tensor, seq_info: SeqInfo = NO_SEQ_INFO) -> torch.Tensor:
        """seq_info: positions (rotary tables), mask and cache (extended with this call's keys/values)."""
        cos_sin, mask, cache = seq_info.cos_sin, seq_info.mask, seq_info.cache
        B, S, _ = x.shape
        qkv = self.qkv_proj(x).view(B, S, self.num_heads + 2 * self.num_kv_heads, self.head_dim)
        qk, v = qkv.split([self.num_heads + self.num_kv_heads, self.num_kv_heads], dim=2)
        if cos_sin is not None:
            qk = rotate(qk, cos_sin)  # q and k in one pass
        q, k = qk.split([self.num_heads, self.num_kv_heads], dim=2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, heads, S, D]
        if cache is not None:
            k, v = cache.update(k, v)
        if self.num_kv_heads != self.num_heads:
            rep = self.num_heads // self.num_kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        # without a mask, a single new query (S=1 against cached keys) attends to every key
        is_causal = self.causal and mask is None and q.shape[2] == k.shape[2]
        if x.device.type == "cpu" and mask is None and not is_causal and cache is None:
            out = full_attention(q, k, v)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
        return self.o_proj(out.transpose(1, 2).reshape(B, S, -1))


def full_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Unmasked softmax(q k^T / sqrt(d)) v as two matmuls, for the CPU: at TRM's short sequences (~100 positions)
    the CPU flash-attention kernel's backward is several times slower than this. Scores and softmax are float32
    (as in flash attention); the probabilities multiply v in v's dtype."""
    dtype = torch.promote_types(q.dtype, torch.float32)  # float64 stays float64
    scores = torch.matmul(q.to(dtype), k.to(dtype).transpose(-1, -2)).mul_(q.shape[-1] ** -0.5)
    return torch.matmul(torch.softmax(scores, dim=-1).to(v.dtype), v)


def swiglu_width(hidden_size: int, expansion: float) -> int:
    """Inner width: 2/3 of expansion*hidden (so parameters match a 4x GELU MLP), rounded up to a multiple of 256."""
    return -(-round(expansion * hidden_size * 2 / 3) // 256) * 256


class SwiGLU(nn.Module):
    def __init__(self, hidden_size: int, expansion: float):
        super().__init__()
        inner = swiglu_width(hidden_size, expansion)
        self.gate_up_proj = CastedLinear(hidden_size, 2 * inner)
        self.down_proj = CastedLinear(inner, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        two_matmuls = (x.device.type == "cpu" and not torch.compiler.is_compiling()
                       and (torch.is_grad_enabled() or x.numel() >= 1 << 17))
        if two_matmuls:
            # Eager on the CPU: gate and up as two matmuls with the two halves of the one weight. Through `chunk`
            # of one output, backward would concatenate two activation-sized gradients; here what is put together
            # is the weight-sized gradient (15% off the default job's step, 3% at the paper's mlp_t config).
            # Without autograd (the no-grad cycles, evaluation) this form is faster too on big activations: at the
            # paper's configs in bf16, an evaluation pass 12% (mlp_t) and 6% (attention), a training step 3%
            # (mlp_t); the default job 4%. Small ones (decoding, short prompts) keep the one matmul, one call fewer
            # per token. Compiled graphs fuse the concatenation away themselves and keep the fused matmul: in them
            # the two-matmul form makes torch 2.13's inductor emit an out-of-bounds atomic add in the embedding
            # backward (pytorch/pytorch#191837), which aborts the paper's compiled mlp_t step
            gate_w, up_w = self.gate_up_proj.cast_weight(x.dtype).chunk(2)
            x = x.contiguous()  # (mlp_t's transposed input: copied once for both matmuls, not a batched matmul)
            gate, up = F.linear(x, gate_w), F.linear(x, up_w)
        else:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    """Token mixing (attention, or with mlp_t a SwiGLU across the sequence axis), then SwiGLU, each with a
    residual and a weightless RMS norm: post-norm h = norm(h + f(h)) (TRM), or pre-norm h = h + f(norm(h))
    (Llama's, whose norm weights are then all ones)."""

    def __init__(self, hidden_size: int, num_heads: int, expansion: float, num_kv_heads: int | None = None,
                 causal: bool = False, mlp_t_len: int | None = None, norm_eps: float = 1e-5, pre_norm: bool = False):
        super().__init__()
        assert not (pre_norm and mlp_t_len), "pre-norm blocks mix tokens by attention"
        self.norm_eps = norm_eps
        self.pre_norm = pre_norm
        if mlp_t_len is not None:
            self.mlp_t = SwiGLU(mlp_t_len, expansion)
        else:
            self.self_attn = Attention(hidden_size, num_heads, num_kv_heads, causal=causal)
        self.mlp = SwiGLU(hidden_size, expansion)

    def forward(self, h: torch.Tensor, seq_info: SeqInfo = NO_SEQ_INFO) -> torch.Tensor:
        if self.pre_norm:
            h = h + self.self_attn(rms_norm(h, self.norm_eps), seq_info)
            return h + self.mlp(rms_norm(h, self.norm_eps))
        if hasattr(self, "mlp_t"):
            # Mix along the sequence: [B, S, D] -> [B, D, S]; the norm then runs over the sequence axis, as in TRM.
            h = h.transpose(1, 2)
            h = rms_norm(h + self.mlp_t(h), self.norm_eps).transpose(1, 2)
        else:
            h = rms_norm(h + self.self_attn(h, seq_info), self.norm_eps)
        return rms_norm(h + self.mlp(h), self.norm_eps)


class ReasoningModule(nn.Module):
    """A stack of blocks that first adds an injection to its input: f(h, inj) = blocks(h + inj) (None: blocks(h)).

    checkpointing: an application with autograd on keeps only its inputs and recomputes its activations in backward
    (less memory, one more forward). The recursion's no-grad cycles are unaffected."""

    def __init__(self, layers: list[Block], checkpointing: bool = False):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.checkpointing = checkpointing

    def forward(self, h: torch.Tensor, injection: torch.Tensor | None, seq_info: SeqInfo = NO_SEQ_INFO) -> torch.Tensor:
        if self.checkpointing and torch.is_grad_enabled():
            return checkpoint(self.apply_layers, h, injection, seq_info, use_reentrant=False)
        return self.apply_layers(h, injection, seq_info)

    def apply_layers(self, h: torch.Tensor, injection: torch.Tensor | None, seq_info: SeqInfo) -> torch.Tensor:
        if injection is not None:
            h = h + injection
        for layer in self.layers:
            h = layer(h, seq_info)
        return h
