"""Tasks: every model name builds, runs forward / loss / backward / decode; perfect
outputs decode to the targets; a few optimizer steps lower the loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from pyflm.codecs import GaussianHeatmapCodec, PWCCodec
from pyflm.tasks import TASKS, LandmarkTask, build_task

K = 4
S = 32
_CFG = {"cascade": dict(num_stages=2)}
STEPS = 2  # Adam steps for the ~78M-parameter VGG19 FCN tasks
_CACHE: dict[str, LandmarkTask] = {}


def small_task(name: str) -> LandmarkTask:
    """Smallest configuration each model allows (VGG nets need S % 32 == 0), cached per run."""
    if name not in _CACHE:
        torch.manual_seed(0)
        _CACHE[name] = build_task(name, K, input_size=S, **_CFG.get(name.split("+")[0], {}))
    return _CACHE[name]


@pytest.fixture(autouse=True)
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine is shared; one thread is faster here
    yield
    torch.set_num_threads(prev)


def batch(B: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(B, 3, S, S, generator=g)
    coords = 6 + torch.rand(B, K, 2, generator=g) * (S - 13)
    vis = torch.ones(B, K)
    vis[0, 1] = 0  # one unannotated landmark
    return images, coords, vis


@pytest.mark.parametrize("name", TASKS)
def test_task_forward_loss_backward_decode(name):
    task = small_task(name)
    assert task.input_size == S and task.codec.input_size == S
    task.train()
    images, coords, vis = batch()
    targets = task.encode(coords, vis)
    assert targets["mask"].tolist() == vis.tolist()
    out = task(images)
    losses = task.loss(out, targets)
    assert losses["loss"].dim() == 0 and torch.isfinite(losses["loss"])
    if name.endswith("+disc"):  # the adversarial term reaches the detector's output
        (g,) = torch.autograd.grad(losses["adv"], out, retain_graph=True)
        assert g.abs().sum() > 0
    task.zero_grad(set_to_none=True)
    losses["loss"].backward()
    grads = [p.grad for p in task.model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    pred, scores = task.decode(out)
    assert pred.shape == (2, K, 2) and scores.shape == (2, K)
    assert torch.isfinite(pred).all()
    if name.endswith("+disc"):
        assert "adv" in losses and losses["adv"] > 0
        # the detector's loss leaves the critic untouched
        assert all(p.grad is None for p in task.discriminator.parameters())
        d = task.discriminator_loss(out, targets)
        d["loss"].backward()
        assert all(p.grad is not None for p in task.discriminator.parameters())
        assert d["real_logits"].shape == (2, 1)
    else:
        assert task.discriminator is None
        with pytest.raises(RuntimeError, match="no discriminator"):
            task.discriminator_loss(out, targets)


class _StubDSC(nn.Module):
    """A user-supplied model with DSCNet's output layout (build_task(..., model=...))."""

    input_size, output_stride, num_landmarks = S, 1, K

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, K, 3, padding=1)
        self.b = nn.Conv2d(K, K, 3, padding=1)

    def forward(self, x):
        initial = self.a(x)
        return initial, self.b(initial)


def test_dsc_task_with_stub_model():
    task = build_task("dsc", K, model=_StubDSC(), sigma=2.0)
    images, coords, vis = batch()
    targets = task.encode(coords, vis)
    out = task(images)
    losses = task.loss(out, targets)
    assert set(losses) == {"loss", "initial", "refined"}
    torch.testing.assert_close(losses["loss"], losses["initial"] + losses["refined"])
    losses["loss"].backward()
    assert task.model.a.weight.grad.abs().sum() > 0
    # decode uses the refined maps: perfect refined maps, garbage initial ones
    hm = targets["heatmaps"]
    pred, _ = task.decode((torch.rand_like(hm), hm))
    ok = vis > 0
    assert (pred[ok] - coords[ok]).abs().max() < 0.05
    assert task.loss((hm, hm), targets)["loss"].item() == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("name,sigma", [("heatmap", 2.0), ("distribution", 2.0), ("pwc", 1.5), ("hybrid", 1.5),
                                        ("compact", 1.5)])
