"""pyflm.soft_argmax: the compiled op against its float64 reference, gradients,
edge values, dispatcher/opcheck, TorchScript, fallback and error messages."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import pyflm
from pyflm import _library
from pyflm.ops.soft_argmax import soft_argmax, soft_argmax_reference
from tests.conftest import TOLERANCES, noncontiguous

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# Odd and tiny maps; W=9 and W=7 exercise the SIMD tails, W=300 several segments.
SHAPES = [(1, 1, 1, 1), (2, 3, 7, 9), (1, 1, 5, 1), (3, 2, 1, 7), (2, 5, 16, 16), (1, 2, 3, 300), (2, 4, 33, 17)]


def _heatmaps(shape, dtype, device, scale=4.0):
    return (torch.randn(shape, dtype=torch.float64, device=device) * scale).to(dtype)


def _expected(h, temperature=1.0):
    """Float64 reference on the (already rounded) input."""
    return soft_argmax_reference(h.double(), temperature)


def _out_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_matches_reference(compiled, device, poison, dtype, shape):
    temperature = float(torch.empty(()).uniform_(0.3, 2.0))
    h = _heatmaps(shape, dtype, device)
    coords, conf = compiled.soft_argmax(h, temperature)
    assert coords.shape == (*shape[:2], 2) and conf.shape == shape[:2]
    assert coords.dtype == conf.dtype == _out_dtype(dtype)
    ec, ef = _expected(h, temperature)
    tol = TOLERANCES[dtype]
    torch.testing.assert_close(coords.double(), ec, **tol, msg=lambda m: f"T={temperature}: {m}")
    torch.testing.assert_close(conf.double(), ef, **tol, msg=lambda m: f"T={temperature}: {m}")
    assert ((conf > 0) & (conf <= 1)).all()


def test_many_maps_parallel_chunks(compiled, device, poison):
    # Enough maps to be split over threads; each map is different.
    h = _heatmaps((40, 70, 6, 10), torch.float32, device)
    coords, conf = compiled.soft_argmax(h, 0.5)
    ec, ef = _expected(h, 0.5)
    torch.testing.assert_close(coords.double(), ec, **TOLERANCES[torch.float32])
    torch.testing.assert_close(conf.double(), ef, **TOLERANCES[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_known_values(compiled, device, dtype):
    # All equal -> the map centre and 1 / (H W); a single finite value among -inf ->
    # exactly that pixel with probability 1. A wrong index convention fails here.
    H, W = 5, 12
    h = torch.zeros(1, 2, H, W, dtype=dtype, device=device)
    h[0, 1] = -math.inf
    h[0, 1, 3, 7] = 2.0
    coords, conf = compiled.soft_argmax(h, 1.0)
    expected = torch.tensor([[[(W - 1) / 2, (H - 1) / 2], [7.0, 3.0]]], dtype=coords.dtype, device=device)
    torch.testing.assert_close(coords, expected, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(conf, torch.tensor([[1 / (H * W), 1.0]], dtype=conf.dtype, device=device))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", ["huge", "tiny", "equal", "neg_inf_mixed", "huge_negative"])
def test_extreme_logits_are_stable(compiled, device, dtype, case):
    shape = (2, 3, 9, 11)
    h = torch.randn(shape, dtype=torch.float64, device=device)
    if case == "huge":
        h = h * 1e30 if dtype != torch.bfloat16 else h * 1e35
    elif case == "tiny":
        h = h * 1e-30
    elif case == "equal":
        h = torch.full(shape, 7.5, dtype=torch.float64, device=device)
    elif case == "neg_inf_mixed":
        h = h * 3
        h[torch.rand(shape, device=device) < 0.6] = -math.inf
        h[..., 0, 0] = 1.0  # every map keeps a finite value
    else:
        h = h - 1e30
    h = h.to(dtype)
    for temperature in (1.0, 1e-3, 50.0):
        coords, conf = compiled.soft_argmax(h, temperature)
        assert torch.isfinite(coords).all() and torch.isfinite(conf).all(), (case, temperature)
        ec, ef = _expected(h, temperature)
        # Tiny temperatures make p a near one-hot: tolerances scale with the map.
        torch.testing.assert_close(coords.double(), ec, atol=2e-3, rtol=1e-4, msg=lambda m: f"T={temperature} {m}")
        torch.testing.assert_close(conf.double(), ef, atol=1e-4, rtol=1e-4, msg=lambda m: f"T={temperature} {m}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bad", ["nan", "pos_inf", "all_neg_inf"])
def test_undefined_maps_give_nan(compiled, device, dtype, bad):
    h = _heatmaps((2, 3, 6, 10), dtype, device)
    if bad == "nan":
        h[1, 2, 4, 5] = math.nan
    elif bad == "pos_inf":
        h[1, 2, 0, 9] = math.inf
    else:
        h[1, 2] = -math.inf
    coords, conf = compiled.soft_argmax(h, 1.0)
    ref_c, ref_f = soft_argmax_reference(h, 1.0)
    for out in (coords, ref_c, conf, ref_f):
        assert out[1, 2].isnan().all(), bad
    mask = torch.ones(2, 3, dtype=torch.bool, device=device)
    mask[1, 2] = False
    assert torch.isfinite(coords[mask]).all() and torch.isfinite(conf[mask]).all()
    torch.testing.assert_close(coords[mask].double(), _expected(h)[0][mask], **TOLERANCES[dtype])


@pytest.mark.parametrize("shape", [(0, 68, 8, 8), (3, 0, 8, 8)], ids=str)
def test_empty_batches(compiled, device, shape):
    h = torch.randn(shape, device=device, requires_grad=True)
    coords, conf = compiled.soft_argmax(h, 1.0)
    assert coords.shape == (*shape[:2], 2) and conf.shape == shape[:2]
    coords.sum().backward()
    assert h.grad.shape == h.shape
    ref_c, ref_f = soft_argmax_reference(h, 1.0)
    assert ref_c.shape == coords.shape and ref_f.shape == conf.shape


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 2, 3, 5), (1, 2, 4, 9)], ids=str)
def test_gradcheck_float64(compiled, device, shape):
    h = _heatmaps(shape, torch.float64, device, scale=1.0).requires_grad_()
    for temperature in (1.0, 0.4):
        assert torch.autograd.gradcheck(lambda x: compiled.soft_argmax(x, temperature)[0], (h,))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(2, 3, 7, 9), (1, 4, 16, 16), (2, 1, 3, 300)], ids=str)
def test_backward_matches_reference_autograd(compiled, device, poison, dtype, shape):
    temperature = float(torch.empty(()).uniform_(0.3, 2.0))
    h = _heatmaps(shape, dtype, device)
    w = torch.randn(*shape[:2], 2, dtype=torch.float64, device=device)
    hc = h.clone().requires_grad_()
    coords, conf = compiled.soft_argmax(hc, temperature)
    assert coords.requires_grad and not conf.requires_grad
    # loss = coords.sum() (the brief's double-check) and a weighted loss.
    (g_sum,) = torch.autograd.grad(coords.sum(), hc, retain_graph=True)
    (g_w,) = torch.autograd.grad((coords.double() * w).sum(), hc)
    assert g_sum.dtype == dtype and g_sum.shape == h.shape
    hr = h.double().requires_grad_()
    rc, _ = soft_argmax_reference(hr, temperature)
    (e_sum,) = torch.autograd.grad(rc.sum(), hr, retain_graph=True)
    (e_w,) = torch.autograd.grad((rc * w).sum(), hr)
    # The gradient carries a factor (x - cx) up to the map's width: its rounding
    # error grows with its magnitude, so the absolute tolerance scales with it.
    for got, want in ((g_sum, e_sum), (g_w, e_w)):
        tol = dict(TOLERANCES[dtype])
        tol["atol"] *= max(1.0, want.abs().max().item())
        torch.testing.assert_close(got.double(), want, **tol)
    assert e_w.abs().max() > 1e-3  # the comparison is not vacuous


def test_backward_op_direct(compiled, device, poison):
    h = _heatmaps((2, 3, 5, 8), torch.float64, device)
    coords, _ = compiled.soft_argmax(h, 0.8)
    g = torch.randn(2, 3, 2, dtype=torch.float64, device=device)
    grad = compiled._soft_argmax_backward(g, h, coords, 0.8)
    hr = h.clone().requires_grad_()
    (expected,) = torch.autograd.grad((soft_argmax_reference(hr, 0.8)[0] * g).sum(), hr)
    torch.testing.assert_close(grad, expected)
    # Expanded (stride-0) and non-contiguous gradients are accepted.
    g_exp = torch.ones((), dtype=torch.float64, device=device).expand(2, 3, 2)
    torch.testing.assert_close(
        compiled._soft_argmax_backward(g_exp, noncontiguous(h), coords, 0.8),
        compiled._soft_argmax_backward(g_exp.contiguous(), h, coords, 0.8),
    )


def test_double_backward_raises(compiled, device):
    h = _heatmaps((1, 2, 4, 4), torch.float64, device).requires_grad_()
    coords, _ = compiled.soft_argmax(h, 1.0)
    (g,) = torch.autograd.grad(coords.sum(), h, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.sum().backward()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_noncontiguous_input(compiled, device, poison, dtype):
    h = _heatmaps((2, 3, 6, 9), dtype, device)
    nc = noncontiguous(h)
    assert not nc.is_contiguous()
    for got, want in zip(compiled.soft_argmax(nc, 0.7), compiled.soft_argmax(h, 0.7)):
        torch.testing.assert_close(got, want, atol=0, rtol=0)
    # Also a permuted view: K and B swapped.
    perm = h.transpose(0, 1)
    got_c, got_f = compiled.soft_argmax(perm, 0.7)
    ec, ef = _expected(perm, 0.7)
    torch.testing.assert_close(got_c.double(), ec, **TOLERANCES[dtype])
    torch.testing.assert_close(got_f.double(), ef, **TOLERANCES[dtype])


def test_opcheck(compiled, device):
    h = _heatmaps((2, 3, 5, 7), torch.float32, device)
    torch.library.opcheck(torch.ops.pyflm.soft_argmax.default, (h, 0.9))
    torch.library.opcheck(torch.ops.pyflm.soft_argmax.default, (h.clone().requires_grad_(), 0.9))
    coords, _ = compiled.soft_argmax(h, 0.9)
    g = torch.randn_like(coords)
    torch.library.opcheck(torch.ops.pyflm._soft_argmax_backward.default, (g, h, coords, 0.9))


def test_torch_compile_traces_fake(compiled):
    # The fake kernels give the traced shapes/dtypes.
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        h = torch.empty(3, 5, 8, 8, dtype=torch.float16)
        coords, conf = torch.ops.pyflm.soft_argmax(h, 1.0)
        assert coords.shape == (3, 5, 2) and coords.dtype == torch.float32
        assert conf.shape == (3, 5) and conf.dtype == torch.float32
        g = torch.ops.pyflm._soft_argmax_backward(torch.empty(3, 5, 2), h, coords, 1.0)
        assert g.shape == h.shape and g.dtype == h.dtype


class _Decoder(torch.nn.Module):
    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.ops.pyflm.soft_argmax(h, 0.5)


def test_torchscript_roundtrip(compiled, device, tmp_path):
    h = _heatmaps((2, 3, 8, 8), torch.float32, device)
    scripted = torch.jit.script(_Decoder())
    path = tmp_path / "decoder.pt"
    scripted.save(str(path))
    loaded = torch.jit.load(str(path))
    for got, want in zip(loaded(h), compiled.soft_argmax(h, 0.5)):
        torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_wrapper_uses_op_and_fallback_equals_reference(compiled, device, monkeypatch):
    h = _heatmaps((2, 3, 7, 10), torch.float32, device)
    c_op, f_op = soft_argmax(h, 0.6)
    c_ref, f_ref = soft_argmax_reference(h, 0.6)
    torch.testing.assert_close(c_op, c_ref, **TOLERANCES[torch.float32])
    torch.testing.assert_close(f_op, f_ref, **TOLERANCES[torch.float32])
    monkeypatch.setattr(_library, "HAS_OPS", False)
    monkeypatch.setattr(_library, "_warned", set())
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        c_fb, f_fb = pyflm.soft_argmax(h, 0.6)
    assert any("reference" in str(x.message) for x in w)
    torch.testing.assert_close(c_fb, c_ref, atol=0, rtol=0)
    torch.testing.assert_close(f_fb, f_ref, atol=0, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_reference_output_dtype_rule(dtype):
    c, f = soft_argmax_reference(_heatmaps((1, 2, 3, 4), dtype, "cpu"))
    assert c.dtype == f.dtype == _out_dtype(dtype)


ERRORS = [
    (lambda d: (torch.randn(2, 3, 4, device=d), 1.0), r"pyflm\.soft_argmax: heatmaps must be 4-D"),
    (lambda d: (torch.zeros(1, 2, 3, 4, dtype=torch.int32, device=d), 1.0), r"pyflm\.soft_argmax: heatmaps must have dtype"),
    (lambda d: (torch.randn(1, 2, 0, 4, device=d), 1.0), r"pyflm\.soft_argmax: heatmaps must have H >= 1 and W >= 1"),
    (lambda d: (torch.randn(1, 2, 3, 0, device=d), 1.0), r"pyflm\.soft_argmax: heatmaps must have H >= 1 and W >= 1"),
    (lambda d: (torch.randn(1, 2, 3, 4, device=d), 0.0), r"pyflm\.soft_argmax: temperature must be a positive finite"),
    (lambda d: (torch.randn(1, 2, 3, 4, device=d), -1.0), r"pyflm\.soft_argmax: temperature must be a positive finite"),
    (lambda d: (torch.randn(1, 2, 3, 4, device=d), math.inf), r"pyflm\.soft_argmax: temperature must be a positive finite"),
    (lambda d: (torch.randn(1, 2, 3, 4, device=d), math.nan), r"pyflm\.soft_argmax: temperature must be a positive finite"),
]


@pytest.mark.parametrize("make,match", ERRORS)
def test_errors(compiled, device, make, match):
    args = make(device)
    with pytest.raises(RuntimeError, match=match):
        compiled.soft_argmax(*args)
    with pytest.raises(RuntimeError, match=match):
        soft_argmax_reference(*args)


def test_backward_errors(compiled, device):
    h = torch.randn(2, 3, 4, 5, device=device)
    c = torch.zeros(2, 3, 2, device=device)
    with pytest.raises(RuntimeError, match=r"pyflm\._soft_argmax_backward: grad_coords must have shape"):
        compiled._soft_argmax_backward(torch.zeros(2, 3, 3, device=device), h, c, 1.0)
    with pytest.raises(RuntimeError, match=r"pyflm\._soft_argmax_backward: coords must be 3-D"):
        compiled._soft_argmax_backward(c, h, c[0], 1.0)
    with pytest.raises(RuntimeError, match=r"pyflm\.soft_argmax: temperature"):
        compiled._soft_argmax_backward(c, h, c, -2.0)
    if device == "cuda":
        with pytest.raises(RuntimeError, match=r"must be on the same device"):
            compiled._soft_argmax_backward(c.cpu(), h, c, 1.0)


def test_scalar_cpu_kernels(compiled):
    # The kernels used on x86-64 CPUs without AVX2/FMA/F16C, forced by env var in a
    # fresh process (the choice is made once per process).
    import os
    import subprocess
    import sys

    code = (
        "import math, torch, pyflm\n"
        "from pyflm.ops.soft_argmax import soft_argmax_reference as ref\n"
        "for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 1e-4), (torch.bfloat16, 2e-2)):\n"
        "    h = (torch.randn(3, 4, 7, 9, dtype=torch.float64) * 4).to(dtype)\n"
        "    h[0, 1, 2:, :] = -math.inf\n"
        "    h[2, 3, 1, 1] = math.nan\n"
        "    h[1, 0] = -math.inf\n"
        "    c, f = torch.ops.pyflm.soft_argmax(h, 0.7)\n"
        "    ec, ef = ref(h.double(), 0.7)\n"
        "    torch.testing.assert_close(c.double(), ec, atol=tol, rtol=tol, equal_nan=True)\n"
        "    torch.testing.assert_close(f.double(), ef, atol=tol, rtol=tol, equal_nan=True)\n"
        "    hg = h.clone().requires_grad_()\n"
        "    g = torch.randn(3, 4, 2, dtype=c.dtype)\n"
        "    (gh,) = torch.autograd.grad(torch.ops.pyflm.soft_argmax(hg, 0.7)[0], hg, g)\n"
        "    hr = h.double().requires_grad_()\n"
        "    (er,) = torch.autograd.grad(ref(hr, 0.7)[0], hr, g.double())\n"
        "    torch.testing.assert_close(gh.double(), er, atol=tol, rtol=tol, equal_nan=True)\n"
        "print('ok')\n"
    )
    env = dict(os.environ, PYFLM_SOFT_ARGMAX_SCALAR="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
