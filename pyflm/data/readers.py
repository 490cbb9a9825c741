"""Readers for landmark annotation formats.

Every reader returns landmarks as float64 NumPy arrays [N, 2] of (x, y) in the
project convention: 0-based pixels, the centre of the top-left pixel at (0, 0)
(column j is x = j, row i is y = i).

Formats written by Matlab tools are 1-based (the centre of the top-left pixel
is (1, 1)); their readers subtract 1 by default (``one_based=True``):

* iBUG ``.pts`` (300-W, 300-VW, the data in shared/data). Checked on the
  2,566 300-W faces in shared/data: read as 0-based (image = [-0.5, W - 0.5]),
  194 point coordinates would lie beyond the right/bottom edge (9 exactly on
  x = W or y = H, the last pixel centre of a 1-based image) and none beyond
  the left/top; read as 1-based (image = [0.5, W + 0.5]), none lie beyond the
  right/bottom and 13 (all > -0.3) beyond the left/top. The 1-based reading
  fits, as the 300-W (Matlab) convention says.
* COFW ``.mat`` (RCPR, Matlab) and AFLW2000-3D ``pt3d_68`` (3DDFA, Matlab):
  same rule, by provenance; pass ``one_based=False`` to keep values as stored.

Formats produced by Python tools are read as stored (``one_based=False``):
WFLW annotation lines, the CSV and COCO-style JSON. COCO JSON converted from
300-W/300-VW keeps the raw .pts values (the 300-VW fixture shows it), so pass
``one_based=True`` for those.

Malformed files raise ``ValueError`` naming the file (and the line where there
is one); missing optional packages raise ``ImportError`` naming the package.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "read_pts",
    "write_pts",
    "read_landmarks_csv",
    "WFLWAnnotation",
    "WFLW_ATTRIBUTES",
    "parse_wflw_line",
    "read_wflw_annotations",
    "read_cofw_mat",
    "read_aflw2000_mat",
    "CocoFace",
    "read_coco_keypoints",
]


def _finite(values: np.ndarray, path, lineno=None) -> None:
    if not np.all(np.isfinite(values)):
        where = f"{path}:{lineno}" if lineno is not None else f"{path}"
        raise ValueError(f"{where}: landmark values are not finite")


# ---------------------------------------------------------------------------
# iBUG .pts
# ---------------------------------------------------------------------------


def read_pts(path, one_based: bool = True, num_points: int | None = None) -> np.ndarray:
    """Read an iBUG ``.pts`` file into float64 [N, 2] (0-based, see module doc).

    Accepts the standard form (``version: 1`` / ``n_points: N`` / ``{`` /
    N lines ``x y`` / ``}``) and a bare list of ``x y`` lines without header or
    braces. ``one_based=True`` subtracts 1 (the iBUG files are 1-based);
    ``num_points`` if given is checked.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="strict")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a text .pts file ({e})") from None
    declared = None
    in_braces = False
    saw_open = saw_close = False
    rows: list[tuple[float, float]] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        low = line.lower()
        if low.startswith("version"):
            if rows or saw_open:
                raise ValueError(f"{path}:{lineno}: 'version' after the points")
            continue
        if low.startswith("n_points"):
            if rows or saw_open:
                raise ValueError(f"{path}:{lineno}: 'n_points' after the points")
            parts = line.split(":", 1)
            try:
                declared = int(parts[1].strip()) if len(parts) == 2 else int(line.split()[1])
            except (ValueError, IndexError):
                raise ValueError(f"{path}:{lineno}: bad n_points line {raw!r}") from None
            continue
        if line == "{":
            if saw_open or rows:
                raise ValueError(f"{path}:{lineno}: unexpected '{{' (second one, or after points)")
            saw_open = in_braces = True
            continue
        if line == "}":
            if not in_braces:
                raise ValueError(f"{path}:{lineno}: '}}' without '{{'")
            in_braces = False
            saw_close = True
            continue
        if saw_close:
            raise ValueError(f"{path}:{lineno}: content after '}}': {raw!r}")
        if saw_open is False and declared is not None:
            raise ValueError(f"{path}:{lineno}: points before '{{' in a file with a header")
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}:{lineno}: expected 'x y', got {raw!r}")
        try:
            xy = (float(parts[0]), float(parts[1]))
        except ValueError:
            raise ValueError(f"{path}:{lineno}: not numbers: {raw!r}") from None
        if not (math.isfinite(xy[0]) and math.isfinite(xy[1])):
            raise ValueError(f"{path}:{lineno}: landmark values are not finite: {raw!r}")
        rows.append(xy)
    if saw_open and not saw_close:
        raise ValueError(f"{path}: missing closing '}}'")
    if not rows:
        raise ValueError(f"{path}: no points")
    if declared is not None and declared != len(rows):
        raise ValueError(f"{path}: header says n_points {declared} but the file holds {len(rows)} points")
    if num_points is not None and len(rows) != num_points:
        raise ValueError(f"{path}: expected {num_points} points, found {len(rows)}")
    pts = np.asarray(rows, dtype=np.float64)
    if one_based:
        pts -= 1.0
    return pts


