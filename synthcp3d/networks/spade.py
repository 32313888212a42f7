"""SPADE generator (label map -> image) in the NVlabs layout, dimension-generic, built from MONAI's SPADE block.

MONAI's ``SPADENet`` is not used: it is a different generator (upsampling after every block, so the last
residual block runs at half the output resolution; instance norm; LeakyReLU output instead of tanh) and
does ~9x fewer FLOPs than the reference SPADE generator at an equal parameter count. The paper re-trains
the reference generator (label-only, no image encoder), so it is rebuilt here out of
:class:`monai.networks.blocks.SPADE` normalisation blocks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import SPADE
from monai.networks.layers import Conv
from torch.utils.checkpoint import checkpoint

__all__ = ["SPADEGenerator", "SPADENorm", "SPADEResBlock"]

# Where the generator may upsample, in execution order: after the head block, between the two middle
# blocks, and before each of the four up blocks. NVlabs "normal" (num_up=5) uses all but "middle";
# "more" (num_up=6) uses all six. Fewer upsamplings keep the last (high-resolution) slots.
_SLOTS = ("head", "middle", "up0", "up1", "up2", "up3")
_DEFAULT_ORDER = ("head", "up0", "up1", "up2", "up3")


class SPADENorm(SPADE):
    """MONAI :class:`~monai.networks.blocks.SPADE`, same parameters and outputs, computed with fewer memory passes.

    MONAI builds ``mlp_gamma``/``mlp_beta`` as :class:`~monai.networks.blocks.Convolution` with its default
    ``norm="INSTANCE"``, so gamma and beta are each instance-normalised (affine-free) after their 3^d conv, unlike
    NVlabs' SPADE (plain convs; also ReLU in ``mlp_shared`` where MONAI has LeakyReLU(0.01)). That is the
    architecture of the trained checkpoints, so it is kept; only its evaluation changes:

    - the two instance norms run as training-mode, affine-free batch norms of one-sample views (which is what
      instance norm is), the gamma one with bias 1, so it yields ``1 + gamma`` directly. ``F.instance_norm``
      copies its input to contiguous, returns a contiguous tensor (the next op converts back), is 4-10x slower
      than batch norm's channels-last kernel there, and, on CPU (torch 2.13), returns a wrong input gradient when
      its grad_output is channels-last and the batch has one sample: MONAI's block then trains on wrong
      gamma/beta/mlp_shared gradients in channels-last;
    - ``normalized * (1 + gamma) + beta`` is one ``addcmul`` (in place when autograd does not record), and
      ``mlp_shared``'s LeakyReLU runs in place;
    - no ``x.contiguous()`` (MONAI's forward copies every channels-last activation back to contiguous), and the
      segmap is not re-interpolated when it already has ``x``'s spatial shape (the residual block resizes it once
      for its two or three norms, the generator once per resolution).

    Modules whose layout differs from what this expects (another MONAI version) use MONAI's computation, minus
    the ``contiguous()`` copy. Construction and parameters (state_dict keys) are MONAI's.

    Shapes: ``x`` (B, norm_nc, *S), ``segmap`` (B, label_nc, *S') -> (B, norm_nc, *S).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._fused = _fusable(self)

    def forward(self, x: torch.Tensor, segmap: torch.Tensor) -> torch.Tensor:
        normalized = self.param_free_norm(x)
        if segmap.shape[2:] != x.shape[2:]:
            segmap = F.interpolate(segmap, size=x.shape[2:], mode="nearest")
        if not self._fused:
            actv = self.mlp_shared(segmap)
            return normalized * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)
        actv = F.leaky_relu_(self.mlp_shared.conv(segmap), self.mlp_shared.adn.A.negative_slope)
        eps = self.mlp_gamma.adn.N.eps
        one_plus_gamma = _instance_norm(self.mlp_gamma.conv(actv), eps, shift=1.0)
        beta = _instance_norm(self.mlp_beta.conv(actv), eps)
        if torch.is_grad_enabled() and (normalized.requires_grad or beta.requires_grad):
            return torch.addcmul(beta, normalized, one_plus_gamma)
        return beta.addcmul_(normalized, one_plus_gamma)  # no autograd: reuse beta's buffer


def _fusable(spade: SPADE) -> bool:
    """Whether a MONAI SPADE block has the layout :class:`SPADENorm`'s fast forward assumes: ``mlp_shared`` = conv
    + LeakyReLU, ``mlp_gamma``/``mlp_beta`` = conv + affine-free instance norm without running statistics."""
    try:
        if [type(m) for m in spade.mlp_shared.adn] != [nn.LeakyReLU]:
            return False
        norms = [blk.adn.N for blk in (spade.mlp_gamma, spade.mlp_beta)]
        return (
            all(len(blk.adn) == 1 for blk in (spade.mlp_gamma, spade.mlp_beta))
            and all(isinstance(n, nn.modules.instancenorm._InstanceNorm) for n in norms)
            and not any(n.affine or n.track_running_stats for n in norms)
            and norms[0].eps == norms[1].eps
        )
    except AttributeError:
        return False


