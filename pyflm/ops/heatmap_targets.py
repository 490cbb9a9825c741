"""Heatmap training targets from landmark coordinates.

``heatmap_targets`` calls the compiled ``torch.ops.pyflm.heatmap_targets`` when
the op library is loaded, and ``heatmap_targets_reference`` (plain PyTorch, the
test oracle) otherwise.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pyflm import _library

KINDS = ("gaussian", "distribution", "pwc")

_OP = "pyflm.heatmap_targets"


def _fail(message: str) -> None:
    # RuntimeError like the compiled op's TORCH_CHECK, so the wrapper raises the
    # same thing whichever path it takes.
    raise RuntimeError(f"{_OP}: {message}")


def _check_inputs(
    coords: Tensor, visibility: Tensor | None, height: int, width: int, sigma: float,
    kind: str, background: bool,
) -> None:
    if coords.dim() != 3:
        _fail(f"coords must be 3-D [B, K, 2], got {coords.dim()}-D {list(coords.shape)}")
    if coords.shape[2] != 2:
        _fail(f"coords must have shape [B, K, 2] (x, y), got {list(coords.shape)}")
    if coords.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        _fail(f"coords must have dtype in {{Float, Double, Half, BFloat16}}, got {coords.dtype}")
    if visibility is not None:
        if visibility.device != coords.device:
            _fail(
                f"coords (on {coords.device}) and visibility (on {visibility.device}) "
                "must be on the same device"
            )
        if visibility.dim() != 2:
            _fail(f"visibility must be 2-D [B, K], got {visibility.dim()}-D {list(visibility.shape)}")
        if tuple(visibility.shape) != tuple(coords.shape[:2]):
            _fail(
                f"visibility must have shape [B, K] = {list(coords.shape[:2])} to match coords, "
                f"got {list(visibility.shape)}"
            )
        if visibility.dtype != torch.bool and not visibility.dtype.is_floating_point:
            _fail(f"visibility must be bool or floating (> 0 means visible), got {visibility.dtype}")
    if height < 1:
        _fail(f"height must be >= 1, got {height}")
    if width < 1:
        _fail(f"width must be >= 1, got {width}")
    if not (math.isfinite(sigma) and sigma > 0):
        _fail(f"sigma must be a positive finite number, got {sigma}")
    if kind not in KINDS:
        _fail(f"kind must be one of 'gaussian', 'distribution', 'pwc', got '{kind}'")
    if kind == "distribution" and background:
        _fail("background=True is not supported for kind='distribution'")


def _num_channels(K: int, kind: str, background: bool) -> int:
    return K + 1 if kind == "pwc" or (kind == "gaussian" and background) else K


def heatmap_targets_reference(
    coords: Tensor,
    visibility: Tensor | None = None,
    height: int = 64,
    width: int = 64,
    sigma: float = 2.0,
    kind: str = "gaussian",
    background: bool = False,
) -> tuple[Tensor, Tensor]:
    """Plain-PyTorch ``heatmap_targets`` (same arguments and results); vectorised
    over B and K by broadcasting. Computes in float64 for float64 coords and in
    float32 otherwise."""
    _check_inputs(coords, visibility, height, width, sigma, kind, background)
    out_dtype = coords.dtype
    cdt = torch.float64 if coords.dtype == torch.float64 else torch.float32
    x = coords[..., 0].to(cdt)  # [B, K]
    y = coords[..., 1].to(cdt)
    valid = (
        torch.isfinite(x) & torch.isfinite(y)
        & (x >= -0.5) & (x < width - 0.5) & (y >= -0.5) & (y < height - 0.5)
    )
    if visibility is not None:
        valid &= visibility if visibility.dtype == torch.bool else visibility > 0
    x = torch.where(valid, x, 0.0)  # keep NaN/inf out of the arithmetic
    y = torch.where(valid, y, 0.0)
    # 1 / (2 sigma^2), clamped like the kernels so a denormal sigma gives a delta.
    c = min(0.5 / sigma / sigma, torch.finfo(cdt).max)

    def table(centre: Tensor, n: int) -> Tensor:  # [B, K] -> [B, K, n]
        d2 = (torch.arange(n, dtype=cdt, device=coords.device) - centre[..., None]) ** 2
        if kind == "distribution":
            # exact no-op after normalising; keeps tiny sigmas from underflowing to 0/0
            d2 = d2 - d2.amin(-1, keepdim=True)
        g = torch.exp(-d2 * c) * valid[..., None]
        if kind == "distribution":
            g = g / torch.where(valid, g.sum(-1), 1.0)[..., None]
        return g

    gx = table(x, width)  # [B, K, W]
    gy = table(y, height)  # [B, K, H]
    g = gy[..., :, None] * gx[..., None, :]  # [B, K, H, W]
    if kind == "pwc":
        p = g / g.sum(1, keepdim=True).clamp_min(1.0)
        g = torch.cat([p, 1.0 - p.sum(1, keepdim=True)], dim=1)
    elif kind == "gaussian" and background:
        peak = g.amax(1, keepdim=True) if g.shape[1] > 0 else g.new_zeros(g.shape[0], 1, height, width)
        g = torch.cat([g, 1.0 - peak], dim=1)
    return g.to(out_dtype), valid.to(out_dtype)


def heatmap_targets(
    coords: Tensor,
    visibility: Tensor | None = None,
    height: int = 64,
    width: int = 64,
    sigma: float = 2.0,
    kind: str = "gaussian",
    background: bool = False,
    *,
    out: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Training targets (heatmaps) for landmarks, unbiased and sub-pixel centred.

    Args:
        coords: ``[B, K, 2]`` landmark positions ``(x, y)`` in heatmap pixels,
            0-based, pixel centres at integers (column ``j`` is ``x = j``, row
            ``i`` is ``y = i``); the map covers ``[-0.5, W - 0.5) x [-0.5, H - 0.5)``.
            float32/float64, or float16/bfloat16 (computed in float32, stored
            in the input dtype).
        visibility: optional ``[B, K]``, bool or floating (``> 0`` is visible).
        height, width: map size (>= 1).
        sigma: Gaussian standard deviation in pixels (positive, finite).
        kind: with ``g_k(i, j) = exp(-((j - x_k)^2 + (i - y_k)^2) / (2 sigma^2))``
            over the whole map (no window truncation):

            * ``"gaussian"``: ``targets[b, k] = g_k`` (peak 1 at the sub-pixel
              centre, i.e. below 1 on the pixel grid unless the centre is on a
              pixel); with ``background=True`` one more channel ``1 - max_k g_k``.
            * ``"distribution"``: ``g_k`` normalised to sum 1 over the map;
              ``background=True`` is an error.
            * ``"pwc"``: per-pixel class probabilities over K + 1 channels,
              ``p_k = g_k / max(1, sum_j g_j)`` and ``p_bg = 1 - sum_k p_k``, so
              every pixel sums to 1 (hard labels are the argmax over channels).
              ``background`` is ignored: the background channel is always there.
        background: see ``kind``.
        out: optional ``(targets, mask)`` buffers to write into (contiguous, of
            ``coords``' dtype and device, of the shapes below). A training loop
            that reuses them skips a fresh allocation each step, which on a CPU
            costs more than computing the targets.

    Returns:
        ``(targets, mask)``: ``targets`` ``[B, K, H, W]`` (``[B, K + 1, H, W]``
        for pwc or gaussian with background), ``mask`` ``[B, K]`` in the same
        dtype as ``coords``. A landmark that is not visible, has a non-finite
        coordinate or a centre outside the map is invalid: its map is all zero
        (it adds nothing to the background/pwc channels) and its mask is 0;
        valid landmarks have mask 1. Empty B or K gives empty outputs.

    No gradient flows to ``coords`` (targets are labels). Bad input (wrong
    shapes, dtypes or devices, ``height``/``width`` < 1, non-positive or
    non-finite ``sigma``, an unknown ``kind``) raises ``RuntimeError`` naming
    the argument.
    """
    if _library.use_compiled("heatmap_targets", coords.device):
        if out is not None:
            torch.ops.pyflm.heatmap_targets.out(
                coords, visibility, height, width, sigma, kind, background, targets=out[0], mask=out[1]
            )
            return out
        return torch.ops.pyflm.heatmap_targets(
            coords, visibility, height, width, sigma, kind, background
        )
    with torch.no_grad():
        targets, mask = heatmap_targets_reference(coords, visibility, height, width, sigma, kind, background)
        if out is None:
            return targets, mask
        for name, buf, value in (("targets", out[0], targets), ("mask", out[1], mask)):
            if buf.shape != value.shape or buf.dtype != value.dtype or buf.device != value.device:
                raise RuntimeError(
                    f"pyflm.heatmap_targets: out {name} must have shape {list(value.shape)}, dtype "
                    f"{value.dtype} and device {value.device}, got {list(buf.shape)}, {buf.dtype}, {buf.device}"
                )
            buf.copy_(value)
        return out


if _library.HAS_OPS:

    @torch.library.register_fake("pyflm::heatmap_targets")
    def _heatmap_targets_fake(coords, visibility, height, width, sigma, kind="gaussian", background=False):
        _check_inputs(coords, visibility, height, width, sigma, kind, background)
        B, K = coords.shape[0], coords.shape[1]
        C = _num_channels(K, kind, background)
        targets = coords.new_empty((B, C, height, width))
        mask = coords.new_empty((B, K))
        return targets, mask

    @torch.library.register_fake("pyflm::heatmap_targets.out")
    def _heatmap_targets_out_fake(coords, visibility, height, width, sigma, kind="gaussian",
                                  background=False, *, targets, mask):
        _check_inputs(coords, visibility, height, width, sigma, kind, background)
