"""Chat path: builder (masks, long conversations, bad records), loader (shift, packing), a training run,
vocabulary growth, sampling."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import CONVERSATIONS, build_tiny, compose_chat, with_nan_ema, write_records
from constants import IGNORE_LABEL_ID
from dataset.build_chat_dataset import main as build_main
from dataset.chat_dataset import ChatDataset
from models import build_model
from pretrain import train
from utils.checkpoint import load_model_weights, save_checkpoint
from utils.sampling import sample_token
from utils.tokenizer import ChatTokenizer

def conversation(out: Path, split: str, i: int):
    a = {n: np.load(out / split / f"{n}.npy") for n in ("tokens", "trained", "offsets")}
    lo, hi = a["offsets"][i], a["offsets"][i + 1]
    return a["tokens"][lo:hi].tolist(), a["trained"][lo:hi].tolist()


def test_builder_masks_only_assistant_tokens_and_reports_bad_records(tmp_path):
    out, meta = build_tiny(tmp_path)
    assert meta["bad_records"] == {"unknown_role": 1, "empty_turn": 1}
    tok = ChatTokenizer.load(str(out / "tokenizer"))
    found = {}
    for i in range(2):
        ids, trained = conversation(out, "train", i)
        found[len(ids)] = (ids, trained)
    ids, trained = max(found.values(), key=lambda x: len(x[0]))  # the multi-turn one with a system prompt
    text_trained = tok.decode([t for t, m in zip(ids, trained) if m], skip_special_tokens=False)
    assert text_trained == "Hello!<|/assistant|>See you.<|/assistant|>"
    assert ids[0] == tok.special_id("system_start") and ids[-1] == tok.eot_id


def test_train_on_all_and_long_conversation_policies(tmp_path):
    _, meta = build_tiny(tmp_path, train_on_all=True)
    s = meta["splits"]["train"]
    assert s["trained_tokens"] == s["tokens"] - s["samples"]  # every token but the first of each is a target
    long = [{"conversations": [t for k in range(6) for t in ({"from": "human", "value": f"question {k}"},
                                                              {"from": "gpt", "value": f"answer number {k}"})]}]
    _, meta = build_tiny(tmp_path / "t", long, max_length=60, long="truncate")
    assert meta["splits"]["train"]["truncated"] == 1 and meta["splits"]["train"]["samples"] == 1
    out, meta = build_tiny(tmp_path / "s", long, max_length=60, long="split")
    assert meta["splits"]["train"]["split"] == 1 and meta["splits"]["train"]["samples"] > 1
    for i in range(meta["splits"]["train"]["samples"]):
        assert len(conversation(out, "train", i)[0]) <= 61


def test_strict_mode_stops_at_the_first_bad_record(tmp_path):
    with pytest.raises(ValueError, match="record 2"):
        build_tiny(tmp_path, strict=True)


def test_validation_conversations_from_their_own_file(tmp_path):
    train_file = write_records(tmp_path / "train", CONVERSATIONS)
    valid_file = write_records(tmp_path / "valid", [{"conversations": [{"from": "human", "value": "3+3?"},
                                                               {"from": "gpt", "value": "6"}]}])
    out = tmp_path / "built"
    build_main(["--train-file", train_file, "--valid-file", valid_file, "--output-dir", str(out), "--max-length", "64"])
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["splits"]["train"]["conversations"] == 2 and meta["splits"]["valid"]["conversations"] == 1
    assert meta["bad_records"] == {"unknown_role": 1, "empty_turn": 1} and meta["valid_bad_records"] == {}
    tok = ChatTokenizer.load(str(out / "tokenizer"))
    assert "3+3?" in tok.decode(conversation(out, "valid", 0)[0])
    with pytest.raises(SystemExit, match="^error: --train-split 0.9 conflicts with --valid-file"):
        build_main(["--input-file", train_file, "--valid-file", valid_file, "--output-dir", str(out),
                    "--train-split", "0.9"])


def test_no_validation_conversation_is_a_copy_of_a_training_one(tmp_path, capsys):
    """Generated tasks repeat problems: a copy in the validation split would score memorisation."""
    records = [{"conversations": [{"from": "human", "value": f"{a}+{a}?"}, {"from": "gpt", "value": str(2 * a)}]}
               for a in [1, 2] * 5 + [3, 4, 5, 6]]
    out, meta = build_tiny(tmp_path, records, train_split=0.5, max_length=64)
    tok = ChatTokenizer.load(str(out / "tokenizer"))
    texts = {split: [tok.decode(conversation(out, split, i)[0]) for i in range(meta["splits"][split]["samples"])]
             for split in ("train", "valid")}
    assert texts["valid"] and not set(texts["valid"]) & set(texts["train"])
    assert len(texts["train"]) == len(records) // 2  # the training split keeps its repeats
    assert meta["valid_training_copies"] == len(records) - len(texts["train"]) - len(texts["valid"]) > 0
    copies = meta["valid_training_copies"]
    assert f"valid: left out {copies} conversations that are also in the training split\n" in capsys.readouterr().out


def test_a_split_left_without_samples_fails(tmp_path):
    with pytest.raises(ValueError, match=r"chat.json: the train split has no samples \(1 conversations in all"):
        build_tiny(tmp_path, CONVERSATIONS[1:2], train_split=0.95)  # one conversation: it goes to validation
    with pytest.raises(ValueError, match="chat.json: the train split has no samples"):
        build_tiny(tmp_path, max_length=2)  # every sample cut to its prompt: nothing to train on
    assert not (tmp_path / "built").exists()


def test_a_run_without_a_validation_split_trains_to_its_end(tmp_path):
    from conftest import TINY_LM

    out, _ = build_tiny(tmp_path)  # train_split=1.0: no validation conversations
    train(compose_chat(*TINY_LM, f"data_paths=[{out}]", f"checkpoint_dir={tmp_path}", "run_name=r", "max_steps=1"))
    summary = json.loads(next(tmp_path.glob("*/r/summary.json")).read_text())
    assert summary["steps"] == 1 and summary["passes_per_act_step"] is None  # nothing to count it on


def test_label_at_t_is_the_token_at_t_plus_1(tmp_path):
    out, _ = build_tiny(tmp_path)
    ds = ChatDataset(str(out), "train", global_batch_size=2, seed=0)
    _, batch, _ = next(iter(ds))
    raw = {len(conversation(out, "train", i)[0]): conversation(out, "train", i) for i in range(2)}
    for row in range(2):
        labels, inputs = batch["labels"][row], batch["inputs"][row]
        n = int((inputs != ds.pad_id).sum())
        ids, trained = raw[n + 1]
        assert inputs[:n].tolist() == ids[:-1]
        for t in range(n):
            assert labels[t] == (ids[t + 1] if trained[t + 1] else IGNORE_LABEL_ID)
        assert (labels[n:] == IGNORE_LABEL_ID).all()


def test_packed_rows_keep_conversations_apart(tmp_path):
    out, _ = build_tiny(tmp_path)
    ds = ChatDataset(str(out), "train", global_batch_size=1, seed=0, pack=True)
    _, batch, _ = next(iter(ds))
    seg, pos = batch["segment_ids"][0], batch["position_ids"][0]
    assert set(seg.tolist()) == {0, 1, 2}  # both conversations in one row, then padding
    for s in (1, 2):
        assert pos[seg == s].tolist() == list(range(int((seg == s).sum())))  # positions restart
    last_of_first = int((seg == 1).nonzero().max())
    assert batch["labels"][0, last_of_first] == IGNORE_LABEL_ID  # no label crosses into the next conversation


@pytest.mark.parametrize("arch", ["trm_chat", "transformer_chat"])
def test_tiny_chat_training_lowers_validation_loss(synthetic_chat, tmp_path, arch):
    common = [f"arch={arch}", f"data_paths=[{synthetic_chat}]", f"checkpoint_dir={tmp_path}", "arch.hidden_size=32",
              "arch.num_heads=2", "global_batch_size=8", "lr=3e-3", "lr_warmup_steps=5", "logger.mode=disabled",
              "dataset.max_new_tokens=4", "epochs=50", "eval_interval=50"]
    before = train(compose_chat(*common, "max_steps=1", "run_name=a"))
    after = train(compose_chat(*common, "max_steps=40", "run_name=b"))
    assert after["test/loss"] < 0.85 * before["test/loss"]
    assert after["test/perplexity"] < before["test/perplexity"]
    run = next(Path(tmp_path).glob("*/b"))
    assert (run / "tokenizer" / "chat_tokenizer.json").exists()
    assert len((run / "samples.jsonl").read_text().splitlines()) == 3  # the configured prompts, answered


def test_grown_vocabulary_keeps_trained_rows(tmp_path):
    arch = dict(name="trm", causal=True, puzzle_emb_ndim=0, hidden_size=16, num_heads=2, L_layers=1, H_cycles=1,
                L_cycles=1, halt_max_steps=1, seq_len=8, forward_dtype="float32")
    old = build_model({**arch, "vocab_size": 10})
    save_checkpoint(str(tmp_path / "step_1.pt"), {"model": old.state_dict()})
    new = build_model({**arch, "vocab_size": 14})
    load_model_weights(new, str(tmp_path))
    for key in ("model.inner.embed_tokens.embedding_weight", "model.inner.lm_head.weight"):
        o, n = old.state_dict()[key], new.state_dict()[key]
        torch.testing.assert_close(n[:10], o)
        torch.testing.assert_close(n[10:], o.mean(0, keepdim=True).expand(4, -1))
    layer = "model.inner.L_level.layers.0.mlp.down_proj.weight"
    torch.testing.assert_close(new.state_dict()[layer], old.state_dict()[layer])


def test_sample_token_greedy_top_k_top_p():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]])
    assert sample_token(logits).item() == 1
    g = torch.Generator().manual_seed(0)
    assert {sample_token(logits, 1.0, top_k=1, generator=g).item() for _ in range(20)} == {1}
    assert {sample_token(logits, 1.0, top_p=0.1, generator=g).item() for _ in range(20)} == {1}
    assert {sample_token(logits, 1.0, top_k=2, generator=g).item() for _ in range(200)} == {1, 3}


def test_the_heldout_evaluator_uses_the_raw_weights_with_no_ema(chat_run, tmp_path, capsys):
    from evaluators.chat import main as heldout_main

    run = with_nan_ema(chat_run, tmp_path / "run")
    (tmp_path / "heldout.jsonl").write_text(json.dumps({"prompt": "What is 1 + 2?", "answer": "3"}) + "\n")
    args = [str(run), "--heldout", str(tmp_path / "heldout.jsonl"), "--max-new-tokens", "4"]
    with pytest.raises(SystemExit, match="^error: .*not usable .* holds NaN"):  # the EMA weights, by default
        heldout_main(args)
    heldout_main([*args, "--no-ema"])
    assert "exact-answer accuracy: " in capsys.readouterr().out


@pytest.mark.parametrize("heldout, options, message", [
    ('{"prompt": "What is 1 + 2?"}', [], "{heldout} line 1: expected an object with string 'prompt' and non-empty "
                                        "'answer'"),
    ("not json", [], "{heldout} line 1: not valid JSON (Expecting value)"),
    (None, [], "probe file {heldout} not found"),
    ('{"prompt": "What is 1 + 2?", "answer": "3"}', ["--max-new-tokens", "0"],
     "max_new_tokens must be a whole number >= 1, got 0"),
    ('{"prompt": "What is 1 + 2?", "answer": "3"}', [], "{run}: no such checkpoint file or run directory")])
def test_the_heldout_evaluator_refuses_bad_input_in_one_line(tmp_path, heldout, options, message):
    """python -m evaluators.chat: each mistake is one `error:` line (no traceback), the held-out file's before the
    model loads (the run here does not exist)."""
    from evaluators.chat import main as heldout_main

    path, run = tmp_path / "heldout.jsonl", tmp_path / "no-run"
    if heldout is not None:
        path.write_text(heldout + "\n")
    with pytest.raises(SystemExit) as exit_:
        heldout_main([str(run), "--heldout", str(path), *options])
    assert exit_.value.code == "error: " + message.format(heldout=path, run=run)
