"""Plain transformer baseline: the same embeddings, blocks and heads as TRM, applied once (no recursion).

With halt_max_steps=1 (the default of arch=transformer) one ACT step is exactly `blocks(embed(x))`.
With more steps it becomes a recurrent transformer with deep supervision: h <- blocks(h + embed(x)).
"""
from __future__ import annotations

import torch

from models.trm import TRMConfig, TRMInner


class TransformerInner(TRMInner):
    def __init__(self, config: TRMConfig):
        recursion = {k: getattr(config, k) for k in ("H_layers", "one_step_gradient", "single_z") if getattr(config, k)}
        if recursion:
            raise ValueError(f"{', '.join(f'arch.{k}={v}' for k, v in recursion.items())}: options of the TRM's "
                             "recursion (arch=trm); the transformer has none")
        super().__init__(config)

    def _init_states(self) -> None:
        pass  # the state starts at zero (empty_carry), so the first step sees only the input

    def reset_carry(self, reset, carry):
        return type(carry)(*(torch.where(reset.view(-1, 1, 1), 0, z) for z in (carry.z_H, carry.z_L)))

    def recurse(self, z_H, z_L, x, seq_info):
        return self.L_level(z_H, x, seq_info), z_L
