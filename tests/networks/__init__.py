"""Network tests; shared checks below."""

from __future__ import annotations

import io

import torch
import torch.nn as nn


def channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last_3d if t.ndim == 5 else torch.channels_last)


def assert_all_grads(model: nn.Module, skip: tuple[str, ...] = ()) -> None:
    """Every trainable parameter received a non-zero gradient."""
    missing = [
        n
        for n, p in model.named_parameters()
        if p.requires_grad and not n.startswith(skip) and (p.grad is None or p.grad.abs().sum() == 0)
    ]
    assert not missing, f"no gradient reached: {missing}"


def state_dict_roundtrip(model: nn.Module, fresh: nn.Module) -> nn.Module:
    """Save ``model``'s state dict through bytes and load it into ``fresh`` (strict)."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    return fresh.eval()
