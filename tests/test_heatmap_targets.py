"""pyflm.heatmap_targets: the compiled op against its float64 reference, the
properties the targets promise (sub-pixel centre, sums, invalid landmarks),
dtypes, layouts, opcheck, TorchScript, the fallback and every error."""

from __future__ import annotations

import math
import random

import pytest
import torch

import pyflm
from pyflm import _library
from pyflm.ops.heatmap_targets import heatmap_targets, heatmap_targets_reference

from conftest import TOLERANCES, noncontiguous

KIND_BG = [("gaussian", False), ("gaussian", True), ("distribution", False), ("pwc", False)]
KIND_IDS = ["gaussian", "gaussian_bg", "distribution", "pwc"]
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
SHAPES = [  # B, K, H, W
    (1, 1, 1, 1),
    (2, 3, 1, 7),
    (1, 1, 5, 1),
    (3, 5, 7, 13),
    (2, 17, 16, 16),
    (1, 4, 33, 9),
]


def random_landmarks(B, K, H, W, device, dtype=torch.float64, seed=None):
    """Coords mostly inside the map, some outside, a few NaN/inf, and a random
    visibility (None, bool or float). Returns (coords, visibility, seed)."""
    seed = random.randrange(2**31) if seed is None else seed
    g = torch.Generator().manual_seed(seed)
    coords = torch.rand(B, K, 2, generator=g, dtype=torch.float64)
    coords = coords * torch.tensor([W + 2.0, H + 2.0], dtype=torch.float64) - 1.5
    if B * K > 2:
        coords[0, 0, 0] = float("nan")
        coords[-1, -1, 1] = float("inf")
    vis_kind = seed % 3
    if vis_kind == 0:
        vis = None
    elif vis_kind == 1:
        vis = torch.rand(B, K, generator=g) > 0.2
    else:
        vis = torch.rand(B, K, generator=g, dtype=torch.float64) - 0.2
    coords = coords.to(dtype).to(device)
    vis = vis.to(device) if vis is not None else None
    return coords, vis, seed


def ref64(coords, vis, *args):
    """The reference in float64 on the very same (already rounded) coords."""
    return heatmap_targets_reference(coords.double(), vis, *args)


