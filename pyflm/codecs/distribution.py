"""Distribution codec: per-landmark spatial probability maps (KL loss, soft-argmax)."""

from __future__ import annotations

from torch import Tensor

from pyflm.codecs.base import _HeatmapCodecBase

__all__ = ["DistributionCodec"]


class DistributionCodec(_HeatmapCodecBase):
    """Landmarks <-> normalised Gaussian distributions over each map.

    ``encode`` -> ``(targets [B, K, h, h], mask [B, K])`` via
    ``pyflm.heatmap_targets(kind="distribution")``: each valid map sums to 1,
    invalid ones are all zero with mask 0. ``sigma`` is in heatmap pixels.

    ``decode(logits [B, K, h, h])`` -> ``(coords [B, K, 2] input px, scores [B, K])``
    with ``pyflm.soft_argmax(logits, temperature)`` (temperature 1: the
    distribution the KL loss trains); differentiable in ``coords``; scores are
    the largest probability of each map.
    """

    def __init__(self, input_size: int, heatmap_size: int, sigma: float = 3.0, temperature: float = 1.0):
        super().__init__(input_size, heatmap_size, sigma)
        self.temperature = float(temperature)

    def encode(self, coords: Tensor, visibility: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._targets(coords, visibility, "distribution")

    def decode(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        from pyflm.ops import soft_argmax

        self._check_maps(logits, "DistributionCodec.decode")
        coords, scores = soft_argmax(logits, self.temperature)
        return self.to_input(coords), scores
