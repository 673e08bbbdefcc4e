"""Multi-process training under ``torchrun`` with PyTorch's own DDP (NCCL on GPUs, gloo on CPUs).

``torchrun --nproc_per_node N -m cellniche_core fit ...`` starts N copies of the command.
Each reads the cohort and builds the graph, trains its DDP replica on its own seed cells
(gradients are averaged every step, so every replica ends with the same weights), and
rank 0 alone embeds, calls niches and writes the run folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    """Where this process stands: rank among ``world_size`` processes, and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def from_environment() -> Context:
    """The context ``torchrun`` sets through ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``."""
    return Context(rank=int(os.environ.get("RANK", 0)), world_size=int(os.environ.get("WORLD_SIZE", 1)),
                   local_rank=int(os.environ.get("LOCAL_RANK", 0)))


def start(context: Context, device: str) -> str:
    """Join the process group (once) and return this rank's device string.

    With CUDA each rank takes GPU ``LOCAL_RANK`` and NCCL; on CPU, gloo.
    """
    if not context.active:
        return device
    use_cuda = device in ("auto", "cuda") and torch.cuda.is_available()
    if device == "cuda" and not use_cuda:
        raise RuntimeError("--device cuda was asked for but no CUDA GPU is available")
    if use_cuda:
        torch.cuda.set_device(context.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return f"cuda:{context.local_rank}" if use_cuda else "cpu"


def stop() -> None:
    """Leave the process group (all ranks wait for each other first)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
