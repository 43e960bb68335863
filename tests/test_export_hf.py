"""Hugging Face export (utils/export_hf.py): a pre-norm transformer_chat run is a plain LlamaForCausalLM, other runs
load with their modeling file; the chat template gives our prompt tokens, the logits match ours within 1e-4 and
greedy generation gives our tokens; every export loads back with init_from=DIR with identical weights."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import FLOAT32, build_tiny, compose_chat
from models import build_model
from utils.checkpoint import HF_Q_HEAD, HF_WEIGHTS, init_from_run, load_trained_model, save_checkpoint
from utils.export_hf import main as export_main
from utils.sampling import SamplingParams, chat_stop_ids, final_outputs, generate_tokens
from utils.tokenizer import ChatTokenizer

transformers = pytest.importorskip("transformers")

CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 3?"},
                {"role": "assistant", "content": "2 + 3 = 5."}, {"role": "user", "content": "And <|user|> 4 + 4?"}]


def fake_run(tmp: Path, arch: dict, tokenizer_from: Path | None = None) -> Path:
    """A run directory holding an untrained model's checkpoint (as pretrain.py writes it) and a tokenizer."""
    torch.manual_seed(0)
    model = build_model(arch)
    run = tmp / "run"
    save_checkpoint(str(run / "step_1.pt"), {"model": model.state_dict(), "model_config": arch, "step": 1,
                                             "config": {}})
    if tokenizer_from is not None:
        shutil.copytree(tokenizer_from, run / "tokenizer")
    return run


def export(run: Path, out: Path) -> Path:
    assert export_main([str(run), "--output", str(out)]) == 0
    return out


def assert_loads_back(run: Path, out: Path) -> None:
    """init_from=DIR: a model of the run's architecture gets exactly the run's weights."""
    ours, checkpoint = load_trained_model(str(run), dtype="float32")
    torch.manual_seed(1)
    fresh = build_model(checkpoint["model_config"])
    assert any(not torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), ours.state_dict().values()))
    tokenizer = ChatTokenizer.load(str(run / "tokenizer")) if (run / "tokenizer").is_dir() else None
    init_from_run(fresh, str(out), tokenizer)
    for key, value in ours.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory) -> Path:
    """arch=transformer_chat as a user trains it (pre-norm by default), with grouped-query heads, a few steps."""
    from pretrain import train

    tmp = tmp_path_factory.mktemp("llama")
    records = [{"conversations": [{"from": "human", "value": f"What is {a} + {b}?"},
                                  {"from": "gpt", "value": f"{a} + {b} = {a + b}."}]}
               for a in range(5) for b in range(5)]
    data, _ = build_tiny(tmp, records, train_split=0.9)
    train(compose_chat(f"data_paths=[{data}]", f"checkpoint_dir={tmp}", "run_name=run", "arch=transformer_chat",
                       "arch.hidden_size=32", "arch.num_heads=4", "arch.num_key_value_heads=2", "global_batch_size=4",
                       "max_steps=4", "lr=1e-2", "lr_warmup_steps=0", "logger.mode=disabled",
                       "dataset.max_new_tokens=2", FLOAT32))
    return next(tmp.glob("*/run"))


def chat_run_of(kind: str, chat_run: Path, llama_run: Path, tmp: Path) -> Path:
    if kind == "trm_chat":
        return chat_run  # trained by pretrain.py
    if kind == "transformer_chat":
        return llama_run
    arch = dict(name="transformer", causal=True, pos_encodings="rope", puzzle_emb_ndim=0, hidden_size=32, num_heads=4,
                num_key_value_heads=2, L_layers=2, halt_max_steps=1, seq_len=64, vocab_size=264,
                forward_dtype="float32", loss={"loss_type": "softmax_cross_entropy"})
    return fake_run(tmp, arch, tokenizer_from=chat_run / "tokenizer")  # post-norm: not a Llama


@pytest.mark.parametrize("kind", ["trm_chat", "transformer_post_norm", "transformer_chat"])
def test_chat_runs_load_in_transformers_with_our_prompts_logits_and_greedy_tokens(kind, chat_run, llama_run, tmp_path):
    run = chat_run_of(kind, chat_run, llama_run, tmp_path)
    out = export(run, tmp_path / "hf")
    llama = kind == "transformer_chat"
    custom = {} if llama else {"trust_remote_code": True}
    hf, loading = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True, **custom)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    assert (type(hf) is transformers.LlamaForCausalLM) == llama
    if llama:  # the built-in class, every weight in its place, no code in the directory
        assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
        assert "auto_map" not in config and not list(out.glob("*.py"))
        assert not any(loading.values()), loading
    ours, _ = load_trained_model(str(run), dtype="float32")
    tokenizer = ChatTokenizer.load(str(run / "tokenizer"))

    for conversation in (CONVERSATION[:2], CONVERSATION[:1] + CONVERSATION[3:]):
        prompt = tokenizer.encode_chat([(m["role"], m["content"]) for m in conversation], add_generation_prompt=True)[0]
        ids = hf_tokenizer.apply_chat_template(conversation, add_generation_prompt=True, return_dict=True,
                                               return_tensors="pt")["input_ids"]
        if "<|user|>" in conversation[-1]["content"]:  # template text: a special token's text in a message is
            assert ids.shape[1] < len(prompt)  # that token, where our encoder keeps it as plain text
            continue
        assert ids[0].tolist() == prompt
        torch.testing.assert_close(hf(ids).logits, ours.model.predict(ids).float(), rtol=0, atol=1e-4)
        generated = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10)[0, len(prompt):].tolist()
        expected = generate_tokens(ours, [prompt], SamplingParams(max_new_tokens=10), chat_stop_ids(tokenizer))[0]
        assert [t for t in generated if t not in chat_stop_ids(tokenizer)] == expected
    assert_loads_back(run, out)


