"""Training and prediction of the comparison module: SynthCP's :class:`~synthcp3d.networks.SiameseComparator`
F(x, x̂, ŷ) and the "Direct Prediction" ablation :class:`~synthcp3d.networks.DirectPredictor` F(x, ŷ), through
one code path (the only difference is whether the synthesized crop is passed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine

from synthcp3d.alarms.samples import paste_to_input_grid
from synthcp3d.alarms.training import finite_step, flip_loader, run_iterations, save_final
from synthcp3d.engines.inferers import autocast_context, to_channels_last
from synthcp3d.engines.precision import resolve_precision
from synthcp3d.losses.comparator import ComparatorLoss

__all__ = ["comparator_forward", "predict_comparator", "train_comparator", "uses_synth"]


def uses_synth(network: torch.nn.Module) -> bool:
    """True for a two-branch (SynthCP) comparator, False for Direct Prediction."""
    return getattr(network, "num_branches", 1) == 2


def comparator_forward(network: torch.nn.Module, batch: dict, device: torch.device) -> dict[str, torch.Tensor]:
    """Call ``network`` on a batch: ``(image, synth, probs)`` for SynthCP, ``(image, probs)`` for Direct.

    Inputs go channels-last to ``device``; run it inside an autocast context for bf16.

    Shapes: ``batch["image"]``, ``batch["synth"]`` (B, 1, *R); ``batch["probs"]`` (B, C, *R).
    """
    keys = ("image", "synth", "probs") if uses_synth(network) else ("image", "probs")
    missing = [k for k in keys if batch.get(k) is None]
    if missing:
        raise ValueError(f"{type(network).__name__} needs {missing} in every sample (build samples with synth)")
    return network(*(to_channels_last(torch.as_tensor(batch[k]).float().to(device)) for k in keys))


def _items(network: torch.nn.Module, samples: Sequence[dict], with_targets: bool) -> tuple[list[dict], list[str]]:
    keys = ["image", "synth", "probs"] if uses_synth(network) else ["image", "probs"]
    spatial = list(keys)
    if with_targets:
        samples = [s for s in samples if s["error"] is not None]
        spatial += ["error", "ignore"]
    items = [{k: s[k] for k in spatial} | ({"target": s["target"]} if with_targets else {}) for s in samples]
    return items, spatial


def train_comparator(
    network: torch.nn.Module,
    samples: Sequence[dict],
    out_dir: str | Path,
    *,
    iterations: int = 2000,
    lr: float = 1e-3,
    batch_size: int = 2,
    score_loss: str = "l1",
    score_weight: float = 1.0,
    error_weight: float = 1.0,
    flip_prob: float = 0.5,
    amp_dtype: str | None = "auto",
    device: str | torch.device = "cpu",
    resume: bool = True,
    progress: bool = True,
    checkpoint_every: int = 200,
    seed: int = 0,
    flip_axes: Sequence[int] | None = None,
) -> dict:
    """Train a :class:`~synthcp3d.networks.SiameseComparator` or :class:`~synthcp3d.networks.DirectPredictor`
    on labelled samples of :func:`~synthcp3d.alarms.samples.build_samples` with
    :class:`~synthcp3d.losses.ComparatorLoss` (paper eq. 8: L1 on the per-class Dice + BCE on the error map;
    padded voxels ignored; the background column has no target).

    Engine: a plain ignite ``Engine`` (as the SPADE trainer). MONAI's ``SupervisedTrainer`` would need a custom
    ``prepare_batch`` *and* a loss adapter (it calls ``loss(pred, label)`` with one target tensor, while this
    loss takes a dict of two heads and two targets) and it only autocasts on CUDA; the step function here is
    shorter than those adapters and runs bf16 autocast on the CPU. Augmentation: random flips on every axis.
    Checkpoints (network, optimizer, engine) in ``out_dir/models`` every ``checkpoint_every`` iterations and on
    exit; ``resume`` continues from the newest up to ``iterations`` (a total). ``model.pt``: final weights.

    Args:
        network: comparator with ``num_classes`` equal to the samples' probability channels.
        samples: samples with ground truth (those without ``"error"`` are skipped).
        iterations: total optimizer steps.
        amp_dtype: precision request (``"auto"``, ``"float32"``, ``"bfloat16"``; see ``engines.precision``).
        seed: seed of the shuffling and the flips (weights are initialised by the caller).
        flip_axes: spatial axes flipped at random (default all; ``[1]``: left-right only, for 2D street scenes).

    Returns:
        ``{"model": path of model.pt, "iterations": final iteration, "start_iteration": resumed from,
        "loss": last loss}``.
    """
    if hasattr(network, "fit"):  # closed-form comparators (RegionRidgeComparator): no iterations to run
        model = Path(out_dir) / "models" / "model.pt"
        model.parent.mkdir(parents=True, exist_ok=True)
        network.cpu().fit([s for s in samples if s["error"] is not None])
        torch.save(network.state_dict(), model)
        return {"model": str(model), "iterations": 0, "start_iteration": 0, "loss": None}
    amp_dtype = resolve_precision(amp_dtype, device)
    device = torch.device(device)
    network = network.to(device)
    items, spatial = _items(network, samples, with_targets=True)
    loader = flip_loader(items, spatial, batch_size, flip_prob, seed, flip_axes)
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    criterion = ComparatorLoss(score_loss=score_loss, score_weight=score_weight, error_weight=error_weight)

    def step(engine: Engine, batch: dict) -> dict[str, float]:
        network.train()
        with autocast_context(device, amp_dtype):
            pred = comparator_forward(network, batch, device)
        losses = criterion(pred, batch["target"].to(device), batch["error"].to(device), batch["ignore"].to(device))
        finite_step(optimizer, losses["loss"])
        return {k: float(v.detach()) for k, v in losses.items()}

    desc = f"{type(network).__name__} {Path(out_dir).name}"
    engine, start = run_iterations(step, {"network": network, "optimizer": optimizer}, loader, out_dir,
                                   iterations=iterations, checkpoint_every=checkpoint_every, resume=resume,
                                   progress=progress, desc=desc)  # fmt: skip
    return save_final(network, engine, start, out_dir)


@torch.no_grad()
def predict_comparator(
    network: torch.nn.Module,
    samples: Sequence[dict],
    *,
    error_map_dir: str | Path | None = None,
    amp_dtype: str | None = "auto",
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Per-case predicted Dice of the foreground classes, in eval mode under ``amp_dtype`` autocast with
    channels-last inputs.

    With ``error_map_dir`` (and an error head) the sigmoid error map of each crop is pasted into a zero
    volume of the resampled grid, inverted (linear) onto the case's input grid and written to
    ``<error_map_dir>/<case_id>/error_map.nii.gz`` (float32 in [0, 1], the input image's geometry).

    Args:
        network: trained comparator.
        samples: from :func:`~synthcp3d.alarms.samples.build_samples`.

    Returns:
        ``(N, C - 1)`` float64 scores in [0, 1]: columns ``[pancreas, tumour]`` for the 3-class task.
    """
    device = torch.device(device)
    network = network.to(device).eval()
    items, _ = _items(network, samples, with_targets=False)
    scores = []
    for s, item in zip(samples, items, strict=True):
        batch = {k: None if v is None else v[None] for k, v in item.items()}
        with autocast_context(device, amp_dtype):
            out = comparator_forward(network, batch, device)
        if "scores" not in out:
            raise ValueError(f"{type(network).__name__} has no score head")
        scores.append(out["scores"][0, 1:].float().cpu().numpy())
        if error_map_dir is not None and "error_logits" in out:
            err = torch.sigmoid(out["error_logits"][0].float()).cpu()
            paste_to_input_grid(err, s, Path(error_map_dir) / s["case_id"] / "error_map.nii.gz")
    return np.asarray(scores, dtype=np.float64).reshape(len(samples), -1)
