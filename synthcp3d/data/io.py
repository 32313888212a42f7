"""Checked readers and writers shared by every loader: one clear :class:`DataError` per bad file.

Each reader names the file and the problem instead of letting a deep library traceback through, so a
user pointing a loader at a broken dataset learns which file to fix.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

__all__ = [
    "DataError",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_finite",
    "check_label_values",
    "read_json",
    "read_png",
    "write_nifti",
    "write_png",
]


class DataError(ValueError):
    """A dataset file is missing, unreadable or inconsistent; the message names file and problem."""

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


def _require_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.is_file():
        raise DataError(p, "file not found" if not p.exists() else "not a regular file")
    return p


def read_json(path: str | os.PathLike) -> dict:
    """Read a JSON object, raising :class:`DataError` for a missing or malformed file."""
    p = _require_file(path)
    try:
        return json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(p, f"not valid JSON ({e})") from None


def read_png(path: str | os.PathLike) -> np.ndarray:
    """Read a PNG as a NumPy array: ``(H, W)`` for label/grey images, ``(H, W, 3)`` for RGB."""
    from PIL import Image, UnidentifiedImageError

    p = _require_file(path)
    try:
        with Image.open(p) as im:
            im.load()
            if im.mode not in ("L", "P", "RGB", "I", "I;16"):
                im = im.convert("RGB")
            return np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(p, f"unreadable or corrupt PNG ({e})") from None


def write_png(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a uint8 ``(H, W)`` or ``(H, W, 3)`` array as PNG, creating parent folders."""
    from PIL import Image

    if array.dtype != np.uint8:
        raise TypeError(f"write_png expects uint8, got {array.dtype}")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(p)


def check_finite(array: np.ndarray, path: str | os.PathLike | None) -> None:
    """Raise :class:`DataError` if ``array`` holds NaN or Inf."""
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        n = int((~np.isfinite(array)).sum())
        raise DataError(path, f"{n} NaN/Inf intensity values")


def check_label_values(array: np.ndarray, allowed: Iterable[int], path: str | os.PathLike | None) -> None:
    """Raise :class:`DataError` if ``array`` holds label values outside ``allowed``."""
    allowed_arr = np.asarray(sorted(set(int(a) for a in allowed)))
    values = np.unique(array)
    if np.issubdtype(values.dtype, np.floating) and not np.all(values == np.round(values)):
        raise DataError(path, "label map holds non-integer values")
    bad = np.setdiff1d(values.astype(np.int64), allowed_arr)
    if bad.size:
        raise DataError(path, f"label values {bad.tolist()[:10]} outside the declared set {allowed_arr.tolist()}")


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and rename, so readers never see half a file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes the file private (0600); give it the usual mode
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Text counterpart of :func:`atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_nifti(path: str | Path, array: np.ndarray, affine: np.ndarray) -> None:
    """Write a NIfTI-1 file with the affine as both qform and sform; ``.gz`` files get a fixed gzip
    timestamp so equal arrays give byte-identical files."""
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.header.set_data_dtype(array.dtype)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    data = img.to_bytes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # level 1: float volumes (probabilities, synthesized CT, error maps) hardly compress (float32 mantissas), and
    # level 1 writes them ~15% faster than level 4 at the same size (measured on a 256x256x96x3 softmax map)
    path.write_bytes(gzip.compress(data, compresslevel=1, mtime=0) if path.suffix == ".gz" else data)
