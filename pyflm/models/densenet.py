"""FC-DenseNet (Jegou et al. 2017, "The One Hundred Layers Tiramisu").

FC-DenseNet56: growth rate 12, 4 layers in every dense block, first 3x3 conv with
48 filters, 5 dense blocks + transitions down, a 4-layer bottleneck block, 5
transitions up + skip concatenation + dense blocks, last 1x1 conv.

* dense layer: BN-ReLU-3x3 conv (growth filters)-dropout(0.2); its output is
  concatenated to its input,
* transition down: BN-ReLU-1x1 conv (same channels)-dropout(0.2)-2x2 max-pool,
* transition up: 3x3 transposed conv, stride 2, applied only to the feature maps
  produced by the previous dense block (not to its input, as in the paper, to keep
  the up path cheap), then concatenated with the skip connection,
* the last up block keeps its input (concatenation) so the 1x1 head sees all of it.

Channels for FC-DenseNet56 (n = 4, k = 12): 48 -> 96 -> 144 -> 192 -> 240 -> 288
(skips), bottleneck +48, up blocks 48 + skip -> +48, last block 144 + 48 = 192 -> K.
Input H, W must be divisible by 32. Convs have biases, as in the authors' Lasagne code.

Parameter counts (trainable, BN running stats excluded) against the Tiramisu
paper's table (11-class CamVid head): FC-DenseNet56 1,376,795 vs "1.5M" (-8 %);
the same code configured as FC-DenseNet67 gives 3,463,243 vs "3.5M" and as
FC-DenseNet103 9,322,091 vs "9.4M" (both within 1-2 %), so the layer pattern is
the paper's and the 56 figure is most likely loosely rounded. With K = 68 heads:
1,387,796.
"""

from __future__ import annotations

import torch
from torch import nn


class DenseLayer(nn.Sequential):
    def __init__(self, cin: int, growth: int, dropout: float):
        super().__init__(
            nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
            nn.Conv2d(cin, growth, 3, padding=1), nn.Dropout2d(dropout) if dropout else nn.Identity(),
        )


class DenseBlock(nn.Module):
    """``forward`` returns the concatenation of the new feature maps only
    (``n_layers * growth`` channels); the caller concatenates the input if needed."""

    def __init__(self, cin: int, n_layers: int, growth: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList([DenseLayer(cin + i * growth, growth, dropout) for i in range(n_layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new = []
        for layer in self.layers:
            y = layer(x)
            new.append(y)
            x = torch.cat([x, y], dim=1)
        return torch.cat(new, dim=1)


class TransitionDown(nn.Sequential):
    def __init__(self, c: int, dropout: float):
        super().__init__(
            nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.Conv2d(c, c, 1),
            nn.Dropout2d(dropout) if dropout else nn.Identity(), nn.MaxPool2d(2, 2),
        )


class FCDenseNet(nn.Module):
    """Generic FC-DenseNet; ``out_channels`` maps at the input resolution."""

    def __init__(self, out_channels: int, in_channels: int = 3, down_layers=(4, 4, 4, 4, 4),
                 bottleneck_layers: int = 4, up_layers=None, growth: int = 12,
                 first_filters: int = 48, dropout: float = 0.2):
        super().__init__()
        up_layers = tuple(reversed(down_layers)) if up_layers is None else tuple(up_layers)
        self.first = nn.Conv2d(in_channels, first_filters, 3, padding=1)
        c = first_filters
        skips = []
        self.down_blocks = nn.ModuleList()
        self.trans_down = nn.ModuleList()
        for n in down_layers:
            self.down_blocks.append(DenseBlock(c, n, growth, dropout))
            c += n * growth
            skips.append(c)
            self.trans_down.append(TransitionDown(c, dropout))
        self.bottleneck = DenseBlock(c, bottleneck_layers, growth, dropout)
        prev_new = bottleneck_layers * growth
        self.trans_up = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for n, skip in zip(up_layers, reversed(skips)):
            self.trans_up.append(nn.ConvTranspose2d(prev_new, prev_new, 3, stride=2, padding=1, output_padding=1))
            cin = prev_new + skip
            self.up_blocks.append(DenseBlock(cin, n, growth, dropout))
            prev_new = n * growth
            c = cin + prev_new  # used only after the last block
        self.head = nn.Conv2d(c, out_channels, 1)
        self.divisor = 2 ** len(down_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % self.divisor or x.shape[-2] % self.divisor:
            raise ValueError(f"FCDenseNet needs H and W divisible by {self.divisor}, got {tuple(x.shape[-2:])}")
        x = self.first(x)
        skips = []
        for block, td in zip(self.down_blocks, self.trans_down):
            x = torch.cat([x, block(x)], dim=1)
            skips.append(x)
            x = td(x)
        y = self.bottleneck(x)
        last = len(self.up_blocks) - 1
        for i, (tu, block) in enumerate(zip(self.trans_up, self.up_blocks)):
            x = torch.cat([tu(y), skips.pop()], dim=1)
            y = block(x)
            if i == last:
                y = torch.cat([x, y], dim=1)
        return self.head(y)


class FCDenseNet56(FCDenseNet):
    """FC-DenseNet56 regressing K heatmaps at the input resolution (256x256 in Chim et al.)."""

    output_stride = 1
    outputs = "heatmaps [B, K, S, S] at input resolution"

    def __init__(self, num_landmarks: int = 68, input_size: int = 256, in_channels: int = 3, dropout: float = 0.2):
        super().__init__(num_landmarks, in_channels=in_channels, down_layers=(4,) * 5, bottleneck_layers=4,
                         growth=12, first_filters=48, dropout=dropout)
        self.num_landmarks = num_landmarks
        self.input_size = input_size
