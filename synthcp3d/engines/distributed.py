"""Small helpers so every training function runs alone or under ``torchrun`` (DDP) unchanged.

The bundle's ``multi_gpu_train.json`` overlay calls :func:`init_distributed` in ``initialize`` and sets
``distributed: true``; training functions then wrap their networks with :func:`wrap_ddp`, shard data
with :func:`distributed_sampler` and write files only where :func:`is_main_process` holds.
Backend: NCCL on GPUs, gloo on CPU (so the overlay is testable here with two CPU processes).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler

__all__ = ["distributed_sampler", "init_distributed", "is_main_process", "local_device", "unwrap", "wrap_ddp"]


def init_distributed() -> torch.device:
    """Initialise the default process group from torchrun's environment; returns this rank's device."""
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    # ignite builds its own process group (a collective) on first use of ignite.distributed; doing it here
    # on every rank at once avoids a deadlock when only some ranks touch it later (e.g. rank-0 handlers).
    import ignite.distributed as idist

    idist.sync()
    return local_device()


def local_device() -> torch.device:
    """``cuda:LOCAL_RANK`` when GPUs are present, else CPU."""
    if torch.cuda.is_available():
        rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(rank)
        return torch.device("cuda", rank)
    return torch.device("cpu")


def is_main_process() -> bool:
    """True outside DDP and on rank 0 inside it."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def wrap_ddp(network: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Wrap ``network`` in ``DistributedDataParallel`` if a process group is initialised, else return it."""
    if not (dist.is_available() and dist.is_initialized()):
        return network
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(network, device_ids=ids)


def unwrap(network: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP wrapper (or ``network`` itself)."""
    return network.module if isinstance(network, torch.nn.parallel.DistributedDataParallel) else network


def distributed_sampler(dataset: Dataset, shuffle: bool = True) -> DistributedSampler | None:
    """A ``DistributedSampler`` when running under DDP, else None (let the DataLoader shuffle)."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    return DistributedSampler(dataset, shuffle=shuffle)
