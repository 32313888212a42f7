"""Comparison module F (paper Sec. 3.2, Fig. 3): a siamese ResNet-18 on (x ⊕ proj(ŷ)) and (x̂ ⊕ proj(ŷ)) with a
per-class score head and a voxel error-map head; plus the "Direct Prediction" ablation (no x̂ branch)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.layers import Conv, Pool
from monai.networks.nets import resnet18

from synthcp3d.data.labels import box_dilate

__all__ = ["DirectPredictor", "RegionRidgeComparator", "SiameseComparator", "class_pooled", "region_stats"]


def _encoder(spatial_dims: int, in_channels: int, widen_factor: float) -> nn.Module:
    # conv1_t_stride=2 (MONAI defaults to 1) makes the stem the standard ResNet-18 one: layer1..4 at /4../32.
    # bias_downsample=False as in the standard ResNet: a conv bias right before BatchNorm gets no gradient.
    return resnet18(
        spatial_dims=spatial_dims,
        n_input_channels=in_channels,
        conv1_t_stride=2,
        feed_forward=False,
        widen_factor=widen_factor,
        bias_downsample=False,
    )


def _pyramid(enc: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """layer1..layer4 outputs of a MONAI ResNet (at 1/4, 1/8, 1/16, 1/32 of the input)."""
    x = enc.maxpool(enc.act(enc.bn1(enc.conv1(x))))
    feats = []
    for layer in (enc.layer1, enc.layer2, enc.layer3, enc.layer4):
        x = layer(x)
        feats.append(x)
    return feats


def class_pooled(levels: list[torch.Tensor], seg: torch.Tensor) -> torch.Tensor:
    """Per-class region means of feature maps: the input of the ``score_pooling="class"`` head.

    ``seg`` (B, C, *S) (probabilities or one-hot) is average-pooled to each level's size and used as weights:
    for class c and level l, ``sum(w_c * f_l) / (sum(w_c) + 1e-3)``. Appended: the class's volume fraction
    ``mean(seg_c)`` and the one-hot class id.

    Shapes: ``levels`` [(B, F_l, *S_l)], ``seg`` (B, C, *S) -> (B, C, sum(F_l) + 1 + C).
    """
    b, c = seg.shape[:2]
    seg = seg.float()
    parts = []
    for f in levels:
        w = F.adaptive_avg_pool3d(seg, f.shape[2:]) if f.ndim == 5 else F.adaptive_avg_pool2d(seg, f.shape[2:])
        w = w.flatten(2)  # (B, C, N)
        parts.append(torch.bmm(w, f.flatten(2).float().transpose(1, 2)) / (w.sum(-1, keepdim=True) + 1e-3))
    frac = seg.flatten(2).mean(-1, keepdim=True)
    ids = torch.eye(c, device=seg.device).expand(b, c, c)
    return torch.cat([*parts, frac, ids], dim=-1)


def region_stats(channels: torch.Tensor, seg: torch.Tensor, shell: int = 2) -> torch.Tensor:
    """Input-resolution intensity statistics of each predicted class region and of a shell around it.

    For class c with (soft) region ``w = seg_c`` and shell ``dilate(w, shell) - w`` (box dilation by
    ``shell`` voxels), the weighted means of every channel. Returned twice: per class (B, C, 2K), and the
    whole table flattened as context for every class, so a head scoring the tumour also sees the pancreas'
    statistics and can compare them (a scan's own contrast and brightness cancel out in such differences).

    Why: the learned pyramid starts at 1/4 resolution, where a 2-voxel tumour is a fraction of a voxel; the
    residual ``x - x̂`` inside and around a region is the comparison SynthCP is about, and these means keep it at
    full resolution.

    Shapes: ``channels`` (B, K, *S), ``seg`` (B, C, *S) -> (B, C, 2K + C * 2K).
    """
    b, c = seg.shape[:2]
    dims = seg.ndim - 2
    seg = seg.float()
    grown = box_dilate(seg, shell, dims)
    ring = (grown - seg).clamp_min(0)
    x = channels.float().flatten(2).transpose(1, 2)  # (B, N, K)
    parts = []
    for w in (seg, ring):
        w = w.flatten(2)  # (B, C, N)
        parts.append(torch.bmm(w, x) / (w.sum(-1, keepdim=True) + 1e-3))
    per_class = torch.cat(parts, dim=-1)  # (B, C, 2K)
    context = per_class.flatten(1)[:, None].expand(b, c, -1)
    return torch.cat([per_class, context], dim=-1)


class _ComparatorBase(nn.Module):
    """Shared body of :class:`SiameseComparator` and :class:`DirectPredictor`: projection of the segmentation,
    one or two ResNet-18 encoders, per-level merge of the branches, and the two heads."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        num_branches: int,
        shared_weights: bool,
        score_head: bool,
        error_head: bool,
        proj_channels: int,
        widen_factor: float,
        fuse_channels: int,
        hidden: int,
        score_pooling: str = "global",
        stat_channels: int = 0,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if score_pooling not in ("global", "class"):
            raise ValueError(f"score_pooling must be 'global' or 'class', got {score_pooling!r}.")
        if not (score_head or error_head):
            raise ValueError("at least one of score_head and error_head must be on.")
        conv = Conv[Conv.CONV, spatial_dims]
        self.spatial_dims = spatial_dims
        self.num_classes = num_classes
        self.num_branches = num_branches
        self.shared_weights = shared_weights
        self.proj = conv(num_classes, proj_channels, kernel_size=1)
        n_enc = 1 if shared_weights else num_branches
        self.encoders = nn.ModuleList(
            _encoder(spatial_dims, in_channels + proj_channels, widen_factor) for _ in range(n_enc)
        )
        widths = [int(c * widen_factor) for c in (64, 128, 256, 512)]
        merge = 3 if num_branches == 2 else 1  # (f(x), f(x̂), |f(x) - f(x̂)|) or f(x)
        self.score_pooling = score_pooling
        # region_stats of this many input-resolution channels join the class-pooled features (0: off)
        self.stat_channels = int(stat_channels) if score_pooling == "class" else 0
        n_stats = self.stat_channels * 2 * (1 + num_classes)
        self.score_head = None
        if score_head and score_pooling == "class":
            # per class: its region's mean of every merged level, the region's volume fraction, the class id
            self.score_head = nn.Sequential(
                nn.Linear(merge * sum(widths) + 1 + num_classes + n_stats, hidden),
                nn.ReLU(inplace=True),
                nn.Linear(hidden, 1),
            )
        elif score_head:
            self.score_head = nn.Sequential(
                Pool[Pool.ADAPTIVEAVG, spatial_dims](1),
                nn.Flatten(),
                nn.Linear(merge * widths[3], hidden),
                nn.ReLU(inplace=True),
                nn.Linear(hidden, num_classes),
            )
        self.error_lateral = None
        if error_head:
            self.error_lateral = nn.ModuleList(conv(merge * w, fuse_channels, kernel_size=1) for w in widths)
            self.error_out = nn.Sequential(
                nn.ReLU(inplace=True),
                conv(fuse_channels, fuse_channels, kernel_size=3, padding=1),
                nn.ReLU(inplace=True),
                conv(fuse_channels, 1, kernel_size=1),
            )

    def _check(self, seg: torch.Tensor, *images: torch.Tensor) -> None:
        if seg.ndim != self.spatial_dims + 2 or seg.shape[1] != self.num_classes:
            raise ValueError(f"seg must be (B, {self.num_classes}, *{self.spatial_dims} dims), got {tuple(seg.shape)}.")
        for im in images:
            if im.shape[0] != seg.shape[0] or im.shape[2:] != seg.shape[2:]:
                raise ValueError(f"image {tuple(im.shape)} does not match seg {tuple(seg.shape)}.")

    def _stat_inputs(self, images: list[torch.Tensor]) -> torch.Tensor:
        """The channels :func:`region_stats` summarises: the image, or x, x̂ and x - x̂ for two branches."""
        if len(images) == 2:
            return torch.cat([images[0], images[1], images[0] - images[1]], dim=1)
        return images[0]

    def _run(self, images: list[torch.Tensor], seg: torch.Tensor) -> dict[str, torch.Tensor]:
        p = self.proj(seg)
        pyramids = [
            _pyramid(self.encoders[0 if self.shared_weights else i], torch.cat([im.to(p.dtype), p], dim=1))
            for i, im in enumerate(images)
        ]
        if len(pyramids) == 2:
            levels = [torch.cat([a, b, (a - b).abs()], dim=1) for a, b in zip(*pyramids, strict=True)]
        else:
            levels = pyramids[0]
        out: dict[str, torch.Tensor] = {}
        if self.score_head is not None and self.score_pooling == "class":
            pooled = class_pooled(levels, seg)
            if self.stat_channels:
                pooled = torch.cat([pooled, region_stats(self._stat_inputs(images), seg).to(pooled.dtype)], dim=-1)
            out["scores"] = torch.sigmoid(self.score_head(pooled).squeeze(-1))
        elif self.score_head is not None:
            out["scores"] = torch.sigmoid(self.score_head(levels[-1]))
        if self.error_lateral is not None:
            mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
            size = levels[0].shape[2:]
            fused = self.error_lateral[0](levels[0])
            for lat, f in zip(self.error_lateral[1:], levels[1:], strict=True):
                fused = fused + F.interpolate(lat(f), size=size, mode=mode, align_corners=False)
            logits = self.error_out(fused)
            out["error_logits"] = F.interpolate(logits, size=seg.shape[2:], mode=mode, align_corners=False)
        return out


class SiameseComparator(_ComparatorBase):
    """SynthCP comparison network F(x, x̂, ŷ) (paper eq. 5, Fig. 3), dims-generic.

    Each branch encodes ``image ⊕ proj(seg)`` with MONAI :func:`~monai.networks.nets.resnet18`
    (``conv1_t_stride=2``: the standard ResNet-18 stem; MONAI's default stride 1 runs every stage at twice
    the resolution). ``proj`` is a 1^d conv from the class probabilities to ``proj_channels``. The
    branches' layer1..4 maps are merged per level as (f(x), f(x̂), |f(x) - f(x̂)|). Heads:

    - score head: global average pool of the merged layer4 -> MLP -> sigmoid: per-class score in [0, 1]
      (IoU in 2D, Dice in 3D; eq. 6);
    - error head: 1^d lateral convs on the four merged levels, upsampled (linearly) to layer1 resolution
      (1/4) and summed, a 3^d conv, a 1^d conv to one channel, upsampled (linear) to the input size:
      error-map *logits* (eq. 7; apply sigmoid for the map, train with BCE-with-logits).

    No ImageNet weights (the paper's are 2D RGB ImageNet ones, and nothing is downloaded): trained from
    scratch.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        num_classes: classes of the segmentation (channels of ``seg``).
        shared_weights: one encoder for both branches (paper text) or two (the official code).
        score_head: predict per-class scores. ``False`` with ``error_head`` = "separate" training of the map.
        error_head: predict the error map.
        proj_channels: channels of the projected segmentation concatenated to each image.
        widen_factor: ResNet width multiplier (1.0: 64..512 channels; 0.25 for tiny CPU tests).
        fuse_channels: channels of the error head.
        hidden: hidden units of the score MLP.
        score_pooling: ``"global"`` (the paper: average pool of the merged layer4) or ``"class"``: each class's
            score from the merged features of all four levels averaged inside that class's predicted region
            (:func:`class_pooled`), so a small structure such as a tumour is not diluted by the whole crop.
        region_stats: with ``score_pooling="class"``, also give the score head the full-resolution means of
            x, x̂ and x - x̂ inside and around every predicted class region (:func:`region_stats`).

    Shapes: ``image``, ``synth`` (B, in_channels, *S); ``seg`` (B, num_classes, *S) softmax probabilities or
    one-hot of ŷ -> dict with ``"scores"`` (B, num_classes) and/or ``"error_logits"`` (B, 1, *S).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        shared_weights: bool = True,
        score_head: bool = True,
        error_head: bool = True,
        proj_channels: int = 3,
        widen_factor: float = 1.0,
        fuse_channels: int = 64,
        hidden: int = 256,
        score_pooling: str = "global",
        region_stats: bool = False,
    ) -> None:
        super().__init__(
            spatial_dims, in_channels, num_classes, 2, shared_weights, score_head, error_head,
            proj_channels, widen_factor, fuse_channels, hidden, score_pooling, 3 * in_channels * region_stats,
        )  # fmt: skip

    def forward(self, image: torch.Tensor, synth: torch.Tensor, seg: torch.Tensor) -> dict[str, torch.Tensor]:
        self._check(seg, image, synth)
        return self._run([image, synth], seg)


class DirectPredictor(_ComparatorBase):
    """The paper's "Direct Prediction" ablation: the same encoder and heads as :class:`SiameseComparator` on
    ``image ⊕ proj(seg)`` only (no synthesised image).

    Args: as :class:`SiameseComparator`, without ``shared_weights``; ``region_stats`` summarises x alone, so
    the ablation differs from SynthCP only by the synthesized image.

    Shapes: ``image`` (B, in_channels, *S), ``seg`` (B, num_classes, *S) -> dict with ``"scores"``
    (B, num_classes) and/or ``"error_logits"`` (B, 1, *S).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        score_head: bool = True,
        error_head: bool = True,
        proj_channels: int = 3,
        widen_factor: float = 1.0,
        fuse_channels: int = 64,
        hidden: int = 256,
        score_pooling: str = "global",
        region_stats: bool = False,
    ) -> None:
        super().__init__(
            spatial_dims, in_channels, num_classes, 1, True, score_head, error_head,
            proj_channels, widen_factor, fuse_channels, hidden, score_pooling, in_channels * region_stats,
        )  # fmt: skip

    def forward(self, image: torch.Tensor, seg: torch.Tensor) -> dict[str, torch.Tensor]:
        self._check(seg, image)
        return self._run([image], seg)


