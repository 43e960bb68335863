"""Model factory: an arch config (from config/arch/*.yaml) plus dataset facts -> ACTLossHead(ACTModel(inner))."""
from __future__ import annotations

from typing import Any

from models.losses import ACTLossHead
from models.transformer import TransformerInner
from models.trm import ACTModel, TRMConfig, TRMInner

ARCHITECTURES = {"trm": TRMInner, "transformer": TransformerInner}


def check_arch(arch: dict[str, Any]) -> None:
    """Raise ValueError for an arch config no model can be built from, before any data is read: the fields the
    dataset fills (seq_len, vocab_size, ...) get placeholders, and forward_dtype=auto one of the dtypes it picks."""
    arch = {k: v for k, v in arch.items() if k not in ("name", "loss")}
    if arch.get("forward_dtype") == "auto":
        arch["forward_dtype"] = "float32"
    TRMConfig.from_dict({"seq_len": 1, "vocab_size": 1, **arch})


def build_model(arch: dict[str, Any], **dataset_fields: Any) -> ACTLossHead:
    """`arch` holds `name`, `loss: {loss_type}` and TRMConfig fields; dataset_fields fill seq_len, vocab_size, ..."""
    arch = dict(arch)
    name = arch.pop("name")
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown arch name {name!r}; choose one of {sorted(ARCHITECTURES)}")
    loss = dict(arch.pop("loss", None) or {})
    config = TRMConfig.from_dict({**arch, **dataset_fields})
    return ACTLossHead(ACTModel(ARCHITECTURES[name](config)), **loss)