def write_pts(path, landmarks, one_based: bool = True, header: bool = True, precision: int = 6) -> None:
    """Write [N, 2] 0-based landmarks as an iBUG ``.pts`` file (adds 1 back when
    ``one_based``), so ``read_pts(write_pts(p))`` round-trips."""
    pts = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)
    if one_based:
        pts = pts + 1.0
    lines = []
    if header:
        lines += ["version: 1", f"n_points: {len(pts)}", "{"]
    lines += [f"{x:.{precision}f} {y:.{precision}f}" for x, y in pts]
    if header:
        lines.append("}")
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------
# CSV: name, then 2 * num_points values
# ---------------------------------------------------------------------------


def read_landmarks_csv(
    path,
    num_points: int = 68,
    layout: str = "interleaved",
    one_based: bool = False,
) -> dict[str, np.ndarray]:
    """Read a CSV with one face per row: a name, then ``2 * num_points``
    numbers. ``layout="interleaved"`` means x0, y0, x1, y1, ...;
    ``layout="planar"`` means x0..x{N-1}, y0..y{N-1}. A first row whose values
    are not numbers is taken as a header and skipped. Returns {name: [N, 2]}
    in file order (names must be unique)."""
    if layout not in ("interleaved", "planar"):
        raise ValueError(f"layout must be 'interleaved' or 'planar', got {layout!r}")
    path = Path(path)
    out: dict[str, np.ndarray] = {}
    with path.open(newline="", encoding="utf-8") as f:
        for lineno, row in enumerate(csv.reader(f), start=1):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != 1 + 2 * num_points:
                raise ValueError(
                    f"{path}:{lineno}: expected a name and {2 * num_points} values, got {len(row)} fields"
                )
            try:
                vals = np.asarray([float(c) for c in row[1:]], dtype=np.float64)
            except ValueError:
                if lineno == 1 and not out:
                    continue  # header row
                raise ValueError(f"{path}:{lineno}: non-numeric landmark value") from None
            _finite(vals, path, lineno)
            name = row[0].strip()
            if name in out:
                raise ValueError(f"{path}:{lineno}: duplicate name {name!r}")
            pts = vals.reshape(num_points, 2) if layout == "interleaved" else vals.reshape(2, num_points).T.copy()
            if one_based:
                pts -= 1.0
            out[name] = pts
    if not out:
        raise ValueError(f"{path}: no landmark rows")
    return out


# ---------------------------------------------------------------------------
# WFLW annotation lines
# ---------------------------------------------------------------------------

WFLW_ATTRIBUTES = ("pose", "expression", "illumination", "make_up", "occlusion", "blur")


@dataclass
class WFLWAnnotation:
    """One face of WFLW: 98 landmarks, the box (x_min, y_min, x_max, y_max),
    the six 0/1 attributes and the image path relative to WFLW_images/."""

    image: str
    landmarks: np.ndarray
    box: np.ndarray
    attributes: dict[str, int] = field(default_factory=dict)