def test_perfect_outputs_decode_to_targets(name, sigma):
    """Outputs built from the task's own targets decode back to the coordinates
    (checks each task pairs the right codec, channel layout and decoder), with
    no model involved: a stub with the real model's geometry."""
    stride = 4 if name == "compact" else 1
    size = 160 if name == "compact" else 48

    class Geo(nn.Module):
        input_size, output_stride, num_landmarks = size, stride, 2

    task = build_task(name, 2, model=Geo(), sigma=sigma)
    coords = torch.tensor([[[14.3, 17.8], [33.6, 30.2]], [[30.1, 13.4], [16.7, 33.9]]])
    if name == "compact":  # 40x40 maps: keep 5 sigma (30 input px) from the border
        coords = coords * 2.5 + 20
    tg = task.encode(coords)
    key = [k for k in tg if k not in ("coords", "mask")][0]
    t = tg[key]
    out = t if name == "heatmap" else t.clamp_min(1e-30).log()
    pred, scores = task.decode(out)
    assert (pred - coords).abs().max() < 0.05, name
    assert (scores > 0).all()
    if name == "heatmap":
        assert t.shape[1] == 3  # HeatmapDetector layout: K maps + background
        assert task.loss(t, tg)["loss"].item() == pytest.approx(0.0, abs=1e-10)
    if name in ("pwc", "hybrid"):
        assert t.shape[1] == 3
    if name == "hybrid":
        parts = task.loss(out, tg)
        assert parts["coord"].item() < 1e-6


def test_regression_tasks_targets_and_decode():
    task = small_task("direct")
    _, coords, vis = batch()
    tg = task.encode(coords, vis)
    pred, scores = task.decode(tg["values"])
    ok = vis > 0
    torch.testing.assert_close(pred[ok], coords[ok])
    assert (scores == 1).all()
    assert task.loss(tg["values"], tg)["loss"].item() == pytest.approx(0.0, abs=1e-12)
    casc = small_task("cascade")
    stages = torch.stack([coords + 3.0, coords], dim=1)  # [B, stages, K, 2] in input px
    parts = casc.loss(stages, casc.encode(coords, vis))
    assert parts["stage1"].item() == pytest.approx(0.0, abs=1e-10)
    # 3 px in x and y = 6 / S in normalised units per axis
    assert parts["stage0"].item() == pytest.approx(2 * (6 / S) ** 2, rel=1e-4)
    torch.testing.assert_close(casc.decode(stages)[0], coords)


# (Adam lr, steps) per task: the VGG nets are slow on this CPU, the others take more steps
_FIT = {"direct": (3e-5, 3), "cascade": (1e-3, 10), "distribution": (1e-4, STEPS), "heatmap": (1e-4, STEPS),
        "pwc": (1e-4, STEPS), "hybrid": (1e-4, STEPS), "dsc": (1e-5, 10), "compact": (1e-3, 5)}


@pytest.mark.parametrize("name", list(_FIT))
def test_few_steps_lower_the_loss(name):
    task = small_task(name)
    task.train()
    for m in task.modules():  # batch of 2: dropout's noise would hide whether the optimizer works
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    images, coords, vis = batch(seed=7)
    targets = task.encode(coords, vis)
    lr, steps = _FIT[name]
    if name == "dsc":  # paper 2's optimizer, from its shipped config (RMSprop, momentum 0.9, weight decay 1e-4)
        from training.config import load_config
        from training.train import _make_optimizer

        o = load_config(Path(__file__).resolve().parents[1] / "training" / "configs" / "dsc.toml")["optim"]
        opt = _make_optimizer(task.model.parameters(), o, lr=lr)
        assert isinstance(opt, torch.optim.RMSprop) and opt.defaults["momentum"] == 0.9
    else:
        opt = torch.optim.Adam(task.model.parameters(), lr=lr)
    history = []
    for _ in range(steps):
        loss = task.loss(task(images), targets)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append(loss.item())
    final = task.loss(task(images), targets)["loss"].item()
    assert final < 0.9 * history[0], f"{name}: {history} -> {final}"


def test_build_task_errors_and_config():
    with pytest.raises(ValueError, match="unknown task"):
        build_task("segmentation")
    class Geo(nn.Module):
        input_size, output_stride, num_landmarks = 64, 4, 3
    t = build_task("compact", 3, model=Geo(), target="heatmap", sigma=1.0, blur_kernel=3)
    assert isinstance(t.codec, GaussianHeatmapCodec) and t.codec.heatmap_size == 16 and t.codec.sigma == 1.0
    with pytest.raises(ValueError, match="target"):
        build_task("compact", 3, model=Geo(), target="pwc")
    with pytest.raises(ValueError, match="nowhere"):
        build_task("compact", 3, model=Geo(), width=0.5)
    p = build_task("pwc", 3, model=Geo(), decode="quarter")
    assert isinstance(p.codec, PWCCodec) and p.codec.refine == "quarter"
