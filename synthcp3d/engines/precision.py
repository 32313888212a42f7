"""One precision policy for every engine: which autocast dtype and memory layout to use, chosen from the hardware.

bf16 is only fast where the hardware computes it. On a CPU without AVX512-BF16 or AMX, PyTorch emulates it: measured
on a 2-core AVX2 EPYC, a 1024^2 matmul ran at 0.8 GFLOP/s in bf16 against 122 in fp32, and a segmenter epoch took
41 s against 3 s. So the default everywhere is ``"auto"``, resolved once per process by :func:`resolve_precision`:

- CUDA: bf16 where the device supports it, fp32 otherwise;
- CPU: bf16 only with native bf16 (AVX512-BF16 or AMX), fp32 otherwise.

Channels-last inputs stay on for CPUs in either dtype. A single fp32 ``channels_last_3d`` conv3d measured 1.9x faster
than contiguous on an AVX2 machine and 1.8x on an AVX512-BF16 one, but whole 3D networks gain only 0.92-1.28x in
fp32 (fp32 conv3d hands back contiguous outputs on this torch build) and 1.3-3x with native bf16; the 2D paper
generator gains 1.07-1.12x in fp32 (``benchmarks/networks.md``). On CUDA they are used with bf16 only.

Denormal floats are a second CPU trap: SPADE activations go denormal, and x86 CPUs compute them in microcode
(a 3D GAN step 14.4 -> 2.2 CPU s with flushing). :func:`set_flush_denormals` sets the flag for a process, and
:func:`flush_denormals` is a block that restores whatever state it found.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

__all__ = [
    "AMP_DTYPES",
    "Precision",
    "cpu_description",
    "flush_denormals",
    "flush_denormals_enabled",
    "native_bf16",
    "parse_amp_dtype",
    "resolve_precision",
    "set_flush_denormals",
    "setup_process",
]

logger = logging.getLogger(__name__)

# accepted spellings -> canonical request
AMP_DTYPES = {"auto": "auto", "float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16"}
# environment override for every "auto" in the process (e.g. to run the fp32 path on a bf16 machine)
ENV_VAR = "SYNTHCP3D_AMP_DTYPE"


@dataclass(frozen=True)
class Precision:
    """A resolved precision: ``dtype`` is the autocast dtype (``"bfloat16"``) or ``None`` for plain fp32."""

    dtype: str | None
    channels_last: bool
    reason: str
    requested: str = "auto"

    @property
    def name(self) -> str:
        """``"bfloat16"`` or ``"float32"``."""
        return self.dtype or "float32"

    def describe(self) -> str:
        """One line for logs, e.g. ``precision: float32, channels-last (CPU capability AVX2: no native bf16)``."""
        layout = "channels-last" if self.channels_last else "contiguous"
        return f"precision: {self.name}, {layout} ({self.reason})"

    def as_dict(self) -> dict:
        """JSON-ready settings (``name``, ``dtype``, ``channels_last``, ``reason``, ``requested``)."""
        return {"name": self.name, **asdict(self)}


def parse_amp_dtype(value: str | torch.dtype | None) -> str:
    """Canonical precision request (``"auto"``, ``"float32"`` or ``"bfloat16"``) from a user's value.

    ``None`` and ``torch.float32`` mean fp32, ``torch.bfloat16`` bf16; strings are case-insensitive. Anything else
    raises a ValueError naming the allowed values (fp16 is refused: the engines have no GradScaler).
    """
    if value is None or value is torch.float32:
        return "float32"
    if value is torch.bfloat16:
        return "bfloat16"
    if isinstance(value, str) and value.strip().lower() in AMP_DTYPES:
        return AMP_DTYPES[value.strip().lower()]
    allowed = ", ".join(repr(k) for k in AMP_DTYPES)
    raise ValueError(f"amp_dtype must be one of {allowed}, got {value!r}")


def _cpuinfo(field: str) -> str | None:
    """The first ``field`` line's value in ``/proc/cpuinfo`` (Linux), or None."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field):
            return line.split(":", 1)[1].strip()
    return None


def _cpu_flags() -> set[str]:
    return set((_cpuinfo("flags") or "").split())


def cpu_description() -> str:
    """The CPU for benchmark tables and notes, e.g. ``AVX512 (AMD EPYC)``: torch's capability and the model name."""
    return f"{torch.backends.cpu.get_cpu_capability()} ({_cpuinfo('model name') or 'unknown CPU'})"


