"""VAE alarm (Liu et al., ICCV 2019) for the pancreas pipeline: a shape VAE trained on ground-truth masks;
the reconstruction losses of a *predicted* mask (plus its region volumes) are features that a small ridge
regressor (NumPy only) maps to the case's Dice.

Masks are the two region channels of :func:`~synthcp3d.alarms.samples.mask_channels` (pancreas incl.
tumour, tumour) on the organ-centred crops, so build the VAE as
``ShapeVAE(3, in_shape=roi_size, in_channels=2, include_background=True)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine
from monai.losses import DiceLoss

from synthcp3d.alarms.training import finite_step, flip_loader, run_iterations, save_final
from synthcp3d.engines.inferers import autocast_context, to_channels_last
from synthcp3d.engines.precision import resolve_precision
from synthcp3d.losses.vae import VAELoss

__all__ = ["FEATURE_NAMES", "fit_dice_regressor", "predict_dice_regressor", "train_shape_vae", "vae_features"]

FEATURE_NAMES = ("recon", "recon_pancreas", "recon_tumour", "logvol_pancreas", "logvol_tumour")
"""Columns of :func:`vae_features`: ``ShapeVAE.reconstruction_loss``, the Dice loss of each region channel
of the reconstruction, and each region's volume as ``log1p(voxels) / log1p(crop voxels)`` (in [0, 1])."""


