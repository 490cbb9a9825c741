"""Gaussian heatmap codec (heatmap regression with an L2 loss)."""

from __future__ import annotations

import torch
from torch import Tensor

from pyflm.codecs.base import _HeatmapCodecBase, gaussian_blur

__all__ = ["GaussianHeatmapCodec", "DECODE_MODES"]

DECODE_MODES = ("dark", "quarter", "none", "soft")
_EPS = 1e-10


class GaussianHeatmapCodec(_HeatmapCodecBase):
    """Landmarks <-> unnormalised Gaussian heatmaps (peak 1 at the sub-pixel centre).

    Args:
        input_size: network input side S (input pixels).
        heatmap_size: heatmap side; stride ``s = S / heatmap_size``
            (see :mod:`pyflm.codecs.base` for the pixel mapping).
        sigma: Gaussian standard deviation in **heatmap** pixels.
        background: add a background channel ``1 - max_k g_k`` as channel K
            (the :class:`~pyflm.models.HeatmapDetector` layout); ``decode``
            then ignores the last channel.
        decode: ``"dark"`` (default; argmax + DARK Taylor step), ``"quarter"``,
            ``"none"`` (integer argmax), all via :func:`pyflm.argmax_decode`;
            or ``"soft"``: the centre of mass of each (clamped non-negative)
            map, computed as ``pyflm.soft_argmax(log(max(h, 1e-10)))``. Soft
            decoding is exact for clean Gaussians and differentiable, but is
            pulled towards the centre by any far-away positive response.
        blur_kernel: odd kernel size of DARK's Gaussian modulation applied before
            the argmax modes (0 or 1: off). DARK uses 11 for 64x64 maps with
            sigma 2.

    ``encode(coords [B, K, 2] input px, visibility [B, K] | None)`` ->
    ``(targets [B, K(+1), h, h], mask [B, K])`` via
    ``pyflm.heatmap_targets(kind="gaussian")``; a landmark that is invisible,
    non-finite or outside the image has an all-zero map and mask 0.
    ``decode(maps [B, C, h, h])`` -> ``(coords [B, K, 2] input px, scores [B, K])``
    (float32, float64 for float64 maps); scores are the map value at the peak.
    """

    def __init__(self, input_size: int, heatmap_size: int, sigma: float = 2.0, background: bool = False,
                 decode: str = "dark", blur_kernel: int = 0):
        super().__init__(input_size, heatmap_size, sigma)
        if decode not in DECODE_MODES:
            raise ValueError(f"decode must be one of {DECODE_MODES}, got {decode!r}")
        if blur_kernel > 1 and blur_kernel % 2 == 0:
            raise ValueError(f"blur_kernel must be odd (or 0 for no blur), got {blur_kernel}")
        self.background = bool(background)
        self.decode_mode = decode
        self.blur_kernel = int(blur_kernel)

    def encode(self, coords: Tensor, visibility: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._targets(coords, visibility, "gaussian", self.background)

    def landmark_maps(self, maps: Tensor) -> Tensor:
        """The K landmark channels (drops the background channel if the codec has one)."""
        self._check_maps(maps, "GaussianHeatmapCodec.decode")
        return maps[:, :-1] if self.background else maps

    def decode(self, maps: Tensor, mode: str | None = None) -> tuple[Tensor, Tensor]:
        from pyflm.ops import argmax_decode, soft_argmax

        mode = mode or self.decode_mode
        if mode not in DECODE_MODES:
            raise ValueError(f"decode must be one of {DECODE_MODES}, got {mode!r}")
        h = self.landmark_maps(maps)
        if mode == "soft":
            logits = torch.log(h.float().clamp_min(_EPS)) if h.dtype != torch.float64 else h.clamp_min(_EPS).log()
            coords, _ = soft_argmax(logits, 1.0)
            out = coords.dtype
            B, K = h.shape[:2]
            scores = h.detach().to(out).reshape(B, K, -1).amax(-1) if B * K else h.new_empty(B, K, dtype=out)
            return self.to_input(coords), scores
        if self.blur_kernel > 1:
            h = gaussian_blur(h, self.blur_kernel)
        coords, scores = argmax_decode(h, mode)
        return self.to_input(coords), scores
