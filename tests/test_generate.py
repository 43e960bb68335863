"""Generation: the KV cache is exact for the transformer (post- and pre-norm) and the recursive TRM, sampling is seeded, stop tokens
and the context window are honoured, and generate.py's modes and error messages work as a user runs them."""
import functools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, generate
from models import build_model
from models.kv_cache import KVCache
from utils.sampling import (SamplingParams, cache_capacity, fit_conversation, generate_tokens, penalize_repetition,
                            stream_tokens)
from utils.tokenizer import ChatTokenizer

VOCAB, CONTEXT = 40, 48
ARCHS = {  # several H/L cycles and ACT steps > 1 for the TRM; GQA and learned positions covered too
    "trm": dict(name="trm", H_cycles=2, L_cycles=2, halt_max_steps=2),
    "trm_gqa_learned": dict(name="trm", H_cycles=3, L_cycles=2, halt_max_steps=2, num_key_value_heads=2,
                            pos_encodings="learned"),
    "transformer": dict(name="transformer", halt_max_steps=1),
    "transformer_pre_norm": dict(name="transformer", halt_max_steps=1, norm_position="pre", num_key_value_heads=2),
}


def causal_model(kind: str, dtype: str = "float32"):
    torch.manual_seed(0)
    arch = dict(hidden_size=32, num_heads=4, expansion=2, L_layers=2, causal=True, puzzle_emb_ndim=0,
                forward_dtype=dtype, seq_len=CONTEXT, vocab_size=VOCAB, **ARCHS[kind])
    return build_model(arch).eval()


PROMPT = torch.randint(0, VOCAB, (2, 30), generator=torch.Generator().manual_seed(1))


