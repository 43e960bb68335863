"""Chat evaluation: loss, perplexity and next-token accuracy on the trained (assistant) tokens of the
validation split, and greedy replies to a few fixed prompts."""
from __future__ import annotations

import argparse
import math
import os
import re
from typing import Iterable

import torch
import torch.nn.functional as F

from constants import IGNORE_LABEL_ID
from evaluators.probes import load_probes
from models.losses import ACTLossHead
from utils.sampling import SamplingParams, check_sampling, final_outputs, generate_replies


@torch.no_grad()
def evaluate_chat(model: ACTLossHead, batches: Iterable, device: torch.device, reduce=None) -> dict[str, float]:
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, device=device, dtype=torch.float64)  # nll, correct, tokens
    for _, batch, _ in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        logits, labels = final_outputs(model, batch)["logits"].float(), batch["labels"].long()
        mask = labels != IGNORE_LABEL_ID
        totals[0] += F.cross_entropy(logits[mask], labels[mask], reduction="sum").double()
        totals[1] += (logits.argmax(-1)[mask] == labels[mask]).sum()
        totals[2] += mask.sum()
    model.train(was_training)
    if reduce is not None:
        totals = reduce(totals)
    nll, correct, tokens = totals.tolist()
    loss = nll / max(tokens, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "accuracy": correct / max(tokens, 1),
            "tokens": tokens}


def greedy_replies(model: ACTLossHead, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    return generate_replies(model, tokenizer, [[("user", p)] for p in prompts], SamplingParams(max_new_tokens=max_new_tokens))


def heldout_accuracy(model: ACTLossHead, tokenizer, rows: list[dict[str, str]],
                     max_new_tokens: int = 24) -> tuple[float, list[dict]]:
    """Exact-answer accuracy on {"prompt", "answer"} rows (a probe file, evaluators/probes.py): the last number of
    the greedy reply must be the answer (e.g. held-out arithmetic from examples/make_synthetic_chat.py)."""
    results = []
    for row, reply in zip(rows, greedy_replies(model, tokenizer, [r["prompt"] for r in rows], max_new_tokens)):
        numbers = re.findall(r"-?\d+", reply)
        results.append({**row, "reply": reply, "correct": bool(numbers) and numbers[-1] == row["answer"]})
    return sum(r["correct"] for r in results) / max(len(results), 1), results


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m evaluators.chat",
                                 description="Score a chat run on held-out prompts with known answers.")
    ap.add_argument("run", help="run directory or checkpoint file")
    ap.add_argument("--heldout", required=True, help="JSONL of {prompt, answer}")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--no-ema", action="store_true", help="use the raw weights even when EMA weights are saved")
    args = ap.parse_args(argv)
    from utils.checkpoint import load_trained_model
    from utils.cli import exit_on_bad_input
    from utils.tokenizer import ChatTokenizer

    with exit_on_bad_input():
        check_sampling("max_new_tokens", args.max_new_tokens)
        rows = load_probes(args.heldout)  # before loading the model: a bad file is reported at once
        model, checkpoint = load_trained_model(args.run, use_ema=not args.no_ema)
        run_dir = args.run if os.path.isdir(args.run) else os.path.dirname(args.run)
        tokenizer = ChatTokenizer.load(os.path.join(run_dir, "tokenizer"))
        accuracy, results = heldout_accuracy(model, tokenizer, rows, args.max_new_tokens)
    for r in results[:5]:
        print(f"{r['prompt']!r} -> {r['reply']!r} ({'ok' if r['correct'] else 'expected ' + r['answer']})")
    print(f"exact-answer accuracy: {accuracy:.4f} on {len(results)} prompts (step {checkpoint['step']})")


if __name__ == "__main__":
    main()
