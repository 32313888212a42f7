"""Errors a user can read: find the project's own error inside a framework's wrapper and make it the last line.

MONAI's config parser re-raises any failure of a ``$`` expression as ``RuntimeError("Failed to evaluate ...")``,
so a bundle run on a bad dataset ends with that line although the cause is a
:class:`~synthcp3d.data.io.DataError` naming the file. :func:`user_error` digs the cause out of the chain; the CLI
prints it, and :func:`install_excepthook` (run when a bundle config imports :mod:`synthcp3d.bundle_excepthook`)
repeats it as the last line of ``python -m monai.bundle run``'s traceback.
"""

from __future__ import annotations

import sys
from types import TracebackType

__all__ = ["install_excepthook", "user_error"]


def user_error(exc: BaseException | None) -> BaseException | None:
    """The first :class:`~synthcp3d.data.io.DataError` in ``exc``'s cause/context chain (``exc`` included), else
    None."""
    from synthcp3d.data.io import DataError

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, DataError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def install_excepthook() -> None:
    """Make an uncaught exception caused by a DataError end with ``synthcp3d: error: <file>: <problem>`` (the
    full traceback stays above it, for whoever debugs). Idempotent; other exceptions print as before."""
    previous = sys.excepthook
    if getattr(previous, "_synthcp3d", False):
        return

    def hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        previous(kind, value, tb)
        cause = user_error(value)
        if cause is not None and cause is not value:
            print(f"\nsynthcp3d: error: {cause}", file=sys.stderr, flush=True)

    hook._synthcp3d = True  # type: ignore[attr-defined]
    sys.excepthook = hook
