"""Chat tokenizers: byte-level (built in), trained byte-level BPE, or any Hugging Face fast tokenizer.

Every kind is a `transformers` fast tokenizer underneath, so all are saved, loaded and fingerprinted the
same way, and all share one chat template (`encode_chat`) with our own special tokens.

    python -m utils.tokenizer train --files a.txt b.jsonl --vocab-size 4096 --min-frequency 2 --output data/tok-4k

`--output` is the directory to save into (tokenizer.json, tokenizer_config.json, chat_tokenizer.json); a path
ending in .json is refused rather than made into a directory of that name. Wherever a tokenizer is asked for,
a single tokenizer.json file of the `tokenizers` library works as well as a directory or a hub name.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
from typing import Iterable, Iterator

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from utils.cli import exit_on_bad_input, output_directory
from utils.files import make_dir

SPECIAL_TOKENS = {
    "pad": "<|pad|>",
    "eot": "<|endoftext|>",
    "system_start": "<|system|>",
    "system_end": "<|/system|>",
    "user_start": "<|user|>",
    "user_end": "<|/user|>",
    "assistant_start": "<|assistant|>",
    "assistant_end": "<|/assistant|>",
}
ROLES = ("system", "user", "assistant")
CONFIG_FILE = "chat_tokenizer.json"
HUB_CHECK_TIMEOUT_S = 10  # the one quick request that tells an unreachable hub before the client's long retries


def byte_symbols() -> list[str]:
    """One printable character per byte value (the GPT-2 byte-level convention), indexed by the byte.

    Printable Latin-1 bytes stand for themselves; the rest (controls, space, ...) are shifted to 256+,
    so no symbol is whitespace and the `tokenizers` ByteLevel pre-tokenizer/decoder agree with it.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, shifted = [""] * 256, 0
    for b in range(256):
        if b in keep:
            symbols[b] = chr(b)
        else:
            symbols[b] = chr(256 + shifted)
            shifted += 1
    return symbols


def special_added_tokens() -> list[AddedToken]:
    # normalized=False: a lowercasing or NFKC normalizer of a pretrained tokenizer must not touch them
    return [AddedToken(s, special=True, normalized=False) for s in SPECIAL_TOKENS.values()]


def byte_level_backend() -> Tokenizer:
    # a BPE with no merges over the 256 byte symbols: byte b is token id b, nothing is ever unknown
    vocab = {s: b for b, s in enumerate(byte_symbols())}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


