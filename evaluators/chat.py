"""Chat evaluation: loss, perplexity and next-token accuracy on the trained (assistant) tokens of the
validation split, and greedy replies to a few fixed prompts."""
from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn.functional as F

from models.losses import IGNORE_LABEL_ID, ACTLossHead
from utils.sampling import final_outputs, generate_reply


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


def sample_replies(model: ACTLossHead, tokenizer, prompts: list[str], context: int, max_new_tokens: int) -> list[dict]:
    """Greedy replies to single-turn prompts, for a look at what the model says."""
    return [{"prompt": p, "reply": generate_reply(model, tokenizer, [("user", p)], max_new_tokens, context)}
            for p in prompts]
