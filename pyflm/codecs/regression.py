"""Coordinate regression codec: input pixels <-> normalised values in [-1, 1]."""

from __future__ import annotations

import torch
from torch import Tensor

from pyflm.codecs.base import Codec, _check_coords, valid_mask

__all__ = ["RegressionCodec"]


class RegressionCodec(Codec):
    """``x_n = (2 x + 1) / S - 1`` per axis (S = ``input_size``), so the image
    edges ``x = -0.5`` and ``x = S - 0.5`` map to -1 and +1 and the image centre
    ``(S - 1) / 2`` to 0 (``align_corners=False`` in ``grid_sample`` terms).
    Points outside the image map outside [-1, 1]; they stay valid.

    ``encode(coords, visibility)`` -> ``(normalised [B, K, 2], mask [B, K])``:
    mask is 1 for finite, visible points; invalid points get 0 in the targets
    (so the arrays stay finite) and must be masked by the loss.
    ``decode(values)`` -> ``(coords in input px, scores)``; a regressor has no
    confidence, so scores are all ones. Both are differentiable.
    """

    def __init__(self, input_size: int):
        if int(input_size) < 1:
            raise ValueError(f"input_size must be >= 1, got {input_size}")
        self.input_size = int(input_size)

    def normalise(self, coords: Tensor) -> Tensor:
        return (2.0 * coords + 1.0) / self.input_size - 1.0

    def denormalise(self, values: Tensor) -> Tensor:
        return ((values + 1.0) * self.input_size - 1.0) / 2.0

    def encode(self, coords: Tensor, visibility: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_coords(coords, "RegressionCodec.encode")
        if not coords.dtype.is_floating_point:
            coords = coords.float()
        ok = valid_mask(coords, visibility)
        values = torch.where(ok[..., None], self.normalise(coords), 0.0)
        return values, ok.to(coords.dtype)

    def decode(self, values: Tensor) -> tuple[Tensor, Tensor]:
        _check_coords(values, "RegressionCodec.decode")
        return self.denormalise(values), values.new_ones(values.shape[:2])
