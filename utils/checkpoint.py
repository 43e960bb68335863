"""Checkpoints: atomic writes, safe loads (weights_only), the names a run's checkpoints go by (step_<N>, latest,
best, final), which ones a run keeps, and loading the official TRM code's files."""
from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from utils.files import atomic_write, make_dir
from utils.nonfinite import check_finite_weights

STEP_FILE = re.compile(r"step_(\d+)(\.pt)?$")
# <run>/<alias>.json names one of the run's step files (a small file written atomically, never a copy of weights)
ALIASES = {"best": "the checkpoint of the best evaluation so far, by checkpoint_best_metric",
           "final": "the checkpoint where training last reached its end (epochs or max_steps)"}
HF_WEIGHTS = "model.safetensors"  # the weights of a Hugging Face export (utils/export_hf.py)
HF_Q_HEAD = "q_head.safetensors"  # a Llama export's ACT Q-head, which Llama has no place for


def save_checkpoint(path: str, state: dict[str, Any]) -> None:
    """Write to a temporary file, then rename: a crash never leaves a truncated checkpoint behind."""
    make_dir(os.path.dirname(path) or ".")
    atomic_write(Path(path), lambda f: torch.save(state, f))  # synced to disk before the rename


def load_checkpoint(path: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if not zipfile.is_zipfile(path):  # (torch's own message for this is about mmap)
        raise ValueError(f"{path}: cannot load: not a checkpoint (torch.save writes a zip archive; this is not one)")
    try:
        # mmap: the ranks of a torchrun job resuming together share the file's pages instead of a copy each
        return torch.load(path, map_location=map_location, weights_only=True, mmap=True)
    except Exception as e:  # pickle with code in it, or a damaged file
        reason = (str(e).strip() or type(e).__name__).splitlines()[0]
        raise ValueError(f"{path}: cannot load as a safe (weights-only) checkpoint: {reason}") from e


TRAINING_KEYS = ("model", "optimizers", "step")  # what a checkpoint of pretrain.py holds to continue from


def check_resumable(path: str) -> None:
    """resume= continues our own runs: a file with no training state (official weights, a bare state dict or
    tensor) is refused, saying what it is and that init_from= starts from its weights."""
    checkpoint = load_checkpoint(path)
    if isinstance(checkpoint, dict) and all(k in checkpoint for k in TRAINING_KEYS):
        return
    if isinstance(checkpoint, torch.Tensor):
        what = f"a single tensor of shape {list(checkpoint.shape)}"
    elif isinstance(checkpoint, dict) and checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        what = f"a bare state dict of {len(checkpoint)} tensors (weights only, as the official TRM code saves)"
    elif isinstance(checkpoint, dict):
        what = f"a dict without {[k for k in TRAINING_KEYS if k not in checkpoint]} (keys {list(checkpoint)[:5]})"
    else:
        what = f"a {type(checkpoint).__name__}"
    raise ValueError(f"resume={path}: {what}, not a checkpoint of pretrain.py with a training state to continue; "
                     f"to start a new run from its weights use init_from={path}")


def shape_mismatch(own: dict[str, torch.Tensor], saved: dict[str, torch.Tensor]) -> str | None:
    """The first parameter whose shape differs between a model's state and a saved one, with both shapes."""
    for key, value in saved.items():
        if key in own and tuple(own[key].shape) != tuple(value.shape):
            return f"parameter {key} is {list(value.shape)} in the checkpoint but {list(own[key].shape)} in this model"
    return None


def step_of(file: str) -> int:
    """N of a step_<N>[.pt] file; -1 for another name."""
    return int(m.group(1)) if (m := STEP_FILE.search(os.path.basename(file))) else -1


def run_steps(run_dir: str) -> list[tuple[int, str]]:
    """(step, file) of every step_<N>[.pt] checkpoint in a run directory, lowest step first."""
    return sorted((step_of(f), f) for f in glob.glob(os.path.join(glob.escape(run_dir), "step_*"))
                  if step_of(f) >= 0 and os.path.isfile(f))


def write_alias(run_dir: str, name: str, file: str, **facts: Any) -> None:
    """<run_dir>/<name>.json: `name` now means checkpoint `file` (of that run), with `facts` (metric, value...)."""
    record = json.dumps({"checkpoint": os.path.basename(file), "step": step_of(file), **facts}, indent=1)
    atomic_write(Path(run_dir) / f"{name}.json", lambda f: f.write(record.encode()))


def read_alias(run_dir: str, name: str) -> dict[str, Any] | None:
    """The record of <run_dir>/<name>.json (its `file` is the checkpoint's path), or None when there is none."""
    pointer = os.path.join(run_dir, f"{name}.json")
    if not os.path.isfile(pointer):
        return None
    with open(pointer) as f:
        record = json.load(f)
    return {**record, "file": os.path.join(run_dir, record["checkpoint"])}


def named_checkpoint(run_dir: str, name: str) -> str | None:
    """The file `latest` (the highest step) or an alias (best, final) names in a run directory; None if none."""
    if name == "latest":
        return steps[-1][1] if (steps := run_steps(run_dir)) else None
    record = read_alias(run_dir, name)
    if record and not os.path.isfile(record["file"]):
        raise FileNotFoundError(f"{run_dir}/{name}.json names {record['checkpoint']}, which no longer exists")
    return record["file"] if record else None


def find_checkpoint(path: str) -> str:
    """The checkpoint file meant by `path`:
    - a file as given (`.pt` may be left off);
    - a run directory, or `<run>/latest`: its highest step_<N>[.pt];
    - `<run>/best`, `<run>/final`: the step file <run>/best.json (final.json) names;
    - a glob pattern (a shell pattern that did not expand, e.g. `checkpoints/<project>/trm_chat-*/step_1000`):
      what each match means as above; when they lie in several run directories the newest directory (by
      modification time) is taken, and said on stderr; within one directory the highest step."""
    if glob.has_magic(path):
        return _newest_match(path)
    if os.path.isfile(path):
        return path
    if os.path.isfile(f"{path}.pt"):
        return f"{path}.pt"
    run, name = os.path.split(os.path.normpath(path))
    name = name.removesuffix(".pt")
    if name in ALIASES and os.path.isdir(run or "."):
        if file := named_checkpoint(run or ".", name):
            return file
        raise FileNotFoundError(f"{path}: no {name}.json in the run directory, so no {name} checkpoint yet "
                                f"({name}: {ALIASES[name]})")
    if name == "latest" and os.path.isdir(run or "."):
        path = run or "."
    if os.path.isdir(path):
        steps = run_steps(path)
        if not steps:
            raise FileNotFoundError(f"{path}: run directory holds no step_<N>.pt checkpoint")
        return steps[-1][1]
    if run and os.path.isdir(run) and (steps := run_steps(run)):
        names = ", ".join(os.path.basename(f) for _, f in steps)
        raise FileNotFoundError(f"{path}: no such checkpoint; {run} holds {names}")
    raise FileNotFoundError(f"{path}: no such checkpoint file or run directory")


def _newest_match(pattern: str) -> str:
    run_pattern, name = os.path.split(os.path.normpath(pattern))
    name = name.removesuffix(".pt")
    by_name = name == "latest" or name in ALIASES  # <pattern>/latest, <pattern>/best, ...: the matching run directories
    matches = glob.glob(run_pattern or ".") if by_name else glob.glob(pattern) + glob.glob(f"{pattern}.pt")
    files = []
    for match in matches:  # each match's checkpoint: the one a run directory names (by default its latest), or the file
        if os.path.isdir(match):
            files += [(step_of(file), file)] if (file := named_checkpoint(match, name if by_name else "latest")) else []
        elif STEP_FILE.search(os.path.basename(match)) or match.endswith(".pt"):
            files.append((step_of(match), match))
    if not files:
        raise FileNotFoundError(f"{pattern}: the pattern matches no checkpoint file or run directory holding one")
    runs = {os.path.dirname(f) for _, f in files}
    run = max(runs, key=lambda d: (os.path.getmtime(d or "."), d))
    if len(runs) > 1:
        print(f"{pattern}: matches {len(runs)} run directories; using the newest, {run or '.'}", file=sys.stderr)
    return max(f for f in files if os.path.dirname(f[1]) == run)[1]


class RunCheckpoints:
    """The names a run gives its step files as it saves them: best (the evaluation with the best value of `metric`:
    auto = exact_accuracy when the evaluator reports it, else loss; `mode` min or max, auto = min for losses and
    perplexities) and final; and, with `keep_last`, the deletion of all but the newest keep_last step files
    (never one a name holds, never before the new one is on disk). A resumed run (`resumed_at`: its step) keeps
    its best so far."""

    def __init__(self, run_dir: str, metric: str = "auto", mode: str = "auto", keep_last: int | None = None,
                 resumed_at: int | None = None):
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"checkpoint_best_mode must be auto, min or max, got {mode!r}")
        if keep_last is not None and keep_last < 1:
            raise ValueError(f"checkpoint_keep_last must be >= 1 (null keeps every checkpoint), got {keep_last}")
        self.run_dir, self.metric, self.mode, self.keep_last = run_dir, metric, mode, keep_last
        self.key: str | None = None  # test/<metric>, known at the first evaluation
        self.best: float | None = None
        saved = read_alias(run_dir, "best") if resumed_at is not None else None
        self.saved_best = saved if saved and saved["step"] <= resumed_at else None  # a later one is overwritten

    def _resolve(self, metrics: dict[str, float]) -> str:
        """The metric's key in `metrics` (test/<name>); fixed at the first evaluation."""
        if self.key is not None:
            return self.key
        if self.metric == "auto":
            self.metric = "exact_accuracy" if "test/exact_accuracy" in metrics else "loss"
        key = f"test/{self.metric.removeprefix('test/')}"
        if key not in metrics:
            raise ValueError(f"checkpoint_best_metric: no validation metric {self.metric!r}; choose one of "
                             f"{sorted(k.removeprefix('test/') for k in metrics)}")
        self.key = key
        if self.mode == "auto":
            self.mode = "min" if key.endswith("loss") or key.endswith("perplexity") else "max"
        if self.saved_best and (self.saved_best.get("metric"), self.saved_best.get("mode")) == (key, self.mode):
            self.best = self.saved_best["value"]
        self.saved_best = None
        return key

    def improved(self, metrics: dict[str, float]) -> bool:
        """Whether an evaluation's metrics (test/<name>) beat the best so far, which they then become (every rank
        calls this, so that all of them save the same checkpoints)."""
        key = self._resolve(metrics)
        value = float(metrics[key])
        better = self.best is None or (value < self.best if self.mode == "min" else value > self.best)
        if math.isfinite(value) and better:
            self.best = value
        return math.isfinite(value) and better

    def saved(self, file: str, best: bool, final: bool) -> None:
        """Rank 0, once `file` is on disk: name it best and/or final, then delete the old step files."""
        if best:
            write_alias(self.run_dir, "best", file, metric=self.key, mode=self.mode, value=self.best)
        if final:
            write_alias(self.run_dir, "final", file)
        if self.keep_last is None:
            return
        named = {os.path.basename(record["file"]) for name in ALIASES if (record := read_alias(self.run_dir, name))}
        for _, old in run_steps(self.run_dir)[:-self.keep_last]:
            if os.path.basename(old) not in named | {os.path.basename(file)}:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(old)