@pytest.mark.parametrize("kind,bg", KIND_BG, ids=KIND_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(compiled, device, poison, kind, bg, dtype, shape):
    B, K, H, W = shape
    coords, vis, seed = random_landmarks(B, K, H, W, device, dtype)
    sigma = random.choice([0.7, 1.5, 3.0])
    t, m = compiled.heatmap_targets(coords, vis, H, W, sigma, kind, bg)
    tr, mr = ref64(coords, vis, H, W, sigma, kind, bg)
    C = K + 1 if kind == "pwc" or bg else K
    assert t.shape == (B, C, H, W) and m.shape == (B, K), f"seed={seed}"
    assert t.dtype == dtype and m.dtype == dtype and t.device == coords.device
    torch.testing.assert_close(t.double(), tr, **TOLERANCES[dtype], msg=lambda s: f"seed={seed}: {s}")
    torch.testing.assert_close(m.double(), mr, atol=0, rtol=0, msg=lambda s: f"seed={seed}: {s}")


@pytest.mark.parametrize("kind,bg", KIND_BG, ids=KIND_IDS)
def test_matches_direct_formula(compiled, kind, bg):
    # Independent of the reference: the formulas evaluated pixel by pixel.
    B, K, H, W, s = 2, 3, 6, 5, 1.3
    coords, _, seed = random_landmarks(B, K, H, W, "cpu")
    coords[0, 1] = torch.tensor([20.0, 2.0])  # outside
    t, m = compiled.heatmap_targets(coords, None, H, W, s, kind, bg)
    for b in range(B):
        gs = []
        for k in range(K):
            x, y = coords[b, k].tolist()
            ok = math.isfinite(x) and math.isfinite(y) and -0.5 <= x < W - 0.5 and -0.5 <= y < H - 0.5
            assert m[b, k].item() == float(ok), f"seed={seed}"
            g = torch.zeros(H, W, dtype=torch.float64)
            if ok:
                for i in range(H):
                    for j in range(W):
                        g[i, j] = math.exp(-((j - x) ** 2 + (i - y) ** 2) / (2 * s * s))
                if kind == "distribution":
                    g /= g.sum()
            gs.append(g)
        g = torch.stack(gs)
        if kind == "pwc":
            p = g / g.sum(0).clamp_min(1)
            g = torch.cat([p, (1 - p.sum(0))[None]])
        elif bg:
            g = torch.cat([g, (1 - g.amax(0))[None]])
        torch.testing.assert_close(t[b], g, atol=1e-12, rtol=1e-12, msg=lambda s_: f"seed={seed}: {s_}")


@pytest.mark.parametrize("kind,bg", KIND_BG, ids=KIND_IDS)
@pytest.mark.parametrize("B,K", [(0, 5), (3, 0), (0, 0)])
def test_empty(compiled, device, poison, kind, bg, B, K):
    coords = torch.empty(B, K, 2, device=device)
    t, m = compiled.heatmap_targets(coords, torch.ones(B, K, dtype=torch.bool, device=device), 4, 3, 1.0, kind, bg)
    C = K + 1 if kind == "pwc" or bg else K
    assert t.shape == (B, C, 4, 3) and m.shape == (B, K)
    if C == 1:  # no landmarks: everything is background
        assert (t == 1).all()
    tr, mr = heatmap_targets_reference(coords, None, 4, 3, 1.0, kind, bg)
    assert tr.shape == t.shape and mr.shape == m.shape
    torch.testing.assert_close(t, tr)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_subpixel_centre(compiled, device, dtype):
    B, K, H, W, s = 4, 9, 64, 48, 2.0
    coords = torch.rand(B, K, 2, dtype=torch.float64) * torch.tensor([W - 24.0, H - 24.0]) + 12
    coords = coords.to(dtype).to(device)
    # distribution: the soft-weighted centroid is the centre (decoding by weighting)
    d, _ = compiled.heatmap_targets(coords, None, H, W, s, "distribution", False)
    d = d.double()
    xs = torch.arange(W, dtype=torch.float64, device=device)
    ys = torch.arange(H, dtype=torch.float64, device=device)
    cx = (d.sum(2) * xs).sum(-1)
    cy = (d.sum(3) * ys).sum(-1)
    torch.testing.assert_close(torch.stack([cx, cy], -1), coords.double(), atol=1e-3, rtol=0)
    # gaussian: argmax is the nearest pixel, and the log-ratio of its neighbours
    # gives the sub-pixel offset exactly (log g is a parabola with curvature 1/s^2)
    g, _ = compiled.heatmap_targets(coords, None, H, W, s, "gaussian", False)
    g = g.double()
    flat = g.flatten(2).argmax(-1)
    i, j = flat // W, flat % W
    torch.testing.assert_close(j.double(), coords[..., 0].double().round(), atol=0, rtol=0)
    torch.testing.assert_close(i.double(), coords[..., 1].double().round(), atol=0, rtol=0)
    bi = torch.arange(B, device=device)[:, None]
    ki = torch.arange(K, device=device)[None, :]
    lg = g.clamp_min(1e-300).log()
    x = j + s * s / 2 * (lg[bi, ki, i, j + 1] - lg[bi, ki, i, j - 1])
    y = i + s * s / 2 * (lg[bi, ki, i + 1, j] - lg[bi, ki, i - 1, j])
    torch.testing.assert_close(torch.stack([x, y], -1), coords.double(), atol=1e-3, rtol=0)
    # a centre on a pixel gives exactly 1 there
    on_pixel = torch.tensor([[[3.0, 5.0]]], dtype=dtype, device=device)
    g1, _ = compiled.heatmap_targets(on_pixel, None, 8, 8, s, "gaussian", False)
    assert g1[0, 0, 5, 3].item() == 1.0 and g1.max().item() == 1.0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16], ids=str)
