"""Argmax heatmap decoding with sub-pixel refinement (``pyflm::argmax_decode``).

Conventions (shared by the compiled CPU/CUDA kernels and the reference):

* Coordinates are 0-based ``(x, y)`` with pixel centres at integers: column
  ``j`` is ``x = j``, row ``i`` is ``y = i``.
* The integer peak is the first maximum in row-major order (what
  ``torch.argmax`` returns on the flattened map). A map containing NaN decodes
  to NaN coordinates and a NaN score.
* ``refine="none"``: the integer peak.
* ``refine="quarter"`` (the HRNet / FAN rule): independently per axis, when the
  peak has both neighbours on that axis (``0 < px < W - 1`` for x), shift by
  ``0.25 * sign(h[px + 1] - h[px - 1])`` (no shift when they are equal). Unlike
  those toolkits there is no ``+0.5`` / ``+1`` afterwards: those offsets convert
  to their pixel conventions (centres at half-integers, or 1-based indices).
* ``refine="dark"`` (DARK, Zhang et al., CVPR 2020): one second-order Taylor
  (Newton) step on ``L = log(max(h, 1e-10))`` at the integer peak with 3x3
  central differences, ``offset = -Hess^-1 grad``. Applied only when the peak
  is interior on both axes (``1 <= px <= W - 2``, ``1 <= py <= H - 2``) and the
  Hessian is negative definite (``dxx < 0`` and ``det > 0``); each offset
  component is clamped to ``[-0.5, 0.5]``. DARK's Gaussian "modulation" blur
  is *not* part of this op: blur the heatmaps first if you want it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pyflm import _library

REFINE_MODES = ("none", "quarter", "dark")
_DARK_EPS = 1e-10


def _check(heatmaps: Tensor, refine: str) -> torch.dtype:
    """Validate like the C++ op (same messages); return the output dtype."""
    if heatmaps.dim() != 4:
        raise RuntimeError(
            f"pyflm.argmax_decode: heatmaps must be 4-D [B, K, H, W], got "
            f"{heatmaps.dim()}-D {list(heatmaps.shape)}"
        )
    if heatmaps.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        raise RuntimeError(
            "pyflm.argmax_decode: heatmaps must have dtype in {Float, Double, Half, BFloat16}, "
            f"got {heatmaps.dtype}"
        )
    if heatmaps.shape[2] < 1 or heatmaps.shape[3] < 1:
        raise RuntimeError(
            f"pyflm.argmax_decode: heatmaps must have H >= 1 and W >= 1, got {list(heatmaps.shape)}"
        )
    if refine not in REFINE_MODES:
        raise RuntimeError(
            f"pyflm.argmax_decode: refine must be one of 'none', 'quarter', 'dark', got '{refine}'"
        )
    return torch.float64 if heatmaps.dtype == torch.float64 else torch.float32


def argmax_decode_reference(heatmaps: Tensor, refine: str = "quarter") -> tuple[Tensor, Tensor]:
    """Plain-PyTorch argmax decoding; same contract as :func:`argmax_decode`.

    Vectorised over all maps: flatten, argmax, gather the neighbours of each
    peak (indices clamped into the map; refinement is masked off where a
    neighbour does not exist). Computes in float64 for float64 input and in
    float32 otherwise. Works on any device.
    """
    out_dtype = _check(heatmaps, refine)
    B, K, H, W = heatmaps.shape
    h = heatmaps.detach().to(out_dtype).reshape(B, K, H * W)
    if B * K == 0:
        return h.new_empty(B, K, 2), h.new_empty(B, K)

    idx = h.argmax(dim=-1)  # first maximum; NaN counts as the maximum
    scores = h.gather(-1, idx.unsqueeze(-1)).squeeze(-1)
    px = idx % W
    py = idx // W
    x = px.to(out_dtype)
    y = py.to(out_dtype)

    def at(dr: int, dc: int) -> Tensor:
        r = (py + dr).clamp(0, H - 1)
        c = (px + dc).clamp(0, W - 1)
        return h.gather(-1, (r * W + c).unsqueeze(-1)).squeeze(-1)

    if refine == "quarter":
        has_x = (px > 0) & (px < W - 1)
        has_y = (py > 0) & (py < H - 1)
        x = x + torch.where(has_x, 0.25 * torch.sign(at(0, 1) - at(0, -1)), 0.0)
        y = y + torch.where(has_y, 0.25 * torch.sign(at(1, 0) - at(-1, 0)), 0.0)
    elif refine == "dark":

        def L(dr: int, dc: int) -> Tensor:
            return torch.log(at(dr, dc).clamp_min(_DARK_EPS))

        c, l, r, u, d = L(0, 0), L(0, -1), L(0, 1), L(-1, 0), L(1, 0)
        gx = (r - l) / 2
        gy = (d - u) / 2
        dxx = r - 2 * c + l
        dyy = d - 2 * c + u
        dxy = (L(1, 1) - L(1, -1) - L(-1, 1) + L(-1, -1)) / 4
        det = dxx * dyy - dxy * dxy
        interior = (px >= 1) & (px <= W - 2) & (py >= 1) & (py <= H - 2)
        ok = interior & (dxx < 0) & (det > 0)
        safe_det = torch.where(ok, det, torch.ones_like(det))
        ox = (-(dyy * gx - dxy * gy) / safe_det).clamp(-0.5, 0.5)
        oy = (-(dxx * gy - dxy * gx) / safe_det).clamp(-0.5, 0.5)
        x = x + torch.where(ok, ox, 0.0)
        y = y + torch.where(ok, oy, 0.0)

    coords = torch.stack((x, y), dim=-1)
    has_nan = h.isnan().any(dim=-1)
    coords = coords.masked_fill(has_nan.unsqueeze(-1), float("nan"))
    scores = scores.masked_fill(has_nan, float("nan"))
    return coords, scores


def argmax_decode(heatmaps: Tensor, refine: str = "quarter") -> tuple[Tensor, Tensor]:
    """Decode landmark coordinates from heatmaps by argmax + sub-pixel refinement.

    Args:
        heatmaps: ``[B, K, H, W]`` (``H, W >= 1``), float16 / bfloat16 / float32 /
            float64, any layout. Gaussian heatmaps, or the per-landmark channels
            of a probability map (e.g. ``probs[:, :K]`` of a PWC softmax map).
        refine: ``"none"``, ``"quarter"`` (default) or ``"dark"``; see the
            module docstring for the exact rules.

    Returns:
        ``(coords, scores)``: coords ``[B, K, 2]`` as ``(x, y)`` (0-based, pixel
        centres at integers), scores ``[B, K]`` = heatmap value at the integer
        argmax. float64 for float64 input, float32 otherwise. No gradient flows
        (outputs have no ``grad_fn``). Maps containing NaN give NaN coords and
        score. Empty ``B`` or ``K`` give empty outputs.

    Raises:
        RuntimeError: wrong rank, unsupported dtype, ``H`` or ``W`` of 0, or an
            unknown ``refine`` (the message lists the valid modes).
    """
    if _library.use_compiled("argmax_decode", heatmaps.device):
        return torch.ops.pyflm.argmax_decode(heatmaps, refine)
    return argmax_decode_reference(heatmaps, refine)


if _library.HAS_OPS:

    @torch.library.register_fake("pyflm::argmax_decode")
    def _argmax_decode_fake(heatmaps: Tensor, refine: str = "quarter") -> tuple[Tensor, Tensor]:
        out_dtype = _check(heatmaps, refine)
        B, K = heatmaps.shape[0], heatmaps.shape[1]
        return (
            heatmaps.new_empty((B, K, 2), dtype=out_dtype),
            heatmaps.new_empty((B, K), dtype=out_dtype),
        )
