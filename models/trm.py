"""Tiny Recursive Model: one small network applied recursively (H/L cycles), wrapped in adaptive computation (ACT).
The paper's ablations are options: a second network for z_H (HRM), HRM's 1-step gradient, a single latent.

Module and buffer names follow the official implementation (trm.py, and hrm.py / trm_singlez.py for the
ablations) so that its checkpoints load unchanged.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields

import torch
from torch import nn

from models.kv_cache import KVCache
from models.layers import (Block, CastedEmbedding, CastedLinear, ReasoningModule, RotaryEmbedding, SeqInfo, rms_norm,
                           trunc_normal_)
from models.sparse_embedding import SparseEmbedding

Batch = dict[str, torch.Tensor]
# float64: exact reference computations (tests, debugging); the weights stay float32 masters either way
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


# TRMConfig's annotation -> the values it takes, and how an error names them
KINDS = {"int": (numbers.Integral, "a whole number"), "float": (numbers.Real, "a number"),
         "bool": (bool, "true or false"), "str": (str, "a string")}
AT_LEAST_ONE = ("seq_len", "vocab_size", "batch_size", "hidden_size", "num_heads", "L_layers", "H_cycles", "L_cycles",
                "halt_max_steps")
NON_NEGATIVE = ("H_layers", "puzzle_emb_ndim", "puzzle_emb_len")
POSITIVE = ("expansion", "rope_theta", "rms_norm_eps")


def check_field_types(options, prefix: str = "") -> None:
    """Raise ValueError naming (after `prefix`) the first field of the dataclass instance `options` whose value is
    not of its annotated type, where that is int, float, bool or str, each optionally `| None`: configs composed by
    Hydra arrive untyped."""
    for f in fields(options):
        value, optional = getattr(options, f.name), f.type.endswith(" | None")
        if f.type.removesuffix(" | None") not in KINDS or (value is None and optional):
            continue
        kind, words = KINDS[f.type.removesuffix(" | None")]
        if (not isinstance(value, kind) or (kind is not bool and isinstance(value, bool))
                or (kind is numbers.Real and not math.isfinite(value))):
            shown = "null" if value is None else repr(value)
            raise ValueError(f"{prefix}{f.name}={shown}: must be {words}{' or null' if optional else ''}")


class PuzzleEmbeddingTooWide(ValueError):
    """puzzle_emb_ndim does not fit in puzzle_emb_len x hidden_size. (Before this was refused the embedding was
    cut to fit: a checkpoint of that time meets this error when it loads, with advice of its own.)"""

    def __init__(self, what: str):
        self.what = what
        super().__init__(f"{what}; raise puzzle_emb_len (0: as many as it needs)")


@dataclass
class TRMConfig:
    # filled from the dataset
    seq_len: int
    vocab_size: int
    num_puzzle_identifiers: int = 1
    batch_size: int = 1  # local batch size: the size of the sparse-embedding scratch rows
    # network
    hidden_size: int = 512
    num_heads: int = 8
    num_key_value_heads: int | None = None  # < num_heads for grouped-query attention
    expansion: float = 4.0
    L_layers: int = 2
    H_layers: int = 0  # 0: one network makes both updates (TRM); > 0: z_H has its own network of H_layers blocks (HRM)
    pos_encodings: str = "rope"  # rope | learned | none
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    # post: h = norm(h + f(h)) in every block (TRM). pre: h = h + f(norm(h)), a norm before the heads and unscaled
    # embeddings (init std 1, the scale the post-norm scaling gives): what Llama computes, norm weights all ones
    norm_position: str = "post"
    mlp_t: bool = False  # replace attention by a SwiGLU across the sequence axis
    causal: bool = False
    puzzle_emb_ndim: int = 512
    puzzle_emb_len: int = 16  # 0: ceil(puzzle_emb_ndim / hidden_size)
    forward_dtype: str = "bfloat16"
    gradient_checkpointing: bool = False  # training: recompute the activations of each network application in backward
    # recursion and ACT
    H_cycles: int = 3
    L_cycles: int = 6
    halt_max_steps: int = 16
    halt_exploration_prob: float = 0.1
    no_ACT_continue: bool = True
    # ablations of the paper (HRM-style: H_layers > 0 with one_step_gradient)
    one_step_gradient: bool = False  # HRM's approximation: backprop through the last z_L and z_H updates only
    single_z: bool = False  # one latent (the official trm_singlez): L_cycles x z <- f(z + x), then z <- f(z)

    @classmethod
    def from_dict(cls, values: dict) -> "TRMConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown model option(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    def __post_init__(self) -> None:
        self.check_values()
        if self.mlp_t and self.causal:
            raise ValueError("mlp_t mixes the whole sequence and cannot be causal; use attention for causal models")
        if self.norm_position not in ("post", "pre"):
            raise ValueError(f"norm_position must be post or pre, got {self.norm_position!r}")
        if self.norm_position == "pre" and self.mlp_t:
            raise ValueError("norm_position=pre is for attention blocks; mlp_t blocks are post-norm")
        if self.pos_encodings not in ("rope", "learned", "none"):
            raise ValueError(f"pos_encodings must be rope, learned or none, got {self.pos_encodings!r}")
        if self.forward_dtype not in DTYPES:
            raise ValueError(f"forward_dtype must be one of {list(DTYPES)}, got {self.forward_dtype!r}")
        if self.single_z and (self.H_layers or self.one_step_gradient):
            raise ValueError("single_z has no z_H update: it combines with neither H_layers > 0 nor one_step_gradient")
        if not self.mlp_t and self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} must be a multiple of num_heads={self.num_heads}")
        if not self.mlp_t and self.num_heads % (self.num_key_value_heads or self.num_heads):
            raise ValueError(f"num_heads={self.num_heads} must be a multiple of "
                             f"num_key_value_heads={self.num_key_value_heads}")
        if self.puzzle_emb_ndim > self.prefix_len * self.hidden_size:  # (it would be cut to fit)
            raise PuzzleEmbeddingTooWide(f"puzzle_emb_ndim={self.puzzle_emb_ndim} does not fit in puzzle_emb_len="
                                         f"{self.puzzle_emb_len} positions of hidden_size={self.hidden_size} "
                                         f"({self.prefix_len * self.hidden_size})")

    def check_values(self) -> None:
        """Each option's type (from its annotation) and the ranges outside which no model can be built: a config's
        typo (hidden_size=null, expansion=-1) is one line naming the option, not a traceback from inside a layer."""
        check_field_types(self)
        for name, low in [*((n, 1) for n in AT_LEAST_ONE), *((n, 0) for n in NON_NEGATIVE)]:
            if getattr(self, name) < low:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= {low}")
        for name in POSITIVE:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)}: must be > 0")
        if self.num_key_value_heads is not None and self.num_key_value_heads < 1:
            raise ValueError(f"num_key_value_heads={self.num_key_value_heads}: must be >= 1 (or null: num_heads)")
        if not 0 <= self.halt_exploration_prob <= 1:
            raise ValueError(f"halt_exploration_prob={self.halt_exploration_prob}: must lie in [0, 1]")

    @property
    def prefix_len(self) -> int:
        """Positions taken by the puzzle embedding in front of the tokens."""
        if self.puzzle_emb_ndim <= 0:
            return 0
        return self.puzzle_emb_len or -(-self.puzzle_emb_ndim // self.hidden_size)


@dataclass
class InnerCarry:
    z_H: torch.Tensor  # current answer ("y" in the paper; unused with single_z)
    z_L: torch.Tensor  # latent reasoning state ("z" in the paper; also the answer with single_z)


@dataclass
class Carry:
    inner: InnerCarry
    steps: torch.Tensor  # [B] int32, ACT steps taken on the current sample
    halted: torch.Tensor  # [B] bool
    data: Batch  # the sample each row is currently working on

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"z_H": self.inner.z_H, "z_L": self.inner.z_L, "steps": self.steps, "halted": self.halted,
                **{f"data.{k}": v for k, v in self.data.items()}}

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> "Carry":
        data = {k.removeprefix("data."): v for k, v in state.items() if k.startswith("data.")}
        return cls(InnerCarry(state["z_H"], state["z_L"]), state["steps"], state["halted"], data)

    def rows(self, rows: slice) -> "Carry":
        """The carry of some rows of the batch (a micro-batch)."""
        return Carry.from_state_dict({k: v[rows] for k, v in self.state_dict().items()})

    @staticmethod
    def cat(parts: list["Carry"]) -> "Carry":
        """The carries of consecutive micro-batches as one."""
        states = [p.state_dict() for p in parts]
        return Carry.from_state_dict({k: torch.cat([s[k] for s in states]) for k in states[0]})


class TRMInner(nn.Module):
    """Embeddings, the shared reasoning network and the heads; `recurse` is one ACT step of latent updates."""

    def __init__(self, config: TRMConfig):
        super().__init__()
        self.config = c = config
        self.forward_dtype = DTYPES[c.forward_dtype]
        self.prefix_len = c.prefix_len
        self.pre_norm = c.norm_position == "pre"
        self.embed_scale = 1.0 if self.pre_norm else math.sqrt(c.hidden_size)
        embed_std = 1.0 / self.embed_scale  # the scaled embeddings start at std 1 either way

        self.embed_tokens = CastedEmbedding(c.vocab_size, c.hidden_size, embed_std, self.forward_dtype)
        self.lm_head = CastedLinear(c.hidden_size, c.vocab_size)
        self.q_head = CastedLinear(c.hidden_size, 2, bias=True)
        if c.puzzle_emb_ndim > 0:
            self.puzzle_emb = SparseEmbedding(c.num_puzzle_identifiers, c.puzzle_emb_ndim, c.batch_size,
                                              init_std=0.0, cast_to=self.forward_dtype)
        total_len = c.seq_len + self.prefix_len
        if c.pos_encodings == "rope":
            self.rotary_emb = RotaryEmbedding(c.hidden_size // c.num_heads, total_len, c.rope_theta)
        elif c.pos_encodings == "learned":
            self.embed_pos = CastedEmbedding(total_len, c.hidden_size, embed_std, self.forward_dtype)

        def network(layers: int) -> ReasoningModule:
            return ReasoningModule([
                Block(c.hidden_size, c.num_heads, c.expansion, c.num_key_value_heads, causal=c.causal,
                      mlp_t_len=total_len if c.mlp_t else None, norm_eps=c.rms_norm_eps, pre_norm=self.pre_norm)
                for _ in range(layers)
            ], checkpointing=c.gradient_checkpointing)

        self.L_level = network(c.L_layers)
        self.H_level = network(c.H_layers) if c.H_layers else None  # None: L_level also updates z_H
        self._init_states()
        with torch.no_grad():  # q_head starts at "never halt"
            self.q_head.weight.zero_()
            self.q_head.bias.fill_(-5.0)

    def _init_states(self) -> None:
        # fixed (untrained) starting points of the two latents; a single latent is z_L (no H_init, as trm_singlez)
        if not self.config.single_z:
            self.register_buffer("H_init", trunc_normal_(torch.empty(self.config.hidden_size), std=1.0))
        self.register_buffer("L_init", trunc_normal_(torch.empty(self.config.hidden_size), std=1.0))

    def positions(self, batch: Batch) -> torch.Tensor:
        """Position of every state row: [S] shared, or [B, S] when the batch has `position_ids` (packed rows
        restart at 0 for each conversation); the puzzle-embedding prefix comes first."""
        inputs, P = batch["inputs"], self.prefix_len
        if "position_ids" not in batch:
            return torch.arange(P + inputs.shape[1], device=inputs.device)
        if not P:
            return batch["position_ids"].long()
        prefix = torch.arange(P, device=inputs.device).expand(inputs.shape[0], P)
        return torch.cat((prefix, batch["position_ids"].long() + P), dim=1)

    def attention_mask(self, batch: Batch) -> torch.Tensor | None:
        """Packed rows (`segment_ids`): attention stays inside each conversation (and is causal if the model is)."""
        if "segment_ids" not in batch:
            return None
        if self.prefix_len:
            raise ValueError("packed rows (segment_ids) are not supported with a puzzle embedding")
        seg = batch["segment_ids"]
        mask = seg[:, :, None] == seg[:, None, :]
        if self.config.causal:
            mask &= torch.ones(seg.shape[1], seg.shape[1], dtype=torch.bool, device=seg.device).tril()
        return mask[:, None]

    def input_embeddings(self, batch: Batch, positions: torch.Tensor) -> torch.Tensor:
        c = self.config
        x = self.embed_tokens(batch["inputs"].long())
        if c.puzzle_emb_ndim > 0:
            p = self.puzzle_emb(batch["puzzle_identifiers"].long())
            p = nn.functional.pad(p, (0, self.prefix_len * c.hidden_size - p.shape[-1]))
            x = torch.cat((p.view(-1, self.prefix_len, c.hidden_size), x), dim=-2)
        if c.pos_encodings == "learned":
            x = 0.707106781 * (x + self.embed_pos(positions))  # keeps the variance
        return x if self.pre_norm else self.embed_scale * x

    def empty_carry(self, batch_size: int, length: int, device: torch.device | str) -> InnerCarry:
        shape = (batch_size, length + self.prefix_len, self.config.hidden_size)
        return InnerCarry(*(torch.zeros(shape, dtype=self.forward_dtype, device=device) for _ in range(2)))

    def fresh_carry(self, batch_size: int, length: int, device: torch.device | str) -> InnerCarry:
        """The starting latents of every row (what reset_carry gives rows that all start), as broadcast views:
        H_init and L_init, or zeros for a latent without one (single_z's z_H, the transformer's state)."""
        shape = (batch_size, length + self.prefix_len, self.config.hidden_size)
        zero = torch.zeros(self.config.hidden_size, dtype=self.forward_dtype, device=device)

        def start(init: torch.Tensor | None) -> torch.Tensor:
            return (zero if init is None else init.to(self.forward_dtype)).expand(shape)

        return InnerCarry(start(getattr(self, "H_init", None)), start(getattr(self, "L_init", None)))

    def reset_carry(self, reset: torch.Tensor, carry: InnerCarry) -> InnerCarry:
        r = reset.view(-1, 1, 1)
        z_H = carry.z_H if self.config.single_z else torch.where(r, self.H_init.to(self.forward_dtype), carry.z_H)
        return InnerCarry(z_H, torch.where(r, self.L_init.to(self.forward_dtype), carry.z_L))

    def recurse(self, z_H: torch.Tensor, z_L: torch.Tensor, x: torch.Tensor,
                seq_info: SeqInfo) -> tuple[torch.Tensor, torch.Tensor]:
        """H_cycles x (L_cycles updates of z_L, then one of z_H); gradient only through the last H cycle (whose
        activations gradient_checkpointing recomputes in backward), or with one_step_gradient only through its
        last z_L and z_H updates."""
        c = self.config
        with torch.no_grad():
            for _ in range(c.H_cycles - 1):
                z_H, z_L = self.cycle(z_H, z_L, x, seq_info)
            if c.one_step_gradient:  # HRM: all but the last z_L update of the last cycle run without gradient too
                z_L = self.update_z_L(z_L, z_H + x, seq_info, c.L_cycles - 1)
        return self.cycle(z_H, z_L, x, seq_info, 1 if c.one_step_gradient else None)

    def cycle(self, z_H: torch.Tensor, z_L: torch.Tensor, x: torch.Tensor, seq_info: SeqInfo,
              L_steps: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One H cycle: L_steps (default L_cycles) updates of z_L from (z_H + x), which is fixed within the cycle,
        then one of z_H (by H_level when the model has one)."""
        c = self.config
        L_steps = c.L_cycles if L_steps is None else L_steps
        if c.single_z:  # the one latent (z_L) is also the answer: updated from x alone, then once without it
            z_L = self.update_z_L(z_L, x, seq_info, L_steps)
            return z_H, self.L_level(z_L, None, seq_info)
        z_L = self.update_z_L(z_L, z_H + x, seq_info, L_steps)
        H_level = self.H_level if self.H_level is not None else self.L_level
        return H_level(z_H, z_L, seq_info), z_L

    def update_z_L(self, z_L: torch.Tensor, injection: torch.Tensor, seq_info: SeqInfo, steps: int) -> torch.Tensor:
        for _ in range(steps):
            z_L = self.L_level(z_L, injection, seq_info)
        return z_L

    def forward(self, carry: InnerCarry, batch: Batch,
                cache: KVCache | None = None) -> tuple[InnerCarry, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One ACT step: the new carry, the logits and the Q-head's (halt, continue) logits."""
        carry, out = self.latents(carry, batch, cache)
        logits = self.lm_head(out)[:, self.prefix_len:]
        # The Q-head reads one state row. Non-causal: the first (a puzzle-embedding row, which sees everything).
        # Causal: the last, the only row that has seen the whole sequence.
        q = self.q_head(out[:, -1 if self.config.causal else 0]).float()
        return InnerCarry(carry.z_H.detach(), carry.z_L.detach()), logits, (q[..., 0], q[..., 1])

    def latents(self, carry: InnerCarry, batch: Batch, cache: KVCache | None = None) -> tuple[InnerCarry, torch.Tensor]:
        """One ACT step's latent updates: the new carry and the states the heads read. With a cache (generation),
        `batch` and `carry` hold only the new positions of the current chunk."""
        positions = self.positions(batch)
        cos_sin = self.rotary_emb(positions) if hasattr(self, "rotary_emb") else None
        seq_info = SeqInfo(cos_sin, cache.mask if cache is not None else self.attention_mask(batch), cache)
        x = self.input_embeddings(batch, positions)
        z_H, z_L = self.recurse(carry.z_H, carry.z_L, x, seq_info)
        answer = z_L if self.config.single_z else z_H
        out = rms_norm(answer, self.config.rms_norm_eps) if self.pre_norm else answer  # (post-norm states are normed)
        return InnerCarry(z_H, z_L), out


class ACTModel(nn.Module):
    """Adaptive computation around an inner model: keeps a carry across calls, replaces halted samples by
    new data, and decides per sample whether to halt (Q-head) during training."""

    def __init__(self, inner: TRMInner):
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def initial_carry(self, batch: Batch) -> Carry:
        (B, S), device = batch["inputs"].shape, batch["inputs"].device
        return Carry(self.inner.empty_carry(B, S, device),
                     steps=torch.zeros(B, dtype=torch.int32, device=device),
                     halted=torch.ones(B, dtype=torch.bool, device=device),  # all halted: the first call loads data
                     data={k: torch.empty_like(v) for k, v in batch.items()})

    def forward(self, carry: Carry, batch: Batch,
                batch_rows: tuple[int, int] | None = None) -> tuple[Carry, dict[str, torch.Tensor]]:
        """One ACT step. batch_rows: (first row, global batch size) of this call's rows, which steer the exploration
        draws (this rank's rows under torchrun, this micro-batch's with gradient accumulation); None: all."""
        c = self.config
        inner_carry = self.inner.reset_carry(carry.halted, carry.inner)
        steps = torch.where(carry.halted, 0, carry.steps)
        data = {k: torch.where(carry.halted.view(-1, *([1] * (v.ndim - 1))), batch[k], v) for k, v in carry.data.items()}

        inner_carry, logits, (q_halt, q_continue) = self.inner(inner_carry, data)
        outputs = {"logits": logits, "q_halt_logits": q_halt, "q_continue_logits": q_continue}

        with torch.no_grad():
            steps = steps + 1
            is_last = steps >= c.halt_max_steps
            halted = is_last
            # In eval every sample runs halt_max_steps, so a batch halts together.
            if self.training and c.halt_max_steps > 1:
                halted = halted | ((q_halt > 0) if c.no_ACT_continue else (q_halt > q_continue))
                # exploration: some samples must run at least a random number of steps in [2, halt_max_steps].
                # Drawn for the whole global batch, of which this rank keeps its rows: every rank draws the same
                # numbers (and keeps the same RNG state) as one process with the whole batch would.
                start, total = batch_rows or (0, len(q_halt))
                rows = slice(start, start + len(q_halt))
                explore = torch.rand(total, device=q_halt.device)[rows] < c.halt_exploration_prob
                min_steps = explore * torch.randint(2, c.halt_max_steps + 1, (total,), dtype=steps.dtype,
                                                    device=steps.device)[rows]
                halted = halted & (steps >= min_steps)
                if not c.no_ACT_continue:
                    # Q-learning target from one more step (no replay buffer / target net: the batch is large)
                    _, _, (next_halt, next_continue) = self.inner(inner_carry, data)
                    outputs["target_q_continue"] = torch.sigmoid(
                        torch.where(is_last, next_halt, torch.maximum(next_halt, next_continue)))
        return Carry(inner_carry, steps, halted, data), outputs

    @torch.no_grad()
    def predict(self, inputs: torch.Tensor, position_ids: torch.Tensor | None = None, valid: torch.Tensor | None = None,
                cache: KVCache | None = None, compiled: bool = False, last_only: bool = False) -> torch.Tensor:
        """Logits [B, S, V] after the whole ACT budget from fresh latents, as in evaluation (every step runs);
        [B, 1, V] with `last_only` (the next token's: what generation needs).

        For generation (no puzzle embedding): `valid` [B, S] is False on left padding, `position_ids` count
        real tokens only. With a cache, `inputs` are just the new positions; the earlier ones are cached.
        `compiled`: run the ACT steps through torch.compile (with a static cache every decoding step has the same
        shapes, so one graph serves them all).
        """
        if self.inner.prefix_len:
            raise ValueError("generation needs a model without a puzzle embedding (puzzle_emb_ndim=0)")
        batch = {"inputs": inputs}
        if position_ids is not None:
            batch["position_ids"] = position_ids
        if cache is not None:
            if not self.config.causal:
                raise ValueError("a KV cache needs a causal model")
            cache.begin(valid, inputs.shape[1])
        elif valid is not None and not bool(valid.all()):
            batch["segment_ids"] = valid.long()  # padding attends only to padding, tokens only to tokens
        if compiled and not hasattr(self, "_compiled_steps"):
            self._compiled_steps = torch.compile(self.all_steps)  # the batch dimension goes dynamic if it shrinks
        logits = (self._compiled_steps if compiled else self.all_steps)(batch, cache, last_only)
        if cache is not None:
            cache.end()
        return logits

    def all_steps(self, batch: Batch, cache: KVCache | None, last_only: bool = False) -> torch.Tensor:
        """The logits after halt_max_steps ACT steps from fresh latents (of the last position only, with
        `last_only`: all that generation reads). Only the last step's states go through the LM head."""
        (B, S), device = batch["inputs"].shape, batch["inputs"].device
        carry = self.inner.fresh_carry(B, S, device)
        for _ in range(self.config.halt_max_steps):
            carry, out = self.inner.latents(carry, batch, cache)
        return self.inner.lm_head(out[:, -1:] if last_only else out)
