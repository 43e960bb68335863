"""Several processes, one training job: torchrun's process group and the few collectives the trainer needs.

Started by `torchrun --nproc-per-node N pretrain.py ...`, every process runs the same loop on its slice of
each global batch (rows [rank * local, (rank + 1) * local)). Gradients are summed across ranks: each rank's
loss is already divided by the *global* batch size, so the sum is the gradient of the whole batch, as in a
single process. Without torchrun (WORLD_SIZE unset or 1) everything here is a no-op.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable

import torch
import torch.distributed as dist

from utils.device import select_device


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the only one that logs, prints and writes files."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def rank_device(preference: str, local_rank: int) -> torch.device:
    """This process's device under torchrun: the GPU of its local rank with CUDA, else the CPU."""
    device = select_device(preference)
    if device.type == "cuda":
        visible = torch.cuda.device_count()
        if local_rank >= visible:
            raise ValueError(f"LOCAL_RANK={local_rank} but this node has {visible} visible CUDA device(s): start at "
                             f"most {visible} processes per node (torchrun --nproc-per-node {visible})")
        return torch.device("cuda", local_rank)  # one GPU per local rank
    if device.type != "cpu":
        raise ValueError(f"device={preference}: several processes (torchrun) need CUDA or the CPU, not {device.type}")
    return device


def process_group_backend(device: torch.device) -> str:
    """NCCL for CUDA tensors; with it Gloo, so that a collective on a CPU tensor (a pickled object, a host-side
    count) still has a backend instead of failing on a GPU run only."""
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


def init_distributed(device_preference: str = "auto") -> tuple[Dist, torch.device]:
    """Join torchrun's process group (NCCL on CUDA, Gloo on CPU) and pick this process's device: with CUDA,
    the GPU of its local rank. Returns (Dist(0, 1, 0), device) when not started by torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Dist(), select_device(device_preference)
    d = Dist(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    device = rank_device(device_preference, d.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before any collective: NCCL and object collectives use the current GPU
    if not dist.is_initialized():
        dist.init_process_group(process_group_backend(device), device_id=device if device.type == "cuda" else None)
    return d, device


def leave_together(d: Dist) -> None:
    """At the end of a run, before shutdown: every rank says, through the rendezvous store (a connection of its own,
    served by torchrun's agent), that its collectives are done, and waits until all have. A Gloo rank that closes
    its connections while another still reads the last collective's message makes that process abort ("terminate
    called without an active exception"); a barrier cannot prevent it, being such a collective itself."""
    if d.enabled and dist.is_initialized():
        store = dist.distributed_c10d._get_default_store()
        store.set(f"leave/{d.rank}", "done")
        store.wait([f"leave/{r}" for r in range(d.world_size)])


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The elementwise sum of `t` over every rank (`t` itself when alone)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def reduce_sums(sums: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A dict of scalar sums (e.g. metric sums) summed over ranks in one collective."""
    if not sums:
        return sums
    keys = sorted(sums)
    values = all_reduce_sum(torch.stack([sums[k].float() for k in keys]))
    return dict(zip(keys, values))


def sum_gradients(params: list[torch.nn.Parameter]) -> None:
    """Sum the gradients over ranks in place, flattened into one buffer (a single collective per step)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = all_reduce_sum(torch.cat([g.reshape(-1) for g in grads]))
    for g, chunk in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(chunk.view_as(g))


def broadcast_object(obj: Any) -> Any:
    """Rank 0's value of `obj` on every rank (e.g. the run directory, named from the clock)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(timeout: timedelta | None = None) -> None:
    """Every rank waits for the others. `timeout`: a longer wait than the process group's (NCCL's is 10 minutes),
    e.g. while rank 0 builds a dataset; torchrun still stops every rank at once if rank 0 fails meanwhile."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return
    if timeout is None:
        dist.barrier()
        return
    group = dist.new_group(backend="gloo", timeout=timeout)  # every rank creates it, as new_group requires
    dist.barrier(group=group)
    # Not destroyed here: a rank that tears the group down as soon as its barrier returns can close the connection
    # while the other is still reading the barrier's last message, and Gloo then aborts that process. The group
    # goes with the default group at shutdown.


def gather_rows(t: torch.Tensor) -> torch.Tensor | None:
    """Every rank's rows of `t` concatenated along dim 0 in rank order (the global batch) on rank 0;
    None on the other ranks. Alone: `t`."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return t
    sent = t.to(torch.uint8) if t.dtype == torch.bool else t  # not every backend sends booleans
    parts = [torch.empty_like(sent) for _ in range(dist.get_world_size())] if dist.get_rank() == 0 else None
    dist.gather(sent.contiguous(), parts, dst=0)
    if parts is None:
        return None
    return torch.cat(parts).to(t.dtype)


def sharded(fn: Callable[..., list]) -> Callable[..., list]:
    """`fn(items, *args) -> one result per item`, with the items dealt over the ranks (rank r takes items r, r + W,
    ...) and every result back on every rank, in order. For work each rank would otherwise repeat (generating
    the replies to evaluation prompts). Every rank must call it with the same items."""
    def run(items: list, *args: Any) -> list:
        if not (dist.is_initialized() and dist.get_world_size() > 1):
            return fn(items, *args)
        rank, world = dist.get_rank(), dist.get_world_size()
        mine = items[rank::world]
        parts: list = [None] * world
        dist.all_gather_object(parts, fn(mine, *args) if mine else [])
        results: list = [None] * len(items)
        for r, part in enumerate(parts):
            results[r::world] = part
        return results
    return run
