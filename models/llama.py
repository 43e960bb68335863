"""Our pre-norm transformer as Hugging Face's LlamaForCausalLM: which runs are one, its config, and the weights
renamed both ways (no transformers import: init_from=DIR reads an export without it).

The same computation, term by term (transformers' models/llama/modeling_llama.py): pre-norm blocks with a final
norm before lm_head; RMS norms over float32 with the same eps (ours have no weight: the export's are all ones,
and x * 1.0 is x); rotate-half RoPE with the same theta; no biases; SwiGLU silu(gate) * up, our fused
gate_up_proj being [gate; up]; the fused qkv_proj [q heads; k heads; v heads] with grouped kv heads repeated as
repeat_kv does; untied lm_head; unscaled embeddings. The Q-head (ACT halting, which a one-step model never
consults) has no place in Llama: it travels in a file of its own so that the weights load back whole.
"""
from __future__ import annotations

import re
from typing import Any

import torch

from models.layers import swiglu_width
from models.trm import TRMConfig

OURS = "model.inner."  # our state dict's prefix (ACTLossHead -> ACTModel -> inner)
LAYER_WEIGHTS = ({f"self_attn.{p}_proj.weight" for p in "qkvo"}
                 | {f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")})


def llama_mismatch(name: str, c: TRMConfig) -> str | None:
    """Why a model (arch `name`, config `c`) is not a Llama, or None when it is one."""
    rules = {"name": (name, "transformer", "the plain transformer, not the recursive TRM"),
             "norm_position": (c.norm_position, "pre", "pre-norm blocks"),
             "causal": (c.causal, True, "causal attention"), "mlp_t": (c.mlp_t, False, "attention blocks"),
             "pos_encodings": (c.pos_encodings, "rope", "rotary positions"),
             "puzzle_emb_ndim": (c.puzzle_emb_ndim, 0, "no puzzle embedding"),
             "halt_max_steps": (c.halt_max_steps, 1, "one ACT step; more make a recurrent transformer")}
    for key, (value, wanted, what) in rules.items():
        if value != wanted:
            return f"{key}={value} (a Llama needs {what})"
    return None


def llama_config(c: TRMConfig) -> dict[str, Any]:
    """LlamaConfig's fields for our model of config `c` (one that llama_mismatch passes)."""
    return dict(vocab_size=c.vocab_size, hidden_size=c.hidden_size,
                intermediate_size=swiglu_width(c.hidden_size, c.expansion), num_hidden_layers=c.L_layers,
                num_attention_heads=c.num_heads,
                num_key_value_heads=c.num_key_value_heads or c.num_heads, head_dim=c.hidden_size // c.num_heads,
                hidden_act="silu", max_position_embeddings=c.seq_len, rms_norm_eps=c.rms_norm_eps,
                rope_theta=c.rope_theta, attention_bias=False, mlp_bias=False, tie_word_embeddings=False)


def to_llama(state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Our state dict (without the Q-head) under Llama's names, with norm weights of ones."""
    q_rows = config["num_attention_heads"] * config["head_dim"]
    kv_rows = config["num_key_value_heads"] * config["head_dim"]
    ones = lambda: torch.ones(config["hidden_size"])  # noqa: E731 (a tensor each: safetensors stores none twice)
    out = {"model.embed_tokens.weight": state[OURS + "embed_tokens.embedding_weight"],
           "lm_head.weight": state[OURS + "lm_head.weight"], "model.norm.weight": ones()}
    for i in range(config["num_hidden_layers"]):
        ours, theirs = f"{OURS}L_level.layers.{i}.", f"model.layers.{i}."
        q, k, v = state[ours + "self_attn.qkv_proj.weight"].split([q_rows, kv_rows, kv_rows])
        gate, up = state[ours + "mlp.gate_up_proj.weight"].chunk(2)
        out |= {theirs + "self_attn.q_proj.weight": q, theirs + "self_attn.k_proj.weight": k,
                theirs + "self_attn.v_proj.weight": v,
                theirs + "self_attn.o_proj.weight": state[ours + "self_attn.o_proj.weight"],
                theirs + "mlp.gate_proj.weight": gate, theirs + "mlp.up_proj.weight": up,
                theirs + "mlp.down_proj.weight": state[ours + "mlp.down_proj.weight"],
                theirs + "input_layernorm.weight": ones(), theirs + "post_attention_layernorm.weight": ones()}
    return {k: v.contiguous() for k, v in out.items()}


def check_llama_config(config: dict[str, Any], own: TRMConfig, source: str) -> None:
    """Refuse a Llama config.json whose computation our pre-norm transformer `own` does not share."""
    theta = (config.get("rope_parameters") or {}).get("rope_theta", config.get("rope_theta", 10000.0))
    rules = {"hidden_act": ("silu", config.get("hidden_act", "silu")),
             "attention_bias": (False, config.get("attention_bias", False)),
             "mlp_bias": (False, config.get("mlp_bias", False)),
             "tie_word_embeddings": (False, config.get("tie_word_embeddings", False)),
             "rope_theta": (own.rope_theta, theta), "rms_norm_eps": (own.rms_norm_eps, config.get("rms_norm_eps"))}
    for key, (ours, theirs) in rules.items():
        if theirs != ours:
            raise ValueError(f"{source}: config.json has {key}={theirs}, this model {ours}"
                             f"{' (arch.' + key + ')' if key in ('rope_theta', 'rms_norm_eps') else ''}")


def from_llama(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Llama's state dict under our names (every norm weight must be 1: our norms have none)."""
    out, layers = {}, set()
    for key, value in state.items():
        m = re.fullmatch(r"model\.layers\.(\d+)\.(.*)", key)
        if key.endswith("norm.weight"):
            if not bool((value == 1).all()):
                raise ValueError(f"{source}: {key} is not all ones; our pre-norm blocks have weightless norms, "
                                 "so only weights exported from this project (or trained with the norms frozen) load")
        elif m and m.group(2) in LAYER_WEIGHTS:
            layers.add(int(m.group(1)))
        elif key not in ("model.embed_tokens.weight", "lm_head.weight"):
            raise ValueError(f"{source}: Llama weight {key} has no counterpart in our transformer")
    out[OURS + "embed_tokens.embedding_weight"] = state["model.embed_tokens.weight"]
    out[OURS + "lm_head.weight"] = state["lm_head.weight"]
    for i in sorted(layers):
        theirs, ours = f"model.layers.{i}.", f"{OURS}L_level.layers.{i}."
        out[ours + "self_attn.qkv_proj.weight"] = torch.cat([state[f"{theirs}self_attn.{p}_proj.weight"]
                                                            for p in "qkv"])
        out[ours + "self_attn.o_proj.weight"] = state[theirs + "self_attn.o_proj.weight"]
        out[ours + "mlp.gate_up_proj.weight"] = torch.cat([state[theirs + "mlp.gate_proj.weight"],
                                                           state[theirs + "mlp.up_proj.weight"]])
        out[ours + "mlp.down_proj.weight"] = state[theirs + "mlp.down_proj.weight"]
    return out
