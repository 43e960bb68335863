"""Plain-text language modelling: the builder (documents, split, stream), row packing, a tokenizer trained by
the command, init_from a text run with a grown vocabulary, probes, raw continuation, the metrics plot."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_LM, compose_chat
from constants import IGNORE_LABEL_ID
from dataset.build_chat_dataset import ChatBuildConfig, build as build_chat
from dataset.build_text_dataset import TextBuildConfig, build as build_text, main as build_text_main
from dataset.text_dataset import TextDataset
from evaluators.probes import is_exact_match, load_probes, score_probes
from pretrain import train
from utils import plot_metrics
from utils.checkpoint import find_checkpoint, load_checkpoint
from utils.tokenizer import ChatTokenizer, main as tokenizer_main

STORIES = [f"Story {i}: the {c} cat sat on the {t}." + " More words." * (i % 3) for i, (c, t) in
           enumerate(zip(["red", "blue", "green", "black", "white", "pink"], ["mat", "hat", "box", "log", "rug", "bed"]))]


def write_corpus(tmp: Path) -> list[str]:
    """Three documents in a text file (blank-line separated), three in JSONL, plus two bad records."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "a.txt").write_text("\n\n".join(STORIES[:3]) + "\n")
    records = [{"text": s} for s in STORIES[3:]] + [{"title": "no text"}, {"text": "   "}]
    (tmp / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return [STORIES[0], STORIES[1], STORIES[2] + "\n", *STORIES[3:]]


def build_corpus(tmp: Path, **kw) -> tuple[Path, dict, list[str]]:
    docs = write_corpus(tmp / "raw")
    cfg = dict(input=[str(tmp / "raw" / "a.txt"), str(tmp / "raw" / "b.jsonl")], output_dir=str(tmp / "built"),
               doc_separator="blank-line", train_split=0.5, seed=1)
    return tmp / "built", build_text(TextBuildConfig(**{**cfg, **kw})), docs


def split_docs(out: Path, split: str, tok: ChatTokenizer) -> list[str]:
    tokens, offsets = np.load(out / split / "tokens.npy"), np.load(out / split / "offsets.npy")
    docs = []
    for lo, hi in zip(offsets[:-1], offsets[1:]):
        assert tokens[hi - 1] == tok.eot_id  # every document ends with end-of-text
        docs.append(tok.decode(tokens[lo:hi - 1]))
    return docs


def test_builder_splits_by_document_and_reports_bad_records(tmp_path):
    out, meta, docs = build_corpus(tmp_path)
    assert meta["bad_records"] == {"missing_text": 1, "empty": 1}
    tok = ChatTokenizer.load(str(out / "tokenizer"))
    train, valid = split_docs(out, "train", tok), split_docs(out, "valid", tok)
    assert len(train) == len(valid) == 3
    assert sorted(train + valid) == sorted(docs)  # whole documents, each in exactly one split
    assert np.load(out / "train" / "tokens.npy").dtype == np.uint16
    with pytest.raises(ValueError, match="b.jsonl record 3: missing text"):
        build_corpus(tmp_path / "strict", strict=True)


def test_one_document_per_line_and_an_empty_split_fails(tmp_path):
    lines = tmp_path / "train.txt"
    lines.write_text("\n".join(STORIES) + "\n\n  \n")
    out = tmp_path / "built"
    # read as one document, the file leaves nothing to train on: an error naming the split, the input and the fix
    with pytest.raises(SystemExit, match=r"^error: .*train.txt: the train split has no documents "
                                         r"\(1 documents in all, --train-split 0.95\).*--doc-separator"):
        build_text_main(["--input", str(lines), "--output-dir", str(out)])
    assert not out.exists()
    meta = build_text(TextBuildConfig(input=[str(lines)], output_dir=str(out), doc_separator="line", train_split=1.0))
    assert meta["splits"]["train"]["documents"] == len(STORIES)
    assert meta["bad_records"] == {}  # blank lines are no documents, not empty ones
    assert split_docs(out, "train", ChatTokenizer.load(str(out / "tokenizer"))) == STORIES
    build_text_main(["--input", str(lines), "--output-dir", str(out), "--doc-separator", "line"])
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["splits"]["train"]["documents"] + meta["splits"]["valid"]["documents"] == len(STORIES)


def test_validation_documents_from_their_own_file(tmp_path):
    docs = write_corpus(tmp_path / "raw")
    raw, out = tmp_path / "raw", tmp_path / "built"
    build_text_main(["--train-file", str(raw / "a.txt"), "--valid-file", str(raw / "b.jsonl"), "--output-dir", str(out),
                     "--doc-separator", "blank-line"])
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["bad_records"] == {} and meta["valid_bad_records"] == {"missing_text": 1, "empty": 1}
    tok = ChatTokenizer.load(str(out / "tokenizer"))
    assert split_docs(out, "train", tok) == docs[:3] and split_docs(out, "valid", tok) == docs[3:]
    with pytest.raises(ValueError, match="--train-split 0.5 conflicts with --valid-file"):
        build_text(TextBuildConfig(input=[str(raw / "a.txt")], output_dir=str(out), valid_file=[str(raw / "b.jsonl")],
                                   train_split=0.5))
    (raw / "bad.jsonl").write_text('{"title": "no text"}\n')
    with pytest.raises(ValueError, match="bad.jsonl: the valid split has no documents"):
        build_text(TextBuildConfig(input=[str(raw / "a.txt")], output_dir=str(out),
                                   valid_file=[str(raw / "bad.jsonl")]))


def test_no_validation_document_is_a_copy_of_a_training_one(tmp_path, capsys):
    """Corpora repeat documents: a copy in the validation split would score memorisation."""
    lines = tmp_path / "corpus.txt"
    docs = STORIES[:2] * 6 + STORIES[2:]  # the first two stories 6 times each
    lines.write_text("\n".join(docs) + "\n")
    meta = build_text(TextBuildConfig(input=[str(lines)], output_dir=str(tmp_path / "built"), doc_separator="line",
                                      train_split=0.5, seed=0))
    tok = ChatTokenizer.load(str(tmp_path / "built" / "tokenizer"))
    train, valid = split_docs(tmp_path / "built", "train", tok), split_docs(tmp_path / "built", "valid", tok)
    assert valid and not set(valid) & set(train)
    assert len(train) == len(docs) // 2  # the training split keeps its repeats
    assert meta["valid_training_copies"] == len(docs) - len(train) - len(valid) > 0
    copies = meta["valid_training_copies"]
    assert f"valid: left out {copies} documents that are also in the training split\n" in capsys.readouterr().out
    assert meta["splits"]["valid"]["documents"] == len(valid)
    # the same for a validation file of its own
    (tmp_path / "valid.txt").write_text(STORIES[0] + "\nA story of its own.\n")
    meta = build_text(TextBuildConfig(input=[str(lines)], valid_file=[str(tmp_path / "valid.txt")],
                                      output_dir=str(tmp_path / "built2"), doc_separator="line"))
    assert split_docs(tmp_path / "built2", "valid", tok) == ["A story of its own."]
    assert meta["valid_training_copies"] == 1
    (tmp_path / "valid.txt").write_text(STORIES[0] + "\n")  # nothing left to validate on: said why
    with pytest.raises(ValueError, match="the valid split has no documents; 1 validation documents left out as copies"):
        build_text(TextBuildConfig(input=[str(lines)], valid_file=[str(tmp_path / "valid.txt")],
                                   output_dir=str(tmp_path / "built3"), doc_separator="line"))


@pytest.mark.parametrize("seq_len", [1, 7, 64])
def test_rows_cover_the_stream_once(tmp_path, seq_len):
    out, _, _ = build_corpus(tmp_path)
    stream = np.load(out / "train" / "tokens.npy").astype(np.int64)
    ds = TextDataset(str(out), "test", seq_len, global_batch_size=4)
    ds.split_dir = str(out / "train")  # read the train stream in order
    ds.tokens = np.load(out / "train" / "tokens.npy", mmap_mode="r")
    ds.num_rows = -(-(len(stream) - 1) // seq_len)
    inputs, labels = [], []
    for _, batch, n in ds:
        for row in range(n):
            real = batch["labels"][row] != IGNORE_LABEL_ID
            inputs += batch["inputs"][row][real].tolist()
            labels += batch["labels"][row][real].tolist()
    assert inputs == stream[:-1].tolist()  # no token lost, none repeated
    assert labels == stream[1:].tolist()  # and each is the label of the position before it


def test_training_rows_are_a_seeded_permutation_of_the_rows(tmp_path):
    out, _, _ = build_corpus(tmp_path)
    stream = np.load(out / "train" / "tokens.npy").astype(np.int64)
    L = 8
    expected = sorted(tuple(stream[i * L:(i + 1) * L + 1][:-1]) for i in range(-(-(len(stream) - 1) // L)))
    ds = TextDataset(str(out), "train", L, global_batch_size=len(expected), seed=3, pack=True)
    _, batch, _ = next(iter(ds))
    real = batch["segment_ids"] == 1
    assert (batch["labels"][~real] == IGNORE_LABEL_ID).all() and (batch["inputs"][~real] == ds.pad_id).all()
    rows = sorted(tuple(batch["inputs"][r][real[r]].tolist()) for r in range(len(expected)))
    assert rows == expected  # one epoch: every row once
    again = TextDataset(str(out), "train", L, global_batch_size=len(expected), seed=3, pack=True)
    assert torch.equal(next(iter(again))[1]["inputs"], batch["inputs"])


def test_tokenizer_trained_by_the_command_is_used_as_built(tmp_path):
    docs = write_corpus(tmp_path / "raw")
    tok_dir, raw = tmp_path / "tok", tmp_path / "raw"
    with pytest.raises(SystemExit, match="b.jsonl line 4: no string 'text' field"):
        tokenizer_main(["train", "--files", str(raw / "b.jsonl"), "--vocab-size", "300", "--output", str(tok_dir)])
    (raw / "good.jsonl").write_text("".join((raw / "b.jsonl").read_text().splitlines(True)[:3]))
    tokenizer_main(["train", "--files", str(raw / "a.txt"), str(raw / "good.jsonl"), "--vocab-size", "300",
                    "--output", str(tok_dir)])
    trained = ChatTokenizer.load(str(tok_dir))
    out, meta, _ = build_corpus(tmp_path, tokenizer=str(tok_dir), train_split=1.0)
    assert meta["tokenizer_fingerprint"] == trained.fingerprint() and meta["vocab_size"] == 300
    assert sorted(split_docs(out, "train", trained)) == sorted(docs)  # encode -> decode round trip


def grown_tokenizer(path: Path) -> ChatTokenizer:
    tok = ChatTokenizer.byte_level()
    tok.tok.add_tokens(["<|tool|>", "<|/tool|>"], special_tokens=True)
    tok.save(str(path))
    return ChatTokenizer.load(str(path))


def test_init_from_a_text_run_grows_the_vocabulary_with_a_fresh_optimizer(tmp_path):
    text, _, _ = build_corpus(tmp_path / "text")
    probes = tmp_path / "story.jsonl"
    probes.write_text(json.dumps({"prompt": "Story 0: the", "answer": "red"}) + "\n")
    train(compose_chat(*TINY_LM, "dataset=text", f"data_paths=[{text}]", "dataset.seq_len=16", "max_steps=3",
                       f"checkpoint_dir={tmp_path}", "run_name=text", "dataset.max_new_tokens=3"))
    text_run = next(tmp_path.glob("*/text"))
    before = load_checkpoint(find_checkpoint(str(text_run)))["model"]

    chats = [{"conversations": [{"from": "human", "value": f"Say {w}"}, {"from": "gpt", "value": w}]}
             for w in ("hi", "yes", "no", "ok")]
    (tmp_path / "chat.json").write_text(json.dumps(chats))
    tok = grown_tokenizer(tmp_path / "grown-tok")
    build_chat(ChatBuildConfig(input_file=str(tmp_path / "chat.json"), output_dir=str(tmp_path / "chat"),
                               tokenizer=str(tmp_path / "grown-tok"), max_length=32, train_split=0.5))
    results = train(compose_chat(*TINY_LM, f"data_paths=[{tmp_path / 'chat'}]", f"init_from={text_run}", "lr=0",
                                 "max_steps=1", f"checkpoint_dir={tmp_path}", "run_name=chat", "dataset.max_new_tokens=3",
                                 f"dataset.probes=[{{path:{probes},mode:text}}]"))
    after = load_checkpoint(find_checkpoint(str(next(tmp_path.glob("*/chat")))))
    assert after["step"] == 1  # a new run: step 0, fresh schedule
    assert all(int(s["step"]) == 1 for s in after["optimizers"][0]["state"].values())  # fresh optimizer moments
    old_vocab = ChatTokenizer.byte_level().vocab_size
    assert tok.vocab_size == old_vocab + 2
    for key in ("model.inner.embed_tokens.embedding_weight", "model.inner.lm_head.weight"):
        old, new = before[key], after["model"][key]
        assert new.shape[0] == tok.vocab_size
        torch.testing.assert_close(new[:old_vocab], old)  # lr=0: exactly the text run's rows
        torch.testing.assert_close(new[old_vocab:], old.mean(0, keepdim=True).expand(2, -1))
    assert "test/probe/story" in results  # a text-mode probe scored in a chat run

    build_chat(ChatBuildConfig(input_file=str(tmp_path / "chat.json"), output_dir=str(tmp_path / "chat-bpe"),
                               tokenizer="bpe", vocab_size=280, max_length=32, train_split=0.5))
    with pytest.raises(ValueError, match="does not extend"):
        train(compose_chat(*TINY_LM, f"data_paths=[{tmp_path / 'chat-bpe'}]", f"init_from={text_run}",
                           "max_steps=1", f"checkpoint_dir={tmp_path}", "run_name=bad"))


def test_probe_scores_on_hand_made_outputs(tmp_path):
    path = tmp_path / "colours.jsonl"
    rows = [{"prompt": "The sky is", "answer": "blue"}, {"prompt": "Grass is", "answer": "green"},
            {"prompt": "Snow is", "answer": "white"}, {"prompt": "Coal is", "answer": "black"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    outputs = {"The sky is": " blue. The sun", "Grass is": "greenish", "Snow is": "  white", "Coal is": "red"}
    budgets = []

    def generate(prompts, max_new_tokens):
        budgets.append(max_new_tokens)
        return [outputs[p] for p in prompts]

    accuracy, results = score_probes({"colours": load_probes(str(path)), "sky": load_probes(str(path))[:1]}, generate)
    assert accuracy == {"colours": 0.25 + 0.25, "sky": 1.0}  # "blue." and "white" match; "greenish", "red" do not
    assert [r["correct"] for r in results[:4]] == [True, False, True, False]
    assert budgets == [7, 6]  # bytes of the longest answer + 2
    assert is_exact_match("The capital of France is Paris.", "The capital of France is Paris.")
    assert not is_exact_match("The capital of France is Paris", "The capital of France is Paris.")
    path.write_text('{"prompt": "x"}\n')
    with pytest.raises(ValueError, match="colours.jsonl line 1"):
        load_probes(str(path))


def test_plot_writes_a_png_with_stage_boundaries(tmp_path):
    lines = [{"step": s, "train/lm_loss": 3.0 / s, "train/lr": 1e-3, "train/accuracy": s / 10,
              "train/samples_per_s": 100.0} for s in range(1, 9)]
    lines += [{"step": 4, "test/loss": 1.0, "test/probe/facts": 0.5}, {"step": 4, "curriculum/stage": 1},
              {"step": 8, "test/loss": 0.5, "test/probe/facts": 0.75}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"step": 9, "tra')
    series, stages = plot_metrics.read_metrics(str(tmp_path / "metrics.jsonl"))
    assert stages == [(4, 1)] and series["test/probe/facts"] == ([4, 8], [0.5, 0.75])
    plot_metrics.main([str(tmp_path)])
    assert (tmp_path / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit, match="metrics.jsonl not found"):
        plot_metrics.main([str(tmp_path / "nowhere")])
