"""Face crops as 2x3 affine matrices.

A crop is a 2x3 float64 matrix ``M`` mapping image pixels to crop pixels:
``[x', y'] = M @ [x, y, 1]``. Both sides use the project convention (0-based,
pixel centres at integers), and so does ``cv2.warpAffine``, so the same matrix
maps landmarks and warps the image; nothing shifts by half a pixel.

A square crop of side ``s`` (image px) centred at ``(cx, cy)`` to an output of
``S x S`` pixels maps the square's edges ``cx - s/2 .. cx + s/2`` onto the
output's edges ``-0.5 .. S - 0.5``: ``x' = (S / s) (x - cx) + (S - 1) / 2``.

Crop rules:

* from ground truth (the paper): side ``1.3 * max(extent_x, extent_y)`` of the
  landmarks, centred at their centroid (``square_from_landmarks``);
* from a detector box: ``BoxToSquare`` (centre offset in box units and a scale
  of the box size), with ``fit_box_to_square`` to fit it to ground truth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "square_from_landmarks",
    "tight_box",
    "BoxToSquare",
    "fit_box_to_square",
    "crop_matrix",
    "similarity_matrix",
    "invert_affine",
    "compose_affine",
    "transform_points",
    "warp_image",
    "Crop",
]


def _as_pts(landmarks) -> np.ndarray:
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) == 0:
        raise ValueError(f"landmarks must be [N, 2] with N >= 1, got {pts.shape}")
    return pts


def tight_box(landmarks) -> np.ndarray:
    """float64 [4] (x_min, y_min, x_max, y_max): the bounding box of [N, 2]
    landmarks (the "tight" box type of the crop rules)."""
    pts = _as_pts(landmarks)
    return np.concatenate([pts.min(axis=0), pts.max(axis=0)])


def square_from_landmarks(landmarks, scale: float = 1.3, center: str = "centroid") -> tuple[float, float, float]:
    """(cx, cy, side): the centre of the landmarks and ``scale`` times the
    larger side of their bounding box (the paper's ground-truth crop: 1.3,
    centred at the centroid).

    ``center="centroid"`` (default, the paper) or ``"box"`` (the centre of the
    landmarks' bounding box). On the 2,566 300-W faces here, the centroid rule
    with 1.3 leaves some landmark outside the crop for 9.5% of the faces (by up
    to 8% of the crop side, profile faces); the box-centre rule never does."""
    pts = _as_pts(landmarks)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    if center == "centroid":
        cx, cy = pts.mean(axis=0)
    elif center == "box":
        cx, cy = (lo + hi) / 2
    else:
        raise ValueError(f"center must be 'centroid' or 'box', got {center!r}")
    extent = hi - lo
    side = float(scale * extent.max())
    if not side > 0:
        raise ValueError("landmarks have zero extent; cannot size a crop")
    return float(cx), float(cy), side


@dataclass(frozen=True)
class BoxToSquare:
    """Detector box (x_min, y_min, x_max, y_max) -> square (cx, cy, side).

    ``cx = (x_min + x_max) / 2 + dx * w``, ``cy = (y_min + y_max) / 2 + dy * h``,
    ``side = scale * size`` where ``size`` is ``max(w, h)`` (``size="max"``) or
    ``sqrt(w * h)`` (``size="geometric"``). Defaults are the identity-ish rule;
    fit the numbers for a detector with ``fit_box_to_square``.
    """

    dx: float = 0.0
    dy: float = 0.0
    scale: float = 1.0
    size: str = "max"

    def __call__(self, box) -> tuple[float, float, float]:
        x0, y0, x1, y1 = (float(v) for v in np.asarray(box, dtype=np.float64).reshape(4))
        w, h = x1 - x0, y1 - y0
        if not (w > 0 and h > 0):
            raise ValueError(f"box must have x_max > x_min and y_max > y_min, got {box}")
        if self.size == "max":
            size = max(w, h)
        elif self.size == "geometric":
            size = float(np.sqrt(w * h))
        else:
            raise ValueError(f"size must be 'max' or 'geometric', got {self.size!r}")
        return (x0 + x1) / 2 + self.dx * w, (y0 + y1) / 2 + self.dy * h, self.scale * size


def fit_box_to_square(boxes, squares, size: str = "max") -> BoxToSquare:
    """Fit BoxToSquare so that detector ``boxes`` [M, 4] reproduce target
    ``squares`` [M, 3] (cx, cy, side, e.g. from square_from_landmarks): the
    offsets are mean centre differences in box units, the scale the median
    side ratio (robust to a few bad detections)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    s = np.asarray(squares, dtype=np.float64).reshape(-1, 3)
    if len(b) != len(s) or len(b) == 0:
        raise ValueError(f"need the same positive number of boxes and squares, got {len(b)} and {len(s)}")
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    dx = np.mean((s[:, 0] - (b[:, 0] + b[:, 2]) / 2) / w)
    dy = np.mean((s[:, 1] - (b[:, 1] + b[:, 3]) / 2) / h)
    sz = np.maximum(w, h) if size == "max" else np.sqrt(w * h)
    return BoxToSquare(float(dx), float(dy), float(np.median(s[:, 2] / sz)), size)


def similarity_matrix(scale: float = 1.0, angle_deg: float = 0.0, center=(0.0, 0.0),
                      target=(0.0, 0.0), flip: bool = False) -> np.ndarray:
    """2x3 matrix: move ``center`` to the origin, optionally mirror x, rotate by
    ``angle_deg`` (counter-clockwise on screen, i.e. with y pointing down a
    positive angle turns +x towards -y), scale, move the origin to ``target``."""
    a = np.deg2rad(angle_deg)
    c, s = np.cos(a), np.sin(a)
    # y points down, so a visually counter-clockwise rotation is [[c, s], [-s, c]]
    lin = scale * np.array([[c, s], [-s, c]])
    if flip:
        lin = lin @ np.diag([-1.0, 1.0])
    cx, cy = center
    t = np.asarray(target, dtype=np.float64) - lin @ np.array([cx, cy], dtype=np.float64)
    return np.hstack([lin, t[:, None]])


def crop_matrix(center, side: float, out_size: int | tuple[int, int], angle_deg: float = 0.0) -> np.ndarray:
    """Image px -> crop px for the square of ``side`` at ``center``, output
    ``out_size`` (int S, or (width, height) for a non-square output: the square
    is stretched to it)."""
    if not side > 0:
        raise ValueError(f"side must be > 0, got {side}")
    ow, oh = (out_size, out_size) if np.isscalar(out_size) else out_size
    # similarity_matrix(1, angle_deg, center), rows scaled to the output, origin moved to
    # the crop's centre; in Python floats: it runs per face, and NumPy calls on 2x2 arrays cost more
    cx, cy = center
    cx, cy = float(cx), float(cy)
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a)
    kx, ky = ow / side, oh / side
    return np.array([[c * kx, s * kx, -(c * cx + s * cy) * kx + (ow - 1) / 2],
                     [-s * ky, c * ky, -(-s * cx + c * cy) * ky + (oh - 1) / 2]], dtype=np.float64)


