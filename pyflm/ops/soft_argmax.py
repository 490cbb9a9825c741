"""Soft-argmax heatmap decoding: sub-pixel landmark coordinates from heatmaps.

For each map, ``p = softmax(heatmaps / temperature)`` over its ``H * W``
positions, and the landmark is the expected position under ``p``. Coordinates
are 0-based ``(x, y)`` with pixel centres at integers: column ``j`` is
``x = j``, row ``i`` is ``y = i``.
"""

from __future__ import annotations

import math

import torch

from pyflm import _library

__all__ = ["soft_argmax", "soft_argmax_reference"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check(heatmaps: torch.Tensor, temperature: float) -> None:
    # Same conditions (and message wording) as the compiled op.
    if heatmaps.dim() != 4:
        raise RuntimeError(
            f"pyflm.soft_argmax: heatmaps must be 4-D [B, K, H, W], got {heatmaps.dim()}-D "
            f"{list(heatmaps.shape)}"
        )
    if heatmaps.dtype not in _DTYPES:
        raise RuntimeError(
            f"pyflm.soft_argmax: heatmaps must have dtype in {{Half, BFloat16, Float, Double}}, "
            f"got {heatmaps.dtype}"
        )
    if heatmaps.shape[2] < 1 or heatmaps.shape[3] < 1:
        raise RuntimeError(
            f"pyflm.soft_argmax: heatmaps must have H >= 1 and W >= 1, got {list(heatmaps.shape)}"
        )
    t = float(temperature)
    if not (math.isfinite(t) and t > 0):
        raise RuntimeError(f"pyflm.soft_argmax: temperature must be a positive finite number, got {t}")


def _out_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def soft_argmax_reference(
    heatmaps: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain-PyTorch soft-argmax (softmax + weighted sums); the test oracle.

    Same contract as :func:`soft_argmax`, differentiable by autograd (including
    higher-order gradients), any device.
    """
    _check(heatmaps, temperature)
    B, K, H, W = heatmaps.shape
    logits = heatmaps.to(_out_dtype(heatmaps.dtype)).reshape(B, K, H * W)
    # Subtracting the (detached) max keeps huge logits / tiny temperatures finite;
    # softmax is shift-invariant, so values and gradients are unchanged.
    if H * W > 0 and B * K > 0:
        logits = logits - logits.amax(dim=-1, keepdim=True).detach()
    p = torch.softmax(logits / temperature, dim=-1)
    xs = torch.arange(W, dtype=p.dtype, device=p.device).repeat(H)
    ys = torch.arange(H, dtype=p.dtype, device=p.device).repeat_interleave(W)
    coords = torch.stack(((p * xs).sum(-1), (p * ys).sum(-1)), dim=-1)
    confidence = p.amax(dim=-1) if B * K > 0 else p.new_empty(B, K)
    return coords, confidence.detach()


def soft_argmax(heatmaps: torch.Tensor, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused soft-argmax decoding of landmark heatmaps.

    Args:
        heatmaps: ``[B, K, H, W]`` logits (``H, W >= 1``), float16, bfloat16,
            float32 or float64, on CPU or CUDA; any strides.
        temperature: positive finite softmax temperature ``T``; ``p = softmax(h / T)``
            over each map's ``H * W`` positions. Smaller ``T`` sharpens ``p``.

    Returns:
        ``(coords, confidence)``: ``coords`` ``[B, K, 2]`` holds ``(x, y)`` =
        ``(sum p * column, sum p * row)``, 0-based with pixel centres at
        integers (column ``j`` is ``x = j``, row ``i`` is ``y = i``);
        ``confidence`` ``[B, K]`` is the largest probability of the map, in
        ``(0, 1]``. Both are **float64 for float64 input and float32 for every
        other dtype** (half/bfloat16 are accumulated in float32).

    Numerically stable for any finite logits (huge, tiny, all equal, ``-inf``
    mixed in). A map containing NaN or ``+inf``, or only ``-inf``, has no
    softmax: its coords and confidence are NaN. Empty ``B`` or ``K`` gives empty
    outputs. ``coords`` is differentiable (first order); ``confidence`` is not.

    Raises:
        RuntimeError: heatmaps not 4-D, of another dtype, with ``H`` or ``W`` 0,
            or a temperature that is not positive and finite.
    """
    if _library.use_compiled("soft_argmax", heatmaps.device):
        return torch.ops.pyflm.soft_argmax(heatmaps, float(temperature))
    return soft_argmax_reference(heatmaps, temperature)


if _library.HAS_OPS:

    @torch.library.register_fake("pyflm::soft_argmax")
    def _soft_argmax_fake(heatmaps, temperature=1.0):
        torch._check(heatmaps.dim() == 4, lambda: "pyflm.soft_argmax: heatmaps must be 4-D")
        B, K = heatmaps.shape[0], heatmaps.shape[1]
        dtype = _out_dtype(heatmaps.dtype)
        return heatmaps.new_empty((B, K, 2), dtype=dtype), heatmaps.new_empty((B, K), dtype=dtype)

    @torch.library.register_fake("pyflm::_soft_argmax_backward")
    def _soft_argmax_backward_fake(grad_coords, heatmaps, coords, temperature):
        return torch.empty_like(heatmaps, memory_format=torch.contiguous_format)
