"""Generation speed: prefill and decode tokens/s of our causal transformer and causal TRM (KV cache on and
off), against Hugging Face transformers' LlamaForCausalLM with the same width, depth, heads and vocabulary
(random weights) generating with its own `generate` and cache. Everything runs in this process, on one
device, so the ratios compare like with like.

    python benchmarks/generation.py [--device auto] [--hidden 128] [--layers 2] [--prompt 64] [--new 256]

Prefill: one forward pass over the prompt, with the logits of its last position only (what generation
needs; both sides' generation computes only those). Decode: the time to produce `--new` tokens after the prompt
(greedy, no early stop), i.e. generate's total minus its prefill. The TRM applies its network
H_cycles x (L_cycles + 1) times per token, so it costs that many times the transformer's work.
Ours run with the cache in eager mode, with the cache and a compiled decoding step (`generate.py --compile`:
a static cache, so one graph serves every token; compiled during an untimed warm-up), and without the cache
(every token recomputes the whole sequence). Each timing is the best of --repeats; `spread` is how much slower
the slowest repeat of the whole generation was than the fastest (tiny models at batch 1 are noisy).
"""
from __future__ import annotations

import argparse
import inspect
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from models import build_model  # noqa: E402
from models.kv_cache import KVCache  # noqa: E402
from models.layers import swiglu_width  # noqa: E402
from utils.cli import exit_on_bad_input  # noqa: E402
from utils.device import select_device  # noqa: E402
from utils.sampling import SamplingParams, generate_tokens  # noqa: E402


def timings(fn: Callable[[], object], repeats: int, device: torch.device) -> list[float]:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def rates(prefill: Callable[[], object], generate: Callable[[], object], prompts: torch.Tensor, args,
          device: torch.device) -> tuple[float, float, float]:
    """(prefill tokens/s, decode tokens/s, spread of the whole generation over the repeats), after a warm-up."""
    B, P = prompts.shape
    prefill()
    generate()
    t_prefill = min(timings(prefill, args.repeats, device))
    t_total = timings(generate, args.repeats, device)
    return B * P / t_prefill, B * args.new / max(min(t_total) - t_prefill, 1e-9), max(t_total) / min(t_total) - 1


def ours(name: str, args, device: torch.device):
    arch = dict(name=name, hidden_size=args.hidden, num_heads=args.heads, expansion=4, L_layers=args.layers,
                causal=True, puzzle_emb_ndim=0, pos_encodings="rope", forward_dtype=args.dtype,
                seq_len=args.prompt + args.new, vocab_size=args.vocab, halt_max_steps=1)
    if name == "trm":
        arch.update(H_cycles=args.H_cycles, L_cycles=args.L_cycles)  # TRM's post-norm blocks
    else:
        arch.update(norm_position="pre")  # Llama's block order, as arch=transformer_chat
    return build_model(arch).to(device).eval()


def measure_ours(model, prompts: torch.Tensor, args, mode: str, device) -> tuple[float, float, float]:
    B, P = prompts.shape
    use_cache, compiled = mode != "no cache", mode == "cache, compiled"

    def prefill():
        cache = KVCache(B, P, device) if use_cache else None
        model.model.predict(prompts, None, None, cache, last_only=True)  # the next token's logits, as generation

    def generate():
        generate_tokens(model, prompts.tolist(), SamplingParams(max_new_tokens=args.new), set(), use_cache,
                        compiled=compiled)

    return rates(prefill, generate, prompts, args, device)


def measure_llama(prompts: torch.Tensor, args, device) -> tuple[float, float, float]:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=swiglu_width(args.hidden, 4),
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.heads, max_position_embeddings=args.prompt + args.new,
                         tie_word_embeddings=False, pad_token_id=0, bos_token_id=None, eos_token_id=None)
    torch.manual_seed(0)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    model = LlamaForCausalLM(config).to(device, dtype).eval()
    B, P = prompts.shape
    mask = torch.ones_like(prompts)

    # the next token's logits only, as its generate computes them (older versions: every position's)
    keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}

    @torch.no_grad()
    def prefill():
        model(input_ids=prompts, attention_mask=mask, use_cache=True, **keep)

    @torch.no_grad()
    def generate():
        model.generate(input_ids=prompts, attention_mask=mask, max_new_tokens=args.new, min_new_tokens=args.new,
                       do_sample=False, use_cache=True, pad_token_id=0)

    return rates(prefill, generate, prompts, args, device)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--H-cycles", dest="H_cycles", type=int, default=2)
    ap.add_argument("--L-cycles", dest="L_cycles", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=64, help="prompt tokens")
    ap.add_argument("--new", type=int, default=256, help="new tokens")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=3, help="best of this many timings")
    ap.add_argument("--skip-no-cache", action="store_true", help="leave out the (slow) recompute-everything rows")
    ap.add_argument("--skip-compiled", action="store_true", help="leave out the compiled decoding rows")
    args = ap.parse_args(argv)
    counts = (args.hidden, args.heads, args.layers, args.vocab, args.H_cycles, args.L_cycles, args.prompt, args.new,
              args.repeats, *args.batch_sizes)
    if min(counts) < 1:
        ap.error("--hidden, --heads, --layers, --vocab, --H-cycles, --L-cycles, --prompt, --new, --repeats and "
                 "--batch-sizes must be >= 1")
    with exit_on_bad_input():
        run(args, select_device(args.device, "--device"))


def run(args: argparse.Namespace, device: torch.device) -> None:
    torch.manual_seed(0)

    print(f"device {device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), "
          f"torch {torch.__version__}, {args.dtype}; width {args.hidden}, {args.layers} layers, {args.heads} heads, "
          f"vocab {args.vocab}; prompt {args.prompt} tokens, {args.new} new tokens; TRM H_cycles {args.H_cycles} x "
          f"(L_cycles {args.L_cycles} + 1) applications per token")
    rows = []
    for B in args.batch_sizes:
        prompts = torch.randint(1, args.vocab, (B, args.prompt), device=device)
        llama = measure_llama(prompts, args, device)
        reference = llama[:2]  # its prefill and decode rates
        rows.append(("HF Llama (generate, cache)", B, *llama, reference))
        for name, label in (("transformer", "our transformer"), ("trm", "our TRM")):
            model = ours(name, args, device)
            for mode in ("cache", "cache, compiled", "no cache"):
                if (mode == "no cache" and args.skip_no_cache) or (mode == "cache, compiled" and args.skip_compiled):
                    continue
                rows.append((f"{label} ({mode})", B, *measure_ours(model, prompts, args, mode, device), reference))

    print("\n| model | batch | prefill tok/s | decode tok/s | prefill vs Llama | decode vs Llama | spread |")
    print("|---|---|---|---|---|---|---|")
    for label, B, prefill, decode, spread, (ref_prefill, ref_decode) in rows:
        print(f"| {label} | {B} | {prefill:,.0f} | {decode:,.0f} | {prefill / ref_prefill:.2f}x | "
              f"{decode / ref_decode:.2f}x | {spread:.0%} |")
    for B in args.batch_sizes:
        by_label = {label: decode for label, b, _, decode, _, _ in rows if b == B}
        for mode in ("cache", "cache, compiled"):
            if "our TRM (no cache)" in by_label and f"our TRM ({mode})" in by_label:
                print(f"TRM decode speed-up from the cache ({mode}) at batch {B}, {args.new} new tokens: "
                      f"{by_label[f'our TRM ({mode})'] / by_label['our TRM (no cache)']:.1f}x")


if __name__ == "__main__":
    main()