class RegionRidgeComparator(nn.Module):
    """A comparator sized to a few dozen cases: full-resolution region statistics and a ridge regression per class.

    Features of a sample (:func:`region_stats` with a ``shell``-voxel shell): the weighted means of ``x`` in and
    around every predicted class region, plus, with ``num_branches=2`` (SynthCP), of the residual ``r = x - x̂``,
    ``|r|`` and ``r^2``; and each class's volume fraction. The same features without the residual
    (``num_branches=1``) are the Direct Prediction ablation, so the two differ only in whether the synthesized
    image is compared. :meth:`fit` solves a ridge regression from the standardised features to each class's Dice
    in closed form; the fitted numbers are buffers, so ``state_dict`` save / load works as for the CNN comparators.
    The voxel error map is a logistic function of ``|r|`` and of the segmentation's own uncertainty
    ``1 - max_c ŷ_c`` (fit by Newton's method; Direct Prediction: of the uncertainty alone, so its map ranks voxels
    as MSP does, and SynthCP's beats it only where the residual adds information).

    Why: with ~20-30 training cases (x 5 perturbed copies) the CNN comparators did not learn a useful score (demo,
    fp32, 32 CV cases: tumour MAE 36-37 against a Dice spread of median 0.20, Pearson -0.12 / -0.02), while a ridge
    regression on shape features (the VAE alarm) reached a Pearson of 0.60 on the same cases.

    Shapes: ``image``, ``synth`` (B, K, *S), ``seg`` (B, C, *S) -> ``{"scores": (B, C)`` in [0, 1]
    (column 0, background, is unused), ``"error_logits": (B, 1, *S)``}``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int, num_branches: int = 2,
                 alpha: float = 1.0, shell: int = 2, feature_set: str = "full") -> None:  # fmt: skip
        super().__init__()
        if spatial_dims not in (2, 3) or num_branches not in (1, 2) or in_channels < 1:
            raise ValueError(f"need spatial_dims 2|3, num_branches 1|2, in_channels >= 1; got {spatial_dims}, "
                             f"{num_branches}, {in_channels}")  # fmt: skip
        if feature_set not in ("full", "compact"):
            raise ValueError(f"feature_set must be 'full' or 'compact', got {feature_set!r}")
        self.spatial_dims, self.num_classes, self.num_branches = spatial_dims, num_classes, num_branches
        self.alpha, self.shell, self.feature_set = float(alpha), int(shell), feature_set
        if feature_set == "full":
            k = in_channels * (4 if num_branches == 2 else 1)
            self.num_features = 2 * k + num_classes * 2 * k + num_classes
        else:
            k = in_channels * (3 if num_branches == 2 else 1)
            self.num_features = 3 * k + 1
        self.register_buffer("mean", torch.zeros(self.num_features))
        self.register_buffer("scale", torch.ones(self.num_features))
        self.register_buffer("coef", torch.zeros(num_classes, self.num_features))
        self.register_buffer("intercept", torch.full((num_classes,), 0.5))
        # error logit = a_r * mean_channels |r| + a_u * (1 - max_c ŷ_c) + b
        self.register_buffer("error_coef", torch.tensor([0.0, 0.0, -4.0]))

    def features(self, image: torch.Tensor, seg: torch.Tensor, synth: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, C, num_features)``. ``"full"``: class c's own statistics, the whole table as context, the volume
        fractions. ``"compact"``: for class c only the means of each channel in c, in its shell and in the other
        foreground classes, and log(volume fraction of c); channels x (and r, |r|)."""
        chans = [image.float()]
        if self.num_branches == 2:
            if synth is None:
                raise ValueError("the SynthCP comparator needs the synthesized image")
            r = image.float() - synth.float()
            chans += [r, r.abs()] if self.feature_set == "compact" else [r, r.abs(), r * r]
        seg = seg.float()
        ch = torch.cat(chans, 1)
        if self.feature_set == "compact":
            return _compact_features(ch, seg, self.shell)
        stats = region_stats(ch, seg, self.shell)
        frac = seg.flatten(2).mean(-1)  # (B, C)
        return torch.cat([stats, frac[:, None].expand(-1, seg.shape[1], -1)], dim=-1)

    @staticmethod
    def error_features(image: torch.Tensor, seg: torch.Tensor, synth: torch.Tensor | None) -> torch.Tensor:
        """(B, 2, *S): the residual magnitude ``mean_k |x_k - x̂_k|`` (0 without ``synth``) and the segmentation's
        own uncertainty ``1 - max_c ŷ_c`` (0 for a one-hot ŷ), the voxel inputs of the error map."""
        u = 1.0 - seg.float().amax(1, keepdim=True)
        r = torch.zeros_like(u) if synth is None else (image.float() - synth.float()).abs().mean(1, keepdim=True)
        return torch.cat([r, u], 1)

    def forward(self, image: torch.Tensor, *rest: torch.Tensor) -> dict[str, torch.Tensor]:
        synth, seg = (rest[0], rest[1]) if self.num_branches == 2 else (None, rest[0])
        f = (self.features(image, seg, synth) - self.mean) / self.scale  # (B, C, F)
        e = self.error_features(image, seg, synth)
        w = self.error_coef.to(e.dtype)
        return {"scores": ((f * self.coef).sum(-1) + self.intercept).clamp(0.0, 1.0),
                "error_logits": w[0] * e[:, :1] + w[1] * e[:, 1:] + w[2]}

    @torch.no_grad()
    def fit(self, samples: list[dict]) -> None:
        """Fit on samples with ``image`` (1, *S), [``synth``], ``probs`` (C, *S), ``target`` (C,) (NaN: no
        target) and optionally ``error`` (1, *S) / ``ignore``. Each class's ridge is
        :func:`~synthcp3d.alarms.vae.fit_dice_regressor` (the VAE alarm's) on that class's standardised features."""
        from synthcp3d.alarms.vae import fit_dice_regressor  # alarms build on networks, not the other way round

        if not samples:
            raise ValueError("no labelled samples to fit")
        feats, targets, res, errs = [], [], [], []
        for s in samples:
            synth = s.get("synth")
            f = self.features(s["image"][None], torch.as_tensor(s["probs"])[None],
                              None if synth is None else synth[None])  # fmt: skip
            feats.append(f[0].double())
            targets.append(torch.as_tensor(s["target"]).double())
            if s.get("error") is not None:
                keep = torch.ones_like(s["error"], dtype=torch.bool) if s.get("ignore") is None else ~s["ignore"].bool()
                e = self.error_features(s["image"][None], torch.as_tensor(s["probs"])[None],
                                        synth[None] if self.num_branches == 2 else None)[0]  # (2, *S)
                res.append(e[:, keep[0]][:, ::7].double().T)  # (n, 2)
                errs.append(s["error"][keep].flatten()[::7].double())
        x = torch.stack(feats)  # (N, C, F)
        y = torch.stack(targets).numpy()  # (N, C)
        flat = x.reshape(-1, x.shape[-1])
        mean, scale = flat.mean(0), flat.std(0).clamp_min(1e-6)
        self.mean.copy_(mean.float())
        self.scale.copy_(scale.float())
        z = ((x - mean) / scale).numpy()
        for c in range(self.num_classes):
            params = fit_dice_regressor(z[:, c], y[:, c : c + 1], alpha=self.alpha)
            self.coef[c] = torch.as_tensor(params["coef"][0])
            self.intercept[c] = params["intercept"][0]
        if res:
            x = torch.cat(res)
            used = x.std(0) > 1e-9  # a constant input (no synth; one-hot ŷ) keeps coefficient 0
            theta = _logistic_fit(x[:, used], torch.cat(errs))
            coef = torch.zeros(3, dtype=torch.float64)
            coef[:2][used] = theta[:-1]
            coef[2] = theta[-1]
            self.error_coef.copy_(coef.float())