def parse_wflw_line(line: str, source: str = "<string>", lineno: int | None = None,
                    one_based: bool = False) -> WFLWAnnotation:
    """Parse one line of list_98pt_rect_attr_*.txt: 196 coordinates (x0 y0 x1
    y1 ...), 4 box values, 6 attributes, the image name (210 fields)."""
    where = f"{source}:{lineno}" if lineno is not None else source
    parts = line.split()
    if len(parts) != 196 + 4 + 6 + 1:
        raise ValueError(f"{where}: expected 207 fields (196 coords, 4 box, 6 attributes, name), got {len(parts)}")
    try:
        nums = np.asarray([float(p) for p in parts[:200]], dtype=np.float64)
        attrs = [int(p) for p in parts[200:206]]
    except ValueError:
        raise ValueError(f"{where}: non-numeric coordinate, box or attribute") from None
    if not np.all(np.isfinite(nums)):
        raise ValueError(f"{where}: landmark values are not finite")
    pts = nums[:196].reshape(98, 2)
    box = nums[196:200].copy()
    if one_based:
        pts = pts - 1.0
        box = box - 1.0
    return WFLWAnnotation(image=parts[206], landmarks=pts, box=box,
                          attributes=dict(zip(WFLW_ATTRIBUTES, attrs)))


def read_wflw_annotations(path, one_based: bool = False) -> list[WFLWAnnotation]:
    """Read a WFLW annotation file (one face per line, see parse_wflw_line)."""
    path = Path(path)
    out = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                out.append(parse_wflw_line(line, str(path), lineno, one_based=one_based))
    if not out:
        raise ValueError(f"{path}: no annotation lines")
    return out


# ---------------------------------------------------------------------------
# Matlab .mat (COFW, AFLW2000-3D)
# ---------------------------------------------------------------------------


