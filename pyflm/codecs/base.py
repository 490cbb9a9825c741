"""Shared pieces of the codecs: the input <-> heatmap pixel mapping, validity
masks and DARK's Gaussian modulation.

Pixel-centre convention (pyflm's, see the package docstring): points are 0-based
``(x, y)`` with pixel centres at integers; an image of width S covers
``x in [-0.5, S - 0.5)``.

A heatmap at output stride ``s`` has one pixel per ``s x s`` block of input
pixels: heatmap pixel ``j`` covers input pixels ``[j*s, (j+1)*s)``, i.e. the
continuous interval ``[j*s - 0.5, (j+1)*s - 0.5)``, whose centre is
``j*s + (s - 1)/2``. Hence

    x_in = x_hm * s + (s - 1) / 2        (heatmap_to_input)
    x_hm = (x_in - (s - 1) / 2) / s      (input_to_heatmap)

and the heatmap's extent ``[-0.5, W_hm - 0.5)`` maps exactly onto the image's
``[-0.5, S - 0.5)`` when ``S = s * W_hm``. ``s = 1`` is the identity. The same
formulas hold for a non-integer ``s = S / W_hm``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "heatmap_to_input",
    "input_to_heatmap",
    "valid_mask",
    "gaussian_blur",
    "Codec",
]


def heatmap_to_input(coords: Tensor, stride: float) -> Tensor:
    """Heatmap-pixel ``(x, y)`` -> input-pixel ``(x, y)``: ``x * s + (s - 1) / 2``."""
    s = float(stride)
    return coords * s + (s - 1.0) / 2.0


def input_to_heatmap(coords: Tensor, stride: float) -> Tensor:
    """Input-pixel ``(x, y)`` -> heatmap-pixel ``(x, y)``: ``(x - (s - 1) / 2) / s``
    (inverse of :func:`heatmap_to_input`)."""
    s = float(stride)
    return (coords - (s - 1.0) / 2.0) / s


def valid_mask(coords: Tensor, visibility: Tensor | None = None) -> Tensor:
    """``[B, K]`` bool: finite coordinates and (if given) ``visibility > 0``."""
    ok = torch.isfinite(coords).all(dim=-1)
    if visibility is not None:
        ok = ok & (visibility if visibility.dtype == torch.bool else visibility > 0)
    return ok


def _check_coords(coords: Tensor, where: str) -> None:
    if coords.dim() != 3 or coords.shape[-1] != 2:
        raise ValueError(f"{where}: coords must be [B, K, 2] (x, y), got {list(coords.shape)}")


def gaussian_blur(maps: Tensor, kernel_size: int, sigma: float | None = None) -> Tensor:
    """DARK's "distribution modulation": blur every map with a normalised
    ``kernel_size x kernel_size`` Gaussian (separable, zero padding) and rescale
    each map so its maximum is unchanged (DARK, Zhang et al. 2020, eq. 11).

    ``sigma`` defaults to OpenCV's rule for a given size,
    ``0.3 * ((k - 1) / 2 - 1) + 0.8``. The blur smooths noisy predicted maps
    before the Taylor step; a blurred Gaussian is still a Gaussian with the same
    centre, so exact targets decode to (almost) the same point.
    """
    if kernel_size <= 1:
        return maps
    if kernel_size % 2 == 0:
        raise ValueError(f"gaussian_blur: kernel_size must be odd, got {kernel_size}")
    if sigma is None:
        sigma = 0.3 * ((kernel_size - 1) / 2 - 1) + 0.8
    B, C, H, W = maps.shape
    if maps.numel() == 0:
        return maps
    dt = maps.dtype if maps.dtype in (torch.float32, torch.float64) else torch.float32
    x = maps.detach().to(dt).reshape(B * C, 1, H, W)
    r = torch.arange(kernel_size, dtype=torch.float64, device=maps.device) - (kernel_size - 1) / 2
    g = torch.exp(-0.5 * (r / sigma) ** 2)
    g = (g / g.sum()).to(dt)
    p = kernel_size // 2
    peak = x.amax(dim=(-2, -1), keepdim=True)
    y = F.conv2d(x, g.view(1, 1, -1, 1), padding=(p, 0))
    y = F.conv2d(y, g.view(1, 1, 1, -1), padding=(0, p))
    y = y * (peak / y.amax(dim=(-2, -1), keepdim=True).clamp_min(torch.finfo(dt).tiny))
    return y.reshape(B, C, H, W)


class Codec:
    """Base class: ``encode(coords, visibility)`` -> ``(targets, mask)`` and
    ``decode(output)`` -> ``(coords, scores)``, coordinates always in input
    pixels ``[B, K, 2]`` (pyflm convention), scores ``[B, K]``.

    ``input_size`` is the (square) network input side S; heatmap codecs also
    have ``heatmap_size`` and ``stride = input_size / heatmap_size``.
    """

    input_size: int

    def encode(self, coords: Tensor, visibility: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def decode(self, output: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


class _HeatmapCodecBase(Codec):
    """Common size handling of the heatmap codecs (square maps)."""

    def __init__(self, input_size: int, heatmap_size: int, sigma: float):
        if int(input_size) < 1 or int(heatmap_size) < 1:
            raise ValueError(f"input_size and heatmap_size must be >= 1, got {input_size}, {heatmap_size}")
        if not (math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"sigma must be positive and finite, got {sigma}")
        self.input_size = int(input_size)
        self.heatmap_size = int(heatmap_size)
        self.sigma = float(sigma)

    @property
    def stride(self) -> float:
        return self.input_size / self.heatmap_size

    def to_heatmap(self, coords: Tensor) -> Tensor:
        return input_to_heatmap(coords, self.stride)

    def to_input(self, coords: Tensor) -> Tensor:
        return heatmap_to_input(coords, self.stride)

    def _targets(self, coords: Tensor, visibility: Tensor | None, kind: str, background: bool = False):
        from pyflm.ops import heatmap_targets

        _check_coords(coords, type(self).__name__ + ".encode")
        if not coords.dtype.is_floating_point:
            coords = coords.float()
        hm = self.to_heatmap(coords.detach())
        n = self.heatmap_size
        return heatmap_targets(hm, visibility, n, n, self.sigma, kind, background)

    def _check_maps(self, maps: Tensor, where: str) -> None:
        if maps.dim() != 4:
            raise ValueError(f"{where}: expected [B, C, H, W] maps, got {list(maps.shape)}")
        if tuple(maps.shape[-2:]) != (self.heatmap_size, self.heatmap_size):
            raise ValueError(
                f"{where}: maps are {tuple(maps.shape[-2:])}, codec expects "
                f"{self.heatmap_size}x{self.heatmap_size}"
            )
