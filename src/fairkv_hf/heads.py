"""Which KV heads of a layer a cache layer holds, which batch rows it serves for each, and the seam for budgets
that couple the heads of a layer.

On one process a layer holds every head for every row. Under a multi-GPU plan a rank holds some heads, and a
head replicated on several ranks (Fair-Copying) serves a contiguous slice of the batch rows on each. The
(batch row, held head) pairs a layer serves are its segments, ordered row-major; kernels only ever see segments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .ranking import batch_rows


@dataclass(frozen=True)
class HeldHead:
    """One held KV head: its global id and, for a replicated head, the batch shares of all its replicas (in GPU
    order) and which of them this is. Replicas take contiguous rows in that order, rounded by largest remainder."""

    head: int
    shares: tuple[float, ...] = (1.0,)
    replica: int = 0

    def rows(self, batch: int) -> tuple[int, int]:
        """The [start, end) batch rows this replica serves; empty when the head has more replicas than rows."""
        if len(self.shares) == 1:
            return 0, batch
        counts = batch_rows(self.shares, batch)
        start = sum(counts[: self.replica])
        return start, start + counts[self.replica]



@dataclass(frozen=True)
class HeadSet:
    """The KV heads one cache layer holds (`held`, in local order) out of the layer's `num_heads`.

    `gather` is the seam for policies whose budgets couple the heads of a layer (Ada-SnapKV's joint top-k): it
    returns per-(row, head) values of ALL heads in global head order. On one process every head is held, so it is
    the identity; a multi-GPU rank's HeadSet (parallel/layout.py) fills in the other ranks' heads.
    """

    num_heads: int
    held: tuple[HeldHead, ...]
    distributed: ClassVar[bool] = False

    @classmethod
    def full(cls, num_heads: int) -> HeadSet:
        """Every head of the layer, every row: the single-process layer."""
        return cls(num_heads, tuple(HeldHead(h) for h in range(num_heads)))

    @property
    def ids(self) -> list[int]:
        """Global ids of the held heads, in local order."""
        return [h.head for h in self.held]

    @property
    def is_full(self) -> bool:
        """True when every head is held for every row in global order (no gather or segment selection needed)."""
        return self.ids == list(range(self.num_heads)) and all(len(h.shares) == 1 for h in self.held)

    def served(self, batch: int) -> torch.Tensor:
        """Bool [batch, held heads]: which (row, held head) pairs this layer serves."""
        mask = torch.zeros(batch, len(self.held), dtype=torch.bool)
        for j, head in enumerate(self.held):
            start, end = head.rows(batch)
            mask[start:end, j] = True
        return mask

    def row_groups(self, batch: int) -> list[tuple[int, int, list[int]]]:
        """(start, end, local head indices) blocks covering the served pairs: heads serving the same rows share a
        block, so dense prefill attention runs once per block over its rows only."""
        groups: dict[tuple[int, int], list[int]] = {}
        for j, head in enumerate(self.held):
            start, end = head.rows(batch)
            if end > start:
                groups.setdefault((start, end), []).append(j)
        return [(start, end, heads) for (start, end), heads in sorted(groups.items())]

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        """Values [B, held heads, ...] -> float32 [B, num_heads, ...] in global head order: each process writes the
        pairs it serves into a zero-filled buffer and one all-reduce sums them (exact: one writer per entry), so
        every process sees what one process would. On one process: the values themselves."""
        if not self.distributed:
            if not self.is_full:
                raise ValueError("a single-process HeadSet must hold every head: use fairkv_hf.parallel for shares")
            return values
        full = values.new_zeros(values.shape[0], self.num_heads, *values.shape[2:], dtype=torch.float32)
        served = self.served(values.shape[0])
        mask = served.to(values.device).view(*served.shape, *([1] * (values.dim() - 2)))
        index = torch.tensor(self.ids, dtype=torch.long, device=values.device)
        full[:, index] = torch.where(mask, values.float(), torch.zeros((), device=values.device))
        self.all_reduce(full)
        return full

    def all_reduce(self, tensor: torch.Tensor) -> None:
        """Sum `tensor` in place over the processes that share the model; nothing to do on one process."""
