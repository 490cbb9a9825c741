"""Dilated skip convolution block: the heatmap refinement subnet of the
"dilated skip convolution" facial-landmark network, as one fused op.

``L`` layers of 3x3 convolutions with dilations ``d_l`` (default
1, 1, 2, 4, 8, 16, 32) and padding ``d_l`` (same size). Layer ``l`` reads the
channel concatenation ``[input, y_1, ..., y_{l-1}]``; every layer but the last
is followed by a ReLU. The last layer outputs ``C`` channels and is added to
the input: ``output = input + y_L``.

The last layer has no ReLU on purpose: the block refines heatmaps by adding a
correction, and the correction must be able to *lower* values (suppress a
wrong peak), which a ReLU'd ``y_L >= 0`` could not.

The compiled op keeps one concatenation buffer ``[B, C + sum G, H, W]`` that
every layer writes into in place (no ``torch.cat`` copies) and saves only that
buffer for backward; see csrc/ops/dilated_skip_impl.cpp.
"""

from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyflm import _library

__all__ = [
    "dilated_skip_block",
    "dilated_skip_block_reference",
    "DilatedSkipBlock",
    "DilatedSkipReference",
]

DEFAULT_DILATIONS = (1, 1, 2, 4, 8, 16, 32)


def dilated_skip_block_reference(
    input: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor], dilations: Sequence[int]
) -> Tensor:
    """Plain-PyTorch functional form (conv2d + cat + relu): the oracle and fallback."""
    feats = [input]
    n = len(weights)
    y = input
    for i, (w, b, d) in enumerate(zip(weights, biases, dilations)):
        x = feats[0] if len(feats) == 1 else torch.cat(feats, dim=1)
        y = F.conv2d(x, w, b, padding=int(d), dilation=int(d))
        if i < n - 1:
            y = torch.relu(y)
            feats.append(y)
    return input + y


def dilated_skip_block(
    input: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor], dilations: Sequence[int]
) -> Tensor:
    """Runs the dilated skip block; differentiable wrt input, weights and biases.

    Args:
        input: ``[B, C, H, W]`` heatmaps (or features), float32/float64, or
            float16/bfloat16 (computed in float32, the output rounded once).
            Any layout; it is made contiguous internally. ``B = 0`` is allowed.
        weights: ``L`` tensors; ``weights[l]`` is ``[G_l, C + G_1 + ... + G_{l-1}, 3, 3]``
            and the last one is ``[C, ...]``. Same dtype and device as ``input``.
        biases: ``L`` tensors ``[G_l]``.
        dilations: ``L`` positive ints; layer ``l`` uses padding = dilation, so
            every map keeps its ``H x W`` size (dilations larger than the map
            simply see zero padding).

    Returns:
        ``[B, C, H, W]``: ``input + y_L`` (ReLU after every layer except the last).

    Spatial convention as elsewhere in pyflm: column ``j`` is ``x = j``, row
    ``i`` is ``y = i``; a tap at offset ``(ky - 1, kx - 1) * d`` reads pixel
    ``(x + (kx - 1) d, y + (ky - 1) d)``.

    Raises:
        RuntimeError (compiled op) naming ``pyflm.dilated_skip_block`` and the
        argument on a non-4-D input, an unsupported dtype, a weight of the wrong
        shape (the message names the layer and the expected shape), lists of
        different lengths, a dilation < 1, or mixed dtypes/devices.
    """
    if _library.use_compiled("dilated_skip_block", input.device):
        return torch.ops.pyflm.dilated_skip_block(input, list(weights), list(biases), [int(d) for d in dilations])
    return dilated_skip_block_reference(input, weights, biases, dilations)


def _layer_widths(channels: int, growth, n: int) -> List[int]:
    if n < 1:
        raise ValueError("dilations must name at least one layer")
    if growth is None:
        inner = [channels] * (n - 1)
    elif isinstance(growth, int):
        inner = [growth] * (n - 1)
    else:
        inner = [int(g) for g in growth]
        if len(inner) != n - 1:
            raise ValueError(f"growth must give {n - 1} widths (one per layer but the last), got {len(inner)}")
    return inner + [channels]


def _make_layers(channels: int, growth, dilations: Sequence[int]) -> nn.ModuleList:
    widths = _layer_widths(channels, growth, len(dilations))
    layers = []
    cin = channels
    for g, d in zip(widths, dilations):
        layers.append(nn.Conv2d(cin, g, 3, padding=int(d), dilation=int(d)))
        cin += g
    return nn.ModuleList(layers)


