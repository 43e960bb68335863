"""Sampling from a trained model (shared by the chat evaluator and generate.py)."""
from __future__ import annotations

from typing import Iterator

import torch

from models.losses import IGNORE_LABEL_ID, ACTLossHead


def act_steps(model: ACTLossHead, batch: dict[str, torch.Tensor]) -> Iterator[tuple[dict, dict]]:
    """(metrics, outputs) of each ACT step from a fresh carry until every sample halted (in eval mode all
    samples halt together, at halt_max_steps)."""
    carry = model.initial_carry(batch)
    while True:
        carry, _, metrics, outputs = model(carry, batch)
        yield metrics, outputs
        if carry.halted.all():
            return


@torch.no_grad()
def final_outputs(model: ACTLossHead, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The outputs of the last ACT step."""
    for _, outputs in act_steps(model, batch):
        pass
    return outputs


def sample_token(logits: torch.Tensor, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """logits [B, V] -> token ids [B]: greedy at temperature 0, else sampled after top-k / top-p filtering."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) > top_p  # keep the smallest set reaching top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate_ids(model: ACTLossHead, ids: list[int], max_new_tokens: int, stop: set[int], context: int | None = None,
                 temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0) -> list[int]:
    """New tokens after `ids`, one at a time until a token of `stop` (not returned) or max_new_tokens
    (no cache: the whole context, at most `context` tokens, is recomputed for every token)."""
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    new: list[int] = []
    for _ in range(max_new_tokens):
        window = (ids + new)[-context:] if context else ids + new
        inputs = torch.tensor([window], device=device)
        batch = {"inputs": inputs, "labels": torch.full_like(inputs, IGNORE_LABEL_ID)}
        token = int(sample_token(final_outputs(model, batch)["logits"][:, -1], temperature, top_k, top_p, generator))
        if token in stop:
            break
        new.append(token)
    model.train(was_training)
    return new


def generate_reply(model: ACTLossHead, tokenizer, turns: list[tuple[str, str]], max_new_tokens: int = 64,
                   context: int | None = None, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                   seed: int = 0) -> str:
    """The assistant's reply to `turns`."""
    ids, _ = tokenizer.encode_chat(turns, add_generation_prompt=True)
    stop = {tokenizer.special_id("assistant_end"), tokenizer.eot_id}
    return tokenizer.decode(generate_ids(model, ids, max_new_tokens, stop, context, temperature, top_k, top_p, seed))


def generate_text(model: ACTLossHead, tokenizer, prompt: str, max_new_tokens: int = 64, context: int | None = None,
                  temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0) -> str:
    """The continuation of plain text `prompt` up to end-of-text. The prompt starts a document: it follows an
    end-of-text token, as every document but the first does in training."""
    new = generate_ids(model, [tokenizer.eot_id, *tokenizer.encode(prompt)], max_new_tokens, {tokenizer.eot_id}, context, temperature,
                       top_k, top_p, seed)
    return tokenizer.decode(new)
