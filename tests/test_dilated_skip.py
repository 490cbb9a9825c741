"""pyflm.dilated_skip_block: the fused block against nn.Conv2d + cat + ReLU."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from pyflm.ops.dilated_skip import (
    DilatedSkipBlock,
    DilatedSkipReference,
    dilated_skip_block,
    dilated_skip_block_reference,
)

from conftest import TOLERANCES, noncontiguous

SEED = random.randrange(2**31)
print(f"test_dilated_skip seed: {SEED}")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(SEED)
    yield


def _pair(channels, growth, dilations, dtype=torch.float64, device="cpu"):
    ref = DilatedSkipReference(channels, growth, dilations).to(device=device, dtype=dtype)
    blk = DilatedSkipBlock(channels, growth, dilations).to(device=device, dtype=dtype)
    blk.load_state_dict(ref.state_dict())
    # Biases non-trivial so a dropped bias shows up.
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    blk.load_state_dict(ref.state_dict())
    return blk, ref


def _params(blk):
    return [layer.weight for layer in blk.layers], [layer.bias for layer in blk.layers]


def _grads(module, x, g):
    params = list(module.parameters())
    out = module(x)
    grads = torch.autograd.grad(out, [x] + params, g)
    return out, grads


CONFIGS = [
    # (B, C, growth, dilations, H, W)
    (2, 5, 3, (1, 2, 8), 9, 7),  # a dilation larger than the map
    (1, 3, None, (1,), 1, 1),  # one layer, 1x1 map
    (3, 4, [2, 5], (1, 3, 2), 6, 11),  # per-layer growth, odd sizes
    (2, 6, 2, (1, 1, 2, 4, 8, 16, 32), 13, 10),  # default dilations on a small map
    (1, 2, 1, (5, 1), 4, 3),  # every off-centre tap empty in layer 0
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"B{c[0]}C{c[1]}L{len(c[3])}_{c[4]}x{c[5]}")
def test_matches_reference_float64(compiled, poison, cfg):
    B, C, growth, dil, H, W = cfg
    blk, ref = _pair(C, growth, dil)
    x = torch.randn(B, C, H, W, dtype=torch.float64, requires_grad=True)
    g = torch.randn(B, C, H, W, dtype=torch.float64)
    out_r, grads_r = _grads(ref, x, g)
    out_b, grads_b = _grads(blk, x, g)
    torch.testing.assert_close(out_b, out_r, atol=1e-10, rtol=1e-10)
    names = ["input"] + [n for n, _ in blk.named_parameters()]
    for name, gb, gr in zip(names, grads_b, grads_r):
        torch.testing.assert_close(gb, gr, atol=1e-10, rtol=1e-10, msg=lambda m: f"grad {name}: {m}")


def _errors(module, x, g, out64, grads64):
    out, grads = _grads(module, x, g.to(x.dtype))
    assert out.dtype == x.dtype
    errs = [((out.double() - out64).abs().max() / (out64.abs().max() + 1)).item()]
    errs += [((a.double() - b).abs().max() / (b.abs().max() + 1)).item() for a, b in zip(grads, grads64)]
    return errs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dtypes_match_float64_reference(compiled, poison, dtype):
    dil = (1, 2, 4, 16)
    blk, ref64 = _pair(6, 4, dil, dtype=torch.float64)
    blk = blk.to(dtype)
    ref64.load_state_dict({k: v.double() for k, v in blk.state_dict().items()})  # rounded weights
    x = (torch.randn(2, 6, 12, 9) * 0.5).to(dtype).requires_grad_(True)
    x64 = x.detach().double().requires_grad_(True)
    g = torch.randn(2, 6, 12, 9, dtype=torch.float64)
    out64, grads64 = _grads(ref64, x64, g)
    ours = _errors(blk, x, g, out64, grads64)
    if dtype == torch.float32:
        assert max(ours) < TOLERANCES[dtype]["atol"], ours
        return
    # Low precision: the reference itself in this dtype (cuDNN/oneDNN convs,
    # float32 accumulation) is off by a few percent on the gradients; the op
    # computes in float32 and rounds once, so it must be of the same order.
    ref_lp = DilatedSkipReference(6, 4, dil).to(dtype)
    ref_lp.load_state_dict(blk.state_dict())
    theirs = _errors(ref_lp, x, g, out64, grads64)
    slack = TOLERANCES[dtype]["atol"]
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert a <= 4 * b + slack, (i, ours, theirs)


@pytest.mark.parametrize("lp", [torch.bfloat16, torch.float16])
def test_autocast(compiled, device, lp):
    """Under torch.autocast a conv hands the block low-precision heatmaps while
    its parameters stay fp32: the op casts them all to the autocast dtype, as
    a convolution would (same result as casting by hand), differentiably."""
    blk, _ = _pair(5, 3, (1, 2, 4), dtype=torch.float32, device=device)
    conv = torch.nn.Conv2d(2, 5, 3, padding=1).to(device)
    x = torch.randn(2, 2, 11, 7, device=device, requires_grad=True)
    with torch.autocast(device, dtype=lp):
        h = conv(x)
        assert h.dtype == lp  # the situation this is about
        out = blk(h)
    assert out.dtype == lp
    w, b = _params(blk)
    by_hand = dilated_skip_block(h.detach(), [t.to(lp) for t in w], [t.to(lp) for t in b], blk.dilations)
    torch.testing.assert_close(out.detach(), by_hand, rtol=0, atol=0)
    out.float().sum().backward()  # gradients reach the fp32 parameters and the conv's input
    assert all(t.grad is not None and t.grad.dtype == torch.float32 and torch.isfinite(t.grad).all() for t in w)
    assert x.grad is not None and torch.isfinite(x.grad).all()
    ref = dilated_skip_block_reference(h.detach().double(), [t.double() for t in w], [t.double() for t in b],
                                       blk.dilations)
    torch.testing.assert_close(out.double(), ref, **TOLERANCES[lp])


def test_inference_mode_batch_on_threads(compiled):
    """Under torch.inference_mode (how FaceLandmarker runs models) a batch that
    the CPU kernel splits over threads: every worker must see inference mode."""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    try:
        blk, ref = _pair(8, 4, (1, 2, 4), dtype=torch.float32)
        x = torch.randn(4, 8, 48, 40)  # > 2^20 multiply-adds a sample: the threaded path
        with torch.inference_mode():
            out = blk(x)
        torch.testing.assert_close(out.double(), ref.double()(x.double()), **TOLERANCES[torch.float32])
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def _relu_inputs(ref, x):
    """The reference's pre-activations in float64 (every layer but the last has a ReLU)."""
    r = copy.deepcopy(ref).double()
    feats, pre = [x.detach().double()], []
    for conv in r.layers[:-1]:
        pre.append(conv(torch.cat(feats, dim=1)))
        feats.append(torch.relu(pre[-1]))
    return pre


