"""Key/value cache for causal generation, for the plain transformer and the recursive TRM alike.

A TRM forward pass applies its network (or, with H_layers, its two) many times: every L and H update of every H
cycle, in every ACT step. With causal attention, the state of position t after any application depends only on
positions <= t, so each *application* (and each layer in it) keeps its own keys and values. The cache stores them in
call order: the i-th attention call of a forward pass always belongs to the same (ACT step, cycle, update,
layer), because the recursion is fixed. A new chunk of tokens then costs only its own positions in every
application.

A static cache attends over its whole preallocated capacity, future slots masked out, and writes at positions
given as a tensor: every decoding step then has the same shapes and no Python-int position, so one compiled
step serves every token (see `ACTModel.predict(compiled=True)`).
"""
from __future__ import annotations

import torch


class KVCache:
    def __init__(self, batch_size: int, capacity: int, device: torch.device | str, static: bool = False):
        self.capacity = capacity
        self.static = static
        self.length = 0  # positions already cached
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.valid = torch.ones(batch_size, capacity, dtype=torch.bool, device=device)  # False: padding
        self.padded = False  # whether any cached position is padding (then attention needs a mask)
        self.mask: torch.Tensor | None = None  # attention mask of the current chunk (see begin)
        if static:  # the keys later positions may attend to: the real cached ones (kept up to date chunk by chunk)
            self.visible = torch.zeros(batch_size, capacity, dtype=torch.bool, device=device)
        self._index = 0  # attention calls made in the current chunk
        self._new = 0  # positions in the current chunk

    def begin(self, valid: torch.Tensor | None, length: int = 1) -> None:
        """Start a chunk of new positions (`valid` [B, S]: False for left padding; None: `length` positions, all
        real) and set `mask`, the attention mask [B, 1, S, keys] of the chunk, keys = length + S, or the capacity
        when static (None when plain causal attention is exact)."""
        S, L = (length if valid is None else valid.shape[1]), self.length
        if L + S > self.capacity:
            raise ValueError(f"the sequence would reach {L + S} positions; this model's context is {self.capacity}")
        chunk_padded = valid is not None and not bool(valid.all())
        if chunk_padded:
            self.valid[:, L:L + S] = valid
            self.padded = True
        self._index, self._new = 0, S
        if self.static:
            self.slots = torch.arange(L, L + S, device=self.valid.device)  # where the chunk's keys go
            if S == 1 and not chunk_padded:  # one real position (a decoding step): it sees itself and the rest
                self.visible[:, L] = True
                self.mask = self.visible[:, None, None, :]
                return
            self.visible[:, L:L + S] = self.valid[:, L:L + S]  # for the positions after this chunk
        self.mask = self._chunk_mask(L, S)

    def _chunk_mask(self, L: int, S: int) -> torch.Tensor | None:
        if self.static:
            keys_valid = self.valid
        elif not self.padded and (S == 1 or L == 0):
            return None  # one new position sees everything before it; a first chunk is plain causal
        else:
            keys_valid = self.valid[:, :L + S]
            if S == 1:  # one new position: every real key so far (a view; the common decoding step)
                return keys_valid[:, None, None, :]
        device = keys_valid.device
        rows, cols = torch.arange(L, L + S, device=device), torch.arange(keys_valid.shape[1], device=device)
        mask = keys_valid[:, None, :] & (cols[None, :] <= rows[:, None])
        # a padding row attends to itself, so no row is fully masked (that would give NaN states)
        mask |= cols[None, :] == rows[:, None]
        return mask[:, None]

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the chunk's k, v [B, H, S, D] for the next attention call; return all keys/values so far."""
        i, L, S = self._index, self.length, k.shape[2]
        if i == len(self.keys):  # first chunk: allocate this call's buffers
            shape = (k.shape[0], k.shape[1], self.capacity, k.shape[3])
            self.keys.append(k.new_zeros(shape))
            self.values.append(v.new_zeros(shape))
        keys, values = self.keys[i], self.values[i]
        self._index += 1
        if self.static:
            return keys.index_copy_(2, self.slots, k), values.index_copy_(2, self.slots, v)
        keys.narrow(2, L, S).copy_(k)
        values.narrow(2, L, S).copy_(v)
        return keys.narrow(2, 0, L + S), values.narrow(2, 0, L + S)

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only these rows of the batch (the others finished generating)."""
        self.keys = [k[rows] for k in self.keys]
        self.values = [v[rows] for v in self.values]
        self.valid = self.valid[rows]
        if self.static:
            self.visible = self.visible[rows]

    def end(self) -> None:
        """The chunk is complete: its positions become part of the cached prefix."""
        if self.keys and self._index != len(self.keys):
            raise RuntimeError(f"a forward pass made {self._index} attention calls; the cache holds {len(self.keys)}")
        self.length += self._new
        self._new = 0