def test_init_from_refuses_weights_it_would_compute_otherwise_and_loads_a_llama_without_q_head(llama_run, tmp_path,
                                                                                                 capsys):
    out = export(llama_run, tmp_path / "hf")
    ours, checkpoint = load_trained_model(str(llama_run), dtype="float32")
    arch = checkpoint["model_config"]
    for source in (out, llama_run):  # an export and the run's checkpoint: pre-norm weights in post-norm blocks
        with pytest.raises(ValueError, match="pre-norm blocks, this model has post-norm ones"):
            init_from_run(build_model({**arch, "norm_position": "post"}), str(source))
    with pytest.raises(ValueError, match="rope_theta=10000.0, this model 500.0"):
        init_from_run(build_model({**arch, "rope_theta": 500.0}), str(out))
    weights = load_file(out / HF_WEIGHTS)
    weights["model.norm.weight"][3] = 2.0  # as a Llama fine-tuned elsewhere would have
    save_file(weights, out / HF_WEIGHTS)
    model = build_model(arch)
    with pytest.raises(ValueError, match="model.norm.weight is not all ones"):
        init_from_run(model, str(out))
    weights["model.norm.weight"][3] = 1.0
    save_file(weights, out / HF_WEIGHTS)
    (out / HF_Q_HEAD).unlink()  # as transformers' save_pretrained writes a Llama
    q_head = model.model.inner.q_head.weight.clone()
    init_from_run(model, str(out))
    assert "the ACT Q-head keeps its initial weights" in capsys.readouterr().out
    assert torch.equal(model.model.inner.q_head.weight, q_head)
    assert torch.equal(model.model.inner.lm_head.weight, ours.model.inner.lm_head.weight)


def test_a_puzzle_trm_exports_with_its_modeling_file(tmp_path):
    arch = dict(name="trm", hidden_size=32, num_heads=2, expansion=2, L_layers=1, H_cycles=2, L_cycles=2,
                halt_max_steps=2, puzzle_emb_ndim=32, puzzle_emb_len=1, num_puzzle_identifiers=3, seq_len=16,
                vocab_size=11, forward_dtype="float32", loss={"loss_type": "stablemax_cross_entropy"})
    run = fake_run(tmp_path, arch)
    with torch.no_grad():  # the puzzle embedding starts at zero: give it something to carry
        state = torch.load(run / "step_1.pt", weights_only=True)
        key = next(k for k in state["model"] if k.endswith("puzzle_emb.weights"))
        state["model"][key] = torch.randn_like(state["model"][key])
        torch.save(state, run / "step_1.pt")
    out = export(run, tmp_path / "hf")
    hf = transformers.AutoModel.from_pretrained(out, trust_remote_code=True)
    inputs = torch.randint(0, 11, (3, 16), generator=torch.Generator().manual_seed(0))
    identifiers = torch.tensor([0, 1, 2])
    ours, _ = load_trained_model(str(run), dtype="float32")
    expected = final_outputs(ours, {"inputs": inputs, "labels": inputs, "puzzle_identifiers": identifiers})["logits"]
    torch.testing.assert_close(hf(inputs, puzzle_identifiers=identifiers).logits, expected.float(), rtol=0, atol=1e-4)
    assert not torch.allclose(hf(inputs).logits, expected.float(), atol=1e-4)  # the identifiers matter
    assert_loads_back(run, out)


def test_export_errors_are_one_line(tmp_path):
    with pytest.raises(SystemExit) as exit_:
        export_main([str(tmp_path / "nope"), "--output", str(tmp_path / "out")])
    err = str(exit_.value.code)
    assert err.startswith("error: ") and "\n" not in err and not (tmp_path / "out").exists()
    arch = dict(name="trm", hidden_size=16, num_heads=2, expansion=2, L_layers=1, H_cycles=1, L_cycles=1,
                halt_max_steps=2, puzzle_emb_ndim=0, seq_len=4, vocab_size=5, num_puzzle_identifiers=1)
    (tmp_path / "notes.txt").write_text("keep")  # an --output that is a file
    with pytest.raises(SystemExit) as exit_:
        export_main([str(fake_run(tmp_path, arch)), "--output", str(tmp_path / "notes.txt")])
    err = str(exit_.value.code)
    assert err.startswith(f"error: {tmp_path / 'notes.txt'}: cannot create the directory") and "\n" not in err
    assert (tmp_path / "notes.txt").read_text() == "keep"


def test_an_export_over_one_of_the_other_kind_leaves_none_of_its_files(llama_run, tmp_path):
    out = export(llama_run, tmp_path / "hf")
    assert (out / "q_head.safetensors").is_file() and not (out / "modeling_trm.py").exists()
    arch = dict(name="trm", hidden_size=32, num_heads=2, expansion=2, L_layers=1, H_cycles=1, L_cycles=1,
                halt_max_steps=2, puzzle_emb_ndim=0, seq_len=8, vocab_size=11, forward_dtype="float32",
                loss={"loss_type": "stablemax_cross_entropy"})
    export(fake_run(tmp_path, arch), out)  # a TRM with its modeling file, over the Llama
    assert (out / "modeling_trm.py").is_file() and not (out / "q_head.safetensors").exists()
    assert transformers.AutoConfig.from_pretrained(out, trust_remote_code=True).model_type == "trm_act"
    export(llama_run, out)  # and back
    assert (out / "q_head.safetensors").is_file()
    assert not [name for name in ("modeling_trm.py", "trm.py", "layers.py") if (out / name).exists()]
    assert transformers.AutoConfig.from_pretrained(out).model_type == "llama"