def cached_logits(act, x: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """Logits of every position of `x` through the cache: a 12-token prefill, then one token at a time."""
    parts = [act.predict(x[:, :12], torch.arange(12).expand(2, -1), None, cache)]
    parts += [act.predict(x[:, t:t + 1], torch.full((2, 1), t), None, cache) for t in range(12, x.shape[1])]
    return torch.cat(parts, 1)


class ForgetfulCache(KVCache):
    """A broken cache (it loses the values of the first cached position), to show the tests would see it."""

    def update(self, k, v):
        k, v = super().update(k, v)
        return k, torch.cat((torch.zeros_like(v[:, :, :1]), v[:, :, 1:]), 2) if self.length else v


def assert_cache_exact(kind: str, cache_type: type[KVCache] = KVCache) -> None:
    # float64: exactness is defined; round-off (~1e-14 here after 18 applications of the network) is far
    # below the tolerance on any CPU, and a wrong cache entry changes the logits by ~1e-2 or more
    act = causal_model(kind, "float64").model
    torch.testing.assert_close(cached_logits(act, PROMPT, cache_type(2, CONTEXT, "cpu")), act.predict(PROMPT),
                               rtol=0, atol=1e-9)


def assert_cache_within_float32_roundoff(kind: str, cache_type: type[KVCache] = KVCache) -> None:
    # float32: kernels sum in a shape- and CPU-dependent order, so the cached and full passes differ by
    # round-off that 18 applications amplify. The allowance is measured here, on the same shapes: the float32
    # error of the full and the prefix-only passes against float64, times 10.
    act32, act64 = causal_model(kind).model, causal_model(kind, "float64").model
    exact = act64.predict(PROMPT)
    roundoff = max((act32.predict(PROMPT).double() - exact).abs().max(),
                   (act32.predict(PROMPT[:, :12]).double() - exact[:, :12]).abs().max())
    cached = cached_logits(act32, PROMPT, cache_type(2, CONTEXT, "cpu")).double()
    torch.testing.assert_close(cached, exact, rtol=0, atol=10 * roundoff.item())


@pytest.mark.parametrize("kind", ARCHS)
def test_predict_gives_the_evaluation_logits_and_last_only_their_last_position(kind):
    """predict (fresh latents as broadcast views, the LM head after the last ACT step only) computes what the
    ACT model's evaluation steps do."""
    model = causal_model(kind)
    batch = {"inputs": PROMPT}
    carry = model.model.initial_carry(batch)
    with torch.no_grad():
        for _ in range(model.config.halt_max_steps):
            carry, outputs = model.model(carry, batch)
    full = model.model.predict(PROMPT)
    assert torch.equal(full, outputs["logits"])
    # (the head's matmul on one row may round differently from the same row of a bigger one)
    torch.testing.assert_close(model.model.predict(PROMPT, last_only=True), full[:, -1:])


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
@pytest.mark.parametrize("kind", ARCHS)
def test_cached_logits_match_full_recompute(kind, static):
    cache_type = functools.partial(KVCache, static=static)
    assert_cache_exact(kind, cache_type)
    assert_cache_within_float32_roundoff(kind, cache_type)


def test_a_static_cache_gives_the_dynamic_caches_logits_on_a_padded_batch():
    act = causal_model("trm_gqa_learned", "float64").model
    valid = torch.ones(2, 12, dtype=torch.bool)
    valid[1, :5] = False  # the second prompt is 7 tokens, left-padded
    positions = (valid.long().cumsum(-1) - 1).clamp_min(0)
    runs = []
    for static in (False, True):
        cache = KVCache(2, CONTEXT, "cpu", static=static)
        logits = [act.predict(PROMPT[:, :12], positions, valid, cache)]
        logits += [act.predict(PROMPT[:, t:t + 1], positions[:, -1:] + t - 11, None, cache) for t in range(12, 20)]
        runs.append(torch.cat(logits, 1))
    torch.testing.assert_close(runs[1], runs[0], rtol=0, atol=1e-9)


def test_compiled_decoding_gives_the_eager_tokens():
    # torch.compile of the TRM's decoding step (~20 s on a CPU): padded prompts, several steps; then rows that
    # finish early leave the batch (as the server's do), which recompiles once with a dynamic batch dimension
    model = causal_model("trm")
    prompts, params = [[1, 2, 3, 4, 5, 6, 7], [8], [9, 10, 11]], SamplingParams(max_new_tokens=12)
    assert generate_tokens(model, prompts, params, set(), compiled=True) == generate_tokens(model, prompts, params, set())
    per_row = [SamplingParams(max_new_tokens=n) for n in (12, 4, 8)]
    streams = [list(stream_tokens(model, prompts, per_row, set(), compiled=compiled)) for compiled in (False, True)]
    assert streams[1] == streams[0]
    assert [sum(t[row] is not None for t in streams[0]) for row in range(3)] == [12, 4, 8]


def test_a_compiled_decoding_step_sees_at_most_two_cache_capacities():
    """Its graph is fixed by the static cache's capacity: the context, or twice it (the most a batch can span)."""
    context = 48
    assert {cache_capacity(n, context, compiled=True) for n in range(2, 2 * context + 1)} == {context, 2 * context}
    assert cache_capacity(30, context, compiled=False) == 30  # a dynamic cache: what the batch spans


@pytest.mark.parametrize("check", [assert_cache_exact, assert_cache_within_float32_roundoff])
def test_a_broken_cache_fails_the_cache_checks(check):
    with pytest.raises(AssertionError, match="Tensor-likes are not close"):
        check("trm_gqa_learned", ForgetfulCache)


@pytest.mark.parametrize("kind", ARCHS)
def test_greedy_generation_is_the_same_with_and_without_cache(kind):
    model = causal_model(kind)
    prompts = [[1, 2, 3, 4, 5], [6, 7]]
    params = SamplingParams(max_new_tokens=25)
    cached = generate_tokens(model, prompts, params, stop_ids=set(), use_cache=True)
    assert cached == generate_tokens(model, prompts, params, stop_ids=set(), use_cache=False)
    assert [len(t) for t in cached] == [25, 25]


def test_a_padded_batch_generates_what_each_prompt_generates_alone():
    model = causal_model("trm")
    prompts = [[1, 2, 3, 4, 5, 6, 7], [8], [9, 10, 11]]
    params = SamplingParams(max_new_tokens=12)
    batched = generate_tokens(model, prompts, params, stop_ids=set())
    assert batched == [generate_tokens(model, [p], params, stop_ids=set())[0] for p in prompts]


def test_per_prompt_settings_give_each_prompt_what_it_gets_alone_and_rows_can_be_finished_early():
    model = causal_model("trm")
    prompts = [[1, 2, 3, 4, 5, 6, 7], [8], [9, 10, 11]]
    params = [SamplingParams(1.0, 0, 0.9, 1.0, 9, seed=3), SamplingParams(max_new_tokens=5),
              SamplingParams(0.8, 5, 1.0, 1.3, 12, seed=4)]
    alone = [generate_tokens(model, [p], q, stop_ids=set())[0] for p, q in zip(prompts, params)]
    assert [len(a) for a in alone] == [9, 5, 12]
    steps = list(stream_tokens(model, prompts, params, stop_ids=set()))
    assert [[s[row] for s in steps if s[row] is not None] for row in range(3)] == alone
    finished = list(stream_tokens(model, prompts, params, set(), rows_done=lambda: [2]))  # row 2 is gone at once
    assert [s[2] for s in finished] == [None] * len(finished) and len(finished) == 9
    assert [s[0] for s in finished] == alone[0]


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["eager", "compiled"])
def test_a_long_prompt_in_the_batch_does_not_shorten_a_short_prompts_answer(compiled):
    """Each prompt has its own room in the context (the context less its own length): the batch's longest prompt
    capped every row's answer (a short request served next to a long one stopped early, finish_reason length)."""
    model = causal_model("trm")
    long, short, full = ([1 + i % 30 for i in range(n)] for n in (40, 3, CONTEXT))
    greedy, sampled = SamplingParams(max_new_tokens=20), SamplingParams(0.9, 5, 1.0, 1.0, 20, seed=3)
    alone = {(len(p), q.temperature): generate_tokens(model, [p], q, set(), compiled=compiled)[0]
             for p in (long, short) for q in (greedy, sampled)}
    assert len(alone[40, 0.0]) == CONTEXT - 40 and len(alone[3, 0.0]) == len(alone[3, 0.9]) == 20
    assert generate_tokens(model, [long, short], greedy, set(), compiled=compiled) == [alone[40, 0.0], alone[3, 0.0]]
    steps = list(stream_tokens(model, [long, short], [greedy, sampled], set(), compiled=compiled))
    assert [[s[row] for s in steps if s[row] is not None] for row in range(2)] == [alone[40, 0.0], alone[3, 0.9]]
    if not compiled:
        assert generate_tokens(model, [long, short], greedy, set(), use_cache=False) == [alone[40, 0.0], alone[3, 0.0]]
        assert generate_tokens(model, [full, short], greedy, set()) == [[], alone[3, 0.0]]  # no room: nothing


