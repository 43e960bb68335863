"""The composed training config checked in one place, before any data is opened or built: each value's type
and range, each failure one line naming the key, the value and the rule (pretrain.py prints it and exits 1)."""
from __future__ import annotations

import math
import re

import torch
from omegaconf import DictConfig, OmegaConf

from models import check_arch
from models.trm import PuzzleEmbeddingTooWide

# key -> the least whole number it may be
WHOLE_AT_LEAST = {"global_batch_size": 1, "grad_accum_steps": 1, "log_interval": 1, "min_eval_interval": 0,
                  "lr_warmup_steps": 0, "max_bad_steps": 1, "seed": 0,
                  "dataset.seq_len": 1, "dataset.max_new_tokens": 1}  # (language datasets)
POSITIVE = ("epochs", "eval_interval", "grad_clip")  # finite numbers > 0
NON_NEGATIVE = ("lr", "puzzle_emb_lr", "weight_decay", "puzzle_emb_weight_decay")  # finite numbers >= 0
# key -> (low, high, high included)
INTERVALS = {"lr_min_ratio": (0.0, 1.0, True), "beta1": (0.0, 1.0, False), "beta2": (0.0, 1.0, False),
             "ema_rate": (0.0, 1.0, False)}
AUTO = ("ema_rate",)  # may also be "auto" (resolved when the run's length is known)
NULLABLE = ("grad_clip", "dataset.seq_len")  # null: no clipping; the chat builder's --max-length
FLAGS = ("ema", "eval_at_end", "gradient_checkpointing", "checkpoint_every_eval", "evaluator.pool_votes",
         "logger.tensorboard", "dataset.pack")  # true or false
NAMES = ("run_name", "project_name", "checkpoint_dir")  # strings when given (Hydra reads run_name=1e3 as a number)
DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fail(key: str, value, rule: str) -> None:
    raise ValueError(f"{key}={value}: {rule}")


def check_config(cfg: DictConfig) -> None:
    """Raise ValueError at the first value out of its type or range (keys absent from `cfg` are not checked)."""
    def value(key: str):
        return OmegaConf.select(cfg, key, default=None)

    number_keys = (*WHOLE_AT_LEAST, *POSITIVE, *NON_NEGATIVE, *INTERVALS)
    for key in number_keys:
        if key not in NULLABLE and OmegaConf.select(cfg, key, default="absent") is None:
            _fail(key, "null", "must be a number")
    present = [k for k in number_keys if value(k) is not None and not (k in AUTO and value(k) == "auto")]
    for key in present:
        v = value(key)
        if not _is_number(v) or math.isnan(v) or math.isinf(v):
            _fail(key, v, "must be a number")
    for key, low in WHOLE_AT_LEAST.items():
        if key in present and (value(key) != int(value(key)) or value(key) < low):
            _fail(key, value(key), f"must be a whole number >= {low}")
    for key in POSITIVE:
        if key in present and value(key) <= 0:
            _fail(key, value(key), "must be > 0")
    for key in NON_NEGATIVE:
        if key in present and value(key) < 0:
            _fail(key, value(key), "must be >= 0")
    for key, (low, high, closed) in INTERVALS.items():
        v = value(key)
        if key in present and not (low <= v <= high if closed else low <= v < high):
            _fail(key, v, f"must lie in [{low:g}, {high:g}{']' if closed else ')'}")
    max_steps = value("max_steps")
    if max_steps is not None and (not _is_number(max_steps) or max_steps != int(max_steps) or max_steps < 1):
        _fail("max_steps", max_steps, "must be a whole number >= 1 (or null: the whole schedule)")
    for key in FLAGS:
        if value(key) is not None and not isinstance(value(key), bool):
            _fail(key, value(key), "must be true or false")
    for key in NAMES:
        if value(key) is not None and not isinstance(value(key), str):
            _fail(key, value(key), f"was read as a {type(value(key)).__name__}; quote it: {key}=\"'{value(key)}'\"")
    data_paths = value("data_paths")
    if data_paths is not None and (not data_paths or not all(isinstance(p, str) for p in data_paths)):
        _fail("data_paths", data_paths, "must be a non-empty list of directories")
    check_device(str(value("device") or "auto"))
    if value("arch") is not None:
        try:
            check_arch(OmegaConf.to_container(cfg.arch, resolve=True))
        except PuzzleEmbeddingTooWide:
            if value("resume") is None:
                raise  # (a resumed checkpoint gets the advice that fits its case when it loads)


def check_device(device: str) -> None:
    """A device that names this machine's hardware (device=cuda on a machine without CUDA is an error)."""
    if not DEVICE.match(device):
        _fail("device", device, "must be auto, cpu, cuda, cuda:<index> or mps")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            _fail("device", device, "CUDA is not available on this machine (device=cpu or auto)")
        if ":" in device and int(device.split(":")[1]) >= torch.cuda.device_count():
            _fail("device", device, f"this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device == "mps" and not torch.backends.mps.is_available():
        _fail("device", device, "Apple MPS is not available on this machine (device=cpu or auto)")
