"""Dilated skip convolution model (Chim et al. 2019, "Dilated skip convolution for
facial landmark detection").

Pipeline: FC-DenseNet56 -> K heatmaps at 256x256 -> fixed per-channel Gaussian
"kernel convolution" (45x45) -> initial heatmaps -> dilated skip convolution
refinement (:class:`pyflm.ops.DilatedSkipBlock`) -> refined heatmaps.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pyflm.models.densenet import FCDenseNet56
from pyflm.ops.dilated_skip import DilatedSkipBlock

#: Default sigma of the kernel convolution: the 45-tap kernel spans +-22 px, i.e.
#: +-3 sigma for sigma = 22 / 3 (~7.33 px), so the truncated tails hold < 0.3 % of
#: the mass. The paper fixes the 45x45 size; this sigma is our choice.
DEFAULT_KERNEL_SIGMA = 22.0 / 3.0


def gaussian_1d(size: int, sigma: float, dtype=torch.float32, device=None) -> torch.Tensor:
    """Normalised (sum 1) centred 1-D Gaussian with ``size`` taps."""
    r = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2.0
    # (float64 first, then cast: the same kernel whatever the target dtype)
    g = torch.exp(-0.5 * (r / sigma) ** 2)
    return (g / g.sum()).to(dtype)


def gaussian_2d(size: int, sigma: float, dtype=torch.float32, device=None) -> torch.Tensor:
    """The 2-D kernel the separable pair equals: outer product, sum 1."""
    g = gaussian_1d(size, sigma, torch.float64, device)
    return torch.outer(g, g).to(dtype)


class GaussianKernelConv(nn.Module):
    """Fixed (non-trainable) depthwise ``size x size`` Gaussian blur of every channel.

    Implemented separably as a ``size x 1`` then a ``1 x size`` depthwise conv
    (zero padding, output size = input size). Because the 2-D Gaussian is the outer
    product of two 1-D Gaussians, this equals one depthwise conv with the 2-D
    kernel :func:`gaussian_2d` (``2 * size`` instead of ``size ** 2`` MACs per
    pixel; zero padding keeps the equality exact at the borders too). The kernel
    sums to 1, so the total mass of each map is preserved away from the borders.
    The kernel has no parameters (no gradient, nothing in the state dict): it is
    rebuilt from ``size`` and ``sigma`` in the input's dtype at every call (45 values,
    negligible next to the convolutions), so float64 runs use a float64 kernel.
    """

    def __init__(self, channels: int, size: int = 45, sigma: float = DEFAULT_KERNEL_SIGMA):
        super().__init__()
        if size % 2 == 0 or size < 1:
            raise ValueError(f"kernel size must be odd and positive, got {size}")
        if not (sigma > 0 and math.isfinite(sigma)):
            raise ValueError(f"sigma must be positive, got {sigma}")
        self.channels, self.size, self.sigma = channels, size, float(sigma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, p = self.channels, self.size // 2
        k = gaussian_1d(self.size, self.sigma, x.dtype, x.device)
        x = F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), padding=(p, 0), groups=c)  # 45x1
        return F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), padding=(0, p), groups=c)  # 1x45


class DSCNet(nn.Module):
    """FC-DenseNet56 + kernel convolution + dilated skip convolution refinement.

    ``forward`` returns ``(initial, refined)``, both ``[B, K, S, S]`` at the input
    resolution: the blurred FC-DenseNet heatmaps and the DSC-refined ones (the paper
    supervises both).
    """

    output_stride = 1
    outputs = "(initial, refined) heatmaps, each [B, K, S, S] at input resolution"

    def __init__(self, num_landmarks: int = 68, input_size: int = 256, kernel_size: int = 45,
                 sigma: float = DEFAULT_KERNEL_SIGMA, dilations=(1, 1, 2, 4, 8, 16, 32), dropout: float = 0.2):
        super().__init__()
        self.num_landmarks = num_landmarks
        self.input_size = input_size
        self.backbone = FCDenseNet56(num_landmarks, input_size, dropout=dropout)
        self.kernel_conv = GaussianKernelConv(num_landmarks, kernel_size, sigma)
        self.refine = DilatedSkipBlock(channels=num_landmarks, growth=None, dilations=tuple(dilations))

    def forward(self, x: torch.Tensor):
        initial = self.kernel_conv(self.backbone(x))
        return initial, self.refine(initial)