def test_sampling_is_reproducible_for_a_seed():
    model = causal_model("trm")
    sample = lambda seed: generate_tokens(model, [[1, 2, 3]], SamplingParams(1.0, 20, 0.95, 1.2, 30, seed), set())[0]  # noqa: E731
    assert sample(3) == sample(3)
    assert sample(3) != sample(4)


def test_generation_stops_at_a_stop_token():
    model = causal_model("transformer")
    free = generate_tokens(model, [[1, 2, 3]], SamplingParams(max_new_tokens=20), stop_ids=set())[0]
    stop = next(t for i, t in enumerate(free) if i > 0 and t not in free[:i])  # a token first produced later
    stopped = generate_tokens(model, [[1, 2, 3]], SamplingParams(max_new_tokens=20), stop_ids={stop})[0]
    assert stopped == free[:free.index(stop)]


def test_generation_ends_at_the_context_window():
    model = causal_model("transformer")
    out = generate_tokens(model, [[1 + i % 30 for i in range(40)]], SamplingParams(max_new_tokens=100), set())[0]
    assert len(out) == CONTEXT - 40


def test_bad_prompts_are_refused():
    model = causal_model("transformer")
    with pytest.raises(ValueError, match="empty prompt"):
        list(stream_tokens(model, [[]], SamplingParams(), set()))
    with pytest.raises(ValueError, match="context is 48 tokens"):
        list(stream_tokens(model, [[1] * 49], SamplingParams(), set()))
    with pytest.raises(ValueError, match="token id 40 is outside the model's vocabulary of 40"):
        list(stream_tokens(model, [[1, 40]], SamplingParams(), set()))


def test_repetition_penalty_lowers_seen_tokens_only():
    logits = torch.tensor([[2.0, -2.0, 1.0]])
    seen = torch.tensor([[True, True, False]])
    assert penalize_repetition(logits, seen, 2.0).tolist() == [[1.0, -4.0, 1.0]]


