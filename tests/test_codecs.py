"""Codecs: pixel mapping, encode -> decode round trips, masks, batch/empty handling."""

from __future__ import annotations

import math

import pytest
import torch

from pyflm.codecs import (
    DistributionCodec,
    GaussianHeatmapCodec,
    PWCCodec,
    RegressionCodec,
    gaussian_blur,
    heatmap_to_input,
    input_to_heatmap,
)

SIZES = [(256, 64), (224, 224), (224, 56)]


def _seed() -> int:
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    torch.manual_seed(seed)
    return seed


def separated_points(B: int, K: int, S: int, margin: float, dtype=torch.float32) -> torch.Tensor:
    """K points per image on a jittered grid inside [margin, S - 1 - margin], one per cell,
    sub-pixel positions, at least 'cell / 2' apart (PWC targets need separated landmarks)."""
    n = math.ceil(math.sqrt(K))
    cell = (S - 1 - 2 * margin) / n
    idx = torch.stack([torch.randperm(n * n)[:K] for _ in range(B)])  # [B, K]
    gx, gy = (idx % n).to(torch.float64), (idx // n).to(torch.float64)
    jitter = 0.25 + 0.5 * torch.rand(B, K, 2, dtype=torch.float64)
    pts = margin + torch.stack([gx, gy], -1) * cell + jitter * cell
    return pts.to(dtype)


def test_pixel_mapping_round_trip_and_definition():
    seed = _seed()
    x = torch.rand(3, 5, 2, dtype=torch.float64) * 300 - 20
    for s in (1, 2, 4, 8, 3.5):
        back = heatmap_to_input(input_to_heatmap(x, s), s)
        torch.testing.assert_close(back, x, msg=f"seed {seed}, stride {s}")
    # heatmap pixel j covers input pixels [j*s, (j+1)*s): its centre is j*s + (s-1)/2
    j = torch.arange(5, dtype=torch.float64)
    torch.testing.assert_close(heatmap_to_input(j, 4), j * 4 + 1.5)
    # the heatmap edges map onto the image edges
    assert heatmap_to_input(torch.tensor(-0.5), 4).item() == -0.5
    assert heatmap_to_input(torch.tensor(64 - 0.5), 4).item() == 256 - 0.5
    assert torch.equal(input_to_heatmap(x, 1), x)


def test_regression_codec():
    c = RegressionCodec(224)
    pts = torch.tensor([[[-0.5, 223.5], [111.5, 0.0], [float("nan"), 3.0]]])
    vis = torch.tensor([[1.0, 0.0, 1.0]])
    values, mask = c.encode(pts, vis)
    assert values[0, 0].tolist() == [-1.0, 1.0]
    assert values[0, 1, 0].item() == 0.0  # image centre
    assert mask.tolist() == [[1.0, 0.0, 0.0]]
    assert torch.isfinite(values).all() and values[0, 2].abs().sum() == 0
    seed = _seed()
    x = torch.rand(4, 7, 2, dtype=torch.float64) * 260 - 20
    v, m = c.encode(x)
    assert m.all()
    back, scores = c.decode(v)
    torch.testing.assert_close(back, x, msg=f"seed {seed}")
    assert scores.shape == (4, 7) and (scores == 1).all()
    # differentiable
    v = v.requires_grad_()
    c.decode(v)[0].sum().backward()
    torch.testing.assert_close(v.grad, torch.full_like(v, 112.0))
    e, em = c.encode(torch.empty(0, 7, 2))
    assert e.shape == (0, 7, 2) and em.shape == (0, 7)


def _codecs(S, h):
    return [
        ("gaussian-dark", GaussianHeatmapCodec(S, h, sigma=2.0), "maps", 3.0),
        ("gaussian-dark-blur", GaussianHeatmapCodec(S, h, sigma=2.0, blur_kernel=5), "maps", 3.0),
        ("gaussian-bg-dark", GaussianHeatmapCodec(S, h, sigma=2.0, background=True), "maps", 3.0),
        ("gaussian-soft", GaussianHeatmapCodec(S, h, sigma=2.0, decode="soft"), "maps", 3.0),
        ("distribution", DistributionCodec(S, h, sigma=3.0), "log", 3.0),
        ("pwc", PWCCodec(S, h, sigma=2.0), "log", 2.0),
        ("pwc-blur", PWCCodec(S, h, sigma=2.0, blur_kernel=5), "log", 2.0),
    ]


@pytest.mark.parametrize("S,h", SIZES, ids=[f"{a}-{b}" for a, b in SIZES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_heatmap_codecs_round_trip(S, h, dtype):
    """Encode, feed the targets back as the 'perfect network output' (the targets
    for L2 heads, their log for softmax heads), decode: within 0.05 input px."""
    seed = _seed()
    for name, codec, feed, sig in _codecs(S, h):
        s = codec.stride
        margin = 5 * sig * s  # keep each Gaussian's mass inside the map
        # PWC targets are only Gaussian where landmarks do not overlap: 4 points, >= 4 sigma apart
        K = 4 if isinstance(codec, PWCCodec) else 6
        pts = separated_points(3, K, S, margin, dtype)
        targets, mask = codec.encode(pts)
        assert mask.dtype == dtype and (mask == 1).all()
        out = targets if feed == "maps" else torch.log(targets.clamp_min(1e-30))
        coords, scores = codec.decode(out)
        assert coords.shape == (3, K, 2) and scores.shape == (3, K)
        err = (coords.double() - pts.double()).abs().max().item()
        assert err < 0.05, f"{name} S={S} h={h}: max error {err:.4f} px (seed {seed})"
        assert torch.isfinite(scores).all() and (scores > 0).all()
        if isinstance(codec, PWCCodec):
            soft, conf = codec.decode_soft(out)
            err = (soft.double() - pts.double()).abs().max().item()
            assert err < 0.05, f"{name} decode_soft: {err:.4f} px (seed {seed})"


def test_round_trip_detects_a_wrong_mapping():
    """The round trip would catch an off-by-half-pixel mapping (e.g. x_in = x_hm * s)."""
    codec = GaussianHeatmapCodec(256, 64, 2.0)
    pts = separated_points(2, 4, 256, 40.0)
    targets, _ = codec.encode(pts)
    from pyflm import argmax_decode

    hm, _ = argmax_decode(targets, "dark")
    assert (hm * 4 - pts).abs().max() > 1.0  # naive mapping: 1.5 px off
    assert (codec.decode(targets)[0] - pts).abs().max() < 0.05


@pytest.mark.parametrize("mode", ["none", "quarter"])
def test_integer_decode_modes(mode):
    codec = GaussianHeatmapCodec(256, 64, 2.0, decode=mode)
    pts = separated_points(2, 4, 256, 40.0)
    coords, _ = codec.decode(codec.encode(pts)[0])
    bound = 0.5 * 4 if mode == "none" else 0.25 * 4 + 1e-4  # half a heatmap pixel / quarter rule
    assert (coords - pts).abs().max() <= bound + 1e-4
    on_grid = input_to_heatmap(coords, 4) * (1 if mode == "none" else 4)
    torch.testing.assert_close(on_grid, on_grid.round())


def test_encode_sigma_and_shapes():
    codec = GaussianHeatmapCodec(256, 64, sigma=2.0, background=True)
    pts = torch.tensor([[[129.5, 65.5]]])  # heatmap pixel (32, 16) centre: 32*4 + 1.5
    t, m = codec.encode(pts)
    assert t.shape == (1, 2, 64, 64)
    assert t[0, 0, 16, 32].item() == pytest.approx(1.0)
    assert t[0, 0, 16, 34].item() == pytest.approx(math.exp(-4 / 8))  # sigma in heatmap px
    torch.testing.assert_close(t[0, 1], 1 - t[0, 0])
    d, _ = DistributionCodec(256, 64, 3.0).encode(pts)
    assert d.sum().item() == pytest.approx(1.0, abs=1e-5)
    p, _ = PWCCodec(256, 64, 3.0).encode(pts)
    assert p.shape == (1, 2, 64, 64)
    torch.testing.assert_close(p.sum(1), torch.ones(1, 64, 64))


def test_invalid_landmarks_keep_mask_zero():
    pts = torch.tensor([[[100.0, 100.0], [-1.0, 50.0], [50.0, 256.0], [float("nan"), 3.0], [60.0, 60.0],
                         [255.4, -0.4]]])
    vis = torch.tensor([[True, True, True, True, False, True]])
    for codec in (GaussianHeatmapCodec(256, 64, 2.0, background=True), DistributionCodec(256, 64),
                  PWCCodec(256, 64)):
        t, m = codec.encode(pts, vis)
        assert m.tolist() == [[1.0, 0.0, 0.0, 0.0, 0.0, 1.0]], type(codec).__name__
        assert (t[0, 1:5] == 0).all()
        assert (t[0, 0] > 0).any() and (t[0, 5] > 0).any()
    v, m = RegressionCodec(256).encode(pts, vis)
    assert m.tolist() == [[1.0, 1.0, 1.0, 0.0, 0.0, 1.0]]  # outside the image is still a valid regression target


def test_batch_consistency_and_empty():
    pts = separated_points(4, 5, 224, 30.0)
    for codec in (GaussianHeatmapCodec(224, 56, 2.0), DistributionCodec(224, 56), PWCCodec(224, 56)):
        t, m = codec.encode(pts)
        t1, m1 = codec.encode(pts[2:3])
        torch.testing.assert_close(t[2:3], t1)
        out = t if isinstance(codec, GaussianHeatmapCodec) else t.clamp_min(1e-30).log()
        c, s = codec.decode(out)
        c1, s1 = codec.decode(out[2:3])
        torch.testing.assert_close(c[2:3], c1)
        for B, K in ((0, 5), (3, 0)):
            e, em = codec.encode(torch.empty(B, K, 2))
            assert em.shape == (B, K)
            assert e.shape[0] == B and e.shape[-2:] == (56, 56)
            C = K + 1 if isinstance(codec, PWCCodec) else K
            dc, ds = codec.decode(torch.empty(B, C, 56, 56))
            assert dc.shape == (B, K, 2) and ds.shape == (B, K)


def test_differentiable_soft_decoders():
    pts = separated_points(2, 3, 64, 12.0)
    for codec, fn in ((DistributionCodec(64, 64, 2.0), "decode"), (PWCCodec(64, 64, 2.0), "decode_soft"),
                      (GaussianHeatmapCodec(64, 64, 2.0, decode="soft"), "decode")):
        t, _ = codec.encode(pts)
        soft_maps = isinstance(codec, GaussianHeatmapCodec)  # fed the maps, not logits
        logits = (t.clone() if soft_maps else t.clamp_min(1e-6).log()).requires_grad_()
        coords, _ = getattr(codec, fn)(logits)
        coords.sum().backward()
        assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_gaussian_blur_keeps_peak_and_centre():
    codec = GaussianHeatmapCodec(64, 64, 2.0)
    t, _ = codec.encode(torch.tensor([[[30.3, 20.8]]]))
    b = gaussian_blur(t, 7)
    assert b.amax().item() == pytest.approx(t.amax().item(), rel=1e-5)
    assert b.argmax() == t.argmax()
    assert (b - t).abs().max() > 1e-3  # it did blur
    with pytest.raises(ValueError, match="odd"):
        gaussian_blur(t, 4)


def test_bad_arguments():
    with pytest.raises(ValueError, match="decode"):
        GaussianHeatmapCodec(256, 64, decode="argmax")
    with pytest.raises(ValueError, match="sigma"):
        DistributionCodec(256, 64, sigma=0.0)
    with pytest.raises(ValueError, match="expects 64x64"):
        GaussianHeatmapCodec(256, 64).decode(torch.zeros(1, 2, 32, 32))
    with pytest.raises(ValueError, match=r"\[B, K, 2\]"):
        PWCCodec(256, 64).encode(torch.zeros(2, 3))
