"""Build a chat dataset: ShareGPT / messages / Alpaca / OpenAssistant records -> tokenized conversations on disk.

    python -m dataset.build_chat_dataset --input-file data.json --output-dir data/my-chat \\
        --format sharegpt --tokenizer byte --max-length 512 --train-split 0.95

Input (`--train-file` is another name for `--input-file`): a .json/.jsonl file, a directory of them, or (with
network) a hub dataset name, read with `datasets`. The validation conversations are a seeded share of it
(`--train-split`), or come from their own files (`--valid-file`). Every record that cannot be used is counted
by reason and reported; `--strict` stops at the first. A split left without samples is an error.
Tokenizer: `byte` (built in, the default), `bpe` (trained here on the training split, `--vocab-size`), a
saved tokenizer directory, a `tokenizer.json` file, or a Hugging Face tokenizer name or local path. It is
saved in `<output-dir>/tokenizer/`, so training and generation always use the same one.

Loss masking: only assistant text and each assistant end token are trained (`--train-on-all`: every token).
Conversations longer than --max-length positions: `--long truncate` (default) keeps the longest run of whole
turns from the start that fits; `--long split` cuts the conversation at turn boundaries into several samples,
each starting with the system prompt. A single exchange longer than the limit is cut mid-turn. All counted.
Output: dataset.json (metadata and statistics), tokenizer/, and per split (train/, valid/) the token arrays
read by dataset/chat_dataset.py.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dataset.chat_formats import BadRecordReport, Conversation, load_records, parse_records  # noqa: E402
from dataset.common import (  # noqa: E402
    add_split_arguments, check_output_dir, check_splits_not_empty, drop_training_copies, resolve_train_split,
    run_build_cli, save_arrays, split_indices, staged_output, token_dtype)
from utils.files import atomic_write  # noqa: E402
from utils.tokenizer import ChatTokenizer, make_tokenizer  # noqa: E402

Turns = list[tuple[str, str]]
Sample = tuple[list[int], list[bool]]


@dataclass
class ChatBuildConfig:
    input_file: str
    output_dir: str
    format: str = "auto"  # auto | sharegpt | messages | alpaca | oasst
    tokenizer: str = "byte"  # byte | bpe | a Hugging Face tokenizer name or path
    vocab_size: int = 4096  # for bpe
    max_length: int = 2048  # input positions of a sample (the model's seq_len)
    train_split: float | None = None  # None: DEFAULT_TRAIN_SPLIT, or 1 with valid_file
    valid_file: list[str] | None = None  # validation conversations from these files instead of a share of the input
    subsample_size: int | None = None
    long: str = "truncate"  # truncate | split
    train_on_all: bool = False
    strict: bool = False
    seed: int = 0
    hub_split: str = "train"


@dataclass
class SplitStats:
    conversations: int = 0
    samples: int = 0
    turns: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    truncated: int = 0  # conversations that lost turns (--long truncate)
    split: int = 0  # conversations cut into several samples (--long split)
    cut_mid_turn: int = 0  # samples whose one exchange alone was too long
    dropped_untrained: int = 0  # samples left with nothing to train on


def fit(tok: ChatTokenizer, turns: Turns, max_tokens: int, policy: str, stats: SplitStats) -> list[Sample]:
    """Encode a conversation as samples of at most max_tokens tokens, cutting at turn boundaries."""
    ids, mask = tok.encode_chat(turns)
    if len(ids) <= max_tokens:
        return [(ids, mask)]
    system = turns[:1] if turns[0][0] == "system" else []
    rest = turns[len(system):]
    ends = [j + 1 for j, (role, _) in enumerate(rest) if role == "assistant"]  # a sample ends after an answer
    samples, start = [], 0
    while start < len(rest):
        best = None
        for end in (e for e in ends if e > start):
            encoded = tok.encode_chat(system + rest[start:end])
            if len(encoded[0]) > max_tokens:
                break
            best = (end, encoded)
        if best is None:  # even the next exchange alone is too long: keep its first max_tokens tokens
            end = next((e for e in ends if e > start), len(rest))
            ids, mask = tok.encode_chat(system + rest[start:end])
            best = (end, (ids[:max_tokens], mask[:max_tokens]))
            stats.cut_mid_turn += 1
        start = best[0]
        samples.append(best[1])
        if policy == "truncate":
            break
    if policy == "truncate":
        stats.truncated += 1
    elif len(samples) > 1:
        stats.split += 1
    return samples


def encode_split(tok: ChatTokenizer, conversations: list[Turns], cfg: ChatBuildConfig) -> tuple[list[Sample], SplitStats]:
    stats = SplitStats(conversations=len(conversations))
    samples = []
    for turns in conversations:
        stats.turns += len(turns)
        for ids, mask in fit(tok, turns, cfg.max_length + 1, cfg.long, stats):  # +1: inputs and labels are shifted
            if cfg.train_on_all:
                mask = [True] * len(ids)
            if not any(mask[1:]):
                stats.dropped_untrained += 1
                continue
            samples.append((ids, mask))
            stats.tokens += len(ids)
            stats.trained_tokens += sum(mask[1:])
    stats.samples = len(samples)
    return samples, stats


def save_split(directory: Path, samples: list[Sample], vocab_size: int) -> None:
    save_arrays(directory, {
        "tokens": np.array([t for ids, _ in samples for t in ids], dtype=token_dtype(vocab_size)),
        "trained": np.array([m for _, mask in samples for m in mask], dtype=bool),
        "offsets": np.cumsum([0] + [len(ids) for ids, _ in samples]).astype(np.int64),
    })


def read_conversations(sources: list[str], cfg: ChatBuildConfig) -> tuple[list[Conversation], BadRecordReport]:
    """The usable conversations of the records of `sources` (files, directories or a hub name), reported."""
    records = [record for source in sources for record in load_records(source, cfg.hub_split)]
    fmt = "oasst" if cfg.format == "openassistant" else cfg.format
    conversations, report = parse_records(records, fmt, strict=cfg.strict)
    where = ", ".join(sources)
    print(f"{where}: {len(records)} records -> {len(conversations)} conversations; {report.summary()}")
    if not conversations:
        raise ValueError(f"{where}: no usable conversation")
    return conversations, report


def build(cfg: ChatBuildConfig) -> dict:
    """Build the dataset; returns its metadata (also written to <output_dir>/dataset.json)."""
    if cfg.long not in ("truncate", "split"):
        raise ValueError(f"--long must be truncate or split, got {cfg.long!r}")
    check_output_dir(cfg.output_dir)
    train_split = resolve_train_split(cfg.train_split, cfg.valid_file)
    sources = {"train": cfg.input_file, "valid": ", ".join(cfg.valid_file or [cfg.input_file])}
    conversations, report = read_conversations([cfg.input_file], cfg)
    train, valid = split_indices(len(conversations), train_split, cfg.seed, cfg.subsample_size)
    splits = {"train": [conversations[i].turns for i in train], "valid": [conversations[i].turns for i in valid]}
    if cfg.valid_file:
        valid_conversations, valid_report = read_conversations(cfg.valid_file, cfg)
        splits["valid"] = [c.turns for c in valid_conversations]
    copies, copies_note = drop_training_copies(splits, "conversations", key=tuple)

    tok = make_tokenizer(cfg.tokenizer, (text for turns in splits["train"] for _, text in turns), cfg.vocab_size)
    encoded = {name: encode_split(tok, turns, cfg) for name, turns in splits.items()}
    for name, (_, stats) in encoded.items():
        share = stats.trained_tokens / max(stats.tokens, 1)
        print(f"{name}: {stats.conversations} conversations, {stats.samples} samples, {stats.turns} turns, "
              f"{stats.tokens} tokens ({share:.1%} trained); {stats.truncated} truncated, {stats.split} split, "
              f"{stats.cut_mid_turn} cut mid-turn, {stats.dropped_untrained} without trained tokens")
    note = "" if cfg.valid_file else f" ({len(conversations)} conversations in all, --train-split {train_split})"
    note += copies_note
    check_splits_not_empty({name: len(samples) for name, (samples, _) in encoded.items()}, "samples", sources,
                           validates=bool(cfg.valid_file) or train_split < 1, note=note)

    meta = {"kind": "chat", "vocab_size": tok.vocab_size, "max_length": cfg.max_length, "pad_id": tok.pad_id,
            "eot_id": tok.eot_id, "tokenizer_fingerprint": tok.fingerprint(),
            "build": {**asdict(cfg), "train_split": train_split}, "bad_records": report.counts,
            "valid_training_copies": copies, "splits": {}}
    if cfg.valid_file:
        meta["valid_bad_records"] = valid_report.counts
    with staged_output(cfg.output_dir) as out:
        tok.save(str(out / "tokenizer"))
        for name, (samples, stats) in encoded.items():
            save_split(out / name, samples, tok.vocab_size)
            meta["splits"][name] = asdict(stats)
        atomic_write(out / "dataset.json", lambda f: f.write(json.dumps(meta, indent=1).encode()))
    print(f"wrote {cfg.output_dir} (vocabulary {tok.vocab_size}, max length {cfg.max_length})")
    return meta


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input-file", "--input", "--train-file", required=True,
                    help="file, directory or hub dataset name")
    ap.add_argument("--output-dir", required=True)
    ap.add_argument("--format", default="auto", choices=["auto", "sharegpt", "messages", "alpaca", "oasst", "openassistant"])
    ap.add_argument("--tokenizer", default="byte",
                    help="byte | bpe | a saved tokenizer directory | a tokenizer.json file | Hugging Face name")
    ap.add_argument("--vocab-size", type=int, default=4096, help="for --tokenizer bpe")
    ap.add_argument("--max-length", type=int, default=2048)
    add_split_arguments(ap, "conversation")
    ap.add_argument("--long", default="truncate", choices=["truncate", "split"])
    ap.add_argument("--train-on-all", action="store_true", help="train on every token, not only the assistant's")
    ap.add_argument("--strict", action="store_true", help="stop at the first bad record")
    ap.add_argument("--hub-split", default="train")
    run_build_cli(build, ChatBuildConfig, ap.parse_args(argv))


if __name__ == "__main__":
    main()
