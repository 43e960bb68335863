"""Training throughput of the paper's Sudoku TRM: against the official code, or against stock PyTorch layers.

    python benchmarks/train_throughput.py --official ../shared/reference/TinyRecursiveModels [--dtype auto]
        [--compile] [--cuda-graphs] [--configs attention,mlp_t] [--batch-size 32] [--steps 3] [--rounds 3]
    python benchmarks/train_throughput.py [--device auto] [--batch-size 64] [--steps 5] [--dtype auto]

One step = one ACT step (H_cycles x (L_cycles + 1) applications of the 2-layer network, gradient through
the last cycle) + backward + optimizer step (Adam-atan2, sign-SGD for the puzzle embedding).

--official PATH builds the official TinyRecursiveModels model (imported from PATH) with our weights, the same
batch, dtype, optimizer rule and compile setting, and times both in this process, interleaved in rounds so that
machine noise hits both alike. It prints s/step of each, the ratio, the achieved TFLOP/s of the recursion's
matmuls (counted from the shapes), that as a share of the matmul rate measured on the same shapes in this run,
and the peak memory a step allocates. --cuda-graphs (CUDA only) compiles both in torch.compile's
"reduce-overhead" mode, which replays each compiled graph as a CUDA graph. Without --official, the reference
applies torch.nn.TransformerEncoderLayer (post-norm, same width, heads and feed-forward parameter count) in the
same recursion.
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from models import build_model  # noqa: E402
from models.layers import swiglu_width  # noqa: E402
from utils.cli import exit_on_bad_input  # noqa: E402
from utils.device import resolve_dtype, select_device  # noqa: E402
from utils.official import import_official  # noqa: E402
from utils.optim import AdamAtan2, build_optimizers  # noqa: E402

PAPER = dict(name="trm", hidden_size=512, num_heads=8, expansion=4, L_layers=2, H_cycles=3, L_cycles=6,
             pos_encodings="rope", puzzle_emb_ndim=512, puzzle_emb_len=16, halt_max_steps=16,
             seq_len=81, vocab_size=11, num_puzzle_identifiers=1)
CONFIGS = {"attention": {}, "mlp_t": {"mlp_t": True, "pos_encodings": "none"}}
Step = Callable[[], None]


class ReferenceRecursion(nn.Module):
    """Stock nn.TransformerEncoderLayer stack in TRM's recursion (for timing only)."""

    def __init__(self, hidden: int, heads: int, layers: int, H: int, L: int, seq: int, vocab: int):
        super().__init__()
        ff = int(1.5 * swiglu_width(hidden, 4))  # same parameter count as the SwiGLU's three matrices
        self.embed = nn.Embedding(vocab, hidden)
        self.layers = nn.ModuleList(nn.TransformerEncoderLayer(hidden, heads, ff, dropout=0.0, batch_first=True)
                                    for _ in range(layers))
        self.head = nn.Linear(hidden, vocab, bias=False)
        self.H, self.L, self.seq = H, L, seq

    def level(self, h, inj):
        h = h + inj
        for layer in self.layers:
            h = layer(h)
        return h

    def forward(self, inputs):
        x = self.embed(inputs)
        z_H = z_L = torch.zeros_like(x)
        with torch.no_grad():
            for _ in range(self.H - 1):
                for _ in range(self.L):
                    z_L = self.level(z_L, z_H + x)
                z_H = self.level(z_H, z_L)
        for _ in range(self.L):
            z_L = self.level(z_L, z_H + x)
        return self.head(self.level(z_H, z_L))


def compiled(model: nn.Module, mode: str | None) -> nn.Module:
    """model, or torch.compile'd in `mode` ("default", or "reduce-overhead": CUDA graphs); None: eager."""
    return model if mode is None else torch.compile(model, mode=mode)


def detached_copy(carry):
    """The carry's tensors cloned, through nested dataclasses: a CUDA graph's outputs are overwritten by its next
    replay, so a carry that feeds the next step must not live in them."""
    if isinstance(carry, torch.Tensor):
        return carry.clone()
    if isinstance(carry, dict):
        return {k: detached_copy(v) for k, v in carry.items()}
    if dataclasses.is_dataclass(carry):
        return dataclasses.replace(carry, **{f.name: detached_copy(getattr(carry, f.name))
                                             for f in dataclasses.fields(carry) if f.init})
    return carry