def invert_affine(m) -> np.ndarray:
    """Exact inverse of a 2x3 affine matrix (float64)."""
    m = np.asarray(m, dtype=np.float64)
    if m.shape != (2, 3):
        raise ValueError(f"expected a 2x3 matrix, got {m.shape}")
    (a, b, tx), (c, d, ty) = m.tolist()
    det = a * d - b * c
    if det == 0 or not math.isfinite(det):
        raise ValueError("affine matrix is singular")
    ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
    return np.array([[ia, ib, -(ia * tx + ib * ty)], [ic, id_, -(ic * tx + id_ * ty)]], dtype=np.float64)


def compose_affine(*ms) -> np.ndarray:
    """``compose_affine(A, B)`` applies B first, then A (like A @ B)."""
    out = np.eye(3)
    for m in ms:
        m = np.asarray(m, dtype=np.float64)
        out = out @ np.vstack([m, [0.0, 0.0, 1.0]])
    return out[:2].copy()


def transform_points(m, pts) -> np.ndarray:
    """Apply a 2x3 matrix to points [..., 2] (float64)."""
    m = np.asarray(m, dtype=np.float64)
    p = np.asarray(pts, dtype=np.float64)
    if p.shape[-1] != 2:
        raise ValueError(f"points must be [..., 2], got {p.shape}")
    return p @ m[:, :2].T + m[:, 2]


def warp_image(image: np.ndarray, m, out_size: int | tuple[int, int], border_value=0,
               interpolation: str = "bilinear") -> np.ndarray:
    """Warp ``image`` (H x W or H x W x C) with the image->crop matrix ``m`` to
    ``out_size`` (S or (width, height)): output pixel (x', y') samples the
    input at ``m^-1 (x', y')``, pixel centres at integers (cv2's convention,
    so no half-pixel shift). Bilinear by default, constant border.
    cv2 quantises the sampling position to 1/32 px (INTER_BITS)."""
    import cv2

    ow, oh = (out_size, out_size) if np.isscalar(out_size) else out_size
    flags = {"bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST, "cubic": cv2.INTER_CUBIC,
             "area": cv2.INTER_AREA}.get(interpolation)
    if flags is None:
        raise ValueError(f"unknown interpolation {interpolation!r}")
    image = np.asarray(image)
    if image.ndim == 3 and not np.isscalar(border_value):
        border = tuple(float(v) for v in border_value)
    else:
        border = (float(border_value),) * 4 if np.isscalar(border_value) else border_value
    return cv2.warpAffine(image, np.asarray(m, dtype=np.float64), (int(ow), int(oh)), flags=flags,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=border)


@dataclass(frozen=True)
class Crop:
    """An image->crop affine map with its exact inverse and output size."""

    matrix: np.ndarray
    out_size: tuple[int, int]  # (width, height)

    @classmethod
    def from_square(cls, cx: float, cy: float, side: float, out_size, angle_deg: float = 0.0) -> "Crop":
        size = (out_size, out_size) if np.isscalar(out_size) else tuple(out_size)
        return cls(crop_matrix((cx, cy), side, size, angle_deg), (int(size[0]), int(size[1])))

    @classmethod
    def from_landmarks(cls, landmarks, out_size, scale: float = 1.3, center: str = "centroid") -> "Crop":
        return cls.from_square(*square_from_landmarks(landmarks, scale, center), out_size)

    @classmethod
    def from_box(cls, box, out_size, rule: BoxToSquare = BoxToSquare()) -> "Crop":
        return cls.from_square(*rule(box), out_size)

    @property
    def inverse(self) -> np.ndarray:
        return invert_affine(self.matrix)

    def to_crop(self, pts) -> np.ndarray:
        return transform_points(self.matrix, pts)

    def to_image(self, pts) -> np.ndarray:
        return transform_points(self.inverse, pts)

    def warp(self, image, border_value=0, interpolation: str = "bilinear") -> np.ndarray:
        return warp_image(image, self.matrix, self.out_size, border_value, interpolation)