def test_the_repetition_penalty_counts_generated_tokens_too():
    """Greedy generation with a penalty is the step-by-step reference: each next token from the logits of the
    whole sequence so far, penalised for every token in it (the prompt's and the generated ones)."""
    model = causal_model("transformer")
    prompt, penalty = [3, 5, 3, 7], 3.0
    sequence = list(prompt)
    with torch.no_grad():
        for _ in range(12):
            logits = model.model.predict(torch.tensor([sequence]))[:, -1]
            seen = torch.zeros(1, VOCAB, dtype=torch.bool)
            seen[0, sequence] = True
            sequence.append(int(penalize_repetition(logits, seen, penalty).argmax()))
    params = SamplingParams(max_new_tokens=12, repetition_penalty=penalty)
    assert generate_tokens(model, [prompt], params, set())[0] == sequence[len(prompt):]
    assert generate_tokens(model, [prompt], SamplingParams(max_new_tokens=12), set())[0] != sequence[len(prompt):]


def test_context_trimming_drops_oldest_turns_and_keeps_the_system_prompt():
    tok = ChatTokenizer.byte_level()
    turns = [("system", "Be brief."), ("user", "a" * 30), ("assistant", "b" * 30), ("user", "c" * 30),
             ("assistant", "d" * 30), ("user", "What now?")]
    ids, dropped = fit_conversation(tok, turns, context=120, max_new_tokens=20)
    assert dropped == 2
    assert ids == tok.encode_chat([turns[0]] + turns[3:], add_generation_prompt=True)[0]
    assert len(ids) + 20 <= 120
    with pytest.raises(ValueError, match="context is 30 tokens"):
        fit_conversation(tok, [("user", "x" * 40)], context=30, max_new_tokens=5)


# ---------------------------------------------------------------- generate.py as users run it

def test_the_script_runs_as_a_program_with_an_interactive_session_on_stdin(chat_run):
    result = subprocess.run([sys.executable, "generate.py", "--checkpoint", str(chat_run), "--interactive",
                             "--max-new-tokens", "4"], cwd=ROOT, input="Hi\n/quit\n", capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("model> ") == 1
    missing = subprocess.run([sys.executable, "generate.py", "--checkpoint", str(chat_run / "nope"), "--prompt", "x"],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert missing.returncode == 1 and missing.stderr.startswith("error: ")


def test_prompt_mode_is_seeded_and_matches_file_mode(chat_run, tmp_path):
    sampling = ["--temperature", "1.0", "--top-k", "50", "--seed", "3", "--max-new-tokens", "8"]
    runs = [generate("--checkpoint", str(chat_run), "--prompt", "What is 2 + 3?", *sampling) for _ in range(2)]
    assert runs[0].returncode == 0, runs[0].stderr
    assert runs[0].stdout == runs[1].stdout and len(runs[0].stdout) > 1
    (tmp_path / "in.jsonl").write_text(json.dumps({"prompt": "What is 2 + 3?"}) + "\n")
    result = generate("--checkpoint", str(chat_run), "--input-file", str(tmp_path / "in.jsonl"), "--output-file",
                      str(tmp_path / "out.jsonl"), *sampling)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "out.jsonl").read_text())["response"] == runs[0].stdout[:-1]


