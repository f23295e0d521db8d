"""torch.distributed helpers shared by every stage that can run under torchrun (extraction, the MLLM grid cache).

With ``WORLD_SIZE`` unset or 1 they do nothing, so the same code runs in one process.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch.distributed as dist

__all__ = ["init_distributed", "rank_world", "barrier"]


def init_distributed() -> tuple[int, int]:
    """Join the torchrun process group (gloo) when WORLD_SIZE > 1. Returns (rank, world size)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("gloo", timeout=timedelta(hours=12))
    return rank_world()


def rank_world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    """Wait for every rank; a no-op outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