def test_pwc_sums_to_one(compiled, device, dtype):
    B, K, H, W = 3, 12, 10, 11
    # clustered landmarks so sum_k g_k > 1 in places, some far apart
    coords = torch.rand(B, K, 2) * 3 + 3
    coords[:, ::3] = torch.rand(B, (K + 2) // 3, 2) * 9
    coords = coords.to(dtype).to(device)
    t, _ = compiled.heatmap_targets(coords, None, H, W, 1.5, "pwc", False)
    assert t.shape == (B, K + 1, H, W)
    tol = TOLERANCES[dtype]
    torch.testing.assert_close(t.double().sum(1), torch.ones(B, H, W, dtype=torch.float64, device=device), **tol)
    assert (t >= 0).all() and (t <= 1).all()
    ref_sum, _ = heatmap_targets_reference(coords.double(), None, H, W, 1.5, "gaussian", False)
    assert (ref_sum.sum(1) > 1.5).any()  # the clamp max(1, S) was exercised
    # `background` does not change pwc
    t2, _ = compiled.heatmap_targets(coords, None, H, W, 1.5, "pwc", True)
    torch.testing.assert_close(t, t2, atol=0, rtol=0)


@pytest.mark.parametrize("sigma", [1e-3, 0.5, 2.0, 40.0])
def test_distribution_sums_to_one(compiled, device, sigma):
    B, K, H, W = 2, 6, 9, 14
    coords, vis, seed = random_landmarks(B, K, H, W, device, torch.float32)
    t, m = compiled.heatmap_targets(coords, vis, H, W, sigma, "distribution", False)
    assert torch.isfinite(t).all(), f"seed={seed}"
    sums = t.double().sum((2, 3))
    torch.testing.assert_close(sums, m.double(), atol=1e-5, rtol=0, msg=lambda s: f"seed={seed}: {s}")
    assert m.sum() > 0


@pytest.mark.parametrize("kind,bg", KIND_BG, ids=KIND_IDS)
def test_invalid_landmarks_give_zero_maps(compiled, device, kind, bg):
    H, W = 6, 9
    nan, inf = float("nan"), float("inf")
    pts = [
        (3.0, 2.0, True),        # valid
        (nan, 2.0, True),        # NaN x
        (3.0, -inf, True),       # inf y
        (-0.6, 2.0, True),       # left of the map
        (W - 0.5, 2.0, True),    # right edge is excluded
        (3.0, H - 0.5, True),    # bottom edge is excluded
        (-0.5, -0.5, True),      # top-left corner is included
        (4.0, 4.0, False),       # not visible
        (W - 0.51, H - 0.51, True),
    ]
    coords = torch.tensor([[[x, y] for x, y, _ in pts]], dtype=torch.float32, device=device)
    vis = torch.tensor([[v for *_, v in pts]], device=device)
    expect = torch.tensor([[1, 0, 0, 0, 0, 0, 1, 0, 1]], dtype=torch.float32, device=device)
    t, m = compiled.heatmap_targets(coords, vis, H, W, 1.0, kind, bg)
    torch.testing.assert_close(m, expect, atol=0, rtol=0)
    K = len(pts)
    maps = t[0, :K]
    assert (maps[expect[0] == 0] == 0).all()
    assert (maps[expect[0] == 1].flatten(1).amax(1) > 0.1).all()
    if kind == "pwc" or bg:  # invalid landmarks add nothing to the background
        valid_only, _ = compiled.heatmap_targets(coords[:, expect[0] == 1], None, H, W, 1.0, kind, bg)
        torch.testing.assert_close(t[0, K], valid_only[0, -1])


def test_visibility_bool_and_float(compiled, device):
    B, K, H, W = 2, 5, 8, 8
    coords = (torch.rand(B, K, 2) * 7).to(device)
    vis_f = torch.tensor([[1.0, 0.0, 0.5, -1.0, float("nan")], [2.0, 1e-9, 0.0, 1.0, 1.0]], device=device)
    vis_b = vis_f > 0
    for kind, bg in KIND_BG:
        tb, mb = compiled.heatmap_targets(coords, vis_b, H, W, 1.0, kind, bg)
        tf, mf = compiled.heatmap_targets(coords, vis_f, H, W, 1.0, kind, bg)
        tf64, _ = compiled.heatmap_targets(coords, vis_f.double(), H, W, 1.0, kind, bg)
        torch.testing.assert_close(tb, tf, atol=0, rtol=0)
        torch.testing.assert_close(tb, tf64, atol=0, rtol=0)
        torch.testing.assert_close(mb, vis_b.float(), atol=0, rtol=0)
        tn, _ = compiled.heatmap_targets(coords, None, H, W, 1.0, kind, bg)
        assert not torch.equal(tn, tb)


def test_noncontiguous(compiled, device):
    B, K, H, W = 3, 4, 7, 6
    coords, _, seed = random_landmarks(B, K, H, W, device, torch.float32)
    vis = torch.rand(B, K, device=device) - 0.3
    for kind, bg in KIND_BG:
        expect = compiled.heatmap_targets(coords, vis, H, W, 1.2, kind, bg)
        got = compiled.heatmap_targets(noncontiguous(coords), noncontiguous(vis), H, W, 1.2, kind, bg)
        torch.testing.assert_close(got, expect, atol=0, rtol=0, equal_nan=False)
        # coords transposed in memory ([B, 2, K] storage)
        ct = coords.transpose(1, 2).contiguous().transpose(1, 2)
        got = compiled.heatmap_targets(ct, vis, H, W, 1.2, kind, bg)
        torch.testing.assert_close(got, expect, atol=0, rtol=0)


def test_no_gradient(compiled, device):
    coords = torch.rand(2, 3, 2, device=device, requires_grad=True)
    t, m = compiled.heatmap_targets(coords, None, 5, 5, 1.0, "gaussian", False)
    assert not t.requires_grad and not m.requires_grad and t.grad_fn is None


@pytest.mark.parametrize("kind,bg", KIND_BG, ids=KIND_IDS)
def test_opcheck(compiled, device, kind, bg):
    coords, vis, _ = random_landmarks(2, 3, 5, 4, device, torch.float64)
    args = (coords.requires_grad_(), vis, 5, 4, 1.1, kind, bg)
    torch.library.opcheck(torch.ops.pyflm.heatmap_targets.default, args)
    torch.library.opcheck(
        torch.ops.pyflm.heatmap_targets.default, (coords.detach().float(), None, 3, 6, 0.8, kind, bg)
    )


class _Targets(torch.nn.Module):
    def forward(self, coords: torch.Tensor, vis: torch.Tensor):
        return torch.ops.pyflm.heatmap_targets(coords, vis, 9, 7, 1.5, "pwc", False)


def test_scripted(compiled, device, tmp_path):
    coords, _, _ = random_landmarks(2, 4, 9, 7, device, torch.float32)
    vis = torch.rand(2, 4, device=device) > 0.3
    module = torch.jit.script(_Targets())
    path = tmp_path / "targets.pt"
    torch.jit.save(module, str(path))
    loaded = torch.jit.load(str(path), map_location=device)
    torch.testing.assert_close(loaded(coords, vis), _Targets()(coords, vis), atol=0, rtol=0)


def test_wrapper(compiled, device, monkeypatch):
    coords, vis, _ = random_landmarks(2, 5, 8, 10, device, torch.float32)
    for kind, bg in KIND_BG:
        got = heatmap_targets(coords, vis, 8, 10, 1.7, kind, bg)
        torch.testing.assert_close(got, compiled.heatmap_targets(coords, vis, 8, 10, 1.7, kind, bg), atol=0, rtol=0)
    assert pyflm.heatmap_targets is heatmap_targets
    # defaults: 64 x 64, sigma 2, gaussian
    t, _ = heatmap_targets(coords)
    assert t.shape == (2, 5, 64, 64)
    monkeypatch.setattr(_library, "use_compiled", lambda op, dev: False)
    for kind, bg in KIND_BG:
        got = heatmap_targets(coords, vis, 8, 10, 1.7, kind, bg)
        ref = heatmap_targets_reference(coords, vis, 8, 10, 1.7, kind, bg)
        torch.testing.assert_close(got, ref, atol=0, rtol=0)
        assert not got[0].requires_grad


@pytest.mark.parametrize("use_op", [True, False], ids=["op", "reference"])
def test_errors(compiled, use_op):
    fn = compiled.heatmap_targets if use_op else heatmap_targets_reference
    c = torch.rand(2, 3, 2)

    def call(coords=c, vis=None, height=8, width=8, sigma=1.0, kind="gaussian", bg=False):
        return fn(coords, vis, height, width, sigma, kind, bg)

    cases = [
        (dict(coords=torch.rand(3, 2)), r"heatmap_targets: coords must be 3-D \[B, K, 2\]"),
        (dict(coords=torch.rand(2, 3, 3)), r"heatmap_targets: coords must have shape \[B, K, 2\]"),
        (dict(coords=torch.ones(2, 3, 2, dtype=torch.int64)), r"heatmap_targets: coords must have dtype"),
        (dict(vis=torch.ones(2, 3, 1)), r"heatmap_targets: visibility must be 2-D \[B, K\]"),
        (dict(vis=torch.ones(3, 2)), r"heatmap_targets: visibility must have shape \[B, K\] = \[2, 3\]"),
        (dict(vis=torch.ones(2, 3, dtype=torch.int32)), r"heatmap_targets: visibility must be bool or floating"),
        (dict(height=0), r"heatmap_targets: height must be >= 1, got 0"),
        (dict(width=-3), r"heatmap_targets: width must be >= 1, got -3"),
        (dict(sigma=0.0), r"heatmap_targets: sigma must be a positive finite number"),
        (dict(sigma=-1.0), r"heatmap_targets: sigma must be a positive finite number"),
        (dict(sigma=float("nan")), r"heatmap_targets: sigma must be a positive finite number"),
        (dict(sigma=float("inf")), r"heatmap_targets: sigma must be a positive finite number"),
        (dict(kind="soft"), r"heatmap_targets: kind must be one of 'gaussian', 'distribution', 'pwc', got 'soft'"),
        (dict(kind="distribution", bg=True), r"heatmap_targets: background=True is not supported for kind='distribution'"),
    ]
    for kwargs, pattern in cases:
        with pytest.raises(RuntimeError, match=pattern):
            call(**kwargs)
    if torch.cuda.is_available():
        with pytest.raises(RuntimeError, match=r"heatmap_targets: coords .* and visibility .* same device"):
            call(vis=torch.ones(2, 3, device="cuda"))


def test_extreme_sigma_and_large_map(compiled):
    B, K, H, W = 2, 7, 37, 100
    coords, vis, seed = random_landmarks(B, K, H, W, "cpu", torch.float32)
    for sigma in (1e-30, 0.05, 60.0):
        for kind, bg in KIND_BG:
            t, m = compiled.heatmap_targets(coords, vis, H, W, sigma, kind, bg)
            tr, mr = ref64(coords, vis, H, W, sigma, kind, bg)
            assert torch.isfinite(t).all(), f"seed={seed} sigma={sigma} {kind}"
            torch.testing.assert_close(t.double(), tr, **TOLERANCES[torch.float32], msg=lambda s: f"seed={seed}: {s}")


# ---------------------------------------------------------------- out= overload

OUT_CASES = [("gaussian", False), ("gaussian", True), ("distribution", False), ("pwc", False)]


def _out_buffers(coords, kind, bg, H, W):
    B, K = coords.shape[:2]
    C = K + (1 if kind == "pwc" or (kind == "gaussian" and bg) else 0)
    # NaN-filled: every element the op forgets to write stays NaN
    return (torch.full((B, C, H, W), float("nan"), dtype=coords.dtype, device=coords.device),
            torch.full((B, K), float("nan"), dtype=coords.dtype, device=coords.device))


@pytest.mark.parametrize("kind,bg", OUT_CASES)
def test_out_equals_functional_and_reuses_buffers(compiled, device, kind, bg):
    B, K, H, W = random.randint(1, 4), random.randint(1, 9), random.randint(3, 17), random.randint(3, 17)
    H, W = 11, 7
    for _ in range(2):  # the second call overwrites the first call's values
        coords = torch.rand(B, K, 2, device=device) * torch.tensor([W + 2.0, H + 2.0], device=device) - 1.5
        vis = torch.rand(B, K, device=device) > 0.2
        want_t, want_m = compiled.heatmap_targets(coords, vis, H, W, 1.7, kind, bg)
        if _ == 0:
            out = _out_buffers(coords, kind, bg, H, W)
        ptrs = [t.data_ptr() for t in out]
        versions = [t._version for t in out]
        got = pyflm.heatmap_targets(coords, vis, H, W, 1.7, kind, bg, out=out)
        assert got[0] is out[0] and got[1] is out[1]
        assert [t.data_ptr() for t in out] == ptrs
        assert all(t._version > v for t, v in zip(out, versions))  # autograd sees the write
        torch.testing.assert_close(out[0], want_t, rtol=0, atol=0)
        torch.testing.assert_close(out[1], want_m, rtol=0, atol=0)


def test_out_fallback_matches(device):
    coords = torch.rand(2, 5, 2, device=device) * 8
    out = _out_buffers(coords, "pwc", False, 9, 9)
    got = heatmap_targets
    want = heatmap_targets_reference(coords, None, 9, 9, 1.5, "pwc", False)
    orig = _library.HAS_OPS
    try:
        _library.HAS_OPS = False
        _library._warned.add("missing")  # this test is about the result, not the warning
        got(coords, None, 9, 9, 1.5, "pwc", False, out=out)
    finally:
        _library.HAS_OPS = orig
    torch.testing.assert_close(out[0], want[0])
    torch.testing.assert_close(out[1], want[1])


def test_out_opcheck(compiled):
    coords = torch.rand(2, 3, 2) * 6
    targets, mask = _out_buffers(coords, "gaussian", True, 8, 6)
    torch.library.opcheck(
        torch.ops.pyflm.heatmap_targets.out,
        (coords, None, 8, 6, 1.5, "gaussian", True),
        {"targets": targets, "mask": mask},
    )


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda t, m: (t[:, :2], m), r"out targets must have shape \[2, 3, 8, 6\]"),
        (lambda t, m: (t, m.double()), "out mask must have the dtype of coords"),
        (lambda t, m: (t.transpose(2, 3).contiguous().transpose(2, 3), m), "out targets must be contiguous"),
        (lambda t, m: (t.requires_grad_(True), m), "must not require grad"),
    ],
)
def test_out_errors(compiled, change, match):
    coords = torch.rand(2, 3, 2) * 5
    targets, mask = change(*_out_buffers(coords, "gaussian", False, 8, 6))
    with pytest.raises(RuntimeError, match=match):
        torch.ops.pyflm.heatmap_targets.out(coords, None, 8, 6, 1.5, "gaussian", False,
                                            targets=targets, mask=mask)