def test_file_mode_answers_in_order_and_batching_changes_nothing(chat_run, tmp_path):
    prompts = [{"prompt": f"What is {i} + 1?"} for i in range(5)] + [{"messages": [{"role": "user", "content": "Hi"}]}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    outputs = []
    for batch in ("4", "1"):
        out = tmp_path / f"out{batch}.jsonl"
        result = generate("--checkpoint", str(chat_run), "--input-file", str(tmp_path / "in.jsonl"), "--output-file",
                          str(out), "--batch-size", batch, "--max-new-tokens", "10", "--repetition-penalty", "1.3")
        assert result.returncode == 0, result.stderr
        outputs.append([json.loads(line) for line in out.read_text().splitlines()])
    assert [{k: v for k, v in o.items() if k != "response"} for o in outputs[0]] == prompts  # same order
    assert outputs[0] == outputs[1]


def test_interactive_session_through_stdin(chat_run):
    session = "/temp 0.7\n/topk 5\n/params\nWhat is 1 + 1?\n/system Answer briefly.\nAnd 2 + 2?\n/reset\n/bogus\n/quit\n"
    result = generate("--checkpoint", str(chat_run), "--interactive", "--max-new-tokens", "6", stdin=session)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "temperature = 0.7" in out and "top_k = 5" in out
    assert "temperature = 0.7, top_k = 5, top_p = 1.0" in out  # /params
    assert out.count("model> ") == 2
    assert "system prompt: 'Answer briefly.'" in out and "conversation cleared" in out
    assert "unknown command /bogus" in out


def test_without_a_mode_a_language_model_chats_and_a_puzzle_model_asks_for_a_puzzle(chat_run, sudoku_run):
    result = generate("--checkpoint", str(chat_run), "--max-new-tokens", "4", stdin="Hi\n/quit\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("chat with ") and result.stdout.count("model> ") == 1
    result = generate("--checkpoint", str(sudoku_run))
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("error: ") and "pass --puzzle" in result.stderr


def test_num_samples_draws_one_answer_per_seed(chat_run, tmp_path):
    sampling = ["--temperature", "1.0", "--max-new-tokens", "8"]
    single = [generate("--checkpoint", str(chat_run), "--prompt", "What is 2 + 3?", "--seed", seed, *sampling).stdout
              for seed in ("3", "4")]
    result = generate("--checkpoint", str(chat_run), "--prompt", "What is 2 + 3?", "--seed", "3", "--num-samples", "2",
                      *sampling)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"--- sample 1/2 (seed 3) ---\n{single[0]}--- sample 2/2 (seed 4) ---\n{single[1]}"
    (tmp_path / "in.jsonl").write_text(json.dumps({"prompt": "What is 2 + 3?"}) + "\n")
    result = generate("--checkpoint", str(chat_run), "--input-file", str(tmp_path / "in.jsonl"), "--output-file",
                      str(tmp_path / "out.jsonl"), "--seed", "3", "--num-samples", "2", *sampling)
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "out.jsonl").read_text())
    assert record == {"prompt": "What is 2 + 3?", "responses": [single[0][:-1], single[1][:-1]]}


def test_num_samples_is_refused_with_greedy_decoding(capsys):
    import generate as cli

    with pytest.raises(SystemExit) as exit:
        cli.parse_args(["--checkpoint", "run", "--prompt", "Hi", "--num-samples", "3"])
    assert exit.value.code == 2 and "would give 3 identical answers" in capsys.readouterr().err


def test_a_port_out_of_range_is_refused_before_loading_the_run(capsys):
    import generate as cli

    with pytest.raises(SystemExit) as exit:
        cli.parse_args(["--checkpoint", "run", "--serve", "--port", "70000"])
    assert exit.value.code == 2 and "--port must be in 0..65535 (0: a free one), got 70000" in capsys.readouterr().err


def test_an_output_file_that_is_a_directory_is_refused_before_loading_the_run(tmp_path, capsys):
    import generate as cli

    with pytest.raises(SystemExit) as exit:
        cli.parse_args(["--checkpoint", "run", "--evaluate", "data", "--output-file", str(tmp_path)])
    assert exit.value.code == 2 and f"--output-file {tmp_path}: a directory, not a file name" in capsys.readouterr().err


