"""Evaluation of language models (dataset=text, chat or mixture): loss, perplexity and next-token accuracy
per validation set, greedy outputs for the configured prompts, and probe accuracies (evaluators/probes.py).

Prompts and probes are answered in one of two modes: `chat` (the prompt is a user turn, the output the
assistant's reply) or `text` (the output continues the prompt as plain text).
"""
from __future__ import annotations

import glob
import math
import os
from typing import Any

import torch

from evaluators.chat import evaluate_chat
from evaluators.probes import Generate, load_probes, probe_name, score_probes
from models.losses import ACTLossHead
from utils.distributed import sharded
from utils.sampling import SamplingParams, context_length, generate_tokens, prompt_ids

MODES = ("chat", "text")


def generator(model: ACTLossHead, tokenizer, mode: str, batch_size: int = 64) -> Generate:
    """(prompts, max new tokens) -> greedy outputs in `mode` (see utils.sampling.prompt_ids), batch_size at once;
    under torchrun the prompts are shared out over the ranks."""
    if mode not in MODES:
        raise ValueError(f"unknown prompt mode {mode!r}; choose one of {MODES}")

    def generate(prompts: list[str], max_new_tokens: int) -> list[str]:
        encoded = [prompt_ids(tokenizer, p, mode) for p in prompts]
        keep = max(1, context_length(model) - max_new_tokens)  # a long prompt keeps its end, leaving answer room
        new = generate_tokens(model, [ids[-keep:] for ids, _ in encoded], SamplingParams(max_new_tokens=max_new_tokens),
                              encoded[0][1], batch_size=batch_size)
        return [tokenizer.decode(ids) for ids in new]
    return sharded(generate)


def combine(per_set: dict[str, dict[str, float]]) -> dict[str, float]:
    """Token-weighted loss and accuracy over several validation sets."""
    tokens = sum(m["tokens"] for m in per_set.values())
    loss = sum(m["loss"] * m["tokens"] for m in per_set.values()) / max(tokens, 1)
    accuracy = sum(m["accuracy"] * m["tokens"] for m in per_set.values()) / max(tokens, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "accuracy": accuracy, "tokens": tokens}


class LanguageEvaluator:
    """dataset.evaluator=language (text, chat and mixture runs, which keep a tokenizer)."""

    def __init__(self, cfg, run_dir: str | None = None, tokenizer=None, reduce=None):
        if tokenizer is None:
            raise ValueError("dataset.evaluator=language needs the tokenizer of a text, chat or mixture dataset")
        dataset_cfg = cfg.dataset
        self.tokenizer, self.reduce = tokenizer, reduce
        self.mode = dataset_cfg.get("prompt_mode") or ("text" if dataset_cfg.name == "text" else "chat")
        self.prompts = list(dataset_cfg.get("eval_prompts") or [])
        self.max_new_tokens = int(dataset_cfg.get("max_new_tokens", 48))
        self.probes: dict[str, dict[str, Any]] = {}  # name -> {"mode", "rows"}; loaded now, so errors come early
        for entry in dataset_cfg.get("probes") or []:  # a file, a directory of .jsonl files, or {path, mode}
            path, mode = (entry, self.mode) if isinstance(entry, str) else (entry["path"], entry.get("mode", self.mode))
            if mode not in MODES:
                raise ValueError(f"dataset.probes: {path}: unknown mode {mode!r}; choose one of {MODES}")
            files = sorted(glob.glob(os.path.join(path, "*.jsonl"))) if os.path.isdir(path) else [path]
            if not files:
                raise FileNotFoundError(f"dataset.probes: {path}: no .jsonl probe files in this directory")
            for file in files:
                if probe_name(file) in self.probes:
                    raise ValueError(f"dataset.probes: two probe files are named {probe_name(file)} ({file}); "
                                     "the file name names the metric, rename one")
                self.probes[probe_name(file)] = {"mode": mode, "rows": load_probes(file)}

    def evaluate(self, model: ACTLossHead, test_data, device: torch.device,
                 step: int) -> tuple[dict[str, float], dict[str, list]]:
        """(metrics, tables): metrics per validation set (prefixed with its name for a mixture; summed over ranks
        by self.reduce), the overall ones, probe accuracies as probe/<file name>; tables of samples and probe
        outputs (every rank has them all)."""
        sets = test_data if isinstance(test_data, dict) else {"": test_data}
        per_set = {name: evaluate_chat(model, data, device, self.reduce) for name, data in sets.items()}
        metrics = dict(per_set[""]) if "" in per_set else combine(per_set)
        for name, m in per_set.items():
            metrics.update({f"{name}/{k}": v for k, v in m.items() if name})
        tables: dict[str, list] = {}
        if self.prompts:
            outputs = generator(model, self.tokenizer, self.mode)(self.prompts, self.max_new_tokens)
            tables["samples"] = [{"prompt": p, "reply": o} for p, o in zip(self.prompts, outputs)]
        for mode in MODES:
            probes = {name: p["rows"] for name, p in self.probes.items() if p["mode"] == mode}
            if probes:
                accuracy, rows = score_probes(probes, generator(model, self.tokenizer, mode))
                metrics.update({f"probe/{name}": a for name, a in accuracy.items()})
                tables.setdefault("probes", []).extend(rows)
        return metrics, tables
