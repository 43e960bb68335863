"""Training throughput of the paper's Sudoku attention TRM, against stock PyTorch layers doing the same work.

    python benchmarks/train_throughput.py [--device auto] [--batch-size 64] [--steps 5] [--dtype auto]

One step = one ACT step (H_cycles x (L_cycles + 1) applications of the 2-layer network, gradient through
the last cycle) + backward + optimizer step. The reference applies torch.nn.TransformerEncoderLayer
(post-norm, same width, heads and feed-forward parameter count) in the same recursion, so the ratio
says how our layers compare to PyTorch's own at equal work, on this machine, in this run.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from models import build_model  # noqa: E402
from models.layers import swiglu_width  # noqa: E402
from utils.device import resolve_dtype, select_device  # noqa: E402
from utils.optim import AdamAtan2, build_optimizers  # noqa: E402

PAPER = dict(name="trm", hidden_size=512, num_heads=8, expansion=4, L_layers=2, H_cycles=3, L_cycles=6,
             pos_encodings="rope", puzzle_emb_ndim=512, puzzle_emb_len=16, halt_max_steps=16,
             seq_len=81, vocab_size=11, num_puzzle_identifiers=1)


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


def timed(step, steps: int, device: torch.device) -> float:
    step()  # warm-up (allocations, kernels, compilation)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto", help="auto: bfloat16 on CUDA, float32 elsewhere")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()

    device = select_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    torch.manual_seed(0)
    B, S = args.batch_size, PAPER["seq_len"]
    batch = {"inputs": torch.randint(1, 11, (B, S), dtype=torch.int32, device=device),
             "labels": torch.randint(2, 11, (B, S), dtype=torch.int32, device=device),
             "puzzle_identifiers": torch.zeros(B, dtype=torch.int32, device=device)}

    model = build_model({**PAPER, "forward_dtype": dtype}, batch_size=B).to(device)
    optimizers, _ = build_optimizers(model, {"name": "adam_atan2"}, 1e-4, 1.0, 0.9, 0.95, 1e-4, 1.0)
    forward = torch.compile(model) if args.compile else model
    carry = model.initial_carry(batch)

    def ours():
        nonlocal carry
        carry, loss, _, _ = forward(carry, batch)
        (loss / B).backward()
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)

    ref = ReferenceRecursion(512, 8, 2, PAPER["H_cycles"], PAPER["L_cycles"], S + 16, 11).to(device)
    ref_opt = AdamAtan2(ref.parameters(), lr=1e-4, weight_decay=1.0)
    ref_fwd = torch.compile(ref) if args.compile else ref
    ref_inputs = torch.randint(1, 11, (B, S + 16), device=device)  # same length incl. the puzzle-embedding prefix
    ref_labels = torch.randint(0, 11, (B, S + 16), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

    def reference():
        with autocast:
            logits = ref_fwd(ref_inputs)
        nn.functional.cross_entropy(logits.float().flatten(0, 1), ref_labels.flatten()).backward()
        ref_opt.step()
        ref_opt.zero_grad(set_to_none=True)

    t_ours, t_ref = timed(ours, args.steps, device), timed(reference, args.steps, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"device: {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}, dtype {dtype}, "
          f"batch {B}, seq {S}+16, {args.steps} timed steps{', compiled' if args.compile else ''}")
    print(f"{'':28}{'s/step':>10}{'samples/s':>12}{'tokens/s':>12}")
    for label, t in (("TRM (ours)", t_ours), ("reference (nn.Transformer)", t_ref)):
        print(f"{label:28}{t:10.3f}{B / t:12.1f}{B * S / t:12.0f}")
    print(f"ratio ours/reference throughput: {t_ref / t_ours:.2f}x")


if __name__ == "__main__":
    main()
