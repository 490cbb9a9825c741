"""pyflm.argmax_decode: compiled kernels vs the float64 reference, conventions,
accuracy on sampled Gaussians, PWC-like probability maps, errors, opcheck,
TorchScript, fallback."""

from __future__ import annotations

import math

import pytest
import torch

import pyflm
from pyflm.ops.argmax_decode import argmax_decode, argmax_decode_reference
from conftest import TOLERANCES, noncontiguous

MODES = ["none", "quarter", "dark"]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
SHAPES = [(2, 3, 17, 13), (1, 1, 1, 1), (1, 2, 1, 9), (2, 1, 7, 1), (3, 4, 2, 2), (1, 5, 64, 48)]


def out_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def gaussian_maps(B, K, H, W, sigma_lo=1.5, sigma_hi=3.0, margin=None, dtype=torch.float64,
                  device="cpu", gen=None):
    """Exact sampled Gaussians at random sub-pixel centres; returns (maps, centres [B,K,2])."""
    sig = torch.empty(B, K, 1, 1, dtype=torch.float64).uniform_(sigma_lo, sigma_hi, generator=gen)
    m = margin if margin is not None else 3 * sigma_hi
    cx = torch.empty(B, K, dtype=torch.float64).uniform_(m, W - 1 - m, generator=gen)
    cy = torch.empty(B, K, dtype=torch.float64).uniform_(m, H - 1 - m, generator=gen)
    xs = torch.arange(W, dtype=torch.float64).view(1, 1, 1, W)
    ys = torch.arange(H, dtype=torch.float64).view(1, 1, H, 1)
    g = torch.exp(-((xs - cx[..., None, None]) ** 2 + (ys - cy[..., None, None]) ** 2) / (2 * sig**2))
    return g.to(device=device, dtype=dtype), torch.stack((cx, cy), -1)


def blobby_maps(shape, dtype, device, gen):
    """A Gaussian blob plus noise: a well-conditioned peak (DARK's Hessian is
    clearly negative definite), so low-precision kernels can be compared with
    the float64 reference without borderline sign flips."""
    B, K, H, W = shape
    g, _ = gaussian_maps(B, K, H, W, sigma_lo=1.5, sigma_hi=3.0, margin=0.0, gen=gen)
    noise = torch.rand(shape, dtype=torch.float64, generator=gen) * 0.02
    return (g + noise).to(device=device, dtype=dtype)


@pytest.fixture
def gen():
    seed = torch.randint(0, 2**31 - 1, ()).item()
    print(f"seed={seed}")  # shown on failure
    return torch.Generator().manual_seed(seed)


def check_against_reference(got, h, refine):
    coords, scores = got
    rc, rs = argmax_decode_reference(h.double(), refine)
    assert coords.dtype == out_dtype(h.dtype) and scores.dtype == out_dtype(h.dtype)
    assert coords.shape == rc.shape and scores.shape == rs.shape
    # The integer peak and its value are exact in every dtype.
    torch.testing.assert_close(scores.double(), rs, atol=0, rtol=0, equal_nan=True)
    if refine in ("none", "quarter"):
        torch.testing.assert_close(coords.double(), rc, atol=0, rtol=0, equal_nan=True)
    else:
        tol = TOLERANCES[h.dtype] if h.dtype == torch.float64 else TOLERANCES[torch.float32]
        torch.testing.assert_close(coords.double(), rc, equal_nan=True, **tol)


# ---------------------------------------------------------------- vs reference


