"""The precision policy: request parsing, hardware-based resolution, denormal flushing."""

import logging

import pytest
import torch

from synthcp3d.engines import precision as P
from synthcp3d.engines.inferers import autocast_context


@pytest.fixture(autouse=True)
def _fresh_cache(monkeypatch):
    monkeypatch.delenv(P.ENV_VAR, raising=False)
    P._resolve_cached.cache_clear()
    yield
    P._resolve_cached.cache_clear()


def _cpu(monkeypatch, capability: str, avx512_bf16: bool, amx: bool):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)


@pytest.mark.parametrize(
    "value, expected",
    [("auto", "auto"), ("AUTO", "auto"), ("float32", "float32"), ("fp32", "float32"), (None, "float32"),
     (torch.float32, "float32"), ("bfloat16", "bfloat16"), ("bf16", "bfloat16"), (torch.bfloat16, "bfloat16")],
)  # fmt: skip
def test_parse_amp_dtype(value, expected):
    assert P.parse_amp_dtype(value) == expected


@pytest.mark.parametrize("bad", ["nonsense", "null", "float16", torch.float16, 3, ""])
def test_parse_amp_dtype_names_the_allowed_values(bad):
    with pytest.raises(ValueError, match="'auto', 'float32', 'fp32', 'bfloat16', 'bf16'"):
        P.parse_amp_dtype(bad)


@pytest.mark.parametrize(
    "capability, avx512_bf16, amx, dtype, why",
    [("AVX2", False, False, None, "CPU capability AVX2: no native bf16"),
     ("AVX512", False, False, None, "CPU capability AVX512: no native bf16"),
     ("AVX512", True, False, "bfloat16", "AVX512-BF16"),
     ("AVX512", True, True, "bfloat16", "AMX")],
)  # fmt: skip
def test_auto_follows_the_cpu(monkeypatch, capability, avx512_bf16, amx, dtype, why):
    _cpu(monkeypatch, capability, avx512_bf16, amx)
    p = P.resolve_precision("auto", "cpu")
    assert p.dtype == dtype and why in p.reason and p.channels_last and p.requested == "auto"
    assert p.name == (dtype or "float32")
    # explicit requests win over the hardware
    assert P.resolve_precision("float32", "cpu").dtype is None
    forced = P.resolve_precision("bfloat16", "cpu")
    assert forced.dtype == "bfloat16" and (("emulated" in forced.reason) == (dtype is None))


def test_cpu_flags_fallback_without_torch_probes(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    monkeypatch.setattr(P, "_cpu_flags", lambda: {"avx2", "fma"})
    assert P.native_bf16("cpu")[0] is False
    monkeypatch.setattr(P, "_cpu_flags", lambda: {"avx2", "avx512_bf16"})
    assert P.native_bf16("cpu")[0] is True


def test_cuda_without_device_is_fp32_contiguous(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    p = P.resolve_precision("auto", "cuda")
    assert p.dtype is None and not p.channels_last


def test_resolved_once_and_logged_once(monkeypatch, caplog):
    _cpu(monkeypatch, "AVX2", False, False)
    with caplog.at_level(logging.INFO, logger=P.__name__):
        a, b = P.resolve_precision("auto", "cpu"), P.resolve_precision("auto", torch.device("cpu"))
    assert a is b
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["precision: float32, channels-last (CPU capability AVX2: no native bf16)"]


def test_env_override_applies_to_auto_only(monkeypatch):
    _cpu(monkeypatch, "AVX512", True, True)
    monkeypatch.setenv(P.ENV_VAR, "fp32")
    assert P.resolve_precision("auto").dtype is None and P.ENV_VAR in P.resolve_precision("auto").reason
    assert P.resolve_precision("bfloat16").dtype == "bfloat16"
    monkeypatch.setenv(P.ENV_VAR, "garbage")
    P._resolve_cached.cache_clear()
    with pytest.raises(ValueError, match="amp_dtype must be one of"):
        P.resolve_precision("auto")


def test_autocast_context_uses_the_resolved_dtype(monkeypatch):
    _cpu(monkeypatch, "AVX2", False, False)
    conv = torch.nn.Conv3d(1, 2, 3)
    x = torch.randn(1, 1, 5, 5, 5)
    with autocast_context("cpu", "auto"):
        assert conv(x).dtype == torch.float32
    with autocast_context("cpu", "bfloat16"):
        assert conv(x).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="amp_dtype must be one of"):
        autocast_context("cpu", "nonsense")


def test_flush_denormals_restores_the_state_it_found():
    before = P.flush_denormals_enabled()
    try:
        for outer in (False, True):
            torch.set_flush_denormal(outer)
            tiny = torch.tensor([1e-39])  # a float32 denormal (already 0 when made with flushing on)
            assert P.flush_denormals_enabled() is outer and (float(tiny * 1.0) == 0.0) is outer
            with P.flush_denormals("cpu"):
                with P.flush_denormals("cpu"):
                    assert float(tiny * 1.0) == 0.0
                assert float(tiny * 1.0) == 0.0  # still on after the inner block
            assert P.flush_denormals_enabled() is outer  # the bundle-wide setting survives the block
    finally:
        torch.set_flush_denormal(before)


def test_setup_process_validates_and_flushes():
    before = P.flush_denormals_enabled()
    try:
        torch.set_flush_denormal(False)
        assert isinstance(P.setup_process("fp32", "cpu"), P.Precision)
        assert P.flush_denormals_enabled()
        with pytest.raises(ValueError, match="allowed|must be one of"):
            P.setup_process("nonsense", "cpu")
    finally:
        torch.set_flush_denormal(before)
