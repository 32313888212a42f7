"""Checkpoint helpers shared by every workflow."""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["latest_checkpoint", "load_weights"]


def latest_checkpoint(model_dir: str | Path) -> Path | None:
    """The most recently written ``checkpoint_*.pt`` in ``model_dir`` (None if there is none)."""
    found = sorted(Path(model_dir).glob("checkpoint_*.pt"), key=lambda p: p.stat().st_mtime_ns)
    return found[-1] if found else None


def load_weights(network: torch.nn.Module, path: str | Path, hint: str = "") -> torch.nn.Module:
    """Load a ``state_dict`` file into ``network`` and return the network.

    Raises:
        FileNotFoundError: naming the missing file and, with ``hint``, the command that produces it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights at {path}" + (f": {hint}" if hint else ""))
    network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return network
