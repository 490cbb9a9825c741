"""Draw faces (boxes, landmarks, contour lines) on a copy of an image with OpenCV."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

__all__ = ["CONTOURS_68", "draw_faces"]

# 68-point (iBUG / 300-W) contours: (first, last, closed)
CONTOURS_68 = {
    "jaw": (0, 16, False),
    "right_brow": (17, 21, False),
    "left_brow": (22, 26, False),
    "nose_bridge": (27, 30, False),
    "nose_base": (31, 35, False),
    "right_eye": (36, 41, True),
    "left_eye": (42, 47, True),
    "outer_lips": (48, 59, True),
    "inner_lips": (60, 67, True),
}

_SHIFT = 4  # sub-pixel drawing: OpenCV takes fixed-point coordinates with 4 fractional bits
_ONE = 1 << _SHIFT


def _fixed(pts: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(pts, dtype=np.float64) * _ONE).astype(np.int32)


def draw_faces(image_bgr: np.ndarray, faces: Sequence, draw_box: bool = True, draw_points: bool = True,
               draw_lines: bool = True, box_color=(0, 255, 0), point_color=(0, 0, 255), line_color=(255, 200, 0),
               radius: float | None = None, thickness: int | None = None, label_scores: bool = False) -> np.ndarray:
    """An annotated copy of ``image_bgr`` (uint8 [H, W, 3]; grey is converted).

    ``faces``: :class:`pyflm.Face` objects (anything with ``box`` [4] and
    ``landmarks`` [K, 2]). Draws each face's box, its landmarks as dots
    (sub-pixel positions) and, for 68 points, the jaw/brow/nose/eye/mouth
    contours. ``radius`` / ``thickness`` default to a size that fits the face.
    ``label_scores`` writes the mean landmark score above the box.
    """
    img = np.asarray(image_bgr)
    if img.dtype != np.uint8:
        raise ValueError(f"draw_faces: image must be uint8, got {img.dtype}")
    if img.ndim == 2:
        out = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    elif img.ndim == 3 and img.shape[2] == 3:
        out = img.copy()
    else:
        raise ValueError(f"draw_faces: image must be [H, W, 3] or [H, W], got {img.shape}")
    for face in faces:
        box = np.asarray(face.box, dtype=np.float64).reshape(4)
        pts = np.asarray(face.landmarks, dtype=np.float64).reshape(-1, 2)
        size = max(box[2] - box[0], box[3] - box[1], 1.0)
        t = thickness or max(1, int(round(size / 150)))
        r = radius if radius is not None else max(1.0, size / 120)
        if draw_box:
            cv2.rectangle(out, tuple(_fixed(box[:2])), tuple(_fixed(box[2:])), box_color, t, cv2.LINE_AA, _SHIFT)
        if draw_lines and len(pts) == 68 and np.isfinite(pts).all():
            for a, b, closed in CONTOURS_68.values():
                cv2.polylines(out, [_fixed(pts[a:b + 1])], closed, line_color, t, cv2.LINE_AA, _SHIFT)
        if draw_points:
            for p in _fixed(pts[np.isfinite(pts).all(1)]):
                cv2.circle(out, (int(p[0]), int(p[1])), int(round(r * _ONE)), point_color, -1, cv2.LINE_AA, _SHIFT)
        if label_scores and getattr(face, "scores", None) is not None:
            text = f"{float(np.mean(face.scores)):.3f}"
            org = (int(box[0]), max(int(box[1]) - 4, 10))
            cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.4 * t, box_color, t, cv2.LINE_AA)
    return out
