"""pyflm's own compact heatmap model for CPU deployment.

Encoder: MobileNetV2-style inverted residual blocks (1x1 expand - 3x3 depthwise -
1x1 project, BN, ReLU, residual when shapes match) down to stride 32.
Decoder: a light top-down path (FPN-like): 1x1 lateral convs from strides 4, 8,
16 and 32 to ``decoder_channels``, nearest 2x upsampling + add, one depthwise-
separable 3x3 conv after each merge, then a 1x1 conv to K heatmaps at stride 4
(e.g. 40x40 for a 160x160 input) for soft-argmax or argmax decoding.

Only Conv2d / BatchNorm2d / ReLU / nearest interpolation / add: all have fast
channels-last CPU kernels, fold BN into conv at export, and trace/script/export
without custom ops. Width is configurable (``width``); the default has ~0.9 M
parameters. Any input size divisible by 32 works (128, 160, 192, ...).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _round(c: float, divisor: int = 8) -> int:
    return max(divisor, int(c + divisor / 2) // divisor * divisor)


def conv_bn(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn(cin, hidden, 1))
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden), conv_bn(hidden, cout, 1, act=False)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


# (expand, channels, repeats, stride); the stride-4/8/16/32 outputs feed the decoder.
_STAGES = ((1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 3, 2), (4, 64, 3, 2), (4, 96, 2, 1), (4, 160, 2, 2))


class CompactHeatmapNet(nn.Module):
    outputs = "heatmaps [B, K, S/4, S/4] (logits; soft-argmax / argmax decoding)"
    output_stride = 4

    def __init__(self, num_landmarks: int = 68, input_size: int = 160, width: float = 1.0,
                 decoder_channels: int = 64, in_channels: int = 3):
        super().__init__()
        if input_size % 32:
            raise ValueError(f"input_size must be divisible by 32, got {input_size}")
        self.num_landmarks = num_landmarks
        self.input_size = input_size
        stem = _round(32 * width)
        self.stem = conv_bn(in_channels, stem, 3, stride=2)
        blocks, taps, cin, stride = [], [], stem, 2
        for t, c, n, s in _STAGES:
            cout = _round(c * width)
            for i in range(n):
                blocks.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
            stride *= s
            if stride >= 4 and (not taps or taps[-1][1] != stride):
                taps.append((len(blocks), stride, cout))
            elif taps and taps[-1][1] == stride:
                taps[-1] = (len(blocks), stride, cout)  # last block at this stride
        self.blocks = nn.ModuleList(blocks)
        self.tap_index = [i for i, _, _ in taps]
        d = decoder_channels
        self.laterals = nn.ModuleList([conv_bn(c, d, 1) for _, _, c in taps])
        self.smooth = nn.ModuleList(
            [nn.Sequential(conv_bn(d, d, 3, groups=d), conv_bn(d, d, 1)) for _ in taps[:-1]]
        )
        self.head = nn.Conv2d(d, num_landmarks, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        feats = []
        for i, block in enumerate(self.blocks, start=1):
            x = block(x)
            if i in self.tap_index:
                feats.append(x)
        y = self.laterals[-1](feats[-1])
        for j in range(len(feats) - 2, -1, -1):
            lat = self.laterals[j](feats[j])
            y = self.smooth[j](lat + F.interpolate(y, size=lat.shape[-2:], mode="nearest"))
        return self.head(y)