def native_bf16(device: str | torch.device = "cpu") -> tuple[bool, str]:
    """Whether ``device`` computes bf16 natively, with the reason in words."""
    dev = torch.device(device)
    if dev.type == "cuda":
        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return ok, f"CUDA {'with' if ok else 'without'} bf16 support"
    if dev.type != "cpu":
        return False, f"{dev.type} device: bf16 not assumed"
    cap = torch.backends.cpu.get_cpu_capability()
    # torch.cpu's probes are private; fall back to the kernel's CPU flags where they are missing
    probe = {n: getattr(torch.cpu, f"_is_{n}_supported", None) for n in ("avx512_bf16", "amx_tile")}
    flags = _cpu_flags() if None in probe.values() else set()
    avx512_bf16 = probe["avx512_bf16"]() if probe["avx512_bf16"] else "avx512_bf16" in flags
    amx = probe["amx_tile"]() if probe["amx_tile"] else "amx_bf16" in flags
    if amx:
        return True, f"CPU capability {cap} with AMX: native bf16"
    if avx512_bf16:
        return True, f"CPU capability {cap} with AVX512-BF16: native bf16"
    return False, f"CPU capability {cap}: no native bf16"


def _resolve(request: str, device_type: str) -> Precision:
    native, why = native_bf16(device_type)
    forced = parse_amp_dtype(os.environ[ENV_VAR]) if request == "auto" and os.environ.get(ENV_VAR) else "auto"
    if forced != "auto":
        dtype, reason = ("bfloat16" if forced == "bfloat16" else None), f"{ENV_VAR}={forced}; {why}"
    elif request == "bfloat16":
        dtype, reason = "bfloat16", f"requested; {why}" + ("" if native else ", so bf16 is emulated and slow")
    elif request == "float32":
        dtype, reason = None, f"requested; {why}"
    else:
        dtype, reason = ("bfloat16" if native else None), why
    channels_last = device_type == "cpu" or dtype is not None
    return Precision(dtype=dtype, channels_last=channels_last, reason=reason, requested=request)


@functools.cache
def _resolve_cached(request: str, device_type: str) -> Precision:
    p = _resolve(request, device_type)
    logger.info(p.describe())
    if p.dtype == "bfloat16" and not native_bf16(device_type)[0]:
        logger.warning("bfloat16 was requested on a device without native bf16: expect 14-150x slower than float32")
    return p


def resolve_precision(amp_dtype: str | torch.dtype | Precision | None = "auto",
                      device: str | torch.device = "cpu") -> Precision:  # fmt: skip
    """Resolve a precision request for ``device`` (once per process and device type; logged once).

    Args:
        amp_dtype: ``"auto"``, ``"float32"``/``"fp32"``/``None``, ``"bfloat16"``/``"bf16"``, or a Precision.
        device: the device the networks run on.
    """
    if isinstance(amp_dtype, Precision):
        return amp_dtype
    return _resolve_cached(parse_amp_dtype(amp_dtype), torch.device(device).type)


def flush_denormals_enabled() -> bool:
    """Whether this thread flushes denormal floats (read back by computing with one: DAZ turns it into 0)."""
    return bool((torch.tensor([1e-39], dtype=torch.float32) * 1.0).item() == 0.0)


def set_flush_denormals(enabled: bool = True) -> bool:
    """Set ``torch.set_flush_denormal`` for this process; returns the previous state.

    Call it before the first parallel torch op: the flag is per thread, new threads inherit it, and worker threads
    that already exist keep computing denormals (a GAN step then gains half as much).
    """
    previous = flush_denormals_enabled()
    torch.set_flush_denormal(enabled)
    return previous


@contextlib.contextmanager
def flush_denormals(device: str | torch.device = "cpu"):
    """Flush denormals inside the block on a CPU ``device`` and restore the state found on entry (a no-op on GPU)."""
    if torch.device(device).type != "cpu":
        yield
        return
    previous = set_flush_denormals(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(previous)


def setup_process(amp_dtype: str | torch.dtype | None = "auto", device: str | torch.device = "cpu") -> Precision:
    """What every bundle config runs first: validate and resolve the precision, flush denormals on CPU.

    Returns the resolved :class:`Precision`; a bad ``amp_dtype`` raises before any data is read.
    """
    precision = resolve_precision(amp_dtype, device)
    if torch.device(device).type == "cpu":
        set_flush_denormals(True)
    return precision
