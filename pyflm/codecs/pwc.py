"""Pixel-wise classification codec (Hsu et al. 2020): K + 1 classes per pixel."""

from __future__ import annotations

import torch
from torch import Tensor

from pyflm.codecs.base import _HeatmapCodecBase, gaussian_blur

__all__ = ["PWCCodec"]


class PWCCodec(_HeatmapCodecBase):
    """Landmarks <-> soft per-pixel class probabilities over K landmarks + background.

    ``encode`` -> ``(targets [B, K + 1, h, h], mask [B, K])`` via
    ``pyflm.heatmap_targets(kind="pwc")``: ``p_k = g_k / max(1, sum_j g_j)``,
    background (channel K, the last) ``1 - sum_k p_k``; every pixel sums to 1.
    Invalid landmarks add nothing (their pixels are background) and have mask 0.
    ``sigma`` is in heatmap pixels.

    ``decode(logits [B, K + 1, h, h])``: softmax over the channels, then
    :func:`pyflm.argmax_decode` (``refine``, default ``"dark"``; optional DARK
    blur with ``blur_kernel``) on the K landmark probability maps -> ``(coords
    [B, K, 2] input px, scores = class probability at the peak)``. Not
    differentiable.

    ``decode_soft(logits)``: spatial soft-argmax of the K landmark logits
    (``pyflm.soft_argmax``, temperature 1) -> ``(coords, confidence)``;
    differentiable, used by the hybrid loss and the shape discriminator. For a
    landmark whose class map is an isolated Gaussian the two agree.
    """

    def __init__(self, input_size: int, heatmap_size: int, sigma: float = 3.0, refine: str = "dark",
                 blur_kernel: int = 0, temperature: float = 1.0):
        super().__init__(input_size, heatmap_size, sigma)
        if refine not in ("dark", "quarter", "none"):
            raise ValueError(f"refine must be 'dark', 'quarter' or 'none', got {refine!r}")
        self.refine = refine
        self.blur_kernel = int(blur_kernel)
        self.temperature = float(temperature)

    def encode(self, coords: Tensor, visibility: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._targets(coords, visibility, "pwc")

    def _check(self, logits: Tensor, where: str) -> None:
        self._check_maps(logits, where)
        if logits.shape[1] < 1:
            raise ValueError(f"{where}: expected K + 1 >= 1 channels, got {logits.shape[1]}")

    def probabilities(self, logits: Tensor) -> Tensor:
        """Per-pixel class probabilities (softmax over the K + 1 channels)."""
        self._check(logits, "PWCCodec.probabilities")
        dt = torch.float64 if logits.dtype == torch.float64 else torch.float32
        return torch.softmax(logits.to(dt), dim=1)

    def decode(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        from pyflm.ops import argmax_decode

        self._check(logits, "PWCCodec.decode")
        probs = self.probabilities(logits.detach())[:, :-1]
        if self.blur_kernel > 1:
            probs = gaussian_blur(probs, self.blur_kernel)
        coords, scores = argmax_decode(probs, self.refine)
        return self.to_input(coords), scores

    def decode_soft(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        from pyflm.ops import soft_argmax

        self._check(logits, "PWCCodec.decode_soft")
        coords, conf = soft_argmax(logits[:, :-1], self.temperature)
        return self.to_input(coords), conf
