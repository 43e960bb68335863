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
def generate_ids(model: ACTLossHead, prompts: list[list[int]], max_new_tokens: int, stop: set[int], pad_id: int = 0,
                 context: int | None = None, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                 seed: int = 0) -> list[list[int]]:
    """New tokens after each prompt, one at a time until a token of `stop` (not returned) or max_new_tokens.

    The prompts run together: left-padded to one width, the padding in its own segment (segment 0) and
    positions counted from each prompt's first token, so every row computes what it would alone. No cache:
    the last `context` columns are recomputed for every token."""
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    width = max(len(p) for p in prompts)
    if width == 0:
        raise ValueError("generate_ids: empty prompt")
    tokens = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=device)
    segments = torch.zeros_like(tokens)
    for i, p in enumerate(prompts):
        tokens[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        segments[i, width - len(p):] = 1
    new: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    was_training = model.training
    model.eval()
    for _ in range(max_new_tokens):
        x, seg = (tokens[:, -context:], segments[:, -context:]) if context else (tokens, segments)
        batch = {"inputs": x, "labels": torch.full_like(x, IGNORE_LABEL_ID), "segment_ids": seg,
                 "position_ids": (seg.cumsum(1) - 1).clamp(min=0)}
        next_tokens = sample_token(final_outputs(model, batch)["logits"][:, -1], temperature, top_k, top_p, generator)
        for i, t in enumerate(next_tokens.tolist()):
            if not done[i]:
                done[i] = t in stop
                if not done[i]:
                    new[i].append(t)
        if all(done):
            break
        tokens = torch.cat((tokens, next_tokens[:, None]), dim=1)
        segments = torch.cat((segments, torch.ones_like(next_tokens)[:, None]), dim=1)
    model.train(was_training)
    return new


def generate_reply(model: ACTLossHead, tokenizer, turns: list[tuple[str, str]], max_new_tokens: int = 64,
                   context: int | None = None, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                   seed: int = 0) -> str:
    """The assistant's reply to `turns`."""
    ids, _ = tokenizer.encode_chat(turns, add_generation_prompt=True)
    stop = {tokenizer.special_id("assistant_end"), tokenizer.eot_id}
    new = generate_ids(model, [ids], max_new_tokens, stop, tokenizer.pad_id, context, temperature, top_k, top_p, seed)
    return tokenizer.decode(new[0])


def prompt_ids(tokenizer, prompt: str, mode: str) -> tuple[list[int], set[int]]:
    """(ids to start from, ids that end the output) for a single-turn prompt: `chat` (a user turn; the output
    is the assistant's reply) or `text` (the output continues the prompt; the prompt starts a document, so it
    follows an end-of-text token, as every document but the first does in training)."""
    if mode == "chat":
        ids, _ = tokenizer.encode_chat([("user", prompt)], add_generation_prompt=True)
        return ids, {tokenizer.special_id("assistant_end"), tokenizer.eot_id}
    if mode == "text":
        return [tokenizer.eot_id, *tokenizer.encode(prompt)], {tokenizer.eot_id}
    raise ValueError(f"unknown prompt mode {mode!r}; choose chat or text")


def generate_text(model: ACTLossHead, tokenizer, prompt: str, max_new_tokens: int = 64, context: int | None = None,
                  temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0) -> str:
    """The continuation of plain text `prompt`, up to end-of-text."""
    ids, stop = prompt_ids(tokenizer, prompt, "text")
    new = generate_ids(model, [ids], max_new_tokens, stop, tokenizer.pad_id, context, temperature, top_k, top_p, seed)
    return tokenizer.decode(new[0])
