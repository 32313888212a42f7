"""The iteration-based ignite loop shared by the comparator and the shape-VAE trainers: checkpoints with
resume, TensorBoard scalars, a progress bar, and bf16 autocast steps that skip non-finite updates."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from ignite.engine import Engine
from monai import transforms as mt
from monai.data import DataLoader, Dataset
from monai.handlers import TensorBoardStatsHandler

from synthcp3d.engines.checkpoints import run_checkpointed

__all__ = ["finite_step", "flip_loader", "run_iterations"]


def flip_loader(items: Sequence[Mapping], keys: Sequence[str], batch_size: int, flip_prob: float,
                seed: int = 0, flip_axes: Sequence[int] | None = None) -> DataLoader:  # fmt: skip
    """Shuffling MONAI loader over in-memory tensor dicts with independent random flips along each axis.

    The items' ``keys`` hold channel-first tensors ``(C, *S)``; ``flip_axes`` are spatial axes to flip (default:
    every axis of ``S``, taken from the first item's ``keys[0]``; e.g. ``[1]`` for left-right only in 2D scenes).
    ``batch_size`` is capped at ``len(items)``; ``drop_last`` keeps batches full (BatchNorm needs > 1 value).
    """
    if not items:
        raise ValueError("no training samples")
    if flip_axes is None:
        flip_axes = range(torch.as_tensor(items[0][keys[0]]).ndim - 1)
    chain = [mt.RandFlipd(keys=list(keys), prob=flip_prob, spatial_axis=a) for a in flip_axes]
    chain.append(mt.EnsureTyped(keys=list(keys), track_meta=False))
    tf = mt.Compose(chain)
    tf.set_random_state(seed)
    bs = max(1, min(int(batch_size), len(items)))
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(Dataset(list(items), tf), batch_size=bs, shuffle=True, drop_last=True, generator=gen,
                      num_workers=0)  # fmt: skip


def finite_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> bool:
    """``zero_grad``, backward and step unless the loss or a gradient is non-finite (a rare CPU bf16 hazard).

    Returns whether the step was taken.
    """
    optimizer.zero_grad(set_to_none=True)
    if not torch.isfinite(loss):
        return False
    loss.backward()
    grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if grads and not all(torch.isfinite(g).all() for g in grads):
        optimizer.zero_grad(set_to_none=True)
        return False
    optimizer.step()
    return True


def run_iterations(
    step: Callable[[Engine, dict], dict[str, float]],
    state: Mapping[str, object],
    loader: DataLoader,
    out_dir: str | Path,
    *,
    iterations: int,
    checkpoint_every: int,
    resume: bool,
    progress: bool,
    desc: str,
) -> tuple[Engine, int]:
    """Run ``step`` up to ``iterations`` total iterations (a total, not an increment).

    ``state`` (networks, optimizers) plus the engine is checkpointed to ``out_dir/models`` every
    ``checkpoint_every`` iterations (the newest two kept) and at the end, on Ctrl-C / SIGTERM or on an exception
    (``checkpoint_final.pt``); with ``resume`` the newest readable checkpoint is loaded first and the run
    continues from its iteration (see :func:`~synthcp3d.engines.checkpoints.run_checkpointed`: a checkpoint beyond
    ``iterations`` is an error). Scalars of ``step``'s output dict go to TensorBoard (``out_dir/tb``).

    Returns:
        ``(engine, start_iteration)``.
    """
    out_dir = Path(out_dir)
    engine = Engine(step)
    TensorBoardStatsHandler(log_dir=str(out_dir / "tb"), iteration_log=True, epoch_log=False,
                            output_transform=lambda o: o).attach(engine)  # fmt: skip
    if progress:
        from ignite.handlers import ProgressBar

        ProgressBar(desc=desc, persist=False).attach(engine, output_transform=lambda o: {"loss": o["loss"]})
    start = run_checkpointed(engine, loader, {**state, "engine": engine}, out_dir / "models",
                             every=max(1, int(checkpoint_every)), max_iterations=int(iterations), resume=resume,
                             desc=desc)  # fmt: skip
    return engine, start


def save_final(network: torch.nn.Module, engine: Engine, start: int, out_dir: str | Path) -> dict:
    """Save ``network`` to ``out_dir/models/model.pt``; returns ``{"model", "iterations", "start_iteration",
    "loss"}`` for the run of ``engine`` that resumed from iteration ``start``."""
    path = Path(out_dir) / "models" / "model.pt"
    torch.save(network.state_dict(), path)
    out = engine.state.output if isinstance(engine.state.output, dict) else {}
    return {"model": str(path), "iterations": int(engine.state.iteration), "start_iteration": start,
            "loss": out.get("loss")}  # fmt: skip