def model_state_from(checkpoint: dict[str, Any], use_ema: bool = False) -> dict[str, torch.Tensor]:
    """The model state dict of one of our checkpoints, or of a raw official `step_N` file.

    The official trainer saves `state_dict()` of its (possibly compiled) loss head: keys may carry an
    `_orig_mod.` prefix, which is removed here; the module names are otherwise ours.
    """
    if "model" in checkpoint and isinstance(checkpoint["model"], dict):
        state = dict(checkpoint["model"])
        if use_ema and checkpoint.get("ema"):
            state.update(checkpoint["ema"])
        return state
    return {k.removeprefix("_orig_mod."): v for k, v in checkpoint.items()}


VOCAB_KEYS = ("embed_tokens.embedding_weight", "lm_head.weight")  # one row per token


def load_model_weights(model: nn.Module, path: str, use_ema: bool = False) -> None:
    """Initialise `model` from a checkpoint file, a run directory or a Hugging Face export directory.

    A grown vocabulary (e.g. new special tokens) keeps every trained row of the token embedding and
    output head; the new rows start at the mean of the trained ones. A puzzle-embedding table of another
    size (a new dataset) is replaced by the mean of the saved rows, as the official code does.
    """
    own = model.state_dict()
    if os.path.isfile(os.path.join(path, HF_WEIGHTS)):
        state, norm_position = export_state(path, model, own)
    else:
        checkpoint = load_checkpoint(find_checkpoint(path))
        state = model_state_from(checkpoint, use_ema)
        norm_position = checkpoint.get("model_config", {}).get("norm_position", "post")  # official files: TRM's
    wanted = getattr(getattr(model, "config", None), "norm_position", norm_position)
    if norm_position != wanted:
        raise ValueError(f"{path}: its weights were trained with {norm_position}-norm blocks, this model has "
                         f"{wanted}-norm ones; start from them with arch.norm_position={norm_position}")
    for key, value in list(state.items()):
        if key not in own or own[key].shape == value.shape:
            continue
        if key.endswith("puzzle_emb.weights") and value.shape[1:] == own[key].shape[1:]:
            print(f"puzzle embedding {tuple(value.shape)} -> {tuple(own[key].shape)}: rows set to the saved mean")
            state[key] = value.mean(0, keepdim=True).expand_as(own[key]).clone()
        elif key.endswith(VOCAB_KEYS) and value.shape[0] < own[key].shape[0] and value.shape[1:] == own[key].shape[1:]:
            grown = value.mean(0, keepdim=True).repeat(own[key].shape[0], 1)
            grown[: value.shape[0]] = value
            print(f"{key}: vocabulary {value.shape[0]} -> {own[key].shape[0]}, new rows set to the mean row")
            state[key] = grown
    if mismatch := shape_mismatch(own, state):
        raise ValueError(f"{path}: {mismatch}: the weights need the same architecture sizes (arch.*)")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: checkpoint does not match the model (missing {missing[:5]}, unexpected {unexpected[:5]})")


