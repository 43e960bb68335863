"""The Hugging Face face of our models (`python -m utils.export_hf` writes it next to the weights).

The export copies this file (as modeling_trm.py) and the model files it imports, with `models.` imports made
relative, so `AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)` runs the very code the model was
trained with. The state dict is the ACT model's under `model.`, as in our checkpoints.

Causal runs (chat, text): `model(input_ids, attention_mask).logits` are the logits after the whole ACT budget,
as generation computes them; `generate` recomputes the sequence for every token (no KV cache here).
Puzzle runs: `model(input_ids, puzzle_identifiers=...).logits` are the last ACT step's logits, as evaluation.
"""
from __future__ import annotations

import torch
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from models.layers import RotaryEmbedding
from models.transformer import TransformerInner
from models.trm import ACTModel, TRMConfig, TRMInner

INNER = {"trm": TRMInner, "transformer": TransformerInner}


class TRMHFConfig(PretrainedConfig):
    model_type = "trm_act"

    def __init__(self, arch: dict | None = None, **kwargs):
        self.arch = dict(arch or {})  # `name` and the TRMConfig fields
        if self.arch:
            kwargs.setdefault("vocab_size", self.arch["vocab_size"])
        super().__init__(**kwargs)


class TRMForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = TRMHFConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"

    def __init__(self, config: TRMHFConfig):
        super().__init__(config)
        arch = dict(config.arch)
        self.model = ACTModel(INNER[arch.pop("name")](TRMConfig.from_dict(arch)))
        self.post_init()

    def _init_weights(self, module) -> None:
        """from_pretrained loads every saved weight; the rotary tables are not saved (non-persistent): made again."""
        if isinstance(module, RotaryEmbedding):
            fresh = RotaryEmbedding(module.cos.shape[-1], module.cos.shape[0], self.model.config.rope_theta)
            for name, table in fresh.named_buffers():
                module.register_buffer(name, table.to(module.cos.device), persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                puzzle_identifiers: torch.Tensor | None = None, **_) -> CausalLMOutput:
        act = self.model
        if act.config.causal:
            valid = attention_mask.bool() if attention_mask is not None else None
            positions = (valid.long().cumsum(-1) - 1).clamp_min(0) if valid is not None else None
            return CausalLMOutput(logits=act.predict(input_ids, positions, valid).float())
        if puzzle_identifiers is None:
            puzzle_identifiers = torch.zeros(len(input_ids), dtype=torch.long, device=input_ids.device)
        batch = {"inputs": input_ids, "puzzle_identifiers": puzzle_identifiers}
        carry = act.initial_carry(batch)
        with torch.no_grad():
            for _ in range(act.config.halt_max_steps):  # eval: every sample runs the whole budget
                carry, outputs = act(carry, batch)
        return CausalLMOutput(logits=outputs["logits"].float())

    def prepare_inputs_for_generation(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                                      **_) -> dict:
        return {"input_ids": input_ids, "attention_mask": attention_mask}
