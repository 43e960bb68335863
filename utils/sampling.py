"""Sampling from a trained model (shared by the evaluators and generate.py): ACT steps for puzzles, and
token generation with a KV cache for causal models."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch

from models.kv_cache import KVCache
from models.losses import ACTLossHead


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


@dataclass
class SamplingParams:
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the context (1: off)
    max_new_tokens: int = 128
    seed: int = 0


SEEDS = (-2 ** 63, 2 ** 63 - 1)  # the seeds accepted (generate.py, serve.py)

# field -> (the test a value passes, the rule as said to a user); generate.py's options and chat commands use them
SAMPLING_RULES = {
    "temperature": (lambda v: math.isfinite(v) and v >= 0, "a number >= 0 (0 = greedy)"),
    "top_k": (lambda v: v >= 0, "a whole number >= 0 (0 = off)"),
    "top_p": (lambda v: 0 < v <= 1, "a number in (0, 1] (1 = off)"),
    "repetition_penalty": (lambda v: math.isfinite(v) and v > 0, "a number > 0 (1 = off)"),
    "max_new_tokens": (lambda v: v >= 1, "a whole number >= 1"),
    # what a torch.Generator takes, with room for the per-sample offsets (seed + i)
    "seed": (lambda v: SEEDS[0] <= v <= SEEDS[1], "a whole number in [-2^63, 2^63)"),
}


def check_sampling(name: str, value: float) -> float:
    """`value` when it is a valid setting of the SamplingParams field `name`; else ValueError naming the rule."""
    ok, rule = SAMPLING_RULES[name]
    if not ok(value):
        raise ValueError(f"{name} must be {rule}, got {value}")
    return value


def penalize_repetition(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Scale down the logits of tokens already seen ([B, V] bool): divided by `penalty` when positive,
    multiplied when negative, so the penalty always lowers them."""
    if penalty == 1.0:
        return logits
    logits = logits.float()
    return torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)


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


def context_length(model: ACTLossHead) -> int:
    """Positions the model can attend over (its training row length)."""
    return model.config.seq_len


def room(max_new_tokens: int, prompt_length: int, context: int) -> int:
    """How many tokens a prompt may get: its max_new_tokens, or what the context holds after it."""
    return min(max_new_tokens, context - prompt_length)


def cache_capacity(positions: int, context: int, compiled: bool) -> int:
    """KV cache slots for a batch whose rows span `positions` (the longest prompt, left padding included, plus the
    most new tokens). A compiled step's shapes are fixed by the capacity, so it takes one of two: the model's
    context, or twice it when a short prompt's answer outlasts a long one's room (the most any batch needs):
    at most two graphs, however the requests vary."""
    if not compiled:
        return positions
    return context if positions <= context else 2 * context