def _is_hdf5_mat(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(128)
    return b"MATLAB 7.3" in head or head[:8] == b"\x89HDF\r\n\x1a\n"


def _loadmat(path: Path) -> dict:
    """Load a .mat as {name: array}. v5/v7 files need scipy; v7.3 (HDF5) files need h5py."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if _is_hdf5_mat(path):
        try:
            import h5py
        except ImportError:
            raise ImportError(f"reading {path} (a MATLAB v7.3 / HDF5 file) needs the 'h5py' package: pip install h5py") from None
        out = {}
        with h5py.File(path, "r") as f:
            for k in f.keys():
                if k.startswith("#"):
                    continue
                ds = f[k]
                if isinstance(ds, h5py.Dataset) and ds.dtype != object and ds.dtype.kind != "O":
                    # h5py sees Matlab arrays transposed
                    out[k] = np.asarray(ds).T
        return out
    try:
        import scipy.io
    except ImportError:
        raise ImportError(f"reading {path} (a MATLAB .mat file) needs the 'scipy' package: pip install scipy") from None
    try:
        return scipy.io.loadmat(str(path))
    except Exception as e:  # scipy raises several types for corrupt files
        raise ValueError(f"{path}: cannot read as a .mat file ({e})") from None


def read_cofw_mat(path, one_based: bool = True) -> dict[str, np.ndarray]:
    """Read COFW landmarks from ``COFW_train_color.mat`` / ``COFW_test_color.mat``
    (or the v5 re-saves of them).

    Returns ``{"landmarks": [M, 29, 2], "occluded": [M, 29] bool, "boxes": [M, 4]}``
    (boxes as stored: x, y, w, h; shifted by -1 in x, y when ``one_based``).
    The ``phis*`` array holds per face 29 x values, 29 y values, 29 occlusion
    flags. Images are not loaded. Needs scipy (v5) or h5py (v7.3).
    """
    path = Path(path)
    mat = _loadmat(path)
    phis_key = next((k for k in ("phisTr", "phisT", "phis") if k in mat), None)
    if phis_key is None:
        raise ValueError(f"{path}: no 'phisTr' / 'phisT' array (keys: {sorted(k for k in mat if not k.startswith('__'))})")
    phis = np.asarray(mat[phis_key], dtype=np.float64)
    if phis.ndim != 2 or 87 not in phis.shape:
        raise ValueError(f"{path}: '{phis_key}' has shape {phis.shape}, expected [M, 87]")
    if phis.shape[1] != 87:
        phis = phis.T
    pts = np.stack([phis[:, 0:29], phis[:, 29:58]], axis=-1)
    occluded = phis[:, 58:87] > 0.5
    box_key = next((k for k in ("bboxesTr", "bboxesT", "bboxes") if k in mat), None)
    boxes = np.full((len(pts), 4), np.nan)
    if box_key is not None:
        b = np.asarray(mat[box_key], dtype=np.float64)
        if b.shape == (4, len(pts)) and len(pts) != 4:
            b = b.T
        if b.shape == (len(pts), 4):
            boxes = b.copy()
    if one_based:
        pts = pts - 1.0
        boxes[:, :2] -= 1.0
    _finite(pts, path)
    return {"landmarks": pts, "occluded": occluded, "boxes": boxes}


def read_aflw2000_mat(path, one_based: bool = True) -> np.ndarray:
    """Read the 68 landmarks (x, y rows of ``pt3d_68``, [3, 68] or [2, 68]) of
    one AFLW2000-3D ``.mat`` file as [68, 2]. Needs scipy."""
    path = Path(path)
    mat = _loadmat(path)
    key = "pt3d_68" if "pt3d_68" in mat else ("pt2d" if "pt2d" in mat else None)
    if key is None:
        raise ValueError(f"{path}: no 'pt3d_68' array")
    a = np.asarray(mat[key], dtype=np.float64)
    if a.shape[-1] != 68 and a.shape[0] == 68:
        a = a.T
    if a.ndim != 2 or a.shape[0] not in (2, 3) or a.shape[1] != 68:
        raise ValueError(f"{path}: '{key}' has shape {a.shape}, expected [3, 68]")
    pts = a[:2].T.copy()
    _finite(pts, path)
    if one_based:
        pts -= 1.0
    return pts


# ---------------------------------------------------------------------------
# COCO-style keypoint JSON (mmpose face datasets)
# ---------------------------------------------------------------------------


@dataclass
class CocoFace:
    """One annotation of a COCO-style face keypoint file."""

    image_path: Path
    landmarks: np.ndarray  # [N, 2]
    visibility: np.ndarray  # [N] as stored (0/1/2)
    box: np.ndarray | None  # (x, y, w, h) as stored, shifted like the points, or None
    image_id: int
    annotation_id: int | None
    width: int | None = None
    height: int | None = None
    extra: dict = field(default_factory=dict)


def read_coco_keypoints(path, image_root=None, one_based: bool = False,
                        num_points: int | None = None) -> list[CocoFace]:
    """Read a COCO-style keypoint JSON (``images`` + ``annotations`` with a flat
    ``keypoints`` list of x, y, v triples). Image paths are ``image_root``
    (default: the JSON's folder) / ``file_name``. Returns one CocoFace per
    annotation, in file order. ``center``/``scale``/``box_size`` fields, when
    present, are kept in ``extra``."""
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise ValueError(f"{path}: not a COCO-style file (needs 'images' and 'annotations')")
    images = {}
    for im in data["images"]:
        try:
            images[im["id"]] = im
        except (KeyError, TypeError):
            raise ValueError(f"{path}: image entry without 'id': {im!r}") from None
    out = []
    for k, ann in enumerate(data["annotations"]):
        where = f"{path}: annotations[{k}]"
        try:
            kps = np.asarray(ann["keypoints"], dtype=np.float64)
            image_id = ann["image_id"]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{where}: missing or non-numeric 'keypoints' / 'image_id'") from None
        if kps.ndim != 1 or len(kps) % 3 != 0 or len(kps) == 0:
            raise ValueError(f"{where}: 'keypoints' length {kps.size} is not a positive multiple of 3")
        n = len(kps) // 3
        if num_points is not None and n != num_points:
            raise ValueError(f"{where}: {n} keypoints, expected {num_points}")
        if "num_keypoints" in ann and int(ann["num_keypoints"]) != n:
            raise ValueError(f"{where}: num_keypoints {ann['num_keypoints']} but {n} triples")
        if image_id not in images:
            raise ValueError(f"{where}: image_id {image_id!r} not in 'images'")
        trip = kps.reshape(n, 3)
        pts = trip[:, :2].copy()
        if not np.all(np.isfinite(pts)):
            raise ValueError(f"{where}: keypoints are not finite")
        box = np.asarray(ann["bbox"], dtype=np.float64) if "bbox" in ann else None
        if one_based:
            pts -= 1.0
            if box is not None:
                box = box.copy()
                box[:2] -= 1.0
        im = images[image_id]
        extra = {key: ann[key] for key in ("center", "scale", "box_size", "area") if key in ann}
        out.append(CocoFace(
            image_path=root / im["file_name"],
            landmarks=pts,
            visibility=trip[:, 2].copy(),
            box=box,
            image_id=image_id,
            annotation_id=ann.get("id"),
            width=im.get("width"),
            height=im.get("height"),
            extra=extra,
        ))
    return out