class ChatTokenizer:
    """A fast Hugging Face tokenizer plus our chat special tokens and chat template."""

    def __init__(self, tok: PreTrainedTokenizerFast, kind: str, source: str | None = None):
        if not getattr(tok, "is_fast", False):
            raise ValueError(f"{source or kind}: only fast (tokenizers-backed) tokenizers are supported")
        tok.add_tokens(special_added_tokens(), special_tokens=True)  # no-op for tokens already there
        self.tok, self.kind, self.source = tok, kind, source
        self.special_ids = {name: tok.convert_tokens_to_ids(s) for name, s in SPECIAL_TOKENS.items()}
        if len(set(self.special_ids.values())) != len(SPECIAL_TOKENS):
            raise ValueError(f"{source or kind}: special tokens do not get distinct ids: {self.special_ids}")

    # ---- construction ----

    @classmethod
    def byte_level(cls) -> ChatTokenizer:
        """256 byte tokens + the special tokens: no download, no training, any UTF-8 text round-trips."""
        return cls(PreTrainedTokenizerFast(tokenizer_object=byte_level_backend(),
                                           clean_up_tokenization_spaces=False), "byte_level")

    @classmethod
    def train_bpe(cls, texts: Iterable[str], vocab_size: int, min_frequency: int = 0) -> ChatTokenizer:
        """Byte-level BPE trained on `texts`; `vocab_size` includes the 256 bytes and the special tokens. Pairs seen
        fewer than `min_frequency` times are not merged (so the vocabulary may stay smaller)."""
        floor = 256 + len(SPECIAL_TOKENS)
        if vocab_size < floor:
            raise ValueError(f"vocab_size must be at least {floor} (256 bytes + special tokens), got {vocab_size}")
        backend = Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                      special_tokens=special_added_tokens(), initial_alphabet=byte_symbols(),
                                      show_progress=False)
        backend.train_from_iterator(texts, trainer=trainer)
        return cls(PreTrainedTokenizerFast(tokenizer_object=backend, clean_up_tokenization_spaces=False), "bpe")

    @classmethod
    def from_pretrained(cls, name_or_path: str) -> ChatTokenizer:
        """Any fast tokenizer by local directory, tokenizer.json file or hub name, with our special tokens added.
        A hub name loads from the local Hugging Face cache when it is there, else from the hub."""
        if os.path.isfile(name_or_path):
            return cls(_tokenizer_file(name_or_path), "pretrained", name_or_path)
        if not os.path.isdir(name_or_path) and looks_local(name_or_path):
            raise ValueError(f"tokenizer {name_or_path!r}: no such file or directory (and not a Hugging Face hub name)")
        try:  # local files only first: a directory, or a name already in the cache, needs no network
            tok = AutoTokenizer.from_pretrained(name_or_path, use_fast=True, local_files_only=True)
        except Exception as e:
            if os.path.isdir(name_or_path):
                raise ValueError(f"tokenizer {name_or_path!r}: cannot load this directory: {_first_line(e)}") from e
            tok = _from_hub(name_or_path)
        return cls(tok, "pretrained", name_or_path)

    # ---- ids ----

    def special_id(self, name: str) -> int:
        if name not in self.special_ids:
            raise KeyError(f"unknown special token {name!r}; known: {', '.join(SPECIAL_TOKENS)}")
        return self.special_ids[name]

    @property
    def pad_id(self) -> int:
        return self.special_ids["pad"]

    @property
    def eot_id(self) -> int:
        return self.special_ids["eot"]

    @property
    def vocab_size(self) -> int:
        """Every id the tokenizer can emit (base vocabulary + added tokens): the embedding table's size."""
        return len(self.tok)

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        source = f", source={self.source!r}" if self.source else ""
        return f"ChatTokenizer(kind={self.kind!r}{source}, vocab_size={self.vocab_size})"

    # ---- encoding ----

    def encode(self, text: str) -> list[int]:
        """Plain text to ids. Special-token strings in the text stay ordinary text (no injected role switch)
        and no BOS/EOS of a pretrained tokenizer is added: the chat template places every special id."""
        return self.tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def batch_encode(self, texts: Iterable[str]) -> list[list[int]]:
        """`encode` for many texts at once, in the Rust tokenizer's parallel batch path."""
        texts = list(texts)
        if not texts:
            return []
        return self.tok(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def encode_chat(self, turns: list[tuple[str, str]],
                    add_generation_prompt: bool = False) -> tuple[list[int], list[bool]]:
        """The chat template, shared by the dataset builder and generation.

        Each (role, text) turn is `<role>_start, text..., <role>_end`; the conversation ends with `eot`, or,
        with `add_generation_prompt`, with `assistant_start` so that the model writes the next reply.
        The mask is True for the tokens the model learns to produce: assistant text and `assistant_end`.
        """
        for role, _ in turns:
            if role not in ROLES:
                raise ValueError(f"unknown chat role {role!r}; expected one of {', '.join(ROLES)}")
        ids: list[int] = []
        mask: list[bool] = []
        for (role, _), body in zip(turns, self.batch_encode(text for _, text in turns)):
            target = role == "assistant"
            ids += [self.special_ids[f"{role}_start"], *body, self.special_ids[f"{role}_end"]]
            mask += [False] + [target] * (len(body) + 1)
        last = self.special_ids["assistant_start"] if add_generation_prompt else self.eot_id
        return ids + [last], mask + [False]

    # ---- identity, saving, loading ----

    def fingerprint(self) -> str:
        """Short hash of everything that decides ids: model (vocab, merges), normalizer, pre-tokenizer,
        decoder, added tokens and our special ids. Padding/truncation/post-processor settings are left out
        (we never use them and transformers may rewrite them on load)."""
        spec = json.loads(self.tok.backend_tokenizer.to_str())
        parts = {key: spec.get(key) for key in ("model", "normalizer", "pre_tokenizer", "decoder")}
        parts["added"] = sorted((t["id"], t["content"]) for t in spec.get("added_tokens", []))
        parts["special"] = self.special_ids
        blob = json.dumps(parts, sort_keys=True, ensure_ascii=False).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def save(self, directory: str) -> None:
        make_dir(directory)
        self.tok.save_pretrained(directory)
        meta = dict(kind=self.kind, source=self.source, special_tokens=SPECIAL_TOKENS, special_ids=self.special_ids,
                    vocab_size=self.vocab_size, fingerprint=self.fingerprint())
        with open(os.path.join(directory, CONFIG_FILE), "w") as f:
            json.dump(meta, f, indent=2)

    @classmethod
    def load(cls, directory: str) -> ChatTokenizer:
        """A tokenizer written by `save`, from local files only."""
        path = os.path.join(directory, CONFIG_FILE)
        if not os.path.isfile(path):
            raise ValueError(f"{directory}: not a saved ChatTokenizer (no {CONFIG_FILE})")
        with open(path) as f:
            meta = json.load(f)
        if meta.get("special_tokens") != SPECIAL_TOKENS:
            raise ValueError(f"{directory}: saved with other special tokens: {meta.get('special_tokens')}")
        # our own kinds load as the plain fast class; a pretrained one keeps its own class (and its quirks)
        loader = AutoTokenizer if meta["kind"] == "pretrained" else PreTrainedTokenizerFast
        try:
            tok = loader.from_pretrained(directory, local_files_only=True)
        except Exception as e:
            raise ValueError(f"{directory}: cannot load the saved tokenizer files: {e}") from e
        out = cls(tok, meta["kind"], meta.get("source"))
        if out.special_ids != meta["special_ids"]:
            raise ValueError(f"{directory}: special ids changed on load: {out.special_ids} != {meta['special_ids']}")
        return out


def _first_line(e: BaseException) -> str:
    """Hub and loader errors are long and multi-line: their first line."""
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _tokenizer_file(path: str) -> PreTrainedTokenizerFast:
    """A tokenizer saved as a single tokenizer.json (`tokenizers`' Tokenizer.save). Its added tokens keep their
    special flags, as when the file is read from a directory."""
    if not path.endswith(".json"):
        raise ValueError(f"tokenizer {path!r}: a file, but not a tokenizer.json (give a tokenizer .json file, a "
                         f"tokenizer directory or a hub name)")
    try:
        return PreTrainedTokenizerFast(tokenizer_file=path, clean_up_tokenization_spaces=False)
    except Exception as e:
        raise ValueError(f"tokenizer {path!r}: not a tokenizers JSON file ({_first_line(e)})") from e


def _from_hub(name: str) -> PreTrainedTokenizerFast:
    """A hub tokenizer not in the local cache. Unless HF_HUB_OFFLINE is set, the hub is first checked once, quickly:
    its client retries an unreachable hub for most of a minute before giving up."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    where = f"tokenizer {name!r}: not a local path and not in the Hugging Face cache"
    if constants.HF_HUB_OFFLINE:
        raise ValueError(f"{where}, and HF_HUB_OFFLINE is set")
    try:
        get_session().head(constants.ENDPOINT, timeout=HUB_CHECK_TIMEOUT_S)
    except Exception as e:  # DNS, refused, timeout, TLS: any answer at all would do
        raise ValueError(f"{where}, and the hub ({constants.ENDPOINT}) cannot be reached: {_first_line(e)}") from e
    try:
        return AutoTokenizer.from_pretrained(name, use_fast=True)
    except Exception as e:
        raise ValueError(f"{where}, and loading it from the hub failed: {_first_line(e)}") from e


def make_tokenizer(spec: str, train_texts: Iterable[str], vocab_size: int = 4096) -> ChatTokenizer:
    """The tokenizer a dataset builder asks for: `byte`, `bpe` (trained on `train_texts`), a directory saved by
    ChatTokenizer.save (e.g. by `python -m utils.tokenizer train`), a tokenizer.json file, or a Hugging Face name
    or path."""
    if spec == "byte":
        return ChatTokenizer.byte_level()
    if spec == "bpe":
        return ChatTokenizer.train_bpe(train_texts, vocab_size)
    if os.path.isfile(os.path.join(spec, CONFIG_FILE)):
        return ChatTokenizer.load(spec)
    return ChatTokenizer.from_pretrained(spec)


def check_extends(new: ChatTokenizer, old: ChatTokenizer, what: str) -> None:
    """Weights trained with `old` mean the same in a model using `new` only if every id of `old` is the same
    token in `new` (new may add tokens at the end)."""
    n = old.vocab_size
    if new.vocab_size < n or new.tok.convert_ids_to_tokens(list(range(n))) != old.tok.convert_ids_to_tokens(list(range(n))):
        raise ValueError(f"{what}: the tokenizer ({new!r}) does not extend the one the weights were trained with "
                         f"({old!r}); build the dataset with --tokenizer <that run>/tokenizer")


def looks_local(name: str) -> bool:
    """True for names that can only mean a local path, so a typo fails at once instead of after hub retries:
    not a valid hub repo id ('name' or 'org/name'), or a path whose parent directory exists here."""
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except Exception:
        return True
    parent = os.path.dirname(name)
    return name.startswith(".") or (parent != "" and os.path.isdir(parent))


def iter_texts(files: list[str], block_chars: int = 1 << 16) -> Iterator[str]:
    """Training text from .txt files (in blocks of whole lines) and .jsonl files (the `text` field)."""
    for path in files:
        with open(path, encoding="utf-8") as f:
            if path.endswith(".jsonl"):
                for n, line in enumerate(f, start=1):
                    if line.strip():
                        record = json.loads(line)
                        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                            raise ValueError(f"{path} line {n}: no string 'text' field")
                        yield record["text"]
                continue
            block: list[str] = []
            size = 0
            for line in f:  # blocks rather than single lines keep merges such as "\n\n" learnable
                block.append(line)
                size += len(line)
                if size >= block_chars:
                    yield "".join(block)
                    block, size = [], 0
            if block:
                yield "".join(block)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m utils.tokenizer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a byte-level BPE tokenizer and save it")
    train.add_argument("--files", nargs="+", required=True, help=".txt files, or .jsonl with a 'text' field")
    train.add_argument("--vocab-size", type=int, default=4096,
                       help="total, including bytes and special tokens (default 4096)")
    train.add_argument("--min-frequency", type=int, default=0,
                       help="merge only pairs seen at least this often (default 0: no limit)")
    train.add_argument("--output", type=output_directory, required=True,
                       help="directory to save the tokenizer into (not a .json file name)")
    args = parser.parse_args(argv)
    for path in args.files:
        if not os.path.isfile(path):
            parser.error(f"{path}: no such file")
    if args.output.endswith(".json"):  # a tokenizers-style file name; a directory named so would be a surprise
        parser.error(f"--output {args.output}: expected a directory to save into (it gets tokenizer.json, "
                     f"tokenizer_config.json and {CONFIG_FILE}), not a .json file name; e.g. --output "
                     f"{os.path.dirname(args.output) or '.'}/tokenizer")
    with exit_on_bad_input():
        tok = ChatTokenizer.train_bpe(iter_texts(args.files), args.vocab_size, args.min_frequency)
        tok.save(args.output)
    print(f"vocab size {tok.vocab_size}, fingerprint {tok.fingerprint()}, saved to {args.output}")


if __name__ == "__main__":
    main()
