"""The collectives the head-parallel executor uses, on torch.distributed: NCCL on CUDA, gloo on CPU.

Sums are accumulated in float32 whatever the model dtype: each rank's partial sum is rounded to the model dtype
once (by its own matmul) and the ranks' partials are added in float32 and rounded once more, instead of being
rounded after every addition of a bfloat16 ring reduction. A decode step's messages are a few KiB, so the wider
type costs nothing measurable; every rank receives the same bits, so all ranks keep identical hidden states.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def launched_world_size() -> int:
    """Processes started by torchrun / accelerate launch (their WORLD_SIZE), 1 when not launched."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device_type: str) -> tuple[int, int]:
    """(rank, world size) of the default process group, created from the launcher's environment if needed with
    the backend the device needs: NCCL for CUDA tensors, gloo for CPU tensors."""
    wanted = "nccl" if device_type == "cuda" else "gloo"
    if not dist.is_initialized():
        if launched_world_size() == 1 and "MASTER_ADDR" not in os.environ:
            return 0, 1
        if wanted == "nccl" and not dist.is_nccl_available():
            raise RuntimeError("a CUDA run needs torch.distributed's NCCL backend, which this torch build lacks: "
                               "install a CUDA build of torch with NCCL, or run on CPU (gloo)")
        dist.init_process_group(wanted, timeout=timedelta(minutes=30))
    backend = dist.get_backend()
    if device_type == "cuda" and "nccl" not in str(backend):
        raise RuntimeError(f"the model is on CUDA but the process group uses {backend!r}: CUDA tensors need "
                           "dist.init_process_group('nccl') (or let fairkv_hf.parallel.prepare create the group)")
    if device_type != "cuda" and "gloo" not in str(backend):
        raise RuntimeError(f"the model is on {device_type} but the process group uses {backend!r}, which cannot "
                           "reduce CPU tensors: create the group with dist.init_process_group('gloo')")
    return dist.get_rank(), dist.get_world_size()


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum of `x` over all ranks, accumulated in float32 (module docstring), in `x`'s dtype."""
    if x.dtype == torch.float32:
        dist.all_reduce(x)
        return x
    total = x.float()
    dist.all_reduce(total)
    return total.to(x.dtype)


def all_gather(x: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's equally sized `x`, in rank order (the same bits on every rank)."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return parts
