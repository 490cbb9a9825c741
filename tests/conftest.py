"""Shared fixtures: devices, dtype tolerances, poisoned allocations."""

from __future__ import annotations

import os

import pytest
import torch

import pyflm

CUDA = torch.cuda.is_available()

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param(
        "cuda", id="cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not CUDA, reason="no CUDA device")]
    ),
]

# Tolerances against a float64 reference, per input dtype.
TOLERANCES = {
    torch.float64: dict(atol=1e-9, rtol=1e-9),
    torch.float32: dict(atol=1e-4, rtol=1e-4),
    torch.float16: dict(atol=2e-2, rtol=1e-2),
    torch.bfloat16: dict(atol=1e-1, rtol=2e-2),
}


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param


@pytest.fixture
def compiled():
    """Tests of the compiled ops fail (not skip) when the library is missing,
    so a broken build can never pass CI; set PYFLM_TEST_REFERENCE_ONLY=1 to
    run the rest of the suite on a reference-only install."""
    if not pyflm.HAS_OPS:
        if os.environ.get("PYFLM_TEST_REFERENCE_ONLY") == "1":
            pytest.skip("compiled ops not built (PYFLM_TEST_REFERENCE_ONLY=1)")
        pytest.fail(f"pyflm compiled ops are not loaded: {pyflm._library.LOAD_ERROR}")
    return torch.ops.pyflm


@pytest.fixture
def poison():
    """Make every fresh allocation (at::empty and friends, CPU and CUDA) hold
    NaN, or the max value for integers, so outputs an op forgets to write show up."""
    import torch.utils.deterministic as det

    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_fill = det.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    det.fill_uninitialized_memory = True
    try:
        yield
    finally:
        det.fill_uninitialized_memory = prev_fill
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)


def noncontiguous(t: torch.Tensor) -> torch.Tensor:
    """Same values, non-contiguous layout (every other element of a wider tensor,
    then the last two dims transposed back and forth)."""
    wide = torch.empty(*t.shape[:-1], t.shape[-1] * 2, dtype=t.dtype, device=t.device)
    wide[..., ::2] = t
    out = wide[..., ::2]
    assert not out.is_contiguous() or t.numel() <= 1
    return out
