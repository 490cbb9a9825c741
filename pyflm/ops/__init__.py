"""pyflm's fused ops. Each function calls ``torch.ops.pyflm.<op>`` when the
compiled library is loaded and its plain-PyTorch reference otherwise; the
references (``*_reference``) are also the test oracles."""

from pyflm.ops.argmax_decode import argmax_decode, argmax_decode_reference
from pyflm.ops.dilated_skip import DilatedSkipBlock, DilatedSkipReference, dilated_skip_block
from pyflm.ops.heatmap_targets import heatmap_targets, heatmap_targets_reference
from pyflm.ops.soft_argmax import soft_argmax, soft_argmax_reference

__all__ = [
    "soft_argmax",
    "soft_argmax_reference",
    "argmax_decode",
    "argmax_decode_reference",
    "heatmap_targets",
    "heatmap_targets_reference",
    "dilated_skip_block",
    "DilatedSkipBlock",
    "DilatedSkipReference",
]
