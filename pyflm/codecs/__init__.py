"""Codecs: one per target representation (mmpose style). Each turns landmark
coordinates (input pixels, ``[B, K, 2]``, pyflm convention) into training
targets with ``encode(coords, visibility) -> (targets, mask)`` and a network's
output back into ``decode(output) -> (coords [B, K, 2] input px, scores [B, K])``.

================================  =========================  ========================
codec                             targets                    decode
================================  =========================  ========================
:class:`RegressionCodec`          ``[B, K, 2]`` in [-1, 1]   affine map back
:class:`GaussianHeatmapCodec`     ``[B, K(+1), h, h]``       argmax (+DARK) / soft
:class:`DistributionCodec`        ``[B, K, h, h]`` sum 1     soft-argmax
:class:`PWCCodec`                 ``[B, K + 1, h, h]``       softmax + argmax (+DARK);
                                                             ``decode_soft``
================================  =========================  ========================

:func:`heatmap_to_input` / :func:`input_to_heatmap` map between input and
heatmap pixels at a given stride (see :mod:`pyflm.codecs.base`).
"""

from pyflm.codecs.base import Codec, gaussian_blur, heatmap_to_input, input_to_heatmap, valid_mask
from pyflm.codecs.distribution import DistributionCodec
from pyflm.codecs.heatmap import DECODE_MODES, GaussianHeatmapCodec
from pyflm.codecs.pwc import PWCCodec
from pyflm.codecs.regression import RegressionCodec

__all__ = [
    "Codec",
    "heatmap_to_input",
    "input_to_heatmap",
    "valid_mask",
    "gaussian_blur",
    "RegressionCodec",
    "GaussianHeatmapCodec",
    "DistributionCodec",
    "PWCCodec",
    "DECODE_MODES",
]
