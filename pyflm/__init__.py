"""pyflm: facial landmark detection with fused heatmap ops.

Coordinate convention (used everywhere in pyflm, documented once here):
points are 0-based (x, y) pairs in pixels, and the centre of pixel (i, j)
(row i, column j) is at x = j, y = i. The image or heatmap of width W covers
x in [-0.5, W - 0.5).
"""

__version__ = "0.1.0"

from pyflm._library import HAS_OPS, build_info, library_path
from pyflm.ops import (
    DilatedSkipBlock,
    argmax_decode,
    dilated_skip_block,
    heatmap_targets,
    soft_argmax,
)

__all__ = [
    "__version__",
    "HAS_OPS",
    "build_info",
    "library_path",
    "soft_argmax",
    "argmax_decode",
    "heatmap_targets",
    "dilated_skip_block",
    "DilatedSkipBlock",
]

__all__ += ["FaceLandmarker", "Face"]


def __getattr__(name: str):
    # The landmarker pulls in OpenCV and the models: imported on first use so
    # that `import pyflm` stays fast.
    if name in ("FaceLandmarker", "Face"):
        from pyflm import landmarker

        return getattr(landmarker, name)
    raise AttributeError(f"module 'pyflm' has no attribute {name!r}")