@pytest.mark.parametrize("refine", MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(compiled, device, poison, gen, shape, dtype, refine):
    h = blobby_maps(shape, dtype, device, gen)
    check_against_reference(compiled.argmax_decode(h, refine), h, refine)


@pytest.mark.parametrize("refine", MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_reference_uniform_noise(compiled, device, poison, gen, dtype, refine):
    # Arbitrary maps: the peak is anywhere, incl. borders and corners.
    if refine == "dark" and dtype != torch.float64:
        pytest.skip("DARK on pure noise is ill-conditioned; low precision covered by blobby maps")
    h = torch.rand(4, 9, 11, 10, dtype=torch.float64, generator=gen).to(device=device, dtype=dtype)
    check_against_reference(compiled.argmax_decode(h, refine), h, refine)


@pytest.mark.parametrize("refine", MODES)
def test_noncontiguous_input(compiled, device, poison, gen, refine):
    h = blobby_maps((2, 3, 20, 15), torch.float32, device, gen)
    nc = noncontiguous(h)
    got = compiled.argmax_decode(nc, refine)
    want = compiled.argmax_decode(h.contiguous(), refine)
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    check_against_reference(got, h, refine)


def test_large_maps_vector_paths(compiled, device, poison, gen):
    # Sizes that hit the vector loop, its tail, and odd element counts.
    for H, W in [(64, 64), (33, 31), (5, 3), (1, 257)]:
        for dtype in DTYPES:
            h = torch.rand(2, 3, H, W, dtype=torch.float64, generator=gen).to(device=device, dtype=dtype)
            check_against_reference(compiled.argmax_decode(h, "quarter"), h, "quarter")


# ---------------------------------------------------------------- conventions


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_ties_take_first_max_row_major(compiled, device, poison, gen, dtype):
    # Few distinct values: many ties; must agree with torch.argmax on the flat map.
    h = torch.randint(0, 3, (3, 4, 9, 7), generator=gen).to(device=device, dtype=dtype)
    coords, scores = compiled.argmax_decode(h, "none")
    idx = h.double().flatten(2).argmax(-1)
    torch.testing.assert_close(coords[..., 0].long(), idx % 7)
    torch.testing.assert_close(coords[..., 1].long(), idx // 7)
    # A constant map, and two equal maxima: the first in row-major order wins.
    c = torch.full((1, 2, 4, 5), -float("inf"), dtype=dtype, device=device)
    c[0, 1, 3, 1] = 2.0
    c[0, 1, 2, 4] = 2.0
    coords, _ = compiled.argmax_decode(c, "none")
    assert coords[0, 0].tolist() == [0.0, 0.0]
    assert coords[0, 1].tolist() == [4.0, 2.0]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_special_values_match_torch_argmax(compiled, device, poison, dtype):
    # The CPU scan compares order-preserving integer keys made from the float
    # bits: check signed zeros, infinities, subnormals, negative NaN, and peaks
    # in the vector body and in the scalar tail of odd-sized maps.
    W = 67  # odd: vector blocks plus a scalar tail
    inf, nan = float("inf"), float("nan")
    tiny = torch.finfo(dtype).tiny / 4  # subnormal
    h = torch.full((1, 10, 3, W), -5.0, dtype=torch.float64)
    h[0, 0, 0, 5], h[0, 0, 1, 9] = -0.0, 0.0  # -0 == +0: the first one wins
    h[0, 1, 2, 3], h[0, 1, 0, 7] = 0.0, -0.0
    h[0, 2].fill_(-inf)  # constant -inf: index 0
    h[0, 3, 0, 40], h[0, 3, 2, 60] = inf, inf
    h[0, 4, 1, 11], h[0, 4, 1, 12] = tiny, 0.0  # subnormal beats zero
    h[0, 5, 2, W - 1] = -nan  # a NaN with the sign bit set, in the tail
    h[0, 6, 0, 1] = nan  # in the vector body
    h[0, 7, 2, W - 1] = 3.0  # the max in the tail
    h[0, 8] = -torch.arange(3 * W, dtype=torch.float64).view(3, W) - 1  # all negative, max first
    h[0, 9, 2, W - 2], h[0, 9, 2, W - 1] = -1.0, -1.0  # tie in the tail
    h = h.to(device=device, dtype=dtype)
    coords, scores = compiled.argmax_decode(h, "none")
    check_against_reference((coords, scores), h, "none")
    flat = h.double().flatten(2)
    idx = flat.argmax(-1)[0]
    ok = ~flat[0].isnan().any(-1)
    torch.testing.assert_close(coords[0, ok, 0].long(), idx[ok] % W)
    torch.testing.assert_close(coords[0, ok, 1].long(), idx[ok] // W)
    assert coords[0, 0].tolist() == [5.0, 0.0] and coords[0, 1].tolist() == [7.0, 0.0]
    assert coords[0, 5].isnan().all() and coords[0, 6].isnan().all()
    assert coords[0, 7].tolist() == [W - 1, 2.0] and coords[0, 9].tolist() == [W - 2, 2.0]
    assert coords[0, 4].tolist() == [11.0, 1.0] and scores[0, 4].item() > 0


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nan_anywhere_in_large_maps(compiled, device, gen, dtype):
    h = torch.rand(1, 6, 37, 41, dtype=torch.float64, generator=gen).to(device=device, dtype=dtype)
    n = 37 * 41
    for k, pos in enumerate([0, 1, 31, n // 2, n - 2, n - 1]):
        h.view(6, n)[k, pos] = float("nan")
    coords, scores = compiled.argmax_decode(h, "quarter")
    assert coords.isnan().all() and scores.isnan().all()


def test_quarter_rule_by_hand(compiled, device):
    h = torch.zeros(1, 3, 5, 6, device=device)
    h[0, 0, 2, 3] = 1.0  # interior peak, right > left, lower == upper
    h[0, 0, 2, 4] = 0.5
    h[0, 0, 2, 2] = 0.2
    h[0, 1, 0, 5] = 1.0  # corner: no neighbours on either axis -> no shift
    h[0, 1, 0, 4] = 0.9
    h[0, 1, 1, 5] = 0.9
    h[0, 2, 3, 1] = 1.0  # upper > lower, left == right
    h[0, 2, 2, 1] = 0.3
    coords, _ = compiled.argmax_decode(h, "quarter")
    assert coords.tolist() == [[[3.25, 2.0], [5.0, 0.0], [1.0, 2.75]]]
    assert argmax_decode_reference(h, "quarter")[0].tolist() == coords.tolist()


def test_dark_border_and_convexity_rules(compiled, device):
    # A peak on the border: DARK does not move it.
    edge = torch.zeros(1, 1, 6, 6, dtype=torch.float64, device=device)
    edge[0, 0, 0, 2], edge[0, 0, 0, 3], edge[0, 0, 1, 2] = 1.0, 0.9, 0.5
    # A saddle in log space (strong dxy): Hessian not negative definite -> no shift,
    # although the gradient is not zero (an unchecked Newton step would move).
    sad = torch.full((1, 1, 5, 5), 1e-3, dtype=torch.float64, device=device)
    sad[0, 0, 2, 1:4] = torch.tensor([0.8, 1.0, 0.9])
    sad[0, 0, 1:4, 2] = torch.tensor([0.5, 1.0, 0.5])
    sad[0, 0, 1, 1] = sad[0, 0, 3, 3] = 0.999
    for h, want in [(edge, [2.0, 0.0]), (sad, None)]:
        coords, _ = compiled.argmax_decode(h, "dark")
        ref, _ = argmax_decode_reference(h, "dark")
        torch.testing.assert_close(coords, ref, **TOLERANCES[torch.float64])
        if want is not None:
            assert coords[0, 0].tolist() == want
    # The saddle really is rejected by the convexity test, not by the clamp.
    coords, _ = compiled.argmax_decode(sad, "dark")
    assert coords[0, 0].tolist() == [2.0, 2.0]


@pytest.mark.parametrize("refine", MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nan_maps_give_nan(compiled, device, poison, gen, dtype, refine):
    h = blobby_maps((2, 4, 9, 8), dtype, device, gen)
    h[0, 1, 3, 5] = float("nan")
    h[1, 3, 0, 0] = float("nan")
    h[1, 2].fill_(float("nan"))
    coords, scores = compiled.argmax_decode(h, refine)
    bad = torch.zeros(2, 4, dtype=torch.bool, device=device)
    bad[0, 1] = bad[1, 3] = bad[1, 2] = True
    assert coords[bad].isnan().all() and scores[bad].isnan().all()
    assert not coords[~bad].isnan().any() and not scores[~bad].isnan().any()
    check_against_reference((coords, scores), h, refine)
    rc, rs = argmax_decode_reference(h, refine)
    assert rc[bad].isnan().all() and rs[bad].isnan().all()


@pytest.mark.parametrize("shape", [(0, 3, 8, 8), (2, 0, 8, 8), (0, 0, 1, 1)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_empty_batches(compiled, device, shape, dtype):
    h = torch.rand(shape, device=device).to(dtype)
    for fn in (compiled.argmax_decode, argmax_decode_reference):
        coords, scores = fn(h, "dark")
        assert coords.shape == (*shape[:2], 2) and scores.shape == shape[:2]
        assert coords.dtype == scores.dtype == out_dtype(dtype)


def test_no_gradient(compiled, device):
    h = torch.rand(2, 3, 8, 8, device=device, requires_grad=True)
    for refine in MODES:
        coords, scores = compiled.argmax_decode(h, refine)
        assert coords.grad_fn is None and scores.grad_fn is None
        assert not coords.requires_grad and not scores.requires_grad


# ---------------------------------------------------------------- accuracy


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_accuracy_on_sampled_gaussians(compiled, device, gen, dtype):
    h, centres = gaussian_maps(8, 17, 48, 64, margin=6.0, dtype=dtype, device=device, gen=gen)
    bounds = {"dark": 0.02, "quarter": 0.26, "none": 0.5 + 1e-9}
    for refine, bound in bounds.items():
        coords, scores = compiled.argmax_decode(h, refine)
        err = (coords.double().cpu() - centres).abs()
        assert err.max().item() < bound, (refine, err.max().item())
        torch.testing.assert_close(scores, h.flatten(2).amax(-1).to(scores.dtype))
    # The modes are really ordered in accuracy (a no-op refinement would fail here).
    errs = {m: (compiled.argmax_decode(h, m)[0].double().cpu() - centres).abs().mean() for m in bounds}
    assert errs["dark"] < 0.01 < errs["quarter"] < errs["none"]


def test_pwc_like_probability_maps(compiled, device, gen):
    # K landmark channels + 1 background channel, per-pixel softmax; decode probs[:, :K].
    B, K, H, W = 3, 5, 32, 40
    # Landmarks 8 px apart in x (so channels do not compete), random sub-pixel centres.
    cx = 4.0 + 8.0 * torch.arange(K, dtype=torch.float64) + torch.rand(B, K, dtype=torch.float64, generator=gen)
    cy = torch.empty(B, K, dtype=torch.float64).uniform_(4.0, H - 5.0, generator=gen)
    centres = torch.stack((cx, cy), -1)
    sig = torch.empty(B, K, 1, 1, dtype=torch.float64).uniform_(1.5, 2.5, generator=gen)
    xs = torch.arange(W, dtype=torch.float64).view(1, 1, 1, W)
    ys = torch.arange(H, dtype=torch.float64).view(1, 1, H, 1)
    g = torch.exp(-((xs - cx[..., None, None]) ** 2 + (ys - cy[..., None, None]) ** 2) / (2 * sig**2))
    logits = torch.cat((6.0 * g, torch.zeros(B, 1, H, W, dtype=torch.float64)), 1)
    logits = logits + 0.05 * torch.randn(logits.shape, dtype=torch.float64, generator=gen)
    probs = torch.softmax(logits, dim=1).float().to(device)
    lm = probs[:, :K]  # a non-contiguous view, as a caller would pass it
    for refine in MODES:
        coords, scores = compiled.argmax_decode(lm, refine)
        check_against_reference((coords, scores), lm, refine)
        assert (coords.cpu().double() - centres).abs().max() < 1.0
        assert (scores > 0.5).all()


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "h, refine, match",
    [
        (torch.rand(3, 8, 8), "none", r"pyflm\.argmax_decode: heatmaps must be 4-D \[B, K, H, W\]"),
        (torch.ones(1, 2, 4, 4, dtype=torch.int32), "none", r"pyflm\.argmax_decode: heatmaps must have dtype"),
        (torch.rand(1, 2, 0, 4), "none", r"pyflm\.argmax_decode: heatmaps must have H >= 1 and W >= 1"),
        (torch.rand(1, 2, 4, 0), "none", r"H >= 1 and W >= 1"),
        (torch.rand(1, 2, 4, 4), "bogus", r"refine must be one of 'none', 'quarter', 'dark', got 'bogus'"),
        (torch.rand(0, 2, 4, 4), "Dark", r"refine must be one of 'none', 'quarter', 'dark'"),
    ],
)
def test_errors(compiled, device, h, refine, match):
    h = h.to(device)
    for fn in (compiled.argmax_decode, argmax_decode, argmax_decode_reference):
        with pytest.raises(RuntimeError, match=match):
            fn(h, refine)


# ---------------------------------------------------------------- integration


@pytest.mark.parametrize("refine", MODES)
def test_opcheck(compiled, device, gen, refine):
    for dtype in (torch.float32, torch.float64):
        h = blobby_maps((2, 3, 9, 11), dtype, device, gen)
        torch.library.opcheck(compiled.argmax_decode.default, (h, refine))
    h = torch.rand(1, 2, 5, 5, device=device, requires_grad=True)
    torch.library.opcheck(compiled.argmax_decode.default, (h, refine))


def test_default_refine_is_quarter(compiled, device, gen):
    h = blobby_maps((2, 3, 9, 11), torch.float32, device, gen)
    torch.testing.assert_close(compiled.argmax_decode(h), compiled.argmax_decode(h, "quarter"))
    torch.testing.assert_close(argmax_decode(h), argmax_decode_reference(h, "quarter"))


class _Decoder(torch.nn.Module):
    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.ops.pyflm.argmax_decode(h, "dark")


def test_torchscript_roundtrip(compiled, device, gen, tmp_path):
    h = blobby_maps((2, 3, 16, 16), torch.float32, device, gen)
    scripted = torch.jit.script(_Decoder())
    path = tmp_path / "decoder.pt"
    scripted.save(str(path))
    loaded = torch.jit.load(str(path))
    torch.testing.assert_close(loaded(h), compiled.argmax_decode(h, "dark"), atol=0, rtol=0)


def test_wrapper_uses_op_and_fallback_equals_reference(compiled, device, gen, monkeypatch):
    h = blobby_maps((2, 3, 12, 10), torch.float32, device, gen)
    for refine in MODES:
        torch.testing.assert_close(argmax_decode(h, refine), compiled.argmax_decode(h, refine), atol=0, rtol=0)
    monkeypatch.setattr(pyflm._library, "HAS_OPS", False)
    monkeypatch.setattr(pyflm._library, "_warned", {"missing"})  # no warning noise
    for refine in MODES:
        fb = argmax_decode(h, refine)
        torch.testing.assert_close(fb, argmax_decode_reference(h, refine), atol=0, rtol=0)
        check_against_reference(fb, h, refine)


def test_meta_tensors_through_fake_kernel(compiled):
    h = torch.empty(4, 7, 16, 16, device="meta", dtype=torch.float16)
    coords, scores = argmax_decode(h, "dark")
    assert coords.shape == (4, 7, 2) and scores.shape == (4, 7)
    assert coords.dtype == scores.dtype == torch.float32 and coords.device.type == "meta"
    with pytest.raises(RuntimeError, match="refine must be one of"):
        argmax_decode(h, "bilinear")


def test_reference_has_no_python_loop_over_landmarks():
    # Guard the "vectorised reference" contract: one call handles many maps fast.
    h = torch.rand(16, 68, 32, 32)
    coords, _ = argmax_decode_reference(h, "dark")
    assert coords.shape == (16, 68, 2) and not math.isnan(coords.sum().item())