# ------------------------------------------- large targets (streaming stores)

# Targets of 8 MiB and more are written with non-temporal stores on the CPU
# (csrc/ops/cpu/heatmap_targets_kernel.cpp, kStreamBytes): a different store
# path, checked here at sizes past that bound, with an odd width so rows start
# at every alignment, into fresh poisoned tensors and NaN-filled out= buffers.
LARGE = {torch.float64: (2, 68, 97, 83), torch.float32: (3, 68, 97, 113), torch.float16: (4, 69, 127, 123),
         torch.bfloat16: (4, 69, 127, 123)}


@pytest.mark.parametrize("kind,bg", KIND_BG, ids=KIND_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_large_targets_match_reference(compiled, device, poison, kind, bg, dtype):
    B, K, H, W = LARGE[dtype]
    assert B * (K + 1) * H * W * dtype.itemsize > 8 << 20 and B * K * H * W * dtype.itemsize > 8 << 20
    coords, vis, seed = random_landmarks(B, K, H, W, device, dtype)
    sigma = random.choice([1.0, 2.0, 3.5])
    tr, mr = ref64(coords, vis, H, W, sigma, kind, bg)
    t, m = compiled.heatmap_targets(coords, vis, H, W, sigma, kind, bg)
    torch.testing.assert_close(t.double(), tr, **TOLERANCES[dtype], msg=lambda s: f"seed={seed}: {s}")
    torch.testing.assert_close(m.double(), mr, atol=0, rtol=0, msg=lambda s: f"seed={seed}: {s}")
    out = _out_buffers(coords, kind, bg, H, W)
    compiled.heatmap_targets.out(coords, vis, H, W, sigma, kind, bg, targets=out[0], mask=out[1])
    torch.testing.assert_close(out[0], t, atol=0, rtol=0, msg=lambda s: f"seed={seed}: {s}")
    torch.testing.assert_close(out[1], m, atol=0, rtol=0, msg=lambda s: f"seed={seed}: {s}")
