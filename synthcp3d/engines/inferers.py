"""Mixed-precision helpers usable with any MONAI engine or inferer.

MONAI's ``SupervisedTrainer``/``SupervisedEvaluator`` only autocast on CUDA (``amp=True`` uses
``torch.autocast("cuda")``). On CPUs with native bf16 (AMX) a bf16 channels-last convolution is ~5x faster than
fp32, so :class:`AutocastInferer` wraps any MONAI inferer and runs it under ``torch.autocast`` on the
input's own device (CPU or GPU), returning fp32 so losses and metrics stay in full precision. Which dtype is
used is decided by :mod:`synthcp3d.engines.precision` (``"auto"``: bf16 only where it is native).
"""

from __future__ import annotations

from typing import Any

import torch
from monai.inferers import Inferer, SimpleInferer

from synthcp3d.engines.precision import resolve_precision

__all__ = ["AutocastInferer", "autocast_context", "to_channels_last"]


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """Return ``x`` (``(B, C, *spatial)``) in channels-last memory format for 2D/3D; others unchanged."""
    if x.ndim == 5:
        return x.contiguous(memory_format=torch.channels_last_3d)
    if x.ndim == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def autocast_context(device: torch.device | str, dtype: torch.dtype | str | None = "auto"):
    """``torch.autocast`` on ``device`` for a precision request (``"auto"``, ``"float32"``/``None``, ``"bfloat16"``;
    see :func:`~synthcp3d.engines.precision.resolve_precision`); a disabled autocast when it resolves to fp32."""
    dev = torch.device(device)
    resolved = resolve_precision(dtype, dev).dtype
    if resolved is None:
        return torch.autocast(dev.type, enabled=False)
    return torch.autocast(dev.type, dtype=getattr(torch, resolved))


class AutocastInferer(Inferer):
    """Run ``base`` (default :class:`~monai.inferers.SimpleInferer`) under autocast with channels-last inputs.

    Args:
        base: the MONAI inferer to wrap (e.g. ``SlidingWindowInferer``).
        dtype: precision request: ``"auto"`` (bf16 only where native), ``"float32"``/``None``, ``"bfloat16"``.
        channels_last: convert 4D/5D inputs to channels-last memory format first.
    """

    def __init__(self, base: Inferer | None = None, dtype: str | torch.dtype | None = "auto",
                 channels_last: bool = True) -> None:  # fmt: skip
        super().__init__()
        self.base = base or SimpleInferer()
        self.dtype = dtype
        self.channels_last = channels_last

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> Any:
        """``inputs (B, C, *spatial)`` -> the wrapped inferer's output, floating tensors cast to fp32."""
        if self.channels_last:
            inputs = to_channels_last(inputs)
        with autocast_context(inputs.device, self.dtype):
            out = self.base(inputs, network, *args, **kwargs)
        return _to_float(out)


def _to_float(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, (tuple, list)):
        return type(out)(_to_float(o) for o in out)
    if isinstance(out, dict):
        return {k: _to_float(v) for k, v in out.items()}
    return out