class DilatedSkipReference(nn.Module):
    """Plain nn.Module form (nn.Conv2d + torch.cat + ReLU): the oracle.

    Args:
        channels: ``C``, input and output channels (68 landmarks by default).
        growth: channels of each intermediate layer: ``None`` (= ``channels``),
            an int, or a sequence of ``L - 1`` ints.
        dilations: one per layer.

    Parameter names (``layers.<l>.weight``, ``layers.<l>.bias``) match
    :class:`DilatedSkipBlock`, so state dicts interchange.
    """

    def __init__(self, channels: int = 68, growth=None, dilations: Sequence[int] = DEFAULT_DILATIONS):
        super().__init__()
        self.channels = int(channels)
        self.dilations: List[int] = [int(d) for d in dilations]
        self.layers = _make_layers(self.channels, growth, self.dilations)

    def forward(self, x: Tensor) -> Tensor:
        feats: List[Tensor] = [x]
        y = x
        n = len(self.layers)
        for i, conv in enumerate(self.layers):
            y = conv(torch.cat(feats, dim=1))
            if i < n - 1:
                y = torch.relu(y)
                feats.append(y)
        return x + y


class DilatedSkipBlock(nn.Module):
    """The same block as :class:`DilatedSkipReference` (same constructor, same
    parameter names) running the fused ``pyflm.dilated_skip_block`` op.

    Scriptable: under ``torch.jit.script`` it calls
    ``torch.ops.pyflm.dilated_skip_block`` directly (the compiled library must
    be loaded, e.g. by ``import pyflm`` or ``torch.ops.load_library``).
    """

    def __init__(self, channels: int = 68, growth=None, dilations: Sequence[int] = DEFAULT_DILATIONS):
        super().__init__()
        self.channels = int(channels)
        self.dilations: List[int] = [int(d) for d in dilations]
        self.layers = _make_layers(self.channels, growth, self.dilations)

    def forward(self, x: Tensor) -> Tensor:
        weights: List[Tensor] = []
        biases: List[Tensor] = []
        for conv in self.layers:
            bias = conv.bias
            assert bias is not None  # the layers are built with biases
            weights.append(conv.weight)
            biases.append(bias)
        if torch.jit.is_scripting():
            return torch.ops.pyflm.dilated_skip_block(x, weights, biases, self.dilations)
        return dilated_skip_block(x, weights, biases, self.dilations)


if _library.HAS_OPS:

    def _buffer_channels(input: Tensor, weights: Sequence[Tensor]) -> int:
        return input.shape[1] + sum(w.shape[0] for w in weights[:-1])

    def _fake_checks(input, weights, biases, dilations) -> None:
        # Shapes/dtypes are checked by the real kernels; mixing a meta tensor
        # with real ones dispatches here, so the device check lives here too.
        torch._check(input.dim() == 4, lambda: f"pyflm.dilated_skip_block: input must be 4-D [B, C, H, W], got {input.dim()}-D")
        torch._check(
            len(weights) == len(biases) == len(dilations) >= 1,
            lambda: "pyflm.dilated_skip_block: weights, biases and dilations must have the same length (one per layer)",
        )
        for name, ts in (("weights", weights), ("biases", biases)):
            for i, t in enumerate(ts):
                torch._check(
                    t.device == input.device,
                    lambda: f"pyflm.dilated_skip_block: input (on {input.device}) and {name}[{i}] (on {t.device}) must be on the same device",
                )

    @torch.library.register_fake("pyflm::dilated_skip_block")
    def _fake_block(input, weights, biases, dilations):
        _fake_checks(input, weights, biases, dilations)
        return input.new_empty(input.shape)

    @torch.library.register_fake("pyflm::_dilated_skip_block_forward")
    def _fake_forward(input, weights, biases, dilations):
        _fake_checks(input, weights, biases, dilations)
        b, _, h, w = input.shape
        # half/bfloat16 are computed in float32; the buffer stays float32
        buffer_dtype = torch.float32 if input.dtype in (torch.float16, torch.bfloat16) else input.dtype
        buffer = input.new_empty((b, _buffer_channels(input, weights), h, w), dtype=buffer_dtype)
        return input.new_empty(input.shape), buffer

    @torch.library.register_fake("pyflm::_dilated_skip_block_backward")
    def _fake_backward(grad_output, buffer, weights, dilations):
        return (
            grad_output.new_empty(grad_output.shape),
            [w.new_empty(w.shape) for w in weights],
            [w.new_empty((w.shape[0],)) for w in weights],
        )