# float32 sums in two orders differ by up to ~7e-6 here; a pre-activation closer to 0 than
# that can take ReLU's other branch in one of them, and the gradients then differ by a
# weight's worth around it (3% of fresh draws did, each with a |pre-activation| < 4e-7).
KINK_MARGIN = 1e-5


def test_default_config_float32(compiled):
    """float32 at the default size against the reference: outputs, and gradients on a
    fresh draw whose pre-activations all keep KINK_MARGIN from ReLU's kink (the
    comparison is ill-posed in float32 closer than that; about 1 draw in 5 qualifies)."""
    blk, ref = _pair(68, None, (1, 1, 2, 4, 8, 16, 32), dtype=torch.float32)
    with torch.no_grad():
        for p in ref.parameters():
            p.mul_(0.1)
    blk.load_state_dict(ref.state_dict())
    for _ in range(100):
        x = torch.randn(1, 68, 20, 18, requires_grad=True)
        if min(float(p.abs().min()) for p in _relu_inputs(ref, x)) > KINK_MARGIN:
            break
    else:
        pytest.fail(f"no draw in 100 kept every pre-activation {KINK_MARGIN} from 0")
    g = torch.randn(1, 68, 20, 18)
    out_r, grads_r = _grads(ref, x, g)
    out_b, grads_b = _grads(blk, x, g)
    torch.testing.assert_close(out_b, out_r, atol=1e-4, rtol=1e-4)
    for gb, gr in zip(grads_b, grads_r):
        torch.testing.assert_close(gb, gr, atol=1e-3, rtol=1e-3)


