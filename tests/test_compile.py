"""torch.compile traces through every op (fake kernels, C++ autograd) with no
graph break, and the compiled function gives the eager results."""

import pytest
import torch

import pyflm


@pytest.mark.parametrize("backend", ["aot_eager"])
def test_compile_fullgraph_forward_and_backward(compiled, backend):
    torch._dynamo.reset()
    k = 4
    block = pyflm.DilatedSkipBlock(channels=k, growth=3, dilations=(1, 2))

    def pipeline(coords: torch.Tensor, heat: torch.Tensor):
        target, mask = torch.ops.pyflm.heatmap_targets(coords, None, 16, 12, 1.5, "gaussian", False)
        refined = block(heat)
        xy, conf = torch.ops.pyflm.soft_argmax(refined, 0.5)
        peak, score = torch.ops.pyflm.argmax_decode(refined.detach(), "quarter")
        loss = ((refined - target) ** 2).mean() + ((xy - coords) ** 2 * mask[..., None]).mean()
        return loss, peak, score, conf

    coords = torch.rand(3, k, 2) * 10 + 1
    heat = torch.randn(3, k, 16, 12, requires_grad=True)
    compiled_fn = torch.compile(pipeline, backend=backend, fullgraph=True, dynamic=False)
    got = compiled_fn(coords, heat)
    (grad_got,) = torch.autograd.grad(got[0], heat)
    want = pipeline(coords, heat)
    (grad_want,) = torch.autograd.grad(want[0], heat)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(grad_got, grad_want)
