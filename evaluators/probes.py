"""Probes: JSONL files of {"prompt", "answer"} pairs, one file per skill, scored by exact match at every
evaluation, so a run shows memorisation (prompts from the training data), held-out generalisation and
forgetting (skills of an earlier stage) side by side.

An output matches when, with runs of whitespace collapsed and the ends stripped, it is the answer or begins
with the answer followed by a character that is not a letter or digit ("red ball." matches "red"; "reddish"
does not). Greedy decoding stops after enough tokens to decide that.
"""
from __future__ import annotations

import json
import os
from typing import Callable

Generate = Callable[[list[str], int], list[str]]  # (prompts, max new tokens) -> outputs


def load_probes(path: str) -> list[dict[str, str]]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"probe file {path} not found")
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} line {n}: not valid JSON ({e.msg})") from None
            if not (isinstance(row, dict) and isinstance(row.get("prompt"), str) and isinstance(row.get("answer"), str)
                    and row["answer"].strip()):
                raise ValueError(f"{path} line {n}: expected an object with string 'prompt' and non-empty 'answer'")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no probes")
    return rows


def normalize(text: str) -> str:
    return " ".join(text.split())


def is_exact_match(output: str, answer: str) -> bool:
    out, ans = normalize(output), normalize(answer)
    return out == ans or (out.startswith(ans) and not out[len(ans)].isalnum())


def token_budget(rows: list[dict[str, str]]) -> int:
    """New tokens enough to decide every match: a token is at least one byte (byte-level and BPE
    tokenizers), plus one for a leading space and one for the character after the answer."""
    return max(len(r["answer"].encode("utf-8")) for r in rows) + 2


def score_probes(probes: dict[str, list[dict[str, str]]], generate: Generate) -> tuple[dict[str, float], list[dict]]:
    """Exact-match accuracy per probe set, and every (set, prompt, answer, output, correct) row."""
    accuracy, results = {}, []
    for name, rows in probes.items():
        outputs = generate([r["prompt"] for r in rows], token_budget(rows))
        if len(outputs) != len(rows):
            raise ValueError(f"probe set {name}: {len(outputs)} outputs for {len(rows)} prompts")
        correct = [is_exact_match(o, r["answer"]) for o, r in zip(outputs, rows)]
        accuracy[name] = sum(correct) / len(rows)
        results += [{"probe": name, "prompt": r["prompt"], "answer": r["answer"], "output": o, "correct": c}
                    for r, o, c in zip(rows, outputs, correct)]
    return accuracy, results


def probe_name(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]