def begin_step(mode: str | None) -> Callable:
    """Start a training step; returns what to do with the carry its forward returns: keep it, or under CUDA graphs
    (whose replays must be told where a step starts) copy it out of the graph's memory."""
    if mode != "reduce-overhead":
        return lambda carry: carry
    torch.compiler.cudagraph_mark_step_begin()
    return detached_copy


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(step: Step, steps: int, device: torch.device, warm_up: bool = True) -> float:
    """Seconds per step over `steps` steps."""
    if warm_up:
        step()  # allocations, kernels, compilation
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - start) / steps


def run_reference(args: argparse.Namespace, device: torch.device, dtype: str) -> None:
    """Ours against stock PyTorch layers (the benchmark without --official)."""
    B, S = args.batch_size or 64, PAPER["seq_len"]
    torch.manual_seed(0)
    batch = random_batch(B, S, device)
    ours, _ = our_step(PAPER, dtype, batch, args.compile_mode)

    ref = ReferenceRecursion(512, 8, 2, PAPER["H_cycles"], PAPER["L_cycles"], S + 16, 11).to(device)
    ref_opt = AdamAtan2(ref.parameters(), lr=1e-4, weight_decay=1.0)
    ref_fwd = compiled(ref, args.compile_mode)
    ref_inputs = torch.randint(1, 11, (B, S + 16), device=device)  # same length incl. the puzzle-embedding prefix
    ref_labels = torch.randint(0, 11, (B, S + 16), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

    def reference():
        begin_step(args.compile_mode)
        with autocast:
            logits = ref_fwd(ref_inputs)
        nn.functional.cross_entropy(logits.float().flatten(0, 1), ref_labels.flatten()).backward()
        ref_opt.step()
        ref_opt.zero_grad(set_to_none=True)

    t_ours, t_ref = timed(ours, args.steps, device), timed(reference, args.steps, device)
    print(f"{header(device)}, dtype {dtype}, batch {B}, seq {S}+16, {args.steps} timed steps"
          f"{f', compiled ({args.compile_mode})' if args.compile_mode else ''}")
    print(f"{'':28}{'s/step':>10}{'samples/s':>12}{'tokens/s':>12}")
    for label, t in (("TRM (ours)", t_ours), ("reference (nn.Transformer)", t_ref)):
        print(f"{label:28}{t:10.3f}{B / t:12.1f}{B * S / t:12.0f}")
    print(f"ratio ours/reference throughput: {t_ref / t_ours:.2f}x")


# ---------------------------------------------------------------------------------------------- vs the official code

def random_batch(B: int, S: int, device: torch.device) -> dict[str, torch.Tensor]:
    return {"inputs": torch.randint(1, 11, (B, S), dtype=torch.int32, device=device),
            "labels": torch.randint(2, 11, (B, S), dtype=torch.int32, device=device),
            "puzzle_identifiers": torch.zeros(B, dtype=torch.int32, device=device)}


def our_step(arch: dict, dtype: str, batch: dict[str, torch.Tensor], mode: str | None) -> tuple[Step, nn.Module]:
    B, device = len(batch["inputs"]), batch["inputs"].device
    model = build_model({**arch, "forward_dtype": dtype}, batch_size=B).to(device)
    optimizers, _ = build_optimizers(model, {"name": "adam_atan2"}, 1e-4, 1.0, 0.9, 0.95, 1e-4, 1.0)
    forward = compiled(model, mode)
    state = {"carry": model.initial_carry(batch)}

    def step() -> None:
        keep = begin_step(mode)
        carry, loss, _, _ = forward(state["carry"], batch)
        state["carry"] = keep(carry)
        (loss / B).backward()
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
    return step, model


def official_classes(path: str) -> tuple[type, type, type]:
    """(TRM class, ACTLossHead, sign-SGD optimizer) of the official code at `path`."""
    trm, losses, sparse = import_official(path, "models.recursive_reasoning.trm", "models.losses",
                                          "models.sparse_embedding")
    return (trm.TinyRecursiveReasoningModel_ACTV1, losses.ACTLossHead,
            sparse.CastedSparseEmbeddingSignSGD_Distributed)


def official_step(path: str, arch: dict, dtype: str, batch: dict[str, torch.Tensor], mode: str | None,
                  weights: dict[str, torch.Tensor]) -> Step:
    TRM, LossHead, SignSGD = official_classes(path)
    B, device = len(batch["inputs"]), batch["inputs"].device
    config = {k: v for k, v in arch.items() if k != "name"}
    config.update(batch_size=B, forward_dtype=dtype, H_layers=0, halt_exploration_prob=0.1)  # our defaults
    with torch.device(device):
        model = LossHead(TRM(config), loss_type="stablemax_cross_entropy")
    model.load_state_dict(weights)  # the same weights as ours (its parameter names are ours)
    emb = model.model.inner.puzzle_emb
    optimizers = [SignSGD(emb.buffers(), lr=1e-4, weight_decay=1.0, world_size=1),
                  AdamAtan2(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=1.0)]
    forward = compiled(model, mode)
    with torch.device(device):
        state = {"carry": model.initial_carry(batch)}

    def step() -> None:
        keep = begin_step(mode)
        carry, loss, _, _, _ = forward(return_keys=[], carry=state["carry"], batch=batch)
        state["carry"] = keep(carry)
        (loss / B).backward()
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
    return step


def recursion_matmuls(arch: dict, B: int) -> list[tuple[int, int, int, int, int]]:
    """The forward matmuls of one application of the network: (count, batch, M, K, N)."""
    D, S = arch["hidden_size"], arch["seq_len"] + arch["puzzle_emb_len"]
    inner = swiglu_width(D, arch["expansion"])
    shapes = [(1, 1, B * S, D, 2 * inner), (1, 1, B * S, inner, D)]  # SwiGLU
    if arch.get("mlp_t"):
        inner_t = swiglu_width(S, arch["expansion"])
        shapes += [(1, 1, B * D, S, 2 * inner_t), (1, 1, B * D, inner_t, S)]  # SwiGLU across the sequence
    else:
        hd = D // arch["num_heads"]
        shapes += [(1, 1, B * S, D, 3 * D), (1, 1, B * S, D, D),  # qkv, output projection
                   (2, B * arch["num_heads"], S, hd, S)]  # q k^T and (scores) v, as S x hd x S each
    return [(c * arch["L_layers"], b, m, k, n) for c, b, m, k, n in shapes]


def recursion_flops(arch: dict, B: int) -> float:
    """Matmul FLOPs of one training step's recursion: every application forward, the last H cycle's backward (2x)."""
    per_application = sum(2 * c * b * m * k * n for c, b, m, k, n in recursion_matmuls(arch, B))
    applications = arch["H_cycles"] * (arch["L_cycles"] + 1)
    with_grad = arch["L_cycles"] + 1
    return per_application * (applications + 2 * with_grad)


def matmul_rate(arch: dict, B: int, dtype: torch.dtype, device: torch.device, seconds: float = 1.0) -> float:
    """FLOP/s of the recursion's matmul shapes alone, run back to back (the ceiling for this dtype and device)."""
    work = []
    for count, b, m, k, n in recursion_matmuls(arch, B):
        a, w = torch.randn(b, m, k, dtype=dtype, device=device), torch.randn(b, k, n, dtype=dtype, device=device)
        work.append((count, a, w))
    flops = sum(2 * c * a.shape[0] * a.shape[1] * a.shape[2] * w.shape[2] for c, a, w in work)

    def once() -> None:
        for count, a, w in work:
            for _ in range(count):
                torch.bmm(a, w)
    once()
    sync(device)
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        once()
        n += 1
    sync(device)
    return flops * n / (time.perf_counter() - start)


def peak_step_memory(step: Step, device: torch.device) -> int:
    """Peak bytes allocated during one step above what was allocated before it."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(device) - before
    # CPU: replay the profiler's allocation events in time order
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    running = peak = 0
    for e in events:  # each allocation (+) and free (-) once, in the op that made it
        running += e.self_cpu_memory_usage
        peak = max(peak, running)
    return peak


def header(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return f"device: {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}"


def run_official(args: argparse.Namespace, device: torch.device, dtype: str) -> None:
    B = args.batch_size or (768 if device.type == "cuda" else 32)
    setting = f"compiled ({args.compile_mode}, both)" if args.compile_mode else "eager"
    print(f"{header(device)}, dtype {dtype}, batch {B}, {setting}; "
          f"{args.rounds} interleaved rounds of {args.steps} steps, median s/step")
    print(f"{'config':10}{'ours s/step':>12}{'official':>10}{'ours vs off':>12}{'ours TF/s':>10}{'off TF/s':>10}"
          f"{'matmul TF/s':>12}{'ours share':>11}{'off share':>10}{'ours MiB':>9}{'off MiB':>9}")
    for name in args.configs.split(","):
        arch = {**PAPER, **CONFIGS[name]}
        torch.manual_seed(0)
        batch = random_batch(B, arch["seq_len"], device)
        ours, model = our_step(arch, dtype, batch, args.compile_mode)
        theirs = official_step(args.official, arch, dtype, batch, args.compile_mode, model.state_dict())
        for step in (ours, theirs):  # warm-up (and compilation) outside the timed rounds
            step()
        mem = {"ours": peak_step_memory(ours, device), "official": peak_step_memory(theirs, device)}
        times: dict[str, list[float]] = {"ours": [], "official": []}
        for _ in range(args.rounds):
            for label, step in (("ours", ours), ("official", theirs)):
                times[label].append(timed(step, args.steps, device, warm_up=False))
        t_ours, t_off = statistics.median(times["ours"]), statistics.median(times["official"])
        flops = recursion_flops(arch, B)
        rate = matmul_rate(arch, B, getattr(torch, dtype), device)
        print(f"{name:10}{t_ours:12.3f}{t_off:10.3f}{t_off / t_ours:11.2f}x{flops / t_ours / 1e12:10.3f}"
              f"{flops / t_off / 1e12:10.3f}{rate / 1e12:12.3f}"
              f"{flops / t_ours / rate:11.0%}{flops / t_off / rate:10.0%}"
              f"{mem['ours'] / 2**20:9.0f}{mem['official'] / 2**20:9.0f}", flush=True)
        spread = {k: f"{min(v):.3f}-{max(v):.3f}" for k, v in times.items()}
        print(f"{'':10}spread over rounds: ours {spread['ours']} s, official {spread['official']} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto", help="auto: the device policy (bfloat16 where bf16 matmul is native)")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="default 64; with --official 32 on a CPU, 768 (the paper's) on a GPU")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (per round with --official); default 5 / 2")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--cuda-graphs", action="store_true",
                    help="CUDA only: compile in mode reduce-overhead (each compiled graph replayed as a CUDA graph)")
    ap.add_argument("--official", metavar="PATH", help="a clone of the official TinyRecursiveModels repository")
    ap.add_argument("--configs", default="attention,mlp_t", help="with --official: paper configs to time")
    ap.add_argument("--rounds", type=int, default=3, help="with --official: interleaved timing rounds")
    args = ap.parse_args()
    if any(n is not None and n < 1 for n in (args.batch_size, args.steps, args.rounds)):
        ap.error("--batch-size, --steps and --rounds must be >= 1")

    with exit_on_bad_input():
        device = select_device(args.device, "--device")
        if args.cuda_graphs and device.type != "cuda":
            ap.error(f"--cuda-graphs needs a CUDA device, not {device.type}")
        # torch.compile's mode for both models (None: eager)
        args.compile_mode = "reduce-overhead" if args.cuda_graphs else "default" if args.compile else None
        dtype = resolve_dtype(args.dtype, device, training=True)
        if args.official:
            args.steps = args.steps or 2
            run_official(args, device, dtype)
        else:
            args.steps = args.steps or 5
            run_reference(args, device, dtype)


if __name__ == "__main__":
    main()