@torch.no_grad()
def stream_tokens(model: ACTLossHead, prompts: list[list[int]], params: SamplingParams | list[SamplingParams],
                  stop_ids: set[int], use_cache: bool = True, rows_done: Callable[[], Iterable[int]] | None = None,
                  compiled: bool = False) -> Iterator[list[int | None]]:
    """Generate from a batch of token prompts, one position at a time; yields the new token of every prompt
    (None once that prompt produced a stop token, which is not yielded, or has all its tokens: max_new_tokens, or
    as many as the context holds after it). Prompts are left-padded, and each
    one's positions count its own tokens only, so a prompt's tokens do not depend on the others in the batch.
    With `use_cache` the prompt is processed once (prefill) and each new token costs one position in every
    application of the network; without, the whole sequence is recomputed for every token. `compiled` (with the
    cache): every decoding step runs one torch.compile'd graph over a static cache (compiled on first use, about
    a minute on a CPU, and once more when the batch first shrinks; it pays off over long generations and many
    requests).

    `params` as a list gives every prompt its own settings, random generator (seeded with its seed) and length
    limit, so each prompt's tokens are those it would get alone (the server batches requests this way).
    `rows_done()`, asked at each new position, names rows to finish early (yielding None from then on).
    A finished row leaves the batch (and the cache), so it costs nothing more."""
    if compiled and not use_cache:
        raise ValueError("a compiled decoding step needs the KV cache")
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("empty prompt: nothing to continue from")
    act, device = model.model, next(model.parameters()).device
    longest, context = max(len(p) for p in prompts), context_length(model)
    if longest > context:
        raise ValueError(f"the prompt is {longest} tokens; the model's context is {context} tokens")
    vocab = act.config.vocab_size
    if bad := [t for p in prompts for t in p if not 0 <= t < vocab][:1]:
        raise ValueError(f"token id {bad[0]} is outside the model's vocabulary of {vocab} (a tokenizer mismatch?)")
    per_row = isinstance(params, list)
    limits = [p.max_new_tokens for p in params] if per_row else [params.max_new_tokens] * len(prompts)
    # each prompt's own room in the context: a longer prompt in the batch does not shorten its answer
    limits = [room(limit, len(prompt), context) for limit, prompt in zip(limits, prompts)]
    max_new = max(limits)
    if max_new <= 0:
        return

    inputs = torch.zeros(len(prompts), longest, dtype=torch.long, device=device)
    valid = torch.zeros_like(inputs, dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        inputs[row, longest - len(prompt):] = torch.tensor(prompt, device=device)
        valid[row, longest - len(prompt):] = True
    positions = (valid.long().cumsum(-1) - 1).clamp_min(0)
    seen = torch.zeros(len(prompts), vocab, dtype=torch.long, device=device).scatter_add_(1, inputs, valid.long()) > 0
    penalized = any(p.repetition_penalty != 1.0 for p in (params if per_row else [params]))  # (else seen is not read)
    if per_row:
        generators = [torch.Generator(device=device).manual_seed(p.seed) for p in params]
    else:
        generator = torch.Generator(device=device).manual_seed(params.seed)
    cache = KVCache(len(prompts), cache_capacity(longest + max_new, context, compiled), device,
                    static=compiled) if use_cache else None
    was_training = model.training
    model.eval()
    try:
        logits = act.predict(inputs, positions, valid, cache, last_only=True)[:, -1]
        # per row of the batch, in the batch's order: its prompt's index and token limit (the host decides when a
        # row is done: its tokens come to the host anyway, and a few Python ints cost less than tensor ops)
        rows = list(range(len(prompts)))
        for i in range(max_new):
            if per_row:
                token = torch.cat([sample_token(penalize_repetition(logits[j:j + 1], seen[j:j + 1], p.repetition_penalty),
                                                p.temperature, p.top_k, p.top_p, generators[j])
                                   for j, p in enumerate(params)])
            else:
                logits = penalize_repetition(logits, seen, params.repetition_penalty)
                token = sample_token(logits, params.temperature, params.top_k, params.top_p, generator)
            tokens, finished = token.tolist(), set(rows_done()) if rows_done is not None else set()
            # a stop token, a row finished from outside, or a prompt that fills the context (no room at all)
            done = [t in stop_ids or row in finished or limit <= i for row, t, limit in zip(rows, tokens, limits)]
            out: list[int | None] = [None] * len(prompts)
            for row, t, d in zip(rows, tokens, done):
                out[row] = None if d else t
            yield out
            done = [d or limit <= i + 1 for d, limit in zip(done, limits)]  # these rows have all their tokens
            if all(done) or i == max_new - 1:
                return
            if any(done):  # finished rows leave the batch: every tensor of the rest, and the cache, shrink
                kept = [j for j, d in enumerate(done) if not d]
                keep = torch.tensor(kept, device=device)
                token, seen, positions = token[keep], seen[keep], positions[keep]
                rows, limits = [rows[j] for j in kept], [limits[j] for j in kept]
                if per_row:
                    params, generators = [params[j] for j in kept], [generators[j] for j in kept]
                if cache is not None:
                    cache.keep(keep)
                else:
                    inputs, valid = inputs[keep], valid[keep]
            if penalized:
                seen[torch.arange(len(rows), device=device), token] = True
            last = positions[:, -1:] + 1
            if cache is not None:  # only the new position
                inputs, positions, valid = token[:, None], last, None
            else:  # the whole sequence again
                inputs = torch.cat((inputs, token[:, None]), 1)
                positions = torch.cat((positions, last), 1)
                valid = torch.cat((valid, torch.ones_like(token, dtype=torch.bool)[:, None]), 1)
            logits = act.predict(inputs, positions, valid, cache, compiled, last_only=True)[:, -1]
    finally:
        model.train(was_training)


def generate_tokens(model: ACTLossHead, prompts: list[list[int]], params: SamplingParams, stop_ids: set[int],
                    use_cache: bool = True, batch_size: int | None = None, progress=None,
                    compiled: bool = False) -> list[list[int]]:
    """The new tokens of every prompt (stop tokens excluded), `batch_size` prompts at a time, in order;
    `progress(n)` is called after each batch."""
    out: list[list[int]] = []
    batch_size = batch_size or len(prompts)
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        new: list[list[int]] = [[] for _ in chunk]
        for tokens in stream_tokens(model, chunk, params, stop_ids, use_cache, compiled=compiled):
            for row, token in enumerate(tokens):
                if token is not None:
                    new[row].append(token)
        out += new
        if progress is not None:
            progress(len(chunk))
    return out


def chat_stop_ids(tokenizer) -> set[int]:
    return {tokenizer.special_id("assistant_end"), tokenizer.eot_id}


def fit_conversation(tokenizer, turns: list[tuple[str, str]], context: int,
                     max_new_tokens: int) -> tuple[list[int], int]:
    """(prompt ids, number of turns dropped): the oldest whole turns go (the system prompt stays) until the
    prompt leaves room for the answer, or only the last turn is left; raises if even that does not fit. The
    room kept is max_new_tokens, at most half the context, so a generous limit does not erase the history."""
    room = min(max_new_tokens, context // 2)
    system = [t for t in turns[:1] if t[0] == "system"]
    rest = turns[len(system):]
    dropped = 0
    while True:
        ids, _ = tokenizer.encode_chat(system + rest, add_generation_prompt=True)
        if len(ids) + room <= context or len(rest) <= 1:
            break
        rest, dropped = rest[1:], dropped + 1
        while len(rest) > 1 and rest[0][0] != "user":  # a conversation restarts with a user turn
            rest, dropped = rest[1:], dropped + 1
    if len(ids) >= context:
        raise ValueError(f"the prompt is {len(ids)} tokens; the model's context is {context} tokens")
    return ids, dropped


def generate_replies(model: ACTLossHead, tokenizer, conversations: list[list[tuple[str, str]]],
                     params: SamplingParams, batch_size: int = 8) -> list[str]:
    """The assistant's reply to each conversation, in order (oldest turns dropped where the context is short)."""
    prompts = [fit_conversation(tokenizer, turns, context_length(model), params.max_new_tokens)[0]
               for turns in conversations]
    return [tokenizer.decode(t) for t in generate_tokens(model, prompts, params, chat_stop_ids(tokenizer),
                                                        batch_size=batch_size)]


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