def test_gradcheck(compiled):
    blk, _ = _pair(3, 2, (1, 2, 9))  # dilation 9 > the 9x7 map
    w, b = _params(blk)
    w = [t.detach().requires_grad_(True) for t in w]
    b = [t.detach().requires_grad_(True) for t in b]
    x = torch.randn(2, 3, 9, 7, dtype=torch.float64, requires_grad=True)

    def fn(x, *wb):
        return torch.ops.pyflm.dilated_skip_block(x, list(wb[:3]), list(wb[3:]), [1, 2, 9])

    # fast_mode (random directions) keeps this quick on a shared 2-core box; the
    # exact per-element agreement with autograd of the reference is checked above.
    assert torch.autograd.gradcheck(fn, (x, *w, *b), fast_mode=True)
    # Full (every element) on an even smaller config.
    blk, _ = _pair(2, 1, (1, 6))
    w, b = _params(blk)
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)

    def fn2(x, w0, w1, b0, b1):
        return torch.ops.pyflm.dilated_skip_block(x, [w0, w1], [b0, b1], [1, 6])

    args = [t.detach().requires_grad_(True) for t in (*w, *b)]
    assert torch.autograd.gradcheck(fn2, (x, *args))


def test_opcheck(compiled):
    blk, _ = _pair(3, 2, (1, 3, 8), dtype=torch.float32)
    w, b = _params(blk)
    x = torch.randn(2, 3, 7, 5, requires_grad=True)
    torch.library.opcheck(torch.ops.pyflm.dilated_skip_block.default, (x, w, b, [1, 3, 8]))
    xd = x.detach()
    wd, bd = [t.detach() for t in w], [t.detach() for t in b]
    torch.library.opcheck(torch.ops.pyflm._dilated_skip_block_forward.default, (xd, wd, bd, [1, 3, 8]))
    _, buf = torch.ops.pyflm._dilated_skip_block_forward(xd, wd, bd, [1, 3, 8])
    assert buf.shape == (2, 3 + 2 + 2, 7, 5)
    torch.testing.assert_close(buf[:, :3], xd, atol=0, rtol=0)  # the input is copied in
    torch.library.opcheck(
        torch.ops.pyflm._dilated_skip_block_backward.default, (torch.randn(2, 3, 7, 5), buf, wd, [1, 3, 8])
    )


def test_empty_batch(compiled, poison):
    blk, ref = _pair(4, 3, (1, 2), dtype=torch.float32)
    x = torch.randn(0, 4, 5, 6, requires_grad=True)
    out = blk(x)
    assert out.shape == (0, 4, 5, 6)
    out.sum().backward()
    assert x.grad.shape == x.shape
    for p in blk.parameters():
        assert p.grad is not None and torch.equal(p.grad, torch.zeros_like(p))


def test_noncontiguous_input(compiled, poison):
    blk, ref = _pair(4, 3, (1, 4, 2))
    x = torch.randn(2, 4, 7, 6, dtype=torch.float64)
    xn = noncontiguous(x).requires_grad_(True)
    x = x.requires_grad_(True)
    assert not xn.is_contiguous()
    out_n = blk(xn)
    out = ref(x)
    torch.testing.assert_close(out_n, out, atol=1e-10, rtol=1e-10)
    g = noncontiguous(torch.randn_like(out))
    (gx_n,) = torch.autograd.grad(out_n, xn, g)
    (gx,) = torch.autograd.grad(out, x, g)
    torch.testing.assert_close(gx_n, gx, atol=1e-10, rtol=1e-10)
    # Channels-last and transposed-weight layouts too.
    w, b = _params(blk)
    w2 = [t.detach().transpose(2, 3).contiguous().transpose(2, 3) for t in w]
    xc = x.detach().to(memory_format=torch.channels_last)
    torch.testing.assert_close(
        torch.ops.pyflm.dilated_skip_block(xc, w2, [t.detach() for t in b], [1, 4, 2]),
        out.detach(),
        atol=1e-10,
        rtol=1e-10,
    )


def test_relu_is_not_applied_to_last_layer(compiled):
    # A single layer with a negative bias must be able to lower the input.
    blk = DilatedSkipBlock(2, None, (1,)).double()
    with torch.no_grad():
        blk.layers[0].weight.zero_()
        blk.layers[0].bias.fill_(-1.0)
    x = torch.zeros(1, 2, 3, 3, dtype=torch.float64)
    assert torch.equal(blk(x), torch.full_like(x, -1.0))


