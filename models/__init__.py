"""Model factory: an arch config (from config/arch/*.yaml) plus dataset facts -> ACTLossHead(ACTModel(inner))."""
from __future__ import annotations

from typing import Any

from models.losses import ACTLossHead
from models.transformer import TransformerInner
from models.trm import ACTModel, TRMConfig, TRMInner

ARCHITECTURES = {"trm": TRMInner, "transformer": TransformerInner}


def build_model(arch: dict[str, Any], **dataset_fields: Any) -> ACTLossHead:
    """`arch` holds `name`, `loss: {loss_type}` and TRMConfig fields; dataset_fields fill seq_len, vocab_size, ..."""
    arch = dict(arch)
    name = arch.pop("name")
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown arch name {name!r}; choose one of {sorted(ARCHITECTURES)}")
    loss = dict(arch.pop("loss", None) or {})
    config = TRMConfig.from_dict({**arch, **dataset_fields})
    return ACTLossHead(ACTModel(ARCHITECTURES[name](config)), **loss)
