"""Per-puzzle embeddings: a large table trained with sign-SGD on the rows a batch touches."""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from models.layers import trunc_normal_


class SparseEmbedding(nn.Module):
    """A [num_ids, dim] table held as a buffer (not a Parameter: Adam would touch and decay every row).

    In training the batch's rows are copied into `local_weights`, a leaf that collects the gradient;
    `SignSGD` then writes the update back into the touched rows only.
    """

    def __init__(self, num_embeddings: int, dim: int, batch_size: int, init_std: float, cast_to: torch.dtype):
        super().__init__()
        self.cast_to = cast_to
        self.register_buffer("weights", trunc_normal_(torch.empty(num_embeddings, dim), std=init_std))
        self.register_buffer("local_weights", torch.zeros(batch_size, dim, requires_grad=True), persistent=False)
        self.register_buffer("local_ids", torch.zeros(batch_size, dtype=torch.long), persistent=False)

    def _apply(self, fn, recurse: bool = True):
        # .to(device) copies buffers through autograd: the scratch rows would stop being a leaf and never get a
        # gradient, so the puzzle embeddings would silently stop training on the GPU
        super()._apply(fn, recurse)
        self.local_weights = self.local_weights.detach().requires_grad_()
        return self

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.weights[ids].to(self.cast_to)
        if self.local_ids.shape[0] != ids.shape[0]:  # a batch of another size: resize the scratch rows
            self.local_weights = torch.zeros(ids.shape[0], self.weights.shape[1], device=ids.device, requires_grad=True)
            self.local_ids = torch.zeros(ids.shape[0], dtype=torch.long, device=ids.device)
        with torch.no_grad():
            self.local_weights.copy_(self.weights[ids])
            self.local_ids.copy_(ids)
        return self.local_weights.to(self.cast_to)


class SignSGD(torch.optim.Optimizer):
    """Sign-SGD with decoupled weight decay on the touched rows: w <- w * (1 - lr * wd) - lr * sign(sum of grads).

    Gradients of rows that appear several times in the (global) batch are summed before the sign.
    """

    def __init__(self, embedding: SparseEmbedding, lr: float, weight_decay: float, world_size: int = 1):
        super().__init__([embedding.weights], dict(lr=lr, weight_decay=weight_decay))
        self.embedding = embedding
        self.world_size = world_size
        self.pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # (ids, gradient rows) of earlier micro-batches

    @torch.no_grad()
    def collect(self) -> None:
        """Set the gradient of the micro-batch just back-propagated aside, freeing the scratch rows for the next
        one (gradient accumulation); `step` uses every micro-batch's."""
        emb = self.embedding
        if emb.local_weights.grad is not None:
            self.pending.append((emb.local_ids.clone(), emb.local_weights.grad))
            emb.local_weights.grad = None

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        emb = self.embedding
        self.collect()
        if not self.pending:
            return
        ids, grad = (torch.cat(parts) for parts in zip(*self.pending))
        self.pending = []
        if self.world_size > 1:
            grads = [torch.empty_like(grad) for _ in range(self.world_size)]
            all_ids = [torch.empty_like(ids) for _ in range(self.world_size)]
            dist.all_gather(grads, grad)
            dist.all_gather(all_ids, ids)
            grad, ids = torch.cat(grads), torch.cat(all_ids)
        uniq, inverse = ids.unique(return_inverse=True)
        # per-id sums as a matrix product, not index_add_ (atomic, so run-to-run different on CUDA): every rank
        # must take the same sign, or their copies of the table drift apart
        summed = (inverse == torch.arange(len(uniq), device=ids.device)[:, None]).to(grad.dtype) @ grad
        group = self.param_groups[0]
        rows = emb.weights[uniq]
        rows.mul_(1.0 - group["lr"] * group["weight_decay"]).add_(summed.sign(), alpha=-group["lr"])
        emb.weights[uniq] = rows

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.embedding.local_weights.grad = None
        self.pending = []
