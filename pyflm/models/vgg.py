"""VGG19-like backbone and the FCN-style encoder-decoder of Hsu et al. (2020).

Architecture (reconstructed from the paper's figures and its public TensorFlow
release, then checked against the parameter counts the paper reports; the counts
match exactly, see :func:`pyflm.models.parameter_table`):

* the RGB input is averaged to one grey channel inside the network (``grey=True``),
* VGG19 conv blocks, every conv 3x3 "same" + BatchNorm + ReLU:
  2x64, pool, 2x128, pool, 4x256, pool (= pool3, stride 8), 4x512, pool
  (= pool4, stride 16), 4x512, pool (= pool5, stride 32),
* "conv6": 7x7 conv to 2048 + BN + ReLU, then 1x1 conv to 2048 + BN + ReLU,
* decoder (FCN-8s-like, the paper's "two shortcut links"): 1x1 conv to
  ``out_channels``, 4x4 stride-2 transposed conv to 512 channels + pool4 (sum),
  4x4 stride-2 transposed conv to 256 channels + pool3 (sum), 16x16 stride-8
  transposed conv to ``out_channels`` at the input resolution.

The network is fully convolutional for any input size divisible by 32; the paper
uses 224x224.

Choices where the source is ambiguous: the release's 1x1 score conv used the TF
``contrib`` default ReLU (probably unintended); we keep it linear as in FCN (no
effect on the parameter count). Weight init is PyTorch's default; no pretrained
VGG weights are loaded (a grey 1-channel first conv would not take them as is).
"""

from __future__ import annotations

import torch
from torch import nn

_VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
              512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


def conv_bn_relu(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    # Conv bias kept (the paper's TF layers have one) so the counts match.
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def to_grey(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, 1, H, W] channel mean (identity for C == 1)."""
    return x if x.shape[1] == 1 else x.mean(dim=1, keepdim=True)


class VGG19Backbone(nn.Module):
    """VGG19 conv blocks (with BN) + the 7x7/1x1 "conv6" layers.

    ``forward`` returns ``(pool3, pool4, conv6)``: strides 8, 16 and 32 with
    256, 512 and ``fc_channels`` channels.
    """

    def __init__(self, grey: bool = True, in_channels: int = 3, fc_channels: int = 2048):
        super().__init__()
        self.grey = grey
        cin = 1 if grey else in_channels
        self.stages = nn.ModuleList()
        layers: list[nn.Module] = []
        for v in _VGG19_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                self.stages.append(nn.Sequential(*layers))
                layers = []
            else:
                layers.append(conv_bn_relu(cin, v))
                cin = v
        self.conv6 = nn.Sequential(conv_bn_relu(512, fc_channels, 7), conv_bn_relu(fc_channels, fc_channels, 1))
        self.out_channels = fc_channels

    def forward(self, x: torch.Tensor):
        if self.grey:
            x = to_grey(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats[2], feats[3], self.conv6(x)


class VGG19FCN(nn.Module):
    """Encoder-decoder with two shortcut links; ``out_channels`` maps at input size."""

    def __init__(self, out_channels: int, grey: bool = True, in_channels: int = 3):
        super().__init__()
        self.backbone = VGG19Backbone(grey=grey, in_channels=in_channels)
        self.score = nn.Conv2d(self.backbone.out_channels, out_channels, 1)
        # k=4, s=2, p=1 and k=16, s=8, p=4 give exact 2x / 8x ("SAME" in TF).
        self.up1 = nn.ConvTranspose2d(out_channels, 512, 4, stride=2, padding=1)
        self.up2 = nn.ConvTranspose2d(512, 256, 4, stride=2, padding=1)
        self.up3 = nn.ConvTranspose2d(256, out_channels, 16, stride=8, padding=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 32 or x.shape[-2] % 32:
            raise ValueError(f"VGG19FCN needs H and W divisible by 32, got {tuple(x.shape[-2:])}")
        pool3, pool4, c6 = self.backbone(x)
        y = self.up1(self.score(c6)) + pool4
        y = self.up2(y) + pool3
        return self.up3(y)
