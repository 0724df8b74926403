"""The collectives the head-parallel executor uses, on torch.distributed: NCCL on CUDA, gloo on CPU.

Small sums on CUDA (a decode step's, up to 1 MiB) go through PyTorch's symmetric memory instead of NCCL: every
rank copies its partial into a buffer its peers can read over NVLink and one kernel adds all ranks' buffers
(`torch.ops.symm_mem.one_shot_all_reduce`, no NVLink multicast). Measured on 2 x H200 for this issue's messages:
13-15 us against NCCL's 36-47 us, the same bits as NCCL's; two all-reduces per layer make that about 2 ms of an 8B
model's decode step. The buffer is made once, collectively, by `prepare`; set FAIRKV_ALL_REDUCE=nccl to use NCCL
for every sum (e.g. to compare).

Sums are accumulated in float32 whatever the model dtype: each rank's partial sum is rounded to the model dtype
once (by its own matmul) and the ranks' partials are added in float32 and rounded once more, instead of being
rounded after every addition of a bfloat16 ring reduction. A decode step's messages are a few KiB, so the wider
type costs nothing measurable; every rank receives the same bits, so all ranks keep identical hidden states.
"""

from __future__ import annotations

import os
import warnings
from datetime import timedelta

import torch
import torch.distributed as dist

ALL_REDUCE_ENV = "FAIRKV_ALL_REDUCE"
SYMMETRIC_MAX_BYTES = 1 << 20
_symmetric: dict[torch.device, torch.Tensor] = {}


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


def init_symmetric_sums(device: torch.device) -> bool:
    """Make this rank's symmetric-memory buffer for small CUDA sums (collective: every rank calls it at the same
    point); True when every rank has one. Any rank failing (no P2P access, an old torch) leaves all ranks on NCCL."""
    if device.type != "cuda" or os.environ.get(ALL_REDUCE_ENV, "auto") == "nccl" or device in _symmetric:
        return device in _symmetric
    try:
        import torch.distributed._symmetric_memory as symm_mem

        group = dist.group.WORLD.group_name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # newer torch needs no enabling and says so
            if hasattr(symm_mem, "enable_symm_mem_for_group"):
                symm_mem.enable_symm_mem_for_group(group)
        buffer = symm_mem.empty(SYMMETRIC_MAX_BYTES // 4, dtype=torch.float32, device=device)
        symm_mem.rendezvous(buffer, group)
        ok = torch.ones(1, device=device)
    except Exception as err:  # any failure means NCCL for every rank: say why, never stop the run for it
        warnings.warn(f"symmetric-memory all-reduce unavailable ({err!r}); decode sums use NCCL", stacklevel=2)
        buffer, ok = None, torch.zeros(1, device=device)
    dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    if bool(ok.item()):
        _symmetric[device] = buffer
    return device in _symmetric


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum of `x` over all ranks, accumulated in float32 (module docstring), in `x`'s dtype."""
    buffer = _symmetric.get(x.device)
    if buffer is not None and x.numel() <= buffer.numel() and os.environ.get(ALL_REDUCE_ENV, "auto") != "nccl":
        staged = buffer[: x.numel()]
        staged.copy_(x.reshape(-1))  # to float32 in the same kernel
        total = torch.ops.symm_mem.one_shot_all_reduce(staged, "sum", dist.group.WORLD.group_name).view(x.shape)
    else:
        total = x.float()
        dist.all_reduce(total)
    return total if x.dtype == torch.float32 else total.to(x.dtype)


def all_gather(x: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's equally sized `x`, in rank order (the same bits on every rank)."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return parts
