"""Losses against hand-computed values on tiny inputs, masks, and gradient flow."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pyflm import losses as L


def test_heatmap_l2_hand_values():
    pred = torch.zeros(1, 2, 1, 2)
    target = torch.tensor([[[[1.0, 0.0]], [[2.0, 2.0]]]])
    # per-map MSE: map0 (1 + 0) / 2 = 0.5, map1 (4 + 4) / 2 = 4
    assert L.heatmap_l2(pred, target, torch.tensor([[1.0, 1.0]])).item() == pytest.approx(2.25)
    assert L.heatmap_l2(pred, target, torch.tensor([[1.0, 0.0]])).item() == pytest.approx(0.5)
    assert L.heatmap_l2(pred, target).item() == pytest.approx(2.25)
    # K + 1 channels: the last one (background) is always counted
    assert L.heatmap_l2(pred, target, torch.tensor([[0.0]])).item() == pytest.approx(4.0)
    assert L.heatmap_l2(pred, target, torch.tensor([[1.0]])).item() == pytest.approx(2.25)
    # an invalid map full of NaN does not poison the loss
    pred2 = pred.clone()
    pred2[0, 1] = float("nan")
    assert L.heatmap_l2(pred2, target, torch.tensor([[1.0, 0.0]])).item() == pytest.approx(0.5)


def test_distribution_kl_hand_values():
    # 1x2 maps: logits (0, 0) -> q = (0.5, 0.5); target (1, 0) -> KL = log 2
    logits = torch.zeros(1, 2, 1, 2)
    target = torch.tensor([[[[1.0, 0.0]], [[0.25, 0.75]]]])
    kl1 = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert L.distribution_kl(logits, target, torch.tensor([[1.0, 0.0]])).item() == pytest.approx(math.log(2))
    assert L.distribution_kl(logits, target, torch.tensor([[1.0, 1.0]])).item() == pytest.approx(
        (math.log(2) + kl1) / 2)
    # KL is zero when the logits are the log-target (up to a constant)
    t = torch.softmax(torch.randn(2, 3, 4, 5).flatten(2), -1).view(2, 3, 4, 5)
    assert L.distribution_kl(t.log() + 7.0, t).item() == pytest.approx(0.0, abs=1e-6)
    # matches torch's kl_div
    lg = torch.randn(2, 3, 4, 5)
    ref = F.kl_div(torch.log_softmax(lg.flatten(2), -1), t.flatten(2), reduction="none").sum(-1).mean()
    torch.testing.assert_close(L.distribution_kl(lg, t), ref)


def test_pwc_cross_entropy_hand_values():
    # one pixel, K = 1: logits (0, 0) -> log p = (-log 2, -log 2); target (0.25, 0.75) -> CE = log 2
    logits = torch.zeros(1, 2, 1, 1)
    target = torch.tensor([0.25, 0.75]).view(1, 2, 1, 1)
    assert L.pwc_cross_entropy(logits, target, torch.ones(1, 1)).item() == pytest.approx(math.log(2))
    # logits (log 3, 0): p = (0.75, 0.25); CE = -(0.25 log .75 + .75 log .25)
    logits = torch.tensor([math.log(3), 0.0]).view(1, 2, 1, 1)
    want = -(0.25 * math.log(0.75) + 0.75 * math.log(0.25))
    assert L.pwc_cross_entropy(logits, target).item() == pytest.approx(want, rel=1e-6)
    # mean over pixels and images, equals torch's soft-label cross_entropy without a mask
    lg = torch.randn(2, 4, 3, 5)
    t = torch.softmax(torch.randn(2, 4, 3, 5), 1)
    torch.testing.assert_close(L.pwc_cross_entropy(lg, t), F.cross_entropy(lg, t))
    # a masked landmark's class leaves the softmax: K = 2, landmark 1 invalid (its target is 0)
    lg = torch.tensor([1.0, 5.0, 0.0]).view(1, 3, 1, 1)
    t = torch.tensor([0.5, 0.0, 0.5]).view(1, 3, 1, 1)
    want = -(0.5 * math.log(math.e / (math.e + 1)) + 0.5 * math.log(1 / (math.e + 1)))
    lg.requires_grad_()
    loss = L.pwc_cross_entropy(lg, t, torch.tensor([[1.0, 0.0]]))
    assert loss.item() == pytest.approx(want, rel=1e-6)
    loss.backward()
    assert lg.grad[0, 1].item() == 0.0 and torch.isfinite(lg.grad).all()


def test_coordinate_losses_hand_values():
    pred = torch.tensor([[[1.0, 2.0], [0.0, 0.0], [5.0, 5.0]]])
    tgt = torch.tensor([[[4.0, 6.0], [1.0, -1.0], [float("nan"), 0.0]]])
    m = torch.tensor([[1.0, 1.0, 0.0]])
    assert L.coord_l2(pred, tgt, m).item() == pytest.approx((25 + 2) / 2)
    assert L.coord_l1(pred, tgt, m).item() == pytest.approx((7 + 2) / 2)
    assert L.coord_l2(pred[:, :2], tgt[:, :2]).item() == pytest.approx(13.5)


def test_hybrid_loss_normalisation():
    # K = 1 with one pixel: CE = log 2; coord error of S/2 px in x -> normalised error 1 -> L2 = 1
    logits = torch.zeros(1, 2, 1, 1)
    target = torch.tensor([0.25, 0.75]).view(1, 2, 1, 1)
    S = 224
    pred = torch.tensor([[[10.0, 20.0]]])
    gt = torch.tensor([[[10.0 + S / 2, 20.0]]])
    out = L.hybrid_loss(logits, target, torch.ones(1, 1), pred, gt, S)
    assert out["coord"].item() == pytest.approx(1.0)
    assert out["loss"].item() == pytest.approx(math.log(2) + 0.25)
    assert L.normalise_coords(torch.tensor([-0.5, S - 0.5]), S).tolist() == [-1.0, 1.0]


def test_gan_losses_hand_values():
    real = torch.tensor([[0.0], [2.0]])
    fake = torch.tensor([[0.0], [-1.0]])
    sp = lambda x: math.log1p(math.exp(x))  # softplus: BCE(x, 1) = softplus(-x), BCE(x, 0) = softplus(x)
    want_d = (sp(0) + sp(-2)) / 2 + (sp(0) + sp(-1)) / 2
    assert L.discriminator_loss(real, fake).item() == pytest.approx(want_d, rel=1e-6)
    want_g = (sp(0) + sp(1)) / 2
    assert L.generator_loss(fake).item() == pytest.approx(want_g, rel=1e-6)
    assert L.generator_loss(fake, weight=0.1).item() == pytest.approx(0.1 * want_g, rel=1e-6)


def test_nothing_valid_gives_connected_zero():
    for fn, args in (
        (L.heatmap_l2, (torch.randn(2, 3, 4, 4), torch.rand(2, 3, 4, 4))),
        (L.distribution_kl, (torch.randn(2, 3, 4, 4), torch.rand(2, 3, 4, 4))),
        (L.coord_l2, (torch.randn(2, 3, 2), torch.randn(2, 3, 2))),
        (L.coord_l1, (torch.randn(2, 3, 2), torch.randn(2, 3, 2))),
    ):
        x = args[0].requires_grad_()
        loss = fn(x, args[1], torch.zeros(2, 3))
        assert loss.item() == 0.0
        loss.backward()
        assert x.grad is not None and (x.grad == 0).all()


@pytest.mark.parametrize("name", ["heatmap_l2", "distribution_kl", "pwc_cross_entropy", "coord_l2", "coord_l1"])
def test_gradients(name):
    fn = getattr(L, name)
    torch.manual_seed(int(torch.randint(0, 1 << 30, ()).item()))
    if name.startswith("coord"):
        x = torch.randn(2, 3, 2, dtype=torch.float64, requires_grad=True)
        t = torch.randn(2, 3, 2, dtype=torch.float64)
    else:
        C = 4 if name == "pwc_cross_entropy" else 3
        x = torch.randn(2, C, 3, 4, dtype=torch.float64, requires_grad=True)
        dim = 1 if name == "pwc_cross_entropy" else -1
        t = torch.softmax(torch.randn(2, C, 12, dtype=torch.float64), dim).view(2, C, 3, 4)
    mask = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    if name == "pwc_cross_entropy":
        t = t.clone()
        t[0, 1] = 0  # masked landmark: no target mass, as the codec produces
        t[0, 3] = 1 - t[0, [0, 2]].sum(0)
    assert torch.autograd.gradcheck(lambda a: fn(a, t, mask), (x,))


def test_low_precision_outputs_are_promoted():
    pred = torch.randn(2, 3, 4, 4)
    t = torch.rand(2, 3, 4, 4)
    m = torch.ones(2, 3)
    for dt in (torch.float16, torch.bfloat16):
        p = pred.to(dt).requires_grad_()
        loss = L.heatmap_l2(p, t, m)
        assert loss.dtype == torch.float32
        torch.testing.assert_close(loss, L.heatmap_l2(p.detach().float(), t, m))
        loss.backward()
        assert p.grad.dtype == dt
        assert L.pwc_cross_entropy(p, torch.softmax(t, 1), m[:, :2]).dtype == torch.float32
        assert L.distribution_kl(p, t, m).dtype == torch.float32