def test_models_lists_the_runs_checkpoints_and_model_switches_between_them(chat_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(chat_run, run)
    earlier = torch.load(run / "step_3.pt", weights_only=True)
    earlier["step"] = 1
    torch.save(earlier, run / "step_1.pt")
    session = "/models\n/model 1\n/models\n/model step_7\n/model best\n/model 1\n/model latest\nHi\n/quit\n"
    result = generate("--checkpoint", str(run), "--max-new-tokens", "2", stdin=session)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    # the run evaluated at its end (step 3), its only evaluation: best and final are both step 3
    assert "step_1.pt\nstep_3.pt  (best, final, loaded)\n" in out
    assert "step_1.pt  (loaded)\nstep_3.pt  (best, final)\n" in out
    assert out.count(f"loaded {run}/step_1.pt (step 1)") == 2 and out.count(f"loaded {run}/step_3.pt (step 3)") == 2
    assert f"error: {run}/step_7: no such checkpoint; {run} holds step_1.pt, step_3.pt" in out
    assert out.count("model> ") == 1


def test_generate_takes_the_best_and_final_names_of_a_run(chat_run):
    for name in ("best", "final"):
        result = generate("--checkpoint", f"{chat_run}/{name}", "--prompt", "What is 2 + 3?", "--max-new-tokens", "4")
        assert result.returncode == 0, result.stderr
        assert result.stdout == generate("--checkpoint", f"{chat_run}/step_3.pt", "--prompt", "What is 2 + 3?",
                                         "--max-new-tokens", "4").stdout


@pytest.mark.parametrize("case", ["missing", "corrupt", "tokenizer", "tokenizer_file", "empty", "too_long", "device"])
def test_bad_input_is_a_one_line_error(chat_run, tmp_path, case):
    args = ["--checkpoint", str(chat_run), "--prompt", "hello"]
    if case == "missing":
        args[1] = str(tmp_path / "nope")
    elif case == "corrupt":
        (tmp_path / "step_1.pt").write_bytes(b"not a checkpoint")
        args[1] = str(tmp_path / "step_1.pt")
    elif case == "tokenizer":
        big = ChatTokenizer.train_bpe(["the quick brown fox jumps over the lazy dog"] * 50, vocab_size=300)
        big.save(str(tmp_path / "tok"))
        args += ["--tokenizer", str(tmp_path / "tok")]
    elif case == "tokenizer_file":  # a tokenizer.json, not the directory training saves
        (tmp_path / "tokenizer.json").write_text("{}")
        args += ["--tokenizer", str(tmp_path / "tokenizer.json")]
    elif case == "empty":
        args[3] = "   "
    elif case == "device":
        args += ["--device", "gpu"]
    else:
        args[3] = "x" * 100
    result = generate(*args)
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr
    expected = {"missing": "no such checkpoint", "tokenizer": "vocabulary of",
                "corrupt": "step_1.pt: cannot load: not a checkpoint (torch.save writes a zip archive; this is not one)",
                "tokenizer_file": "tokenizer.json: not a tokenizer directory saved by training",
                "empty": "empty prompt", "too_long": "context is 64 tokens",
                "device": "--device gpu: not a device (auto, cpu, cuda, cuda:N or mps)"}[case]
    assert expected in result.stderr


@pytest.fixture(scope="module")
def sudoku_run(sudoku_dir, tmp_path_factory) -> Path:
    from conftest import compose
    from pretrain import train

    tmp = tmp_path_factory.mktemp("sudoku-run")
    train(compose(f"data_paths=[{sudoku_dir}]", f"checkpoint_dir={tmp}", "run_name=run", "arch.hidden_size=32",
                  "arch.halt_max_steps=3", "global_batch_size=16", "max_steps=2", "logger.mode=disabled"))
    return next(tmp.glob("*/run"))


PUZZLE = "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79"


def test_puzzle_mode_prints_every_act_step(sudoku_run, tmp_path):
    (tmp_path / "puzzle.txt").write_text("\n".join(PUZZLE[i:i + 9] for i in range(0, 81, 9)) + "\n")
    result = generate("--checkpoint", str(sudoku_run), "--puzzle", str(tmp_path / "puzzle.txt"))
    assert result.returncode == 0, result.stderr
    for step in (1, 2, 3):
        assert f"ACT step {step}: halting confidence " in result.stdout
    assert "ACT step 4" not in result.stdout
    assert result.stdout.rstrip().endswith(("valid solution", "not a valid solution"))


def test_evaluate_scores_every_act_step_and_the_halting_head(sudoku_run, sudoku_dir, tmp_path):
    """--evaluate with more ACT steps than training: the scores match a step-by-step recomputation."""
    import numpy as np

    from utils.checkpoint import load_trained_model

    out = tmp_path / "scores.json"
    result = generate("--checkpoint", str(sudoku_run), "--evaluate", sudoku_dir, "--act-steps", "5",
                      "--output-file", str(out))
    assert result.returncode == 0, result.stderr
    scores = json.loads(out.read_text())[sudoku_dir]

    model, _ = load_trained_model(str(sudoku_run), torch.device("cpu"), dtype="float32")
    inputs = torch.from_numpy(np.load(Path(sudoku_dir) / "test" / "all__inputs.npy")).long()
    labels = torch.from_numpy(np.load(Path(sudoku_dir) / "test" / "all__labels.npy")).long()
    batch = {"inputs": inputs, "labels": labels, "puzzle_identifiers": torch.zeros(len(inputs), dtype=torch.long)}
    model.config.halt_max_steps = 5
    model.eval()
    carry, correct, halts = model.initial_carry(batch), [], []
    with torch.no_grad():
        for _ in range(5):
            carry, _, _, outputs = model(carry, batch)
            correct.append((outputs["logits"].argmax(-1) == labels).all(-1))
            halts.append(outputs["q_halt_logits"] > 0)
    assert carry.halted.all()  # the fifth step ends the budget
    for k in range(5):
        assert scores[f"exact_accuracy@step{k + 1}"] == pytest.approx(correct[k].float().mean().item())
    halts[-1] = torch.ones_like(halts[-1])
    first = torch.stack(halts).int().argmax(0)  # the first step at which the head says stop
    assert scores["halt_step"] == pytest.approx((first + 1).float().mean().item())
    at_halt = torch.stack(correct).gather(0, first[None])[0]
    assert scores["halt_exact_accuracy"] == pytest.approx(at_halt.float().mean().item())
    assert "after 5 ACT steps" in result.stdout


def test_evaluate_refuses_a_dataset_of_another_shape(sudoku_run, tmp_path):
    from dataset.build_maze_dataset import MazeBuildConfig, build

    build(MazeBuildConfig(output_dir=str(tmp_path / "maze"), num_train=2, num_test=1, min_path_length=30, seed=0))
    result = generate("--checkpoint", str(sudoku_run), "--evaluate", str(tmp_path / "maze"))
    assert result.returncode == 1 and "do not fit this model" in result.stderr, result.stderr


@pytest.mark.parametrize("puzzle, message", [(PUZZLE[:80], "80 characters, expected 81"),
                                             (PUZZLE[:80] + "x", "invalid character 'x' at position 81")])
def test_malformed_puzzle_is_a_one_line_error(sudoku_run, puzzle, message):
    result = generate("--checkpoint", str(sudoku_run), "--puzzle", puzzle)
    assert result.returncode == 1
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_puzzle_mode_reads_a_maze_file(tmp_path):
    import numpy as np

    from conftest import compose
    from dataset.build_maze_dataset import MazeBuildConfig, build
    from pretrain import train
    from tasks.maze import decode_maze

    build(MazeBuildConfig(output_dir=str(tmp_path / "maze"), num_train=4, num_test=2, min_path_length=30, seed=0,
                          augment=False, quiet=True))
    train(compose("dataset=puzzle", f"data_paths=[{tmp_path / 'maze'}]", f"checkpoint_dir={tmp_path}", "run_name=run",
                  "arch.hidden_size=16", "arch.halt_max_steps=2", "global_batch_size=2", "max_steps=1",
                  "logger.mode=disabled"))
    maze = decode_maze(np.load(tmp_path / "maze" / "test" / "all__inputs.npy")[0])
    (tmp_path / "maze.txt").write_text("\n".join(maze[i:i + 30] for i in range(0, 900, 30)) + "\n")
    result = generate("--checkpoint", str(next(tmp_path.glob("*/run"))), "--puzzle", str(tmp_path / "maze.txt"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("maze:\n" + "\n".join(maze[i:i + 30] for i in range(0, 900, 30)))
    assert "ACT step 2: halting confidence " in result.stdout and "ACT step 3" not in result.stdout


def test_arc_task_on_a_sudoku_run_is_a_clear_error(sudoku_run, tmp_path):
    (tmp_path / "task.json").write_text(json.dumps({"train": [{"input": [[1]], "output": [[2]]}], "test": [{"input": [[1]]}]}))
    result = generate("--checkpoint", str(sudoku_run), "--arc-task", str(tmp_path / "task.json"))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip() == ("error: this run's task is sudoku: --arc-task needs a run trained on ARC (Sudoku and "
                                     "maze runs share one puzzle identifier and need no fitting: use --puzzle)")
