"""SPADE image-synthesis module (paper section 3.1): label -> image cGAN training and synthesis
``x̂ = G(ŷ)`` from predicted label maps, for 3D CT volumes and 2D street scenes through the same functions.

* :func:`train_spade` — hinge GAN + discriminator feature matching on ground-truth (label, image) pairs,
  TTUR Adam as in SPADE; checkpoints (resumed from the newest), TensorBoard losses and sample images, a
  progress bar, optional DDP. The data is either a CT datalist (turned into label-balanced TorchIO patches
  by :func:`make_patch_queue`) or any injected ``loader`` of ``{"image", "label"}`` batches, e.g. 2D scenes
  from :func:`make_scene_loader`.
* :func:`synthesize` — the tensor core: predicted label map -> one-hot (ignore -> all zero) -> generator,
  whole image or Gaussian-blended sliding window, under autocast.
* :func:`synthesize_volumes` — CT: each prediction NIfTI -> HU volume inverted onto the prediction's grid,
  ``<out_dir>/<case_id>/synth.nii.gz``. :func:`synthesize_images` — scenes: each prediction PNG -> RGB PNG,
  ``<out_dir>/<case_id>/synth.png``.

A 3D GAN does not fit whole volumes into memory, so CT training uses patches: every case is preprocessed once
with MONAI (:func:`~synthcp3d.data.transforms.ct_inference_transforms`), wrapped in a TorchIO ``Subject``,
and a ``tio.Queue`` with a ``tio.LabelSampler`` draws patches centred on background / pancreas / tumour
with ``label_probabilities``, so the rare tumour is seen often. 2D scenes train on whole resized images.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchio as tio
from ignite.engine import Engine, Events
from monai import transforms as mt
from monai.data import CacheDataset, DataLoader, Dataset, MetaTensor
from monai.handlers import TensorBoardStatsHandler
from monai.inferers import SlidingWindowInferer

from synthcp3d.data.io import read_png, write_nifti, write_png
from synthcp3d.data.labels import one_hot
from synthcp3d.data.transforms import ct_inference_transforms, load_resampled, scene_transforms
from synthcp3d.engines.checkpoints import latest_checkpoint, run_checkpointed
from synthcp3d.engines.distributed import distributed_sampler, is_main_process, unwrap, wrap_ddp
from synthcp3d.engines.inferers import AutocastInferer, autocast_context, to_channels_last
from synthcp3d.engines.precision import flush_denormals, resolve_precision
from synthcp3d.losses.gan import (
    PerceptualTerm,
    discriminator_hinge_loss,
    feature_matching_loss,
    generator_hinge_loss,
)

__all__ = [
    "SPADE_LAYOUT",
    "make_patch_queue",
    "make_scene_loader",
    "spade_step",
    "synthesize",
    "synthesize_images",
    "synthesize_volumes",
    "train_spade",
]

logger = logging.getLogger(__name__)

SPADE_LAYOUT = """\
<out>/models/checkpoint_iteration=N.pt   generator, discriminator, opt_g, opt_d, engine (every checkpoint_every)
<out>/models/checkpoint_final.pt         the same at the end of a run or when it was interrupted
<out>/models/generator.pt                final generator weights (state dict)
<out>/tb/                                TensorBoard: g/d losses, (middle slice of) label | real | fake
<synth_out>/<case_id>/synth.nii.gz       3D: float32 HU volume on the prediction's (= the input image's) grid
<synth_out>/<case_id>/synth.png          2D: uint8 RGB image at the prediction PNG's size
"""

_LOSS_KEYS = ("loss_g", "loss_d", "g_adv", "g_fm", "g_l1", "g_perceptual")


def _check_roi(generator: torch.nn.Module, roi: Sequence[int], what: str) -> tuple[int, ...] | None:
    """The generator's seed shape for input ``roi`` (None if it has no ``seed_shape``); clear ValueError if
    ``roi`` is not divisible by its total upsampling factor."""
    seed_shape = getattr(unwrap(generator), "seed_shape", None)
    if seed_shape is None:
        return None
    try:
        return tuple(seed_shape(tuple(roi)))
    except ValueError as e:
        raise ValueError(f"{what} {tuple(roi)} does not fit the generator: {e}") from None


def make_patch_queue(
    items: Sequence[Mapping],
    patch_size: Sequence[int],
    *,
    pixdim: Sequence[float] = (2.0, 2.0, 2.5),
    hu_window: Sequence[float] = (-87.0, 199.0),
    label_probabilities: Mapping[int, float] | None = None,
    samples_per_volume: int = 8,
    queue_length: int = 64,
    distributed: bool = False,
) -> tio.Queue:
    """Preprocess each case once (MONAI: RAS, ``pixdim``, HU window) and build a label-balanced patch queue.

    Volumes smaller than ``patch_size`` are padded (image at the window's lower end, label background).

    Args:
        items: ``[{"image": path, "label": path, ...}]`` (a MONAI datalist).
        patch_size: patch shape ``(X, Y, Z)`` in voxels at ``pixdim``.
        label_probabilities: class -> relative probability of a patch centred on that class
            (default ``{0: 1, 1: 2, 2: 3}``: background, pancreas, tumour).
        samples_per_volume: patches drawn per visit of a case.
        queue_length: patches held in memory.
        distributed: shard cases across DDP ranks (``subject_sampler``).

    Returns:
        A ``tio.Queue`` of ``Subject`` patches: ``image`` (1, *patch) in [-1, 1], ``label`` (1, *patch) int.
    """
    pre = mt.Compose([ct_inference_transforms(pixdim, hu_window, with_label=True),
                      mt.SpatialPadd(keys=["image", "label"], spatial_size=tuple(patch_size))])  # fmt: skip
    subjects = []
    for item in items:
        data = pre({"image": item["image"], "label": item["label"]})
        affine = np.asarray(data["image"].affine, dtype=np.float64)
        subjects.append(tio.Subject(
            image=tio.ScalarImage(tensor=data["image"].as_tensor().float() * 2 - 1, affine=affine),
            label=tio.LabelMap(tensor=data["label"].as_tensor().round().to(torch.int64), affine=affine),
            case_id=str(item.get("case_id", item["image"])),
        ))  # fmt: skip
    dataset = tio.SubjectsDataset(subjects)
    probs = dict(label_probabilities) if label_probabilities is not None else {0: 1, 1: 2, 2: 3}
    sampler = distributed_sampler(dataset) if distributed else None
    return tio.Queue(dataset, max_length=queue_length, samples_per_volume=samples_per_volume,
                     sampler=tio.LabelSampler(tuple(patch_size), label_name="label", label_probabilities=probs),
                     subject_sampler=sampler, shuffle_subjects=sampler is None, num_workers=0)  # fmt: skip


def make_scene_loader(
    items: Sequence[Mapping],
    load: Callable[[Mapping], dict],
    size: Sequence[int],
    *,
    batch_size: int = 1,
    shuffle: bool = True,
    distributed: bool = False,
    cache: bool = True,
) -> DataLoader:
    """2D (label, image) batches for :func:`train_spade`: scenes resized to ``size``, random left-right flips.

    Args:
        items: scene datalist ``[{"image": png, "label": png, ...}]``.
        load: the dataset's loader, e.g. :func:`~synthcp3d.data.streethazards.load_streethazards`.
        size: ``(H, W)``; must fit the generator (multiple of its total upsampling factor).
        cache: keep the decoded, resized pairs in memory (MONAI ``CacheDataset``; flips stay random).
        distributed: shard items across DDP ranks (``DistributedSampler``).

    Returns:
        A MONAI ``DataLoader`` (``drop_last``) of ``{"image": (B, 3, H, W) in [-1, 1], "label": (B, 1, H, W)
        int64}`` (255 = ignore stays in the label).
    """
    transform = scene_transforms(load, size, train=True, image_range=(-1.0, 1.0))
    data = [dict(it) for it in items]
    ds = CacheDataset(data, transform, progress=False) if cache else Dataset(data, transform)
    sampler = distributed_sampler(ds) if distributed else None
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      drop_last=True, num_workers=0)  # fmt: skip


def _forever(loader: Iterable, sampler) -> Iterator:
    epoch = 0
    while True:
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


class _Forever:
    """The endless batch stream :func:`_forever` that also shows ``run_checkpointed`` the loader's own random
    generators (its shuffling ``generator``, its ``dataset``'s MONAI transforms) to save and replay with it."""

    def __init__(self, loader: Iterable, sampler) -> None:
        self.generator = getattr(loader, "generator", None)
        self.dataset = getattr(loader, "dataset", None)
        self._batches = _forever(loader, sampler)

    def __iter__(self) -> Iterator:
        return self

    def __next__(self):
        return next(self._batches)


def _replayable(loader: Iterable) -> bool:
    """Whether the stream over ``loader`` can be replayed exactly: not if DataLoader workers deliver batches in
    the order they finish (``in_order=False``); then a warning, and a resume continues with a fresh data order."""
    if getattr(loader, "num_workers", 0) and getattr(loader, "in_order", True) is False:
        logger.warning("the SPADE loader's workers deliver batches out of order (in_order=False): an interrupted "
                       "run resumes with a fresh data order, not the uninterrupted run's")  # fmt: skip
        return False
    return True


def _finite_step(opt: torch.optim.Optimizer) -> bool:
    """``opt.step()`` unless some gradient is non-finite (then the grads are dropped and False returned).

    A guard, as ``GradScaler`` has for fp16: PyTorch 2.13's CPU bf16 conv3d weight gradient is randomly NaN
    when a spatial axis is 2 (measured: a 64-channel 3^3 conv on a 2x2x2 map, ~1 in 5 backward passes), which
    a generator seed of that size hits. Under DDP the all-reduced grads agree, so all ranks skip together.
    """
    params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
    if not torch.isfinite(torch.nn.utils.clip_grad_norm_(params, float("inf"))):
        opt.zero_grad(set_to_none=True)
        return False
    opt.step()
    return True


def spade_step(
    generator: torch.nn.Module,
    discriminator: torch.nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    seg: torch.Tensor,
    real: torch.Tensor,
    *,
    lambda_fm: float = 10.0,
    l1_weight: float = 0.0,
    perceptual: PerceptualTerm | None = None,
    lambda_perceptual: float = 10.0,
    amp_dtype: str | None = "auto",
) -> tuple[dict[str, float], torch.Tensor]:
    """One SPADE iteration: a generator update, then a discriminator update (NVlabs order).

    Generator loss: hinge adversarial + ``lambda_fm`` x feature matching (+ ``l1_weight`` x L1(fake, real)
    + ``lambda_perceptual`` x perceptual). Discriminator: hinge on (label, real) vs (label, fake) pairs,
    evaluated in one concatenated forward (as NVlabs, and as DDP requires: one forward per backward).
    The discriminator update reuses the fake of the generator update (detached) instead of a second
    generator forward. Forwards run under ``torch.autocast(amp_dtype)``; losses are computed in fp32.

    Args:
        seg: one-hot labels (B, C, *S).
        real: images (B, 1, *S) in [-1, 1].

    Returns:
        (scalar losses as floats plus ``skipped_g``/``skipped_d`` (1.0 if that update was skipped for
        non-finite gradients, see :func:`_finite_step`), fake (B, 1, *S) detached).
    """
    ctx = lambda: autocast_context(seg.device, amp_dtype)  # noqa: E731
    d_plain = not isinstance(discriminator, torch.nn.parallel.DistributedDataParallel)
    generator.train()
    discriminator.train()

    # generator update (no D weight gradients; under DDP the flags must not change, so D grads are just zeroed)
    if d_plain:
        discriminator.requires_grad_(False)
    with ctx():
        fake = generator(seg)
        fake_logits, fake_feats = discriminator(seg, fake)
    with torch.no_grad(), ctx():
        _, real_feats = discriminator(seg, real)
    g_adv = generator_hinge_loss([o.float() for o in fake_logits])
    g_fm = feature_matching_loss(fake_feats, real_feats)
    loss_g = g_adv + lambda_fm * g_fm
    g_l1 = F.l1_loss(fake.float(), real.float()) if l1_weight > 0 else fake.new_zeros((), dtype=torch.float32)
    g_perc = perceptual(fake.float(), real.float()) if perceptual is not None else torch.zeros_like(g_l1)
    loss_g = loss_g + l1_weight * g_l1 + lambda_perceptual * g_perc
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    skipped_g = not _finite_step(opt_g)
    if d_plain:
        discriminator.requires_grad_(True)

    # discriminator update on the concatenated (fake, real) batch
    fake = fake.detach()
    b = seg.shape[0]
    with ctx():
        logits, _ = discriminator(torch.cat([seg, seg]), torch.cat([fake.to(real.dtype), real]))
    loss_d = discriminator_hinge_loss([o[b:].float() for o in logits], [o[:b].float() for o in logits])
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    skipped_d = not _finite_step(opt_d)
    losses = {"loss_g": loss_g, "loss_d": loss_d, "g_adv": g_adv, "g_fm": g_fm, "g_l1": g_l1, "g_perceptual": g_perc}
    out = {k: float(v.detach()) for k, v in losses.items()}
    return {**out, "skipped_g": float(skipped_g), "skipped_d": float(skipped_d)}, fake


def _sample_image(seg: torch.Tensor, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """First sample (3D: its middle axial slice): label | real | fake side by side, (C, H, 3W) in [0, 1]
    with C the image channels (the label map in grey on every channel)."""
    pick = (lambda t: t[0, ..., t.shape[-1] // 2]) if real.ndim == 5 else (lambda t: t[0])  # noqa: E731
    lab = pick(seg).argmax(0).float() / max(seg.shape[1] - 1, 1)
    img = [(pick(t).float().clamp(-1, 1) + 1) / 2 for t in (real, fake)]
    return torch.cat([lab.expand_as(img[0]), *img], dim=-1).cpu()


def _tensor(x) -> torch.Tensor:
    """A batch entry as a tensor: TorchIO batches hold ``{tio.DATA: tensor, ...}``, plain loaders the tensor."""
    return x[tio.DATA] if isinstance(x, Mapping) else torch.as_tensor(x)


def train_spade(
    generator: torch.nn.Module,
    discriminator: torch.nn.Module,
    train_items: Sequence[Mapping] | None,
    out_dir: str | Path,
    *,
    iterations: int,
    patch_size: Sequence[int] | None = None,
    loader: Iterable[Mapping] | None = None,
    ignore_index: int | None = None,
    batch_size: int = 1,
    lr_g: float = 1e-4,
    lr_d: float = 4e-4,
    betas: tuple[float, float] = (0.0, 0.9),
    lambda_fm: float = 10.0,
    l1_weight: float = 0.0,
    perceptual: str | os.PathLike | PerceptualTerm | None = None,
    lambda_perceptual: float = 10.0,
    num_classes: int = 3,
    pixdim: Sequence[float] = (2.0, 2.0, 2.5),
    hu_window: Sequence[float] = (-87.0, 199.0),
    label_probabilities: Mapping[int, float] | None = None,
    samples_per_volume: int = 8,
    queue_length: int = 64,
    amp_dtype: str | None = "auto",
    device: str | torch.device = "cpu",
    resume: bool = True,
    progress: bool = True,
    log_every: int = 50,
    checkpoint_every: int = 200,
    distributed: bool = False,
) -> dict:
    """Train the label -> image cGAN on ground-truth (label, image) pairs (paper section 3.1), 2D or 3D.

    The paper profile is SPADE's: hinge GAN + ``lambda_fm=10`` feature matching, TTUR Adam ``lr_g=1e-4``,
    ``lr_d=4e-4``, ``betas=(0, 0.9)``, no L1. ``l1_weight > 0`` adds an L1 reconstruction term, which is
    not in the paper: a small CPU profile (minutes, not days) uses it (e.g. 10) so the generator gives
    usable intensities early. ``perceptual``: a :class:`PerceptualTerm` or the path of local feature-network
    weights (nothing is downloaded); off by default.

    Engine: a plain ignite ``Engine`` running :func:`spade_step`. MONAI's ``AdversarialTrainer`` does not fit:
    it treats the generator input as the "real" sample, gives the discriminator no condition, has no
    feature matching, and autocasts only on CUDA (here bf16 autocast runs on the CPU as well).

    Checkpoints (generator, discriminator, both optimizers, engine state) go to ``out_dir/models`` every
    ``checkpoint_every`` iterations (the newest two kept, across runs) and at the end, on Ctrl-C / SIGTERM or on
    an exception (``checkpoint_final.pt``); with ``resume`` the newest readable one is loaded and training
    continues from its iteration up to ``iterations`` (a total, not an increment; a checkpoint beyond it is an
    error, see :func:`~synthcp3d.engines.checkpoints.run_checkpointed`). The batch stream has random generators
    of its own (saved at its start) and a resumed run first replays it up to the saved iteration (logged:
    ``replaying N batches of the data stream``; patch sampling / loading only, no network), so a run that is
    interrupted and resumed ends with the same weights as one that is not (single process; not with a loader whose
    workers deliver out of order, ``in_order=False``: a warning, and a fresh data order). Files:
    :data:`SPADE_LAYOUT`. With
    ``distributed`` (under ``torchrun``) both networks are DDP-wrapped, cases are sharded across ranks (a
    ``loader`` must shard itself, e.g. ``make_scene_loader(distributed=True)``) and only rank 0 writes.

    Data: with ``loader=None``, ``train_items`` (CT) become TorchIO patches (:func:`make_patch_queue`, the
    settings ``patch_size`` .. ``queue_length``). Otherwise ``loader`` is iterated instead (``train_items``
    is ignored, may be None): any re-iterable of ``{"image": (B, C, *S) in [-1, 1], "label": (B, 1, *S)
    int}`` with ``len()``, e.g. 2D scenes from :func:`make_scene_loader`; ``patch_size``, if given, is then
    only checked against the networks.

    Args:
        generator: e.g. :class:`~synthcp3d.networks.SPADEGenerator` ``(B, num_classes, *P) -> (B, C, *P)``.
        discriminator: e.g. :class:`~synthcp3d.networks.ConditionalDiscriminator` ``(seg, image)``.
        train_items: MONAI datalist ``[{"image", "label", "case_id"}]`` (CT patches), or None with ``loader``.
        iterations: total training iterations (one G and one D update each).
        patch_size: patch ``(X, Y, Z)`` (2D: ``(H, W)``); must be divisible by the generator's total
            upsampling factor. Required without ``loader``.
        loader: batches to train on instead of the CT patch queue (see above).
        ignore_index: label value encoded as an all-zero one-hot vector (e.g. 255 in Cityscapes).
        batch_size: patches per iteration (patch queue only; a ``loader`` batches itself).
        label_probabilities: patch-centre class probabilities (default ``{0: 1, 1: 2, 2: 3}``).
        samples_per_volume, queue_length: TorchIO queue settings.
        amp_dtype: precision request (``"auto"``, ``"float32"``, ``"bfloat16"``; see ``engines.precision``);
            inputs are channels-last.
        log_every: TensorBoard scalars and a sample slice every so many iterations.

    Returns:
        ``{"generator": path of generator.pt, "iterations": final iteration, "start_iteration": iteration
        resumed from (0 for a fresh run), "losses": last step's losses, "checkpoint": newest checkpoint}``.
    """
    precision = resolve_precision(amp_dtype, device)
    if loader is None and (train_items is None or patch_size is None):
        raise ValueError("train_spade needs train_items and patch_size (CT patch queue) or a loader")
    if patch_size is not None:
        seed = _check_roi(generator, patch_size, "patch_size")
        if precision.dtype is not None and seed is not None and len(seed) == 3 and min(seed) <= 2:
            logger.warning("generator seed %s has an axis <= 2: CPU bf16 conv3d gradients are then randomly NaN "
                           "(such updates are skipped); use a larger patch or fewer upsamplings", seed)  # fmt: skip
        if hasattr(unwrap(discriminator), "check_shape"):
            unwrap(discriminator).check_shape(tuple(patch_size))
    out_dir = Path(out_dir)
    model_dir = out_dir / "models"
    main = is_main_process()
    model_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    generator, discriminator = generator.to(device), discriminator.to(device)
    if distributed and device.type == "cuda":
        generator = torch.nn.SyncBatchNorm.convert_sync_batchnorm(generator)  # NVlabs: synchronised batch norm
    net_g = wrap_ddp(generator, device) if distributed else generator
    net_d = wrap_ddp(discriminator, device) if distributed else discriminator
    opt_g = torch.optim.Adam(net_g.parameters(), lr=lr_g, betas=(float(betas[0]), float(betas[1])))
    opt_d = torch.optim.Adam(net_d.parameters(), lr=lr_d, betas=(float(betas[0]), float(betas[1])))
    if perceptual is not None and not isinstance(perceptual, PerceptualTerm):
        perceptual = PerceptualTerm(weights=perceptual)
    if perceptual is not None:
        perceptual = perceptual.to(device) if perceptual.enabled else None

    if loader is None:
        queue = make_patch_queue(train_items, patch_size, pixdim=pixdim, hu_window=hu_window,
                                 label_probabilities=label_probabilities, samples_per_volume=samples_per_volume,
                                 queue_length=queue_length, distributed=distributed)  # fmt: skip
        loader = tio.SubjectsLoader(queue, batch_size=batch_size, num_workers=0, drop_last=True)
        sampler = queue.subject_sampler
        if len(loader) < 1:
            raise ValueError(f"the patch queue yields {len(queue)} patches per pass, fewer than "
                             f"batch_size={batch_size}")  # fmt: skip
    else:
        sampler = getattr(loader, "sampler", None)
    epoch_length = len(loader)
    if epoch_length < 1:
        raise ValueError("the loader yields no batch (fewer items than its batch size?)")

    loss_kw = {
        "lambda_fm": lambda_fm,
        "l1_weight": l1_weight,
        "perceptual": perceptual,
        "lambda_perceptual": lambda_perceptual,
        "amp_dtype": precision,
    }

    def step(engine: Engine, batch: dict) -> dict[str, float]:
        seg = to_channels_last(one_hot(_tensor(batch["label"])[:, 0], num_classes, ignore_index, dim=1).to(device))
        real = to_channels_last(_tensor(batch["image"]).float().to(device))
        losses, fake = spade_step(net_g, net_d, opt_g, opt_d, seg, real, **loss_kw)
        if main and engine.state.iteration % log_every == 0:
            engine.state.sample = _sample_image(seg, real, fake)
        return losses

    engine = Engine(step)
    state = {"generator": generator, "discriminator": discriminator, "opt_g": opt_g, "opt_d": opt_d,
             "engine": engine}  # fmt: skip
    if main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(out_dir / "tb"))
        TensorBoardStatsHandler(summary_writer=writer, iteration_log=log_every, epoch_log=False,
                                output_transform=lambda o: o).attach(engine)  # fmt: skip

        @engine.on(Events.ITERATION_COMPLETED(every=log_every))
        def _log_sample(e: Engine) -> None:
            sample = getattr(e.state, "sample", None)
            if sample is not None:
                writer.add_image("samples/label_real_fake", sample, e.state.iteration)
                e.state.sample = None

        engine.add_event_handler(Events.COMPLETED, lambda _: writer.flush())
        if progress:
            from ignite.handlers import ProgressBar

            ProgressBar(desc=f"spade {out_dir.name}", persist=False).attach(
                engine, output_transform=lambda o: {"g": o["loss_g"], "d": o["loss_d"]}
            )

    # checkpoints every checkpoint_every iterations and checkpoint_final.pt at the end, on Ctrl-C / SIGTERM or on
    # an exception; resumed from the newest readable one (asking for no more than is done runs nothing) with the
    # batch stream replayed from its start to the saved iteration, so the resumed run sees the same batches
    with flush_denormals(device):
        start = run_checkpointed(engine, _Forever(loader, sampler), state, model_dir, every=checkpoint_every,
                                 max_iterations=iterations, epoch_length=epoch_length, resume=resume, write=main,
                                 map_location=device, desc=f"SPADE training {out_dir.name}",
                                 replay_from_start=_replayable(loader))  # fmt: skip
    last = dict(engine.state.output) if isinstance(engine.state.output, dict) else {}
    if main:
        torch.save(unwrap(generator).state_dict(), model_dir / "generator.pt")
        writer.close()
    newest = latest_checkpoint(model_dir)
    return {"generator": str(model_dir / "generator.pt"), "iterations": int(engine.state.iteration),
            "start_iteration": start, "losses": last, "checkpoint": str(newest) if newest else None}  # fmt: skip


def _bilinear_inverse(ops: list) -> list:
    """Copy of MONAI ``applied_operations`` whose resampling modes are bilinear: the label map was resampled
    with nearest, but the synthesized intensities are inverted with (bi/tri)linear interpolation."""
    ops = copy.deepcopy(ops)
    for op in ops:
        extra = op.get("extra_info") if isinstance(op, dict) else None
        if isinstance(extra, dict) and "mode" in extra:
            extra["mode"] = "bilinear"
    return ops


@torch.no_grad()
def synthesize(
    generator: torch.nn.Module,
    labels: torch.Tensor,
    num_classes: int,
    *,
    ignore_index: int | None = None,
    roi_size: Sequence[int] | None = None,
    overlap: float = 0.25,
    sw_batch_size: int = 1,
    amp_dtype: str | None = "auto",
) -> torch.Tensor:
    """``x̂ = G(ŷ)`` for a batch of label maps (eval mode: batch-norm running statistics).

    Args:
        generator: ``(B, num_classes, *S) -> (B, C, *S)`` in [-1, 1], e.g. a trained SPADEGenerator.
        labels: integer label maps (B, 1, *S) on the generator's device (``ignore_index`` -> no label signal).
        roi_size: None runs the whole map at once (padded to the generator's next valid shape, output cropped
            back); otherwise a Gaussian-blended ``SlidingWindowInferer(roi_size)`` (each axis must fit the
            generator), for maps too large for one pass.

    Returns:
        float32 (B, C, *S) in [-1, 1], on the labels' device.
    """
    generator = unwrap(generator).eval()
    seg = one_hot(torch.as_tensor(labels)[:, 0], num_classes, ignore_index, dim=1)
    shape = tuple(seg.shape[2:])
    if roi_size is None:
        # one pass over the whole map: no window seams, and no overlap computed twice. The map is padded (edge
        # labels replicated) to the generator's next valid shape and the output cropped back.
        factor = getattr(generator, "total_factor", (1,) * len(shape))
        pad = [(-s) % f for s, f in zip(shape, factor, strict=True)]
        if any(pad):
            seg = F.pad(seg, [v for p in reversed(pad) for v in (0, p)], mode="replicate")
    _check_roi(generator, roi_size if roi_size is not None else seg.shape[2:], "roi_size" if roi_size else "size")
    seg = to_channels_last(seg)
    with flush_denormals(seg.device):
        if roi_size is None:
            with autocast_context(seg.device, amp_dtype):
                y = generator(seg)[(slice(None), slice(None), *(slice(0, s) for s in shape))]
        else:
            window = SlidingWindowInferer(tuple(roi_size), sw_batch_size, overlap=overlap, mode="gaussian")
            y = AutocastInferer(window, dtype=amp_dtype)(seg, generator)
    return y.float().clamp(-1, 1).contiguous()


@torch.no_grad()
def synthesize_images(
    generator: torch.nn.Module,
    index: Mapping[str, Mapping],
    out_dir: str | Path,
    *,
    size: Sequence[int],
    num_classes: int,
    ignore_index: int | None = 255,
    amp_dtype: str | None = "auto",
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict[str, str]:
    """2D: synthesize an RGB image from every predicted label PNG.

    Each ``pred`` PNG (uint8 class map) is resized (nearest) to ``size`` — the generator's training size —,
    synthesized by :func:`synthesize`, resized back (bilinear) to the PNG's own size and written as uint8 RGB.

    Args:
        index: ``{case_id: {"pred": path of a uint8 label PNG, ...}}``.
        out_dir: writes ``<out_dir>/<case_id>/synth.png``.
        size: ``(H, W)`` the generator runs at.

    Returns:
        ``{case_id: path of synth.png}``.
    """
    from tqdm.auto import tqdm

    device = torch.device(device)
    generator = unwrap(generator).to(device)
    out = {}
    for cid, rec in tqdm(sorted(index.items()), desc="synthesize", unit="image", disable=not progress):
        pred = torch.as_tensor(read_png(rec["pred"]).astype(np.int64))
        if pred.ndim != 2:
            raise ValueError(f"{rec['pred']}: expected a single-channel label PNG, got shape {tuple(pred.shape)}")
        lab = F.interpolate(pred[None, None].float(), size=tuple(size), mode="nearest").long().to(device)
        y = synthesize(generator, lab, num_classes, ignore_index=ignore_index, amp_dtype=amp_dtype)
        y = F.interpolate(y, size=tuple(pred.shape), mode="bilinear", align_corners=False)  # identity at equal size
        rgb = ((y[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).movedim(0, -1).cpu().numpy()
        path = Path(out_dir) / cid / "synth.png"
        write_png(path, rgb if rgb.shape[-1] > 1 else rgb[..., 0])
        out[cid] = str(path)
    return out


@torch.no_grad()
def synthesize_volumes(
    generator: torch.nn.Module,
    index: Mapping[str, Mapping],
    out_dir: str | Path,
    *,
    roi_size: Sequence[int] | None = None,
    num_classes: int = 3,
    pixdim: Sequence[float] = (2.0, 2.0, 2.5),
    hu_window: Sequence[float] = (-87.0, 199.0),
    amp_dtype: str | None = "auto",
    overlap: float = 0.25,
    sw_batch_size: int = 1,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict[str, str]:
    """Synthesize ``x̂ = G(ŷ)`` for every predicted label map and save it in HU on the prediction's grid.

    Each ``pred`` NIfTI is reoriented to RAS and resampled (nearest) to ``pixdim``, one-hot encoded,
    passed through ``generator`` (whole volume, or a Gaussian-weighted ``SlidingWindowInferer(roi_size)``)
    under ``amp_dtype`` autocast, mapped from [-1, 1] to HU (``(y + 1) / 2 * (hi - lo) + lo``), inverted with
    MONAI ``Invertd`` (linear interpolation) onto the prediction's own grid and clipped to ``hu_window``. The
    generator runs in eval mode (batch-norm running statistics).

    Args:
        generator: label -> image network ``(B, num_classes, *roi) -> (B, 1, *roi)`` in [-1, 1].
        index: ``{case_id: {"pred": path, "image": path, ...}}``, e.g. the segmenter's ``predictions/index.json``.
        out_dir: writes ``<out_dir>/<case_id>/synth.nii.gz`` (float32).
        roi_size: None (default) synthesizes each volume in one pass (no window seams); else a sliding-window size,
            each axis divisible by the generator's total upsampling factor (for volumes too large for one pass).

    Returns:
        ``{case_id: path of synth.nii.gz}``.

    Raises:
        ValueError: if ``roi_size`` does not fit the generator.
    """
    from tqdm.auto import tqdm

    if roi_size is not None:
        _check_roi(generator, roi_size, "roi_size")
    device = torch.device(device)
    generator = unwrap(generator).to(device).eval()
    pre = mt.Compose([*load_resampled(["pred"], pixdim, ["nearest"]), mt.EnsureTyped(keys="pred", track_meta=True)])
    invert = mt.Invertd(keys="synth", transform=pre, orig_keys="pred", nearest_interp=False, to_tensor=True)
    lo, hi = float(hu_window[0]), float(hu_window[1])
    out = {}
    for cid, rec in tqdm(sorted(index.items()), desc="synthesize", unit="case", disable=not progress):
        data = pre({"pred": rec["pred"]})
        lab = data["pred"].as_tensor()[None].round().to(device)
        y = synthesize(generator, lab, num_classes, roi_size=roi_size, overlap=overlap, sw_batch_size=sw_batch_size,
                       amp_dtype=amp_dtype)[0].cpu()  # fmt: skip
        synth = (y + 1) / 2 * (hi - lo) + lo
        data["synth"] = MetaTensor(
            synth,
            meta=copy.deepcopy(data["pred"].meta),
            applied_operations=_bilinear_inverse(data["pred"].applied_operations),
        )
        synth = invert(data)["synth"]
        path = Path(out_dir) / cid / "synth.nii.gz"
        write_nifti(path, synth[0].numpy().clip(lo, hi).astype(np.float32), np.asarray(synth.affine, np.float64))
        out[cid] = str(path)
    return out
