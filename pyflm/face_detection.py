"""Pluggable face detectors behind one small interface.

A detector is called on a uint8 BGR image [H, W, 3] and returns
``(boxes, scores)``: float64 [N, 4] boxes (x0, y0, x1, y1) in the pyflm
convention (0-based, pixel centres at integers, so box *edges* lie on
half-integers for pixel-aligned boxes) and float64 [N] scores, sorted by score
descending. ``detector.name`` is the "box type": the box -> square crop rule
(``pyflm.data.BoxToSquare``) is fitted per name (``training/fit_detector_crops.py``),
because every detector draws its box around a different part of the face.

Integer pixel rectangles (OpenCV's (x, y, w, h), dlib's inclusive
left..right, top..bottom) cover whole pixels, so their box is the outer edge
of those pixels: a rect covering columns x .. x + w - 1 becomes
``x0 = x - 0.5, x1 = x + w - 0.5`` (same for y). One rule for every detector.

Built in: ``HaarFaceDetector`` (OpenCV's frontal Haar cascade, always
available), ``DlibHogDetector`` (dlib's HOG + linear SVM, needs ``dlib``),
``CallableDetector`` (wraps your own function). ``get_face_detector(spec)``
builds one from a name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

__all__ = [
    "FaceDetector",
    "HaarFaceDetector",
    "DlibHogDetector",
    "CallableDetector",
    "get_face_detector",
    "DETECTOR_NAMES",
    "box_iou",
    "match_detections",
    "rects_to_boxes",
]

DETECTOR_NAMES = ("default", "haar", "dlib", "dlib-hog")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))  # overflow-free logistic


def rects_to_boxes(rects) -> np.ndarray:
    """Integer pixel rects (x, y, w, h) [N, 4] -> boxes float64 [N, 4]
    (x - 0.5, y - 0.5, x + w - 0.5, y + h - 0.5): the outer pixel edges."""
    r = np.asarray(rects, dtype=np.float64).reshape(-1, 4)
    return np.stack([r[:, 0] - 0.5, r[:, 1] - 0.5, r[:, 0] + r[:, 2] - 0.5, r[:, 1] + r[:, 3] - 0.5], axis=1)


def _sorted(boxes: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-scores, kind="stable")
    return np.ascontiguousarray(boxes[order]), np.ascontiguousarray(scores[order])


class FaceDetector:
    """Base class: subclasses set ``name`` and implement ``detect``.

    ``detector(image)`` checks the image (uint8 [H, W, 3] BGR; load anything
    else with ``pyflm.io.load_image``) and returns ``(boxes float64 [N, 4],
    scores float64 [N])`` sorted by score, highest first.
    """

    name: str = "face-detector"

    def detect(self, image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def __call__(self, image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not (isinstance(image_bgr, np.ndarray) and image_bgr.dtype == np.uint8 and image_bgr.ndim == 3
                and image_bgr.shape[2] == 3 and image_bgr.size > 0):
            shape = getattr(image_bgr, "shape", None)
            dtype = getattr(image_bgr, "dtype", type(image_bgr).__name__)
            raise ValueError(f"{self.name} detector: expected a uint8 BGR image [H, W, 3], got shape {shape}, "
                             f"dtype {dtype} (convert with pyflm.io.load_image)")
        boxes, scores = self.detect(image_bgr)
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        return _sorted(boxes, scores)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


DEFAULT_MAX_SIDE = 640  # the C++ tool's --max-side default too (csrc/tools/detect/face_detector.h)
DEFAULT_FALLBACK_NEIGHBOURS = 3  # HaarFaceDetector.fallback_min_neighbors (the C++ tool: kDefaultFallbackNeighbours)


def _check_int(name: str, value, minimum: int = 0, alternative: str = "", unit: str = "") -> None:
    """An integer count or size (not a bool, not a float that int() would truncate)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}{unit}{alternative}, got {value!r}")


