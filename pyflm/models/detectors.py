"""Detectors of Hsu et al. (2020) on the VGG19-like backbone (:mod:`pyflm.models.vgg`).

All take a float image batch ``[B, 3, S, S]`` (normalised by the caller; averaged
to grey inside, as in the paper) and return raw head outputs; the losses and
decoders that give them meaning live elsewhere.

==============  =========================  ====================================
model           output                     meaning (applied by the loss)
==============  =========================  ====================================
direct          ``[B, K, 2]``              (x, y) regressed by FC layers
distribution    ``[B, K, S, S]``           per-landmark logits, spatial softmax
heatmap         ``[B, K + 1, S, S]``       heatmaps + background map, L2
pwc             ``[B, K + 1, S, S]``       per-pixel class logits (bg = last)
hybrid          ``[B, K + 1, S, S]``       same net as pwc, hybrid loss
==============  =========================  ====================================

The background map is the LAST channel (index K) so that channel k is landmark k
for every model; the paper's release put it first, which is only a relabelling.
"""

from __future__ import annotations

import torch
from torch import nn

from pyflm.models.vgg import VGG19Backbone, VGG19FCN


class DirectRegression(nn.Module):
    """VGG19-like backbone + FC 1024-BN-ReLU, FC 256-BN-ReLU, FC 2K.

    The first FC layer sees the flattened 7x7x2048 conv6 map at 224x224 input
    (100,352 inputs: 103M of the 178.7M parameters), so the parameter count
    depends on ``input_size``; the paper's count is for 224.
    """

    output_stride = None
    outputs = "coords [B, K, 2]: (x, y) normalised to [-1, 1] (pyflm.codecs.RegressionCodec maps them to pixels)"

    def __init__(self, num_landmarks: int = 68, input_size: int = 224, grey: bool = True, dropout: float = 0.5):
        super().__init__()
        if input_size % 32:
            raise ValueError(f"input_size must be divisible by 32, got {input_size}")
        self.num_landmarks = num_landmarks
        self.input_size = input_size
        self.backbone = VGG19Backbone(grey=grey)
        flat = self.backbone.out_channels * (input_size // 32) ** 2
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(flat, 1024), nn.BatchNorm1d(1024), nn.ReLU(inplace=True),
            nn.Linear(1024, 256), nn.BatchNorm1d(256), nn.ReLU(inplace=True),
            nn.Linear(256, 2 * num_landmarks),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"DirectRegression built for {self.input_size}x{self.input_size}, got {tuple(x.shape[-2:])}")
        return self.head(self.backbone(x)[2]).view(x.shape[0], self.num_landmarks, 2)


class _FCNDetector(nn.Module):
    extra_maps = 0
    outputs = ""

    def __init__(self, num_landmarks: int = 68, input_size: int = 224, grey: bool = True):
        super().__init__()
        self.num_landmarks = num_landmarks
        self.input_size = input_size
        self.output_stride = 1
        self.net = VGG19FCN(num_landmarks + self.extra_maps, grey=grey)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DistributionDetector(_FCNDetector):
    """K maps; the loss applies a spatial softmax per map (a distribution per landmark)."""

    outputs = "logits [B, K, S, S] at input resolution; spatial softmax per channel in the loss"


class HeatmapDetector(_FCNDetector):
    """K heatmaps + 1 background map, regressed with an L2 loss."""

    extra_maps = 1
    outputs = "heatmaps [B, K + 1, S, S] at input resolution; channel K is the background"


class PWCDetector(_FCNDetector):
    """Pixel-wise classification: K + 1 class logits per pixel (softmax over channels)."""

    extra_maps = 1
    outputs = "class logits [B, K + 1, S, S] at input resolution; class K is the background"


class HybridDetector(PWCDetector):
    """Same network as :class:`PWCDetector`; only the (hybrid) loss differs."""
