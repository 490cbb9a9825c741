"""pyflm.models: registry, output shapes, forward/backward, parameter counts,
the separable Gaussian kernel convolution and the cascade's geometry.

Shapes at the real input sizes are checked on the meta device (free); the real
forward/backward runs at small inputs with one thread (the CI box is shared).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pyflm import models
from pyflm.models import build_model, count_parameters, parameter_table
from pyflm.models.cascade import apply_similarity, landmark_heatmap, similarity_params, warp_image
from pyflm.models.dsc import DEFAULT_KERNEL_SIGMA, GaussianKernelConv, gaussian_1d, gaussian_2d

K = 68

# Parameter counts we report (K = 68, default configurations).
OUR_COUNTS = {
    "direct": 178_682_440,
    "cascade": 35_053_144,
    "distribution": 82_871_880,
    "heatmap": 82_947_658,
    "pwc": 82_947_658,
    "hybrid": 82_947_658,
    "discriminator": 34_689,
    "fcdensenet56": 1_387_796,
    "compact": 604_356,
    "fcdensenet56 (11 classes)": 1_376_795,
}


@pytest.fixture(autouse=True)
def one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


# ---------------------------------------------------------------- registry


def test_registry_names():
    assert set(models.MODELS) == {
        "direct", "cascade", "distribution", "heatmap", "pwc", "hybrid", "discriminator", "dsc",
        "fcdensenet56", "compact",
    }


@pytest.mark.parametrize("bad", ["vgg", "", "PWC", None])
def test_registry_unknown_name_lists_valid_ones(bad):
    with pytest.raises(ValueError, match=r"unknown model .*valid names: cascade, compact, .*pwc"):
        build_model(bad)


@pytest.mark.parametrize("k", [0, -3, 2.5])
def test_registry_bad_num_landmarks(k):
    with pytest.raises(ValueError, match="num_landmarks must be a positive int"):
        build_model("compact", num_landmarks=k)


def test_registry_forwards_kwargs():
    m = build_model("compact", num_landmarks=5, input_size=128, width=0.5)
    assert m.input_size == 128 and m.num_landmarks == 5
    with pytest.raises(TypeError):
        build_model("compact", no_such_option=1)


# ------------------------------------------------------ shapes (meta device)

REAL_SHAPES = [
    ("direct", 224, (2, K, 2), None),
    ("cascade", 112, (2, 3, K, 2), None),
    ("distribution", 224, (2, K, 224, 224), 1),
    ("heatmap", 224, (2, K + 1, 224, 224), 1),
    ("pwc", 224, (2, K + 1, 224, 224), 1),
    ("hybrid", 224, (2, K + 1, 224, 224), 1),
    ("fcdensenet56", 256, (2, K, 256, 256), 1),
    ("compact", 160, (2, K, 40, 40), 4),
]


@pytest.mark.parametrize("name,size,shape,stride", REAL_SHAPES, ids=[r[0] for r in REAL_SHAPES])
def test_output_shape_at_paper_input_size(name, size, shape, stride):
    with torch.device("meta"):
        m = build_model(name)
        y = m(torch.empty(2, 3, size, size))
    assert m.input_size == size
    assert m.output_stride == stride
    assert isinstance(m.outputs, str) and m.outputs
    assert tuple(y.shape) == shape


def test_discriminator_attributes_and_shape():
    m = build_model("discriminator")
    assert m.input_size is None and m.output_stride is None and m.outputs
    assert m(torch.rand(3, K, 2)).shape == (3, 1)
    with pytest.raises(ValueError, match=r"expected \[B, 68, 2\]"):
        m(torch.rand(3, 67, 2))


def test_input_size_errors():
    with torch.device("meta"):
        with pytest.raises(ValueError, match="divisible by 32"):
            build_model("pwc")(torch.empty(1, 3, 100, 100))
        with pytest.raises(ValueError, match="built for 224x224"):
            build_model("direct").eval()(torch.empty(1, 3, 192, 192))
        with pytest.raises(ValueError, match="divisible by 32"):
            build_model("fcdensenet56")(torch.empty(1, 3, 48, 48))
        with pytest.raises(ValueError, match="built for 112x112"):
            build_model("cascade").eval()(torch.empty(1, 3, 96, 96))
    with pytest.raises(ValueError, match="divisible by 32"):
        build_model("compact", input_size=150)


# ------------------------------------------------- forward + backward (real)


def _check_backward(model, x, out_shape):
    y = model(x)
    y = y if isinstance(y, tuple) else (y,)
    assert tuple(y[-1].shape) == out_shape
    sum(t.float().square().mean() for t in y).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert all(torch.isfinite(t).all() for t in y)


def test_fcn_vgg_forward_backward():
    # pwc/heatmap/hybrid/distribution share VGG19FCN; one real run at the
    # smallest size (conv6 at 1x1), the others differ only in the class count.
    # B = 2: BatchNorm needs more than one value per channel at conv6 (1x1).
    _check_backward(build_model("pwc"), torch.randn(2, 3, 32, 32), (2, K + 1, 32, 32))


def test_direct_forward_backward():
    # BatchNorm1d needs B >= 2 in training mode.
    m = build_model("direct", input_size=32)
    _check_backward(m, torch.randn(2, 3, 32, 32), (2, K, 2))


def test_cascade_forward_backward():
    m = build_model("cascade", num_landmarks=K, input_size=48)
    _check_backward(m, torch.randn(2, 3, 48, 48), (2, 3, K, 2))


def test_cascade_rgb_and_stages():
    m = build_model("cascade", num_landmarks=5, input_size=32, grey=False, num_stages=2).eval()
    assert m.stages[0].features[0][0].in_channels == 3 and m.stages[1].features[0][0].in_channels == 5
    with torch.no_grad():
        assert m(torch.randn(1, 3, 32, 32)).shape == (1, 2, 5, 2)


def test_fcdensenet56_forward_backward():
    # 64 px: the bottleneck is 2x2 (BatchNorm needs > 1 value per channel at B = 1).
    _check_backward(build_model("fcdensenet56", num_landmarks=7), torch.randn(1, 3, 64, 64), (1, 7, 64, 64))


def test_compact_forward_backward():
    _check_backward(build_model("compact"), torch.randn(1, 3, 128, 128), (1, K, 32, 32))


def test_compact_channels_last_matches():
    m = build_model("compact", num_landmarks=5, input_size=128).eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        ref = m(x)
        out = m.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")
def test_compact_scripts(tmp_path):
    m = build_model("compact", num_landmarks=5, input_size=128).eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        ref = m(x)
        path = tmp_path / "compact.pt"
        torch.jit.script(m).save(str(path))
        torch.testing.assert_close(torch.jit.load(str(path))(x), ref)
    # torch.export.export(m, (x,)) also works but takes ~10 s here: not run in CI.


def test_compact_width_and_sizes():
    small = build_model("compact", width=0.5, decoder_channels=32)
    assert count_parameters(small) < count_parameters(build_model("compact")) / 2
    with torch.device("meta"):
        for size in (128, 192):
            assert build_model("compact", input_size=size)(torch.empty(1, 3, size, size)).shape[-1] == size // 4


def test_discriminator_forward_backward():
    _check_backward(build_model("discriminator"), torch.rand(2, K, 2), (2, 1))


def test_dsc_forward_backward():
    m = build_model("dsc", num_landmarks=4)
    assert m.input_size == 256 and m.output_stride == 1
    _check_backward(m, torch.randn(1, 3, 64, 64), (1, 4, 64, 64))
    with torch.no_grad():
        initial, refined = m.eval()(torch.randn(1, 3, 64, 64))
    assert initial.shape == refined.shape == (1, 4, 64, 64)
    # kernel conv is fixed: no parameters, so DSC params = FC-DenseNet56 + block
    assert count_parameters(m) == count_parameters(m.backbone) + count_parameters(m.refine)


def test_dsc_wiring():
    """initial = Gaussian-blurred FC-DenseNet output; refined = the dilated skip block on it."""
    m = build_model("dsc", num_landmarks=3)
    assert [c.dilation[0] for c in m.refine.layers] == [1, 1, 2, 4, 8, 16, 32]
    x = torch.randn(1, 3, 64, 64)
    m.eval()
    with torch.no_grad():
        initial, refined = m(x)
        torch.testing.assert_close(initial, m.kernel_conv(m.backbone(x)))
        torch.testing.assert_close(refined, m.refine(initial))


# ------------------------------------------------------- parameter counts


def test_parameter_table():
    rows = {name: (ours, paper) for name, ours, paper in parameter_table()}
    for name, count in OUR_COUNTS.items():
        assert rows[name][0] == count, name
    # The three counts Hsu et al. report are matched exactly.
    for name in ("pwc", "direct", "discriminator"):
        assert rows[name][0] == rows[name][1], name
    # Tiramisu's FC-DenseNet56 "1.5M" (11-class head): ours is within 10 %.
    ours, paper = rows["fcdensenet56 (11 classes)"]
    assert abs(ours - paper) / paper < 0.10
    assert rows["compact"][0] < 3_000_000
    assert "dsc" in rows


def test_parameter_table_command(capsys):
    from pyflm.models.__main__ import main

    assert main([]) == 0
    out = capsys.readouterr().out
    assert "| pwc | 82,947,658 | 82,947,658 | yes |" in out
    assert "| discriminator | 34,689 | 34,689 | yes |" in out
    assert "| direct | 178,682,440 | 178,682,440 | yes |" in out


def test_discriminator_hidden_size_solves_paper_count():
    # h^2 + 143 h + 1 = 34,689 -> h = 128
    h = (-143 + math.sqrt(143**2 + 4 * (34_689 - 1))) / 2
    assert h == 128
    assert count_parameters(build_model("discriminator", hidden=(64, 64))) == 64 * 64 + 143 * 64 + 1


def test_counts_exclude_buffers():
    m = build_model("discriminator")
    total = sum(p.numel() for p in m.parameters()) + sum(b.numel() for b in m.buffers())
    assert total > count_parameters(m) == 34_689


# ------------------------------------------------ Gaussian kernel convolution


def test_gaussian_1d_and_2d():
    g = gaussian_1d(45, DEFAULT_KERNEL_SIGMA, torch.float64)
    assert g.shape == (45,) and abs(g.sum().item() - 1) < 1e-12
    assert g.argmax().item() == 22 and torch.equal(g, g.flip(0))
    # 2-D kernel against the closed form exp(-(x^2 + y^2) / (2 sigma^2)) / Z.
    r = torch.arange(45, dtype=torch.float64) - 22
    direct = torch.exp(-(r.view(-1, 1) ** 2 + r.view(1, -1) ** 2) / (2 * DEFAULT_KERNEL_SIGMA**2))
    torch.testing.assert_close(gaussian_2d(45, DEFAULT_KERNEL_SIGMA, torch.float64), direct / direct.sum())


@pytest.mark.parametrize("sigma", [DEFAULT_KERNEL_SIGMA, 2.0, 15.0])
@pytest.mark.parametrize("hw", [(50, 47), (9, 64), (1, 1)])
def test_separable_equals_2d_gaussian(sigma, hw):
    C = 3
    conv = GaussianKernelConv(C, 45, sigma).double()
    x = torch.rand(2, C, *hw, dtype=torch.float64)
    k2 = gaussian_2d(45, sigma, torch.float64).expand(C, 1, 45, 45)
    ref = F.conv2d(x, k2, padding=22, groups=C)
    torch.testing.assert_close(conv(x), ref, atol=1e-12, rtol=1e-10)


def test_kernel_conv_impulse_response_and_no_params():
    conv = GaussianKernelConv(2, 45, 5.0)
    assert count_parameters(conv) == 0 and list(conv.parameters()) == []
    x = torch.zeros(1, 2, 61, 61)
    x[0, 1, 30, 30] = 1.0
    y = conv(x)
    assert y[0, 0].abs().max() == 0  # depthwise: channels do not mix
    torch.testing.assert_close(y[0, 1, 8:53, 8:53], gaussian_2d(45, 5.0), atol=1e-7, rtol=1e-5)
    x.requires_grad_(True)
    conv(x).sum().backward()
    assert x.grad is not None


@pytest.mark.parametrize("kw,msg", [(dict(size=44), "odd"), (dict(sigma=0.0), "positive"),
                                    (dict(sigma=float("nan")), "positive")])
def test_kernel_conv_errors(kw, msg):
    with pytest.raises(ValueError, match=msg):
        GaussianKernelConv(3, **kw)


# ----------------------------------------------------------- cascade geometry


def _random_similarity(B, max_angle=1.0, scale=(0.7, 1.3), shift=5.0):
    ang = (torch.rand(B, dtype=torch.float64) * 2 - 1) * max_angle
    s = scale[0] + (scale[1] - scale[0]) * torch.rand(B, dtype=torch.float64)
    a, b = s * torch.cos(ang), s * torch.sin(ang)
    A = torch.stack([torch.stack([a, b], -1), torch.stack([-b, a], -1)], -2)
    t = (torch.rand(B, 1, 2, dtype=torch.float64) * 2 - 1) * shift
    return A, t


def test_similarity_params_recovers_transform():
    A, t = _random_similarity(3)
    src = torch.rand(3, 10, 2, dtype=torch.float64) * 50
    dst = src @ A + t
    A2, t2 = similarity_params(src, dst)
    torch.testing.assert_close(A2, A)
    torch.testing.assert_close(t2, t)
    torch.testing.assert_close(apply_similarity(dst, A2, t2, inverse=True), src)


def test_warp_image_moves_pixels_where_the_points_go():
    # A Gaussian blob at p must land (centroid) at p @ A + t. Ranges keep it in frame.
    S, B = 64, 3
    A, t = _random_similarity(B, max_angle=0.5, scale=(0.85, 1.15), shift=3.0)
    p = 28 + 8 * torch.rand(B, 1, 2, dtype=torch.float64)
    q = apply_similarity(p, A, t)
    ys, xs = torch.meshgrid(torch.arange(S, dtype=torch.float64), torch.arange(S, dtype=torch.float64), indexing="ij")
    d2 = (xs - p[:, 0, 0].view(B, 1, 1)) ** 2 + (ys - p[:, 0, 1].view(B, 1, 1)) ** 2
    img = torch.exp(-d2 / (2 * 2.0**2)).unsqueeze(1)
    out = warp_image(img, A, t)[:, 0]
    centroid = torch.stack([(out * xs).sum((1, 2)), (out * ys).sum((1, 2))], -1) / out.sum((1, 2)).unsqueeze(-1)
    torch.testing.assert_close(centroid, q[:, 0], atol=0.05, rtol=0)
    # where the blob moved by > 1 px, the wrong direction (inverse transform) is far off
    moved = (q - p)[:, 0].norm(dim=-1) > 1.0
    wrong = (apply_similarity(p, A, t, inverse=True)[:, 0] - centroid).norm(dim=-1)
    assert (wrong[moved] > 1.0).all()


def test_warp_identity_is_exact():
    img = torch.rand(1, 2, 16, 16, dtype=torch.float64)
    eye = torch.eye(2, dtype=torch.float64).unsqueeze(0)
    torch.testing.assert_close(warp_image(img, eye, torch.zeros(1, 1, 2, dtype=torch.float64)), img)


def test_landmark_heatmap():
    pts = torch.tensor([[[3.0, 4.0], [10.0, 2.0]]], requires_grad=True)
    hm = landmark_heatmap(pts, 12, 14)
    assert hm.shape == (1, 1, 12, 14)
    assert hm[0, 0, 4, 3].item() == pytest.approx(1.0, abs=1e-5)
    assert hm[0, 0, 2, 10].item() == pytest.approx(1.0, abs=1e-5)
    assert hm[0, 0, 4, 7].item() == pytest.approx(1 / (1 + min(4.0, math.hypot(3, 2))))
    hm.sum().backward()
    assert torch.isfinite(pts.grad).all() and pts.grad.abs().sum() > 0


def test_cascade_later_stages_see_aligned_input():
    # With zero stage updates the cascade keeps the mean shape; the aligned image
    # of a shape equal to the mean is the image itself (identity similarity).
    m = build_model("cascade", num_landmarks=6, input_size=32, num_stages=2).eval()
    for st in m.stages:
        torch.nn.init.zeros_(st.out.weight)
        torch.nn.init.zeros_(st.out.bias)
    with torch.no_grad():
        out = m(torch.randn(1, 3, 32, 32))
    torch.testing.assert_close(out[0, 0], m.mean_shape)
    torch.testing.assert_close(out[0, 1], m.mean_shape, atol=1e-4, rtol=1e-4)