def _stack(masks: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    m = masks if isinstance(masks, torch.Tensor) else torch.stack([torch.as_tensor(x) for x in masks])
    if m.ndim not in (4, 5):
        raise ValueError(f"masks must be (N, C, *S) with 2 or 3 spatial dims, got {tuple(m.shape)}")
    return m.float()


def train_shape_vae(
    vae: torch.nn.Module,
    masks: torch.Tensor | Sequence[torch.Tensor],
    out_dir: str | Path,
    *,
    iterations: int = 2000,
    lr: float = 1e-3,
    batch_size: int = 4,
    beta: float = 1.0,
    recon: str = "bce",
    flip_prob: float = 0.5,
    amp_dtype: str | None = "auto",
    device: str | torch.device = "cpu",
    resume: bool = True,
    progress: bool = True,
    checkpoint_every: int = 200,
    seed: int = 0,
) -> dict:
    """Train the shape VAE on ground-truth masks with :class:`~synthcp3d.losses.VAELoss` (random flips).

    Same loop, checkpoints and resume as :func:`~synthcp3d.alarms.comparator.train_comparator`.

    Args:
        vae: :class:`~synthcp3d.networks.ShapeVAE` with ``in_shape`` = the masks' spatial shape.
        masks: (N, C, *R) {0, 1} ground-truth masks (e.g. the samples' ``"label_mask"``).
        seed: seed of the shuffling and the flips.

    Returns:
        ``{"model": path of model.pt, "iterations", "start_iteration", "loss"}``.
    """
    amp_dtype = resolve_precision(amp_dtype, device)
    device = torch.device(device)
    vae = vae.to(device)
    loader = flip_loader([{"mask": m} for m in _stack(masks)], ["mask"], batch_size, flip_prob, seed)
    optimizer = torch.optim.Adam(vae.parameters(), lr=lr)
    criterion = VAELoss(beta=beta, recon=recon)

    def step(engine: Engine, batch: dict) -> dict[str, float]:
        vae.train()
        mask = to_channels_last(batch["mask"].to(device))
        with autocast_context(device, amp_dtype):
            recon_logits, mu, logvar, _ = vae(mask)
        losses = criterion(recon_logits, mask, mu, logvar)
        finite_step(optimizer, losses["loss"])
        return {k: float(v.detach()) for k, v in losses.items()}

    engine, start = run_iterations(step, {"network": vae, "optimizer": optimizer}, loader, out_dir,
                                   iterations=iterations, checkpoint_every=checkpoint_every, resume=resume,
                                   progress=progress, desc=f"shape VAE {Path(out_dir).name}")  # fmt: skip
    return save_final(vae, engine, start, out_dir)


@torch.no_grad()
def vae_features(
    vae: torch.nn.Module,
    masks: torch.Tensor | Sequence[torch.Tensor],
    *,
    batch_size: int = 4,
    amp_dtype: str | None = "auto",
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Alarm features of predicted masks (columns :data:`FEATURE_NAMES`), deterministic (eval mode,
    posterior mean), under ``amp_dtype`` autocast with channels-last inputs.

    Args:
        vae: trained :class:`~synthcp3d.networks.ShapeVAE` on 2-channel region masks.
        masks: (N, K, *R) predicted masks (pancreas: the samples' 2-channel ``"pred_mask"``; 2D scenes: the
            one-hot prediction), K = the VAE's ``in_channels``.

    Returns:
        (N, 1 + 2K) float64: overall reconstruction loss, per-channel reconstruction Dice loss, per-channel
        log-volume (the :data:`FEATURE_NAMES` columns for K = 2).
    """
    device = torch.device(device)
    vae = vae.to(device).eval()
    m = _stack(masks)
    want = getattr(vae, "in_channels", 2)
    if m.shape[1] != want:
        raise ValueError(f"masks must have the VAE's {want} channels (pancreas: the 2 regions), got {m.shape[1]}")
    per_channel = DiceLoss(include_background=True, sigmoid=True, reduction="none")
    logvol = (torch.log1p(m.flatten(2).sum(2)) / np.log1p(m[0, 0].numel())).double()
    rows = []
    for i in range(0, len(m), batch_size):
        x = to_channels_last(m[i : i + batch_size].to(device))
        with autocast_context(device, amp_dtype):
            overall = vae.reconstruction_loss(x).float()
            recon = vae(x)[0].float()
        chans = per_channel(recon, x).flatten(1).float()
        rows.append(torch.cat([overall[:, None], chans], dim=1).double().cpu())
    return torch.cat([torch.cat(rows), logvol], dim=1).numpy()


def fit_dice_regressor(features: np.ndarray, dice: np.ndarray, alpha: float = 0.1) -> dict:
    """Ridge least squares per class (features -> Dice), fit on the rows whose Dice is finite.

    The intercept is not penalised (features are centred on the fitted rows); features are not scaled (they
    all lie in [0, 1], so tiny differences are not blown up). A class with fewer than two finite targets
    gets a constant (their mean, or 0.5).

    Args:
        features: (N, F) from :func:`vae_features`.
        dice: (N, K) true Dice, NaN where undefined.
        alpha: ridge penalty.

    Returns:
        JSON-serialisable ``{"coef": [[F] * K], "intercept": [K], "alpha"}``.
    """
    x, y = np.asarray(features, np.float64), np.asarray(dice, np.float64)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise ValueError(f"features (N, F) and dice (N, K) expected, got {x.shape} and {y.shape}")
    coefs, intercepts = [], []
    for k in range(y.shape[1]):
        ok = np.isfinite(y[:, k])
        coef = np.zeros(x.shape[1])
        if ok.sum() >= 2:
            mu, yk = x[ok].mean(0), y[ok, k]
            xc = x[ok] - mu
            coef = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ (yk - yk.mean()))
            intercepts.append(float(yk.mean() - coef @ mu))
        else:
            intercepts.append(float(y[ok, k].mean()) if ok.any() else 0.5)
        coefs.append(coef.tolist())
    return {"coef": coefs, "intercept": intercepts, "alpha": float(alpha)}


def predict_dice_regressor(params: Mapping, features: np.ndarray) -> np.ndarray:
    """Apply :func:`fit_dice_regressor` parameters: (N, F) -> (N, K) Dice clipped to [0, 1]."""
    x = np.asarray(features, np.float64)
    return np.clip(x @ np.asarray(params["coef"]).T + np.asarray(params["intercept"]), 0.0, 1.0)
