"""TEMPORARY stand-ins for pyflm.io / face_detection / smoothing (branch ``io``).

Deleted once ``io`` is merged; only the names the landmarker uses.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

_IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_VIDEO_EXT = (".avi", ".mp4", ".mov", ".mkv", ".webm", ".m4v")


def load_image(image, input_order="bgr"):
    if isinstance(image, (str, os.PathLike)):
        p = Path(image)
        if not p.is_file():
            raise FileNotFoundError(f"image not found: {p}")
        img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise ValueError(f"cannot decode image {p}")
        input_order = "bgr"
    else:
        img = np.asarray(image)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.ndim != 3 or img.shape[2] not in (3, 4) or img.dtype != np.uint8:
        raise ValueError(f"image must be uint8 [H, W, 3], got {img.dtype} {img.shape}")
    if img.shape[2] == 4:
        img = img[..., :3]
    if input_order == "rgb":
        img = img[..., ::-1]
    return np.ascontiguousarray(img)


def iter_images(folder, recursive=False):
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"folder not found: {folder}")
    it = folder.rglob("*") if recursive else folder.iterdir()
    yield from sorted(p for p in it if p.is_file() and p.suffix.lower() in _IMAGE_EXT)


def is_video(path):
    return Path(path).suffix.lower() in _VIDEO_EXT


def iter_video_frames(path):
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"video not found: {p}")
    cap = cv2.VideoCapture(str(p))
    if not cap.isOpened():
        raise ValueError(f"cannot open video {p}")
    fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
    i = 0
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            yield i, i / fps, frame
            i += 1
    finally:
        cap.release()


def _atomic(path, write):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path, obj):
    _atomic(path, lambda t: Path(t).write_text(json.dumps(obj, indent=2)))


def write_image_atomic(path, img):
    def w(t):
        if not cv2.imwrite(t, img):
            raise ValueError(f"cannot write {path}")
    _atomic(path, w)


class _Haar:
    name = "haar"

    def __init__(self):
        self.c = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")

    def __call__(self, image):
        g = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        r = self.c.detectMultiScale(g, 1.1, 5, minSize=(30, 30))
        r = np.asarray(r, dtype=np.float64).reshape(-1, 4)
        boxes = np.c_[r[:, :2] - 0.5, r[:, :2] + r[:, 2:] - 0.5]
        return boxes, np.ones(len(boxes))


class _Custom:
    name = "custom"

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, image):
        out = self.fn(image)
        if isinstance(out, tuple):
            return np.asarray(out[0], np.float64).reshape(-1, 4), np.asarray(out[1], np.float64)
        b = np.asarray(out, np.float64).reshape(-1, 4)
        return b, np.ones(len(b))


def get_face_detector(spec):
    if spec is None or spec == "none":
        return None
    if spec in ("default", "haar"):
        return _Haar()
    if callable(spec):
        return spec if hasattr(spec, "name") else _Custom(spec)
    raise ValueError(f"unknown face detector {spec!r}")


class OneEuroFilter:
    def __init__(self, min_cutoff=1.0, beta=0.0, d_cutoff=1.0):
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self.reset()

    def reset(self):
        self.x = self.dx = self.t = None

    @staticmethod
    def _alpha(cutoff, dt):
        tau = 1.0 / (2 * np.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    def __call__(self, x, t=None):
        x = np.asarray(x, dtype=np.float64)
        if self.x is None:
            self.x, self.dx, self.t = x, np.zeros_like(x), (0.0 if t is None else t)
            return x
        t = self.t + 1 / 30 if t is None else t
        dt = max(t - self.t, 1e-6)
        dx = (x - self.x) / dt
        a = self._alpha(self.d_cutoff, dt)
        self.dx = a * dx + (1 - a) * self.dx
        cutoff = self.min_cutoff + self.beta * np.abs(self.dx)
        a = self._alpha(cutoff, dt)
        self.x = a * x + (1 - a) * self.x
        self.t = t
        return self.x