def test_wrapper_fallback_and_functional_reference_agree(compiled, monkeypatch):
    blk, ref = _pair(3, 2, (1, 2, 4))
    w, b = _params(blk)
    x = torch.randn(2, 3, 8, 5, dtype=torch.float64)
    expected = ref(x)
    torch.testing.assert_close(dilated_skip_block_reference(x, w, b, [1, 2, 4]), expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(dilated_skip_block(x, w, b, (1, 2, 4)), expected, atol=1e-10, rtol=1e-10)
    import pyflm._library as lib

    monkeypatch.setattr(lib, "use_compiled", lambda op, device: False)
    torch.testing.assert_close(blk(x), expected, atol=1e-12, rtol=0)


def test_state_dicts_interchange():
    ref = DilatedSkipReference()
    blk = DilatedSkipBlock()
    assert list(ref.state_dict()) == list(blk.state_dict())
    assert [tuple(v.shape) for v in ref.state_dict().values()] == [tuple(v.shape) for v in blk.state_dict().values()]
    assert ref.layers[0].weight.shape == (68, 68, 3, 3)
    assert ref.layers[6].weight.shape == (68, 68 * 7, 3, 3)
    blk.load_state_dict(ref.state_dict())
    ref.load_state_dict(blk.state_dict())


def test_scripted_module_save_load(compiled, tmp_path):
    blk, ref = _pair(3, 2, (1, 2, 4))
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    scripted = torch.jit.script(blk)
    path = tmp_path / "block.pt"
    scripted.save(str(path))
    loaded = torch.jit.load(str(path))
    torch.testing.assert_close(loaded(x), ref(x), atol=1e-10, rtol=1e-10)
    assert "pyflm::dilated_skip_block" in loaded.code or "dilated_skip_block" in str(loaded.graph)


def test_meta_and_compile_shapes(compiled):
    w = [torch.empty(2, 3, 3, 3, device="meta"), torch.empty(3, 5, 3, 3, device="meta")]
    b = [torch.empty(2, device="meta"), torch.empty(3, device="meta")]
    out = torch.ops.pyflm.dilated_skip_block(torch.empty(4, 3, 8, 8, device="meta"), w, b, [1, 2])
    assert out.shape == (4, 3, 8, 8) and out.device.type == "meta"
    o, buf = torch.ops.pyflm._dilated_skip_block_forward(torch.empty(4, 3, 8, 8, device="meta"), w, b, [1, 2])
    assert buf.shape == (4, 5, 8, 8)


def _args(C=3, G=2, L=3, dtype=torch.float32):
    w, b, cin = [], [], C
    for i in range(L):
        g = C if i == L - 1 else G
        w.append(torch.randn(g, cin, 3, 3, dtype=dtype))
        b.append(torch.randn(g, dtype=dtype))
        cin += 0 if i == L - 1 else g
    return torch.randn(2, C, 6, 6, dtype=dtype), w, b, [1, 2, 4][:L]


def test_errors(compiled):
    op = torch.ops.pyflm.dilated_skip_block
    x, w, b, d = _args()
    with pytest.raises(RuntimeError, match=r"pyflm.dilated_skip_block: input must be 4-D"):
        op(x[0], w, b, d)
    with pytest.raises(RuntimeError, match=r"input must have dtype in"):
        op(x.int(), w, b, d)
    with pytest.raises(RuntimeError, match=r"same length"):
        op(x, w, b[:2], d)
    with pytest.raises(RuntimeError, match=r"same length"):
        op(x, w, b, d[:2])
    with pytest.raises(RuntimeError, match=r"at least one layer"):
        op(x, [], [], [])
    bad = list(w)
    bad[1] = torch.randn(2, 4, 3, 3)
    with pytest.raises(RuntimeError, match=r"weights\[1\] must have shape \[G, 5, 3, 3\]"):
        op(x, bad, b, d)
    bad = list(w)
    bad[2] = torch.randn(4, 7, 3, 3)
    with pytest.raises(RuntimeError, match=r"weights\[2\] must have shape \[3, 7, 3, 3\]"):
        op(x, bad, b, d)
    bad = list(w)
    bad[0] = torch.randn(2, 3, 5, 5)
    with pytest.raises(RuntimeError, match=r"weights\[0\] must have shape"):
        op(x, bad, b, d)
    badb = list(b)
    badb[1] = torch.randn(3)
    with pytest.raises(RuntimeError, match=r"biases\[1\] must have shape \[2\]"):
        op(x, w, badb, d)
    with pytest.raises(RuntimeError, match=r"weights\[0\] has dtype Double but input has dtype Float"):
        op(x, [w[0].double()] + w[1:], b, d)
    with pytest.raises(RuntimeError, match=r"biases\[2\] has dtype"):
        op(x, w, b[:2] + [b[2].double()], d)
    with pytest.raises(RuntimeError, match=r"dilations\[1\] must be >= 1"):
        op(x, w, b, [1, 0, 4])
    # No second real device here: a meta weight exercises the (fake-kernel) device check.
    with pytest.raises(RuntimeError, match=r"weights\[1\] \(on meta\) must be on the same device"):
        op(x, [w[0], w[1].to("meta"), w[2]], b, d)