def _compact_features(channels: torch.Tensor, seg: torch.Tensor, shell: int) -> torch.Tensor:
    """(B, K, *S), (B, C, *S) -> (B, C, 3K + 1): per class c the weighted means of every channel in c, in the
    ``shell`` around c and in the other foreground classes (1..C-1 except c), and ``log(fraction of c + 1e-4)``.

    Why: 3K + 1 numbers per class instead of the full table's (2 + 2C)K + C, for ~20-30 cases: the statistics that
    tell a false-positive region (its own residual), a missed one next to it (the shell, the other classes) and its
    size, which alone predicts much of a small structure's Dice."""
    own = region_stats(channels, seg, shell)[..., : 2 * channels.shape[1]]  # (B, C, 2K): in, shell
    fg = seg.clone()
    fg[:, 0] = 0
    others = (fg.sum(1, keepdim=True) - fg).clamp_min(0)  # (B, C, *S)
    x = channels.float().flatten(2).transpose(1, 2)  # (B, N, K)
    w = others.flatten(2)
    other_means = torch.bmm(w, x) / (w.sum(-1, keepdim=True) + 1e-3)
    logfrac = torch.log(seg.flatten(2).mean(-1, keepdim=True) + 1e-4)
    return torch.cat([own, other_means, logfrac], dim=-1)


def _logistic_fit(x: torch.Tensor, y: torch.Tensor, steps: int = 25, ridge: float = 1e-6) -> torch.Tensor:
    """``(a_1..a_F, b)`` of ``P(y=1) = sigmoid(x @ a + b)`` by Newton's method (x: (n,) or (n, F), y: (n,)
    float64)."""
    x = x[:, None] if x.ndim == 1 else x
    design = torch.cat([x, torch.ones((len(x), 1), dtype=x.dtype)], 1)
    p0 = y.mean().clamp(1e-4, 1 - 1e-4)
    theta = torch.zeros(design.shape[1], dtype=x.dtype)
    theta[-1] = float(torch.log(p0 / (1 - p0)))
    eye = ridge * torch.eye(design.shape[1], dtype=x.dtype)
    for _ in range(steps):
        p = torch.sigmoid(design @ theta)
        grad = design.T @ (p - y)
        hess = (design * (p * (1 - p))[:, None]).T @ design + eye
        theta = theta - torch.linalg.solve(hess, grad)
    return theta