class HaarFaceDetector(FaceDetector):
    """OpenCV's Viola-Jones frontal face cascade (ships with opencv-python).

    Runs ``detectMultiScale3(..., outputRejectLevels=True)`` on the grey,
    histogram-equalised image. The score is the logistic of the cascade's
    last-stage weight (its sum of weak-classifier votes; on 300-W faces real
    faces give about 3 to 12, i.e. scores 0.95 to 1.0, small false
    positives about 1, i.e. 0.73): monotone, so only useful for ranking.

    ``min_size``: smallest face side in pixels of the input image (None:
    the cascade's 24 px window). ``max_side`` (default 640, like InsightFace's
    detection size): images whose longer side exceeds it are downscaled
    (INTER_AREA) before detection, boxes mapped back exactly
    (x = (x' + 0.5) / s - 0.5 per axis, s = new size / old size). The cascade's
    cost grows with the pixel count (about 0.1 s for 512 x 512 here, seconds
    for a 12-megapixel photo); the price is that faces under about
    24 x (longer side / 640) pixels go unfound. None disables it. ``cascade``: path to another cascade XML (default
    ``haarcascade_frontalface_default.xml``).

    ``fallback_min_neighbors`` (default 3): when no window group reaches
    ``min_neighbors``, the cascade looks again with this many (None, or not
    fewer than ``min_neighbors``: never), which costs a second pass only on
    images where nothing was found. Measured on 300-W (2026-12-06): of the
    28 common-set photos (HELEN and LFPW test) where 5 neighbours found
    nothing, 12 get a box on their annotated face with 3, and 3 get a box
    that is not on it (another face or background); of the 136 such training
    photos, 27 and 19. Missed faces on the common set fell from 29 to 17
    (dlib's HOG detector misses 12).
    """

    name = "haar"

    def __init__(self, min_size: int | None = None, scale_factor: float = 1.1, min_neighbors: int = 5,
                 cascade: str | Path | None = None, max_side: int | None = DEFAULT_MAX_SIDE,
                 fallback_min_neighbors: int | None = DEFAULT_FALLBACK_NEIGHBOURS):
        import cv2

        if not scale_factor > 1.0:
            raise ValueError(f"scale_factor must be > 1, got {scale_factor}")
        _check_int("min_neighbors", min_neighbors)
        if fallback_min_neighbors is not None:
            _check_int("fallback_min_neighbors", fallback_min_neighbors, 0, " or None")
        if min_size is not None:
            _check_int("min_size", min_size, 1, " or None", " pixels")
        if max_side is not None:
            _check_int("max_side", max_side, 32, " or None", " pixels")
        path = Path(cascade) if cascade is not None else Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
        if not path.is_file():
            raise FileNotFoundError(f"Haar cascade file not found: {path}")
        try:
            self._cascade = cv2.CascadeClassifier(str(path))
        except (cv2.error, SystemError) as e:  # a malformed XML raises from inside the constructor
            raise ValueError(f"cannot load Haar cascade (not a cascade XML?): {path} ({e})") from None
        if self._cascade.empty():
            raise ValueError(f"cannot load Haar cascade (not a cascade XML?): {path}")
        self.cascade_path = path
        self.min_size = None if min_size is None else int(min_size)
        self.scale_factor = float(scale_factor)
        self.min_neighbors = int(min_neighbors)
        self.max_side = None if max_side is None else int(max_side)
        self.fallback_min_neighbors = None if fallback_min_neighbors is None else int(fallback_min_neighbors)

    def detect(self, image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import cv2

        h, w = image_bgr.shape[:2]
        sx = sy = 1.0
        img = image_bgr
        if self.max_side is not None and max(h, w) > self.max_side:
            s = self.max_side / max(h, w)
            nw, nh = max(1, round(w * s)), max(1, round(h * s))
            img = cv2.resize(image_bgr, (nw, nh), interpolation=cv2.INTER_AREA)
            sx, sy = nw / w, nh / h
        grey = cv2.equalizeHist(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY))
        min_size = (0, 0)
        if self.min_size is not None:
            m = max(1, int(round(self.min_size * min(sx, sy))))
            min_size = (m, m)
        rects, weights = self._run(grey, self.min_neighbors, min_size)
        fallback = self.fallback_min_neighbors
        if len(rects) == 0 and fallback is not None and fallback < self.min_neighbors:
            rects, weights = self._run(grey, fallback, min_size)
        boxes = rects_to_boxes(rects)
        scores = _sigmoid(np.asarray(weights, dtype=np.float64).reshape(-1))
        if len(scores) != len(boxes):  # never seen; keep the contract if OpenCV changes
            scores = np.ones(len(boxes))
        # back to input pixels: edge e' (pixel-centre coords) -> (e' + 0.5) / s - 0.5
        boxes[:, [0, 2]] = (boxes[:, [0, 2]] + 0.5) / sx - 0.5
        boxes[:, [1, 3]] = (boxes[:, [1, 3]] + 0.5) / sy - 0.5
        return boxes, scores

    def _run(self, grey: np.ndarray, min_neighbors: int, min_size: tuple[int, int]):
        rects, _levels, weights = self._cascade.detectMultiScale3(
            grey, scaleFactor=self.scale_factor, minNeighbors=min_neighbors, minSize=min_size,
            outputRejectLevels=True)
        return rects, weights


_DLIB_HINT = "the 'dlib-hog' face detector needs dlib: pip install dlib-bin (prebuilt wheels) or pip install dlib"