def _instance_norm(t: torch.Tensor, eps: float, shift: float = 0.0) -> torch.Tensor:
    """Affine-free instance norm of ``t`` (B, C, *S), plus ``shift``, in ``t``'s memory format.

    Computed as training-mode batch norm (input statistics, no running stats) of a one-sample view, which is what
    instance norm is, with ``shift`` as its bias; without ``F.instance_norm``'s input copy and its slow
    channels-last path.
    """
    b, c = t.shape[:2]
    p_dtype = t.dtype if t.dtype == torch.float64 else torch.float32
    bias = t.new_full((c,), shift, dtype=p_dtype) if shift else None

    def bn(v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.batch_norm(v, None, None, None, bias, training=True, momentum=0.0, eps=eps)

    if b == 1:
        return bn(t, bias)
    if t.is_contiguous():
        return bn(t.view(1, b * c, *t.shape[2:]), None if bias is None else bias.repeat(b)).view_as(t)
    return torch.cat([bn(t[i : i + 1], bias) for i in range(b)])  # channels-last batch: each sample is dense


def _norm_act(norm: SPADENorm, x: torch.Tensor, seg: torch.Tensor, act: bool) -> torch.Tensor:
    y = norm(x, seg)  # a fresh tensor: the activation can overwrite it (leaky_relu's backward needs only its output)
    return F.leaky_relu_(y, 0.2) if act else y


class SPADEResBlock(nn.Module):
    """SPADE residual block (Park et al. 2019): two SPADE-norm -> LeakyReLU -> 3^d conv units, plus a
    SPADE-normed 1^d conv shortcut when the channel count changes.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels.
        label_nc: channels of the one-hot label map.
        hidden_channels: hidden channels of each SPADE block's shared MLP (NVlabs ``nhidden``).
        norm: parameter-free normalisation inside SPADE (``"BATCH"`` as NVlabs, or ``"INSTANCE"``).
        spectral_norm: wrap the block's convolutions in spectral normalisation (NVlabs default).

    Shapes: ``x`` (B, in_channels, *S), ``seg`` (B, label_nc, *S') -> (B, out_channels, *S).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        label_nc: int,
        hidden_channels: int = 128,
        norm: str = "BATCH",
        spectral_norm: bool = True,
    ) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        mid = min(in_channels, out_channels)
        sn = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda m: m)
        self.learned_shortcut = in_channels != out_channels
        self.checkpointing = False  # set by SPADEGenerator(checkpointing=True)
        # conv_0 feeds a parameter-free norm, which removes any bias: none (NVlabs keeps a redundant one).
        self.conv_0 = sn(conv(in_channels, mid, kernel_size=3, padding=1, bias=False))
        self.conv_1 = sn(conv(mid, out_channels, kernel_size=3, padding=1))

        def spade(channels: int) -> SPADENorm:
            return SPADENorm(
                label_nc=label_nc,
                norm_nc=channels,
                kernel_size=3,
                spatial_dims=spatial_dims,
                hidden_channels=hidden_channels,
                norm=norm,
                norm_params={"affine": False},
            )

        self.norm_0 = spade(in_channels)
        self.norm_1 = spade(mid)
        if self.learned_shortcut:
            self.conv_s = sn(conv(in_channels, out_channels, kernel_size=1, bias=False))
            self.norm_s = spade(in_channels)

    def _norm(self, norm: SPADENorm, x: torch.Tensor, seg: torch.Tensor, act: bool = True) -> torch.Tensor:
        if self.checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(_norm_act, norm, x, seg, act, use_reentrant=False)
        return _norm_act(norm, x, seg, act)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        if seg.shape[2:] != x.shape[2:]:  # once for the block's two or three SPADE norms
            seg = F.interpolate(seg, size=x.shape[2:], mode="nearest")
        x_s = _sn_conv(self.conv_s, self._norm(self.norm_s, x, seg, act=False)) if self.learned_shortcut else x
        dx = _sn_conv(self.conv_0, self._norm(self.norm_0, x, seg))
        dx = _sn_conv(self.conv_1, self._norm(self.norm_1, dx, seg))
        if dx.dtype != x_s.dtype:  # (autocast with an fp32 input) keep the out-of-place type promotion
            return x_s + dx
        return dx.add_(x_s)  # conv_1's output is not needed by its backward: add the shortcut in place


def _spectral_norm_of(conv: nn.Module):
    """The eval-mode spectral-norm parametrization of ``conv.weight`` if that is its only one, else None."""
    plist = getattr(getattr(conv, "parametrizations", None), "weight", None)
    if plist is None or len(plist) != 1:
        return None
    sn = plist[0]
    if type(sn).__name__ != "_SpectralNorm" or sn.training or sn.dim != 0 or plist.original.ndim < 3:
        return None
    return sn


def _sn_conv(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for a spectral-normalised conv; in eval mode without materialising ``W / sigma``.

    In eval mode the parametrization does no power iteration, but recomputes ``W / sigma`` (a new copy of the weight,
    plus a ``flatten`` copy of a channels-last weight for ``sigma``) at every forward. Here ``sigma = u^T W v`` is
    computed on a view of the weight in its own memory order, and the 1/sigma goes where it is cheaper: into the
    weight (``conv(x, W / sigma, b)``) when the output is larger than the weight (high resolution, few channels),
    else onto the output (``conv(x, W, b * sigma) / sigma``, the low-resolution 1024-channel blocks). Training mode
    (power iteration, u/v updates) uses the parametrization as is.
    """
    sn = _spectral_norm_of(conv)
    if sn is None:
        return conv(x)
    w = conv.parametrizations.weight.original
    order = sorted(range(1, w.ndim), key=lambda d: -w.stride(d))  # weight dims 1.. in memory order
    w_view = w.permute(0, *order)
    if not w_view.is_contiguous():
        order, w_view = list(range(1, w.ndim)), w.contiguous()
    v = sn._v.view(w.shape[1:]).permute(*(d - 1 for d in order)).reshape(-1)
    with torch.autocast(x.device.type, enabled=False):
        sigma = torch.vdot(sn._u, torch.mv(w_view.reshape(w.shape[0], -1), v))
    out_numel = x.shape[0] * w.shape[0] * math.prod(x.shape[2:])  # stride 1, "same" padding
    if out_numel >= w.numel():
        return conv._conv_forward(x, w / sigma, conv.bias)
    y = conv._conv_forward(x, w, None if conv.bias is None else conv.bias * sigma)
    return y / sigma if torch.is_grad_enabled() and y.requires_grad else y.div_(sigma)


class SPADEGenerator(nn.Module):
    """Label-only SPADE generator (NVlabs layout) for 2D images and 3D volumes.

    The one-hot label map is downsampled (nearest) to the seed shape ``shape / prod(up_factors)``, a 3^d conv
    maps it to ``16 * ngf`` channels, then: head block -> [up] -> middle block -> [up] -> middle block ->
    up blocks 16 -> 8 -> 4 -> 2 -> 1 x ngf (each after an upsampling), LeakyReLU(0.2), 3^d conv to
    ``out_channels``, tanh. With ``num_up=5`` this is NVlabs' "normal" generator, ``num_up=6`` its "more"
    variant (used for Cityscapes at 512x256); ``num_up<5`` keeps the low-resolution blocks at the seed
    resolution (a cheaper profile for small 3D patches). No image encoder: the generator needs only labels.

    Anisotropic 3D patches: ``up_factors`` gives each upsampling's factor, an int or a per-axis tuple
    (each 1 or 2), e.g. a 96x96x32 patch at 0.8x0.8x2.5 mm with
    ``up_factors=[(2, 2, 1), (2, 2, 1), 2, 2, 2]`` grows z 8x and x/y 32x from a 3x3x4 seed.

    Args:
        spatial_dims: 2 or 3.
        label_nc: channels of the one-hot label map; voxels with all channels zero are "ignore" and simply
            receive no label signal.
        out_channels: image channels.
        ngf: base width; the widest blocks have ``16 * ngf`` channels (NVlabs 64; 8-16 for CPU profiles).
        num_up: number of 2x upsamplings (1..6), used when ``up_factors`` is None.
        up_factors: per-upsampling factors (length 1..6), overriding ``num_up``.
        hidden_channels: hidden channels of each SPADE block (NVlabs ``nhidden`` = 128).
        norm: parameter-free norm inside SPADE, ``"BATCH"`` (NVlabs' sync batch norm) or ``"INSTANCE"``.
        spectral_norm: spectral normalisation on the residual blocks' convolutions (NVlabs default).
        checkpointing: activation checkpointing (training mode only): every SPADE normalisation (+ its
            LeakyReLU) inside the residual blocks is recomputed in the backward pass instead of storing its
            hidden maps (``torch.utils.checkpoint``, non-reentrant). Those maps (``hidden_channels`` + 3 x
            ``norm_nc`` channels at full resolution) dominate the activation memory; the price is about one
            more SPADE-norm forward per step. Batch-norm running statistics are updated twice per step.

    Shapes: ``seg`` (B, label_nc, *S) -> image (B, out_channels, *S) in [-1, 1]; each axis of S must be
    divisible by that axis' total upsampling factor (see :meth:`valid_shape`), and the seed must have
    more than one voxel.
    """

    def __init__(
        self,
        spatial_dims: int,
        label_nc: int,
        out_channels: int = 1,
        ngf: int = 64,
        num_up: int = 5,
        up_factors: Sequence[int | Sequence[int]] | None = None,
        hidden_channels: int = 128,
        norm: str = "BATCH",
        spectral_norm: bool = True,
        checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if up_factors is None:
            up_factors = [2] * num_up
        if not 1 <= len(up_factors) <= len(_SLOTS):
            raise ValueError(f"need 1..{len(_SLOTS)} upsamplings, got {len(up_factors)}.")
        factors = []
        for f in up_factors:
            f = (f,) * spatial_dims if isinstance(f, int) else tuple(int(v) for v in f)
            if len(f) != spatial_dims or any(v not in (1, 2) for v in f):
                raise ValueError(f"each up factor must be 1 or 2 per axis ({spatial_dims} axes), got {f}.")
            factors.append(f)
        self.spatial_dims = spatial_dims
        self.label_nc = label_nc
        self.up_factors: tuple[tuple[int, ...], ...] = tuple(factors)
        self.total_factor = tuple(math.prod(f[a] for f in factors) for a in range(spatial_dims))
        slots = _SLOTS if len(factors) == 6 else _DEFAULT_ORDER[-len(factors) :]
        self._slot_factor = dict(zip(slots, self.up_factors, strict=True))

        conv = Conv[Conv.CONV, spatial_dims]
        nf = ngf

        def block(cin: int, cout: int) -> SPADEResBlock:
            return SPADEResBlock(spatial_dims, cin, cout, label_nc, hidden_channels, norm, spectral_norm)

        self.fc = conv(label_nc, 16 * nf, kernel_size=3, padding=1)
        self.head_0 = block(16 * nf, 16 * nf)
        self.middle_0 = block(16 * nf, 16 * nf)
        self.middle_1 = block(16 * nf, 16 * nf)
        self.up_blocks = nn.ModuleList(block(c * nf, c * nf // 2) for c in (16, 8, 4, 2))
        self.conv_img = conv(nf, out_channels, kernel_size=3, padding=1)
        for blk in (self.head_0, self.middle_0, self.middle_1, *self.up_blocks):
            blk.checkpointing = checkpointing

    def valid_shape(self, shape: Sequence[int]) -> bool:
        """Whether a spatial shape is divisible by the total upsampling factor of every axis."""
        return len(shape) == self.spatial_dims and all(
            s % f == 0 and s // f >= 1 for s, f in zip(shape, self.total_factor, strict=True)
        )

    def seed_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """Spatial shape of the seed the label map is downsampled to; ValueError if ``shape`` is invalid."""
        shape = tuple(shape)
        seed = tuple(s // f for s, f in zip(shape, self.total_factor, strict=False))
        if not self.valid_shape(shape) or math.prod(seed) < 2:
            raise ValueError(
                f"SPADEGenerator: spatial shape {shape} is invalid; each axis must be a multiple of the total "
                f"upsampling factor {self.total_factor} (valid sizes: k * {self.total_factor} per axis) and "
                "the seed must have more than one voxel; change the patch size, num_up or up_factors."
            )
        return seed

    def _up(self, x: torch.Tensor, slot: str) -> torch.Tensor:
        f = self._slot_factor.get(slot)
        if f is None:
            return x
        return F.interpolate(x, scale_factor=tuple(float(v) for v in f), mode="nearest")

    def forward(self, seg: torch.Tensor) -> torch.Tensor:
        if seg.ndim != self.spatial_dims + 2 or seg.shape[1] != self.label_nc:
            raise ValueError(
                f"expected a one-hot label map of shape (B, {self.label_nc}, *{self.spatial_dims} dims), "
                f"got {tuple(seg.shape)}."
            )
        seed = self.seed_shape(seg.shape[2:])
        segs: dict[tuple[int, ...], torch.Tensor] = {tuple(seg.shape[2:]): seg}

        def seg_at(size: Sequence[int]) -> torch.Tensor:
            """The label map at ``size``, resized (nearest, from full resolution) once per resolution."""
            size = tuple(size)
            if size not in segs:
                segs[size] = F.interpolate(seg, size=size, mode="nearest")
            return segs[size]

        x = self.fc(seg_at(seed))
        x = self._up(self.head_0(x, seg_at(x.shape[2:])), "head")
        x = self._up(self.middle_0(x, seg_at(x.shape[2:])), "middle")
        x = self.middle_1(x, seg_at(x.shape[2:]))
        for i, blk in enumerate(self.up_blocks):
            x = self._up(x, f"up{i}")
            x = blk(x, seg_at(x.shape[2:]))
        return torch.tanh(self.conv_img(F.leaky_relu_(x, 0.2)))
