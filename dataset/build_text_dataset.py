"""Build a plain-text dataset for language-model pretraining: documents -> one token stream on disk.

    python -m dataset.build_text_dataset --input corpus/ stories.jsonl --output-dir data/my-text \\
        --tokenizer byte --train-split 0.95

Input (several may be given; `--train-file` is another name for `--input`): .txt/.md files, .json/.jsonl
files of records with a text field (`--text-field`, default `text`), directories of such files (recursively,
sorted), or, with network, a hub dataset name read with `datasets` (`--hub-split`). A text file is one
document by default, or several with `--doc-separator`: `line` (every non-empty line is a document),
`blank-line`, or a literal string such as `<|endoftext|>`. Records without a string text field, and empty
documents, are counted by reason and reported; `--strict` stops at the first. A split left without documents
is an error.

Tokenizer: `byte` (default), `bpe` (trained on the training documents, `--vocab-size`), a tokenizer
directory saved by `python -m utils.tokenizer train`, a `tokenizer.json` file, or a Hugging Face name or
path; saved in `<output-dir>/tokenizer/`. Every document is followed by the end-of-text token. Documents are
split into train/valid whole (seeded), or the validation documents come from their own files
(`--valid-file`). Output per split (train/, valid/): `tokens.npy` (the stream; uint16 when the vocabulary
allows), `offsets.npy` (document i is tokens[offsets[i]:offsets[i+1]], its end-of-text included); and
dataset.json (metadata and statistics). dataset/text_dataset.py cuts the stream into rows of any length at
training time.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dataset.chat_formats import JSON_SUFFIXES, load_records  # noqa: E402
from dataset.common import (  # noqa: E402
    add_split_arguments, check_output_dir, check_splits_not_empty, drop_training_copies, resolve_train_split,
    run_build_cli, save_arrays, split_indices, staged_output, token_dtype)
from utils.files import atomic_write  # noqa: E402
from utils.tokenizer import ChatTokenizer, make_tokenizer  # noqa: E402

TEXT_SUFFIXES = (".txt", ".md", ".text")
ENCODE_CHUNK = 1024  # documents per call of the batch tokenizer


@dataclass
class TextBuildConfig:
    input: list[str]
    output_dir: str
    text_field: str = "text"
    doc_separator: str | None = None  # None: one document per text file; "line"; "blank-line"; or a literal string
    tokenizer: str = "byte"  # byte | bpe | saved tokenizer directory | Hugging Face name or path
    vocab_size: int = 4096  # for bpe
    train_split: float | None = None  # None: DEFAULT_TRAIN_SPLIT, or 1 with valid_file
    valid_file: list[str] | None = None  # validation documents from these inputs instead of a share of `input`
    subsample_size: int | None = None  # documents
    strict: bool = False
    seed: int = 0
    hub_split: str = "train"


@dataclass
class Report:
    """Documents read and what could not be used, by reason, with the first few places."""
    documents: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    skipped_files: list[str] = field(default_factory=list)

    def bad(self, reason: str, where: str, strict: bool) -> None:
        if strict:
            raise ValueError(f"{where}: {reason.replace('_', ' ')}")
        self.counts[reason] = self.counts.get(reason, 0) + 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 3:
            self.examples[reason].append(where)

    def summary(self) -> str:
        parts = [f"{n} {reason} (e.g. {', '.join(self.examples[reason])})" for reason, n in self.counts.items()]
        if self.skipped_files:
            parts.append(f"{len(self.skipped_files)} files of other types skipped (e.g. {self.skipped_files[0]})")
        return "; ".join(parts) or "no bad records"


def split_text(text: str, separator: str | None) -> list[str]:
    if separator is None:
        return [text]
    if separator == "line":  # blank lines are spacing, not empty documents
        return [line for line in text.splitlines() if line.strip()]
    if separator == "blank-line":
        return re.split(r"\n[ \t]*\n+", text)
    return text.split(separator)


def read_documents(sources: list[str], cfg: TextBuildConfig, report: Report) -> Iterator[str]:
    """Every non-empty document of `sources` (inputs as in cfg.input), in order."""
    def emit(text, where: str) -> Iterator[str]:
        if not isinstance(text, str):
            report.bad("missing_text" if text is None else "wrong_type", where, cfg.strict)
        elif not text.strip():
            report.bad("empty", where, cfg.strict)
        else:
            report.documents += 1
            yield text

    def from_file(path: Path) -> Iterator[str]:
        if path.suffix in TEXT_SUFFIXES:
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError as e:  # one bad file is counted and skipped (--strict: stops the build)
                report.bad("not_utf8", f"{path} (byte {e.start})", cfg.strict)
                return
            for k, doc in enumerate(split_text(text, cfg.doc_separator)):
                yield from emit(doc, f"{path} document {k}")
        else:
            for k, record in enumerate(load_records(str(path))):
                text = record.get(cfg.text_field) if isinstance(record, dict) else None
                yield from emit(text, f"{path} record {k}")

    for source in sources:
        path = Path(source).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
            usable = [p for p in files if p.suffix in TEXT_SUFFIXES + JSON_SUFFIXES]
            report.skipped_files += [str(p) for p in files if p not in usable]
            if not usable:
                raise FileNotFoundError(f"{source}: no {'/'.join(TEXT_SUFFIXES + JSON_SUFFIXES)} files in this directory")
            for p in usable:
                yield from from_file(p)
        elif path.is_file():
            if path.suffix not in TEXT_SUFFIXES + JSON_SUFFIXES:
                raise ValueError(f"{source}: expected a {'/'.join(TEXT_SUFFIXES + JSON_SUFFIXES)} file")
            yield from from_file(path)
        elif path.suffix in TEXT_SUFFIXES + JSON_SUFFIXES or source.startswith(("/", ".", "~")):
            raise FileNotFoundError(f"{source}: file not found")
        else:  # not a local path: a hub dataset
            for k, record in enumerate(load_records(source, cfg.hub_split)):
                yield from emit(record.get(cfg.text_field), f"{source} record {k}")


def encode_documents(tok: ChatTokenizer, docs: list[str]) -> dict[str, np.ndarray]:
    """The token stream of `docs`, each followed by end-of-text, and the document offsets."""
    dtype = token_dtype(tok.vocab_size)
    parts, lengths = [], []
    for start in range(0, len(docs), ENCODE_CHUNK):
        for ids in tok.batch_encode(docs[start:start + ENCODE_CHUNK]):
            parts.append(np.array(ids + [tok.eot_id], dtype=dtype))
            lengths.append(len(ids) + 1)
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
    return {"tokens": tokens, "offsets": np.cumsum([0] + lengths).astype(np.int64)}


def build(cfg: TextBuildConfig) -> dict:
    """Build the dataset; returns its metadata (also written to <output_dir>/dataset.json)."""
    check_output_dir(cfg.output_dir)
    sources = {"train": ", ".join(cfg.input), "valid": ", ".join(cfg.valid_file or cfg.input)}
    train_split = resolve_train_split(cfg.train_split, cfg.valid_file)
    report = Report()
    docs = list(read_documents(cfg.input, cfg, report))
    print(f"{sources['train']}: {report.documents} documents; {report.summary()}")
    if not docs:
        raise ValueError(f"{sources['train']}: no usable document")
    train, valid = split_indices(len(docs), train_split, cfg.seed, cfg.subsample_size)
    splits = {"train": [docs[i] for i in np.sort(train)], "valid": [docs[i] for i in np.sort(valid)]}
    if cfg.valid_file:
        valid_report = Report()
        splits["valid"] = list(read_documents(cfg.valid_file, cfg, valid_report))
        print(f"{sources['valid']}: {valid_report.documents} documents; {valid_report.summary()}")
    copies, copies_note = drop_training_copies(splits, "documents")
    note = "" if cfg.valid_file else f" ({len(docs)} documents in all, --train-split {train_split})"
    note += copies_note
    if not cfg.doc_separator:
        note += "; a text file is one document unless --doc-separator (line, blank-line, ...) splits it"
    check_splits_not_empty({k: len(v) for k, v in splits.items()}, "documents", sources,
                           validates=bool(cfg.valid_file) or train_split < 1, note=note)

    tok = make_tokenizer(cfg.tokenizer, iter(splits["train"]), cfg.vocab_size)
    meta = {"kind": "text", "vocab_size": tok.vocab_size, "pad_id": tok.pad_id, "eot_id": tok.eot_id,
            "tokenizer_fingerprint": tok.fingerprint(), "build": {**asdict(cfg), "train_split": train_split},
            "bad_records": report.counts, "skipped_files": len(report.skipped_files), "valid_training_copies": copies,
            "splits": {}}
    if cfg.valid_file:
        meta["valid_bad_records"] = valid_report.counts
    with staged_output(cfg.output_dir) as out:
        tok.save(str(out / "tokenizer"))
        for name, split_docs in splits.items():
            arrays = encode_documents(tok, split_docs)
            save_arrays(out / name, arrays)
            stats = {"documents": len(split_docs), "tokens": int(len(arrays["tokens"])),
                     "characters": sum(len(d) for d in split_docs)}
            meta["splits"][name] = stats
            per_token = stats["characters"] / max(stats["tokens"], 1)
            print(f"{name}: {stats['documents']} documents, {stats['tokens']} tokens ({per_token:.2f} characters "
                  f"per token), {arrays['tokens'].dtype}")
        atomic_write(out / "dataset.json", lambda f: f.write(json.dumps(meta, indent=1).encode()))
    print(f"wrote {cfg.output_dir} (vocabulary {tok.vocab_size})")
    return meta


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", "--input-file", "--train-file", nargs="+", required=True,
                    help="files, directories or a hub dataset name")
    ap.add_argument("--output-dir", required=True)
    ap.add_argument("--text-field", default="text", help="the text of a .json/.jsonl or hub record")
    ap.add_argument("--doc-separator", help="split text files into documents: line (each non-empty line), "
                                            "blank-line, or a literal string; default: each file is one document")
    ap.add_argument("--tokenizer", default="byte",
                    help="byte | bpe | a saved tokenizer directory | a tokenizer.json file | Hugging Face name")
    ap.add_argument("--vocab-size", type=int, default=4096, help="for --tokenizer bpe")
    add_split_arguments(ap, "document")
    ap.add_argument("--strict", action="store_true", help="stop at the first bad record")
    ap.add_argument("--hub-split", default="train")
    run_build_cli(build, TextBuildConfig, ap.parse_args(argv))


if __name__ == "__main__":
    main()
