"""pyflm's own compact heatmap model for CPU deployment.

Encoder: MobileNetV2-style inverted residual blocks (1x1 expand - 3x3 depthwise -
1x1 project, BN, ReLU, residual when shapes match) down to stride 32.
Decoder: a light top-down path (FPN-like): 1x1 lateral convs from strides 4, 8,
16 and 32 to ``decoder_channels``, nearest 2x upsampling + add, one depthwise-
separable 3x3 conv after each merge, then a 1x1 conv to K heatmaps at stride 4
(e.g. 40x40 for a 160x160 input) for soft-argmax or argmax decoding.

Only Conv2d / BatchNorm2d / ReLU / nearest interpolation / add: all have fast
channels-last CPU kernels, fold BN into conv at export, and trace/script/export
without custom ops. Width is configurable (``width``, ``decoder_channels``, ``expand``: the
inverted residuals' hidden width, 4x their input by default;
``training/prune_compact.py`` cuts a trained net down to less); the default has
604,356 parameters and ~95 M multiply-adds at 160x160. Any input size divisible
by 32 works (128, 160, 192, ...). Measured (shared, heavily loaded 2-core box, so
noisy): median single 1x3x160x160 eval forward 65 ms NCHW / 41 ms channels-last
with 1 thread; with 2 threads the load made it 0.65-0.9 s (thread contention),
see :func:`cpu_latency_ms`.
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
    """1x1 expand to ``hidden`` channels - 3x3 depthwise - 1x1 project (no
    expansion conv when ``hidden == cin`` and ``expand`` is False)."""

    def __init__(self, cin: int, cout: int, stride: int, hidden: int, expand: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        if expand:
            layers.append(conv_bn(cin, hidden, 1))
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden), conv_bn(hidden, cout, 1, act=False)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


# (expand, channels, repeats, stride); the last block at each of strides 4, 8, 16
# and 32 feeds the decoder. The 4s become the net's ``expand`` (hidden width of
# the inverted residuals, as a multiple of their input channels).
_STAGES = ((1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 3, 2), (4, 64, 3, 2), (4, 96, 2, 1), (4, 160, 2, 2))


class TopDownMerge(nn.Module):
    """lateral 1x1 conv of the finer map + nearest-upsampled coarser map, then a
    depthwise-separable 3x3 conv."""

    def __init__(self, cin: int, d: int):
        super().__init__()
        self.lateral = conv_bn(cin, d, 1)
        self.smooth = nn.Sequential(conv_bn(d, d, 3, groups=d), conv_bn(d, d, 1))

    def forward(self, coarse: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
        # exactly 2x: every stride-2 stage halves an even size (input_size % 32 == 0). A
        # constant scale, not the size read from `fine`, keeps shape arithmetic out of the
        # ONNX graph (pyflm.onnx_backend), where it cost ~3% of a face's time.
        return self.smooth(self.lateral(fine) + F.interpolate(coarse, scale_factor=2.0, mode="nearest"))


class CompactHeatmapNet(nn.Module):
    outputs = "heatmaps [B, K, S/4, S/4] (logits; soft-argmax / argmax decoding)"
    output_stride = 4
    __jit_unused_properties__ = ["init_kwargs"]  # Python-side only; TorchScript skips it

    def __init__(self, num_landmarks: int = 68, input_size: int = 160, width: float = 1.0,
                 decoder_channels: int = 64, in_channels: int = 3, expand: float = 4.0):
        super().__init__()
        if input_size % 32:
            raise ValueError(f"input_size must be divisible by 32, got {input_size}")
        if not 0 < expand <= 8:
            raise ValueError(f"expand must be in (0, 8], got {expand}")
        self.num_landmarks = num_landmarks
        self.input_size = input_size
        self._kwargs = (float(width), int(decoder_channels), int(in_channels), float(expand))
        cin = _round(32 * width)
        current: list[nn.Module] = [conv_bn(in_channels, cin, 3, stride=2)]
        stages: list[nn.Sequential] = []
        tap_channels: list[int] = []
        stride = 2
        for t, c, n, s in _STAGES:
            if s > 1 and stride >= 4:  # stride is about to change: close the current stage
                stages.append(nn.Sequential(*current))
                tap_channels.append(cin)
                current = []
            cout = _round(c * width)
            for i in range(n):
                hidden = cin if t == 1 else _round(cin * expand)
                current.append(InvertedResidual(cin, cout, s if i == 0 else 1, hidden, expand=t != 1))
                cin = cout
            stride *= s
        stages.append(nn.Sequential(*current))
        tap_channels.append(cin)
        self.stages = nn.ModuleList(stages)  # outputs at strides 4, 8, 16, 32
        d = decoder_channels
        self.top = conv_bn(tap_channels[-1], d, 1)
        self.merges = nn.ModuleList([TopDownMerge(c, d) for c in reversed(tap_channels[:-1])])
        self.head = nn.Conv2d(d, num_landmarks, 1)

    @property
    def init_kwargs(self) -> dict:
        """The constructor's arguments (to rebuild or resize this net)."""
        width, d, cin, expand = self._kwargs
        return {"num_landmarks": self.num_landmarks, "input_size": self.input_size, "width": width,
                "decoder_channels": d, "in_channels": cin, "expand": expand}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats: list[torch.Tensor] = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        y = self.top(feats[-1])
        n = len(feats)
        for j, merge in enumerate(self.merges):  # coarse to fine
            y = merge(y, feats[n - 2 - j])
        return self.head(y)


def cpu_latency_ms(model: nn.Module | None = None, size: int = 160, threads: int = 2, iters: int = 50,
                   warmup: int = 10, channels_last: bool = False) -> float:
    """Median latency (ms) of one ``1x3xSxS`` eval-mode forward on the CPU with
    ``threads`` intra-op threads (restored afterwards)."""
    import statistics
    import time

    model = (model or CompactHeatmapNet(input_size=size)).eval()
    x = torch.randn(1, 3, size, size)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model(x)
            times = []
            for _ in range(iters):
                t0 = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(prev)
    return 1e3 * statistics.median(times)

