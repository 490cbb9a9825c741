"""Image, video and result-file input/output for the inference API.

Everything returned here is OpenCV style: uint8 BGR [H, W, 3], C-contiguous,
never sharing memory with the caller's array (later writes to either side do
not affect the other), unless ``copy=False`` asks for the caller's array
itself where it is already such an image (what the landmarker does within
one call: it only reads the image, and a 4K frame's copy costs ~1.4 ms here).

Conversions done by :func:`load_image` (for arrays and decoded files alike):

* grey [H, W] or [H, W, 1] -> the grey value copied to the 3 channels;
* 4 channels (BGRA / RGBA) -> alpha dropped (not composited on a background);
* uint16 -> 8 bit by ``round(v / 257)`` (the exact inverse of the usual 8 -> 16
  bit expansion ``v * 257``; 65535 -> 255, 257 * k -> k);
* float (16/32/64 bit) in [0, 1] -> ``round(v * 255)``; NaN / inf, or values
  outside [0, 1], raise ValueError (a float image in 0..255 is ambiguous:
  convert it with ``.astype(np.uint8)`` yourself);
* bool, other integer types, other ranks or channel counts, empty arrays ->
  ValueError naming the shape and dtype.

Files are read with ``np.fromfile`` + ``cv2.imdecode`` (so non-ASCII paths
work) with ``IMREAD_ANYDEPTH | IMREAD_ANYCOLOR``: 16-bit depth survives and is
scaled as above, and the EXIF orientation of JPEGs is applied (as viewers and
``cv2.imread`` do). ``IMREAD_UNCHANGED`` is not used because it ignores the
EXIF orientation; the only thing it would keep beyond that is the alpha
channel, which is dropped anyway.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

__all__ = [
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "load_image",
    "to_bgr_uint8",
    "iter_images",
    "is_video",
    "iter_video_frames",
    "atomic_write",
    "write_image_atomic",
    "write_json_atomic",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
_ORDERS = ("bgr", "rgb")
_SIXTEEN_BIT_EXTENSIONS = (".png", ".tif", ".tiff")


def _check_order(value: str, arg: str) -> str:
    if not isinstance(value, str) or value.lower() not in _ORDERS:
        raise ValueError(f"{arg} must be 'bgr' or 'rgb', got {value!r}")
    return value.lower()


def _to_uint8(a: np.ndarray, what: str) -> np.ndarray:
    """Any supported dtype -> uint8 (a new array unless already uint8)."""
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        raise ValueError(f"{what}: boolean arrays are not images (shape {a.shape}); "
                         "convert a mask with mask.astype(np.uint8) * 255")
    if a.dtype == np.uint16:
        # round(v / 257) in integers: (v + 128) // 257, exact for every uint16
        return ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{what}: float image holds NaN or inf values")
        lo, hi = float(a.min()), float(a.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"{what}: float images must lie in [0, 1], got values in [{lo:g}, {hi:g}] "
                             "(for 0..255 floats use .astype(np.uint8))")
        return np.rint(a.astype(np.float64) * 255.0).astype(np.uint8)
    raise ValueError(f"{what}: unsupported dtype {a.dtype} (shape {a.shape}); "
                     "use uint8, uint16 or float in [0, 1]")


def to_bgr_uint8(array: np.ndarray, input_order: str = "bgr", what: str = "image", copy: bool = True) -> np.ndarray:
    """Convert an image array (see the module docstring for what is accepted)
    to a new C-contiguous uint8 BGR [H, W, 3] array. ``input_order`` is the
    channel order of 3- and 4-channel input ("bgr" or "rgb"; ignored for
    grey). ``what`` names the input in error messages. ``copy=False``: return
    ``array`` itself when it already is C-contiguous uint8 BGR [H, W, 3] (a
    conversion still makes a new array); read it only."""
    input_order = _check_order(input_order, "input_order")
    a = np.asarray(array)
    if a.dtype == object or a.dtype.kind in "USV":
        raise ValueError(f"{what}: unsupported dtype {a.dtype} (shape {a.shape})")
    if a.size == 0:
        raise ValueError(f"{what}: empty image (shape {a.shape})")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 2:
        channels = 1
    elif a.ndim == 3 and a.shape[2] in (3, 4):
        channels = a.shape[2]
    else:
        raise ValueError(f"{what}: expected [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], "
                         f"got shape {a.shape} (dtype {a.dtype})")
    a8 = _to_uint8(a, what)
    if channels == 1:
        out = np.repeat(a8[:, :, None], 3, axis=2)
    else:
        c = a8 if channels == 3 else a8[:, :, :3]
        out = c[:, :, ::-1] if input_order == "rgb" else c
    if not copy:  # copies only where out is not C-contiguous uint8 already
        return np.ascontiguousarray(out, dtype=np.uint8)
    # np.array(copy=True) guarantees no memory shared with the caller's array
    return np.array(out, dtype=np.uint8, order="C", copy=True)


def _read_image_file(path: Path) -> np.ndarray:
    import cv2

    if not path.exists():
        raise FileNotFoundError(f"image not found: {path}")
    if not path.is_file():
        raise ValueError(f"not an image file (a directory or special file): {path}")
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as e:
        raise ValueError(f"cannot read image file {path}: {e}") from e
    if data.size == 0:
        raise ValueError(f"cannot decode image (empty file): {path}")
    try:
        img = cv2.imdecode(data, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    except cv2.error as e:
        raise ValueError(f"cannot decode image (corrupt or not an image): {path} ({e})") from e
    if img is None:
        raise ValueError(f"cannot decode image (corrupt or not an image): {path}")
    return img


def load_image(image, color: str = "bgr", input_order: str = "bgr", copy: bool = True) -> np.ndarray:
    """Load an image as a new C-contiguous uint8 array [H, W, 3].

    ``image``: a file path (str or Path) or a NumPy array.
    ``color``: channel order of the *output*, "bgr" (default, OpenCV's and the
    model pipeline's) or "rgb".
    ``input_order``: channel order of an *input array* with 3 or 4 channels,
    "bgr" (default) or "rgb"; files are always decoded correctly whatever it is.
    ``copy=False``: an input array that needs no conversion is returned
    itself, not copied (read it only).

    Errors: a missing file raises FileNotFoundError naming the path; an
    unreadable or undecodable file, or an array that is not an image (see the
    module docstring), raises ValueError naming the path or the shape/dtype.
    """
    color = _check_order(color, "color")
    input_order = _check_order(input_order, "input_order")
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        # the decoded array is nobody else's: no copy needed
        out = to_bgr_uint8(_read_image_file(path), "bgr", what=str(path), copy=False)
    elif isinstance(image, np.ndarray):
        out = to_bgr_uint8(image, input_order, what="image array", copy=copy)
    else:
        raise TypeError(f"image must be a path or a NumPy array, got {type(image).__name__}")
    if color == "rgb":
        out = np.ascontiguousarray(out[:, :, ::-1])
    return out


def iter_images(folder, recursive: bool = False) -> list[Path]:
    """Image files of ``folder`` (extensions in IMAGE_EXTENSIONS, any case),
    sorted by path; ``recursive`` descends into sub-folders. Hidden files
    (names starting with '.', e.g. macOS '._x.jpg' or our own temp files) are
    skipped. A missing folder raises FileNotFoundError, a file
    NotADirectoryError."""
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"image folder not found: {folder}")
    if not folder.is_dir():
        raise NotADirectoryError(f"not a folder: {folder}")
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in candidates
                  if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file())


def is_video(path) -> bool:
    """True when ``path``'s extension is a video one (VIDEO_EXTENSIONS, any case)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def iter_video_frames(path) -> Iterator[tuple[int, float, np.ndarray]]:
    """Yield ``(index, timestamp_s, frame)`` for every frame of a video file:
    index from 0, frame uint8 BGR [H, W, 3] (a new array per frame).

    The timestamp is the container's presentation time of the frame
    (``CAP_PROP_POS_MSEC`` after reading it) when the backend reports an
    increasing one, else ``index / fps``. The capture is released when the
    iteration ends, fails, or the generator is closed/garbage-collected.
    Missing files raise FileNotFoundError; files OpenCV cannot open ValueError
    (a generator: both are raised by the first ``next()``, i.e. when the
    ``for`` loop starts).
    """
    import cv2

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"video not found: {path}")
    if not path.is_file():
        raise ValueError(f"not a video file: {path}")
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise ValueError(f"cannot open video (unsupported codec or not a video): {path}")
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        index, last_t = 0, -math.inf
        while True:
            ok, frame = cap.read()
            if not ok or frame is None:
                break
            t_ms = float(cap.get(cv2.CAP_PROP_POS_MSEC))
            t = t_ms / 1000.0
            if not (math.isfinite(t) and t > last_t and (t > 0 or index == 0)):
                t = index / fps if fps > 0 else float(index)
            last_t = t
            yield index, t, to_bgr_uint8(frame, "bgr", what=f"{path} frame {index}")
            index += 1
    finally:
        cap.release()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, write) -> Path:
    """Write a file atomically: ``write(f)`` fills a temp file (binary mode) in
    the same folder, which is fsynced, given the umask's permissions (mkstemp
    makes 0600) and renamed over ``path``. On any failure the temp file is
    removed and ``path`` is untouched. The one implementation pyflm, training
    and the benchmarks use for every file they write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def write_image_atomic(path, image: np.ndarray, params: list[int] | None = None) -> None:
    """Encode ``image`` (uint8 BGR [H, W, 3], grey [H, W] or BGRA [H, W, 4];
    uint16 too for .png / .tif / .tiff; other dtypes raise ValueError) in the format of ``path``'s extension and write it
    atomically (parent folders created). ``params`` go to cv2.imencode, e.g.
    ``[cv2.IMWRITE_JPEG_QUALITY, 95]``. Unknown extensions or arrays the
    encoder refuses raise ValueError naming the path."""
    import cv2

    path = Path(path)
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{path}: image must be a NumPy array, got {type(image).__name__}")
    if image.size == 0:
        raise ValueError(f"{path}: cannot write an empty image (shape {image.shape})")
    ext = path.suffix.lower()
    if not ext:
        raise ValueError(f"{path}: no file extension, cannot choose an image format")
    # cv2.imencode silently truncates other depths to 8 bit, so refuse them here
    if image.dtype != np.uint8 and not (image.dtype == np.uint16 and ext in _SIXTEEN_BIT_EXTENSIONS):
        raise ValueError(f"{path}: cannot write dtype {image.dtype} as {ext} (uint8, or uint16 for "
                         f"{'/'.join(_SIXTEEN_BIT_EXTENSIONS)}); convert with pyflm.io.to_bgr_uint8")
    try:
        ok, buf = cv2.imencode(ext, np.ascontiguousarray(image), params or [])
    except cv2.error as e:
        raise ValueError(f"{path}: cannot encode image of shape {image.shape}, dtype {image.dtype} "
                         f"as {ext} ({e.err if hasattr(e, 'err') else e})") from e
    if not ok:
        raise ValueError(f"{path}: cannot encode image of shape {image.shape}, dtype {image.dtype} as {ext}")
    _write_bytes_atomic(path, buf.tobytes())


def _jsonable(obj: Any) -> Any:
    """NumPy scalars/arrays, Paths, tuples and sets -> plain JSON types
    (dict keys too); anything else unknown raises TypeError naming it."""
    if isinstance(obj, dict):
        return {_jsonable(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):  # np.float32(1.5), np.int64(3), np.bool_(True)
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    raise TypeError(f"cannot write a {type(obj).__name__} to JSON: {obj!r:.80}")


def write_json_atomic(path, obj: Any) -> None:
    """Write ``obj`` as UTF-8 JSON (indent=2, trailing newline) atomically,
    creating parent folders. NumPy arrays / scalars and Paths are converted;
    float NaN / inf are written as NaN / Infinity (Python's json default)."""
    path = Path(path)
    text = json.dumps(_jsonable(obj), indent=2, ensure_ascii=False) + "\n"
    _write_bytes_atomic(path, text.encode("utf-8"))