def export_state(path: str, model: nn.Module, own: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """(our state dict, norm position) of a Hugging Face export: a LlamaForCausalLM's weights renamed (its
    Q-head from its own file; without one, `model`'s is kept), or our own state dict as saved."""
    from safetensors.torch import load_file

    state = load_file(os.path.join(path, HF_WEIGHTS))
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    if config.get("model_type") != "llama":
        return state, config.get("arch", {}).get("norm_position", "post")
    from models.llama import check_llama_config, from_llama

    if hasattr(model, "config"):
        check_llama_config(config, model.config, path)
    state = from_llama(state, path)
    if os.path.isfile(os.path.join(path, HF_Q_HEAD)):
        state |= load_file(os.path.join(path, HF_Q_HEAD))
    else:
        print(f"{path}: no {HF_Q_HEAD} (a Llama saved elsewhere): the ACT Q-head keeps its initial weights")
        state |= {k: v for k, v in own.items() if ".q_head." in k}
    return state, "pre"


DIVERGED = "not usable (written by a run that diverged)"  # a checkpoint with non-finite weights


def init_from_run(model: nn.Module, path: str, tokenizer=None) -> None:
    """Start `model` from the weights of another run (e.g. a text pretraining run before chat fine-tuning).
    With the tokenizer of the new data, the run's own tokenizer must be a prefix of it: the same token for
    every id the weights were trained on (new tokens may be added; their rows are grown by load_model_weights).
    The weights are the EMA ones when the run kept an EMA (those it evaluated, named best and exports).
    `path` may also be a Hugging Face export (utils/export_hf.py), which holds its weights and tokenizer."""
    if os.path.isfile(os.path.join(path, HF_WEIGHTS)):
        file = saved = path
    else:
        file = find_checkpoint(path)
        saved = os.path.join(os.path.dirname(file), "tokenizer")
    if tokenizer is not None and os.path.isdir(saved):
        from utils.tokenizer import ChatTokenizer, check_extends

        check_extends(tokenizer, ChatTokenizer.load(saved), f"init_from={path}")
    load_model_weights(model, file, use_ema=True)
    check_finite_weights(model, file, DIVERGED)
    print(f"initialised the weights from {file}")


def build_saved_model(model_config: dict[str, Any], file: str, **dataset_fields: Any) -> nn.Module:
    """build_model for a model saved in the checkpoint `file` (model_config: the checkpoint's own, or with a
    resume's overrides). One written when a puzzle embedding too wide for its positions was cut to fit (its last
    dimensions never reached the network) is refused with what can be done with it: raising puzzle_emb_len, the
    advice for a new config, would build another model than the one trained. (When this command's overrides made
    the embedding too wide, the config's own advice stands.)"""
    from models import build_model
    from models.trm import PuzzleEmbeddingTooWide

    try:
        return build_model(model_config, **dataset_fields)
    except PuzzleEmbeddingTooWide as e:
        try:
            build_model(load_checkpoint(file)["model_config"], **dataset_fields)
        except PuzzleEmbeddingTooWide:
            raise ValueError(f"{file}: {e.what}: written before such a puzzle embedding was refused, when it was cut "
                             "to fit; this version does not build that model. Load it with the code before commit "
                             "07443d3, or train it again with arch.puzzle_emb_len=0 (as many positions as it needs)"
                             ) from None
        raise


def load_trained_model(path: str, device: str | torch.device = "cpu", use_ema: bool = True, dtype: str | None = None):
    """(model in eval mode, checkpoint) from one of our checkpoints or run directories, EMA weights if saved;
    `dtype` overrides the forward dtype it was trained with."""
    file = find_checkpoint(path)
    checkpoint = load_checkpoint(file)
    if "model_config" not in checkpoint:
        raise ValueError(f"{file}: no model_config (not a checkpoint written by pretrain.py)")
    config = dict(checkpoint["model_config"])
    if dtype is not None:
        config["forward_dtype"] = dtype
    model = build_saved_model(config, file)
    model.load_state_dict(model_state_from(checkpoint, use_ema))
    check_finite_weights(model, file, DIVERGED)
    return model.to(device).eval(), checkpoint