class DlibHogDetector(FaceDetector):
    """dlib's frontal face detector (HOG features + linear SVM).

    ``upsample``: times dlib doubles the image first (finds faces down to
    about 40 / 2**upsample px). ``adjust_threshold``: added to the SVM
    threshold (0 = dlib's default; negative finds more, weaker faces).
    Score: logistic of dlib's SVM margin. dlib rectangles are inclusive pixel
    ranges, so the box is (left - 0.5, top - 0.5, right + 0.5, bottom + 0.5).
    Raises ImportError with the install command when dlib is missing.
    """

    name = "dlib-hog"

    def __init__(self, upsample: int = 1, adjust_threshold: float = 0.0):
        try:
            import dlib
        except ImportError as e:
            raise ImportError(_DLIB_HINT) from e
        _check_int("upsample", upsample)
        self._detector = dlib.get_frontal_face_detector()
        self.upsample = int(upsample)
        self.adjust_threshold = float(adjust_threshold)

    def detect(self, image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rgb = np.ascontiguousarray(image_bgr[:, :, ::-1])  # dlib takes RGB
        rects, raw_scores, _kinds = self._detector.run(rgb, self.upsample, self.adjust_threshold)
        boxes = np.array([[r.left() - 0.5, r.top() - 0.5, r.right() + 0.5, r.bottom() + 0.5] for r in rects],
                         dtype=np.float64).reshape(-1, 4)
        return boxes, _sigmoid(np.asarray(raw_scores, dtype=np.float64).reshape(-1))


class CallableDetector(FaceDetector):
    """Wrap ``fn(image_bgr) -> boxes`` or ``-> (boxes, scores)``.

    ``boxes``: [N, 4] array-like (x0, y0, x1, y1) in the pyflm convention, or
    a single box [4]; empty means no face. A 2-tuple/list whose first element
    is 2-D (or empty) is read as (boxes, scores). Scores default to 1. Boxes
    must be finite with x1 > x0 and y1 > y0, scores finite and one per box;
    otherwise ValueError naming the detector.
    """

    def __init__(self, fn: Callable[[np.ndarray], object], name: str = "custom"):
        if not callable(fn):
            raise TypeError(f"CallableDetector needs a callable, got {type(fn).__name__}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"detector name must be a non-empty string, got {name!r}")
        self.fn = fn
        self.name = name

    def detect(self, image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.fn(image_bgr)
        scores = None
        if isinstance(out, (tuple, list)) and len(out) == 2:
            first = np.asarray(out[0], dtype=object) if not isinstance(out[0], np.ndarray) else out[0]
            if first.ndim == 2 or first.size == 0:
                out, scores = out
        try:
            boxes = np.asarray(out if out is not None else [], dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(f"detector {self.name!r} returned boxes that are not numbers: {e}") from None
        if boxes.size == 0:
            boxes = boxes.reshape(0, 4)
        elif boxes.shape == (4,):
            boxes = boxes[None]
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"detector {self.name!r} returned boxes of shape {boxes.shape}, expected [N, 4]")
        if not np.all(np.isfinite(boxes)):
            raise ValueError(f"detector {self.name!r} returned non-finite box values")
        bad = np.flatnonzero((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]))
        if len(bad):
            raise ValueError(f"detector {self.name!r}: box {int(bad[0])} {boxes[bad[0]].tolist()} "
                             "does not have x1 > x0 and y1 > y0")
        if scores is None:
            scores = np.ones(len(boxes))
        try:
            scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as e:
            raise ValueError(f"detector {self.name!r} returned scores that are not numbers: {e}") from None
        if len(scores) != len(boxes):
            raise ValueError(f"detector {self.name!r} returned {len(boxes)} boxes but {len(scores)} scores")
        if not np.all(np.isfinite(scores)):
            raise ValueError(f"detector {self.name!r} returned non-finite scores")
        return boxes, scores

    def __repr__(self) -> str:
        return f"CallableDetector({getattr(self.fn, '__name__', self.fn)!r}, name={self.name!r})"


def get_face_detector(spec="default", **kwargs) -> FaceDetector | None:
    """A detector from ``spec``: "default" or "haar" -> HaarFaceDetector,
    "dlib" or "dlib-hog" -> DlibHogDetector (``kwargs`` go to the
    constructor), a FaceDetector -> itself, another callable ->
    CallableDetector(spec), None -> None (no detector: boxes must be given)."""
    if spec is None:
        return None
    if isinstance(spec, FaceDetector):
        return spec
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key in ("default", "haar"):
            return HaarFaceDetector(**kwargs)
        if key in ("dlib", "dlib-hog"):
            return DlibHogDetector(**kwargs)
        raise ValueError(f"unknown face detector {spec!r}; valid names: {', '.join(DETECTOR_NAMES)} "
                         "(or pass a FaceDetector, a callable, or None)")
    if callable(spec):
        return CallableDetector(spec, **kwargs)
    raise TypeError(f"face detector must be a name, a FaceDetector, a callable or None, got {type(spec).__name__}")


def box_iou(a, b) -> np.ndarray:
    """IoU matrix float64 [len(a), len(b)] of boxes (x0, y0, x1, y1)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return iou


def match_detections(boxes, gt_boxes, min_iou: float = 0.3) -> np.ndarray:
    """For each ground-truth box, the index of its detection in ``boxes``, or
    -1: int64 [len(gt_boxes)]. Greedy: the pair with the highest IoU is
    matched first, then the next among the unmatched, while IoU >= min_iou;
    each detection is matched at most once."""
    iou = box_iou(gt_boxes, boxes)
    match = np.full(iou.shape[0], -1, dtype=np.int64)
    if iou.size == 0:
        return match
    iou = np.where(iou >= min_iou, iou, -1.0)
    while True:
        g, d = np.unravel_index(int(np.argmax(iou)), iou.shape)
        if iou[g, d] < 0:
            break
        match[g] = d
        iou[g, :] = -1.0
        iou[:, d] = -1.0
    return match
