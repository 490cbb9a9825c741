"""Samples and the named splits of 300-W style data.

Layout (as distributed by 300-W, and as in shared/data)::

    <root>/300w/afw/*.jpg|png + .pts
    <root>/300w/helen/trainset, helen/testset
    <root>/300w/lfpw/trainset, lfpw/testset
    <root>/300w/ibug                       (the 135 "challenging" images)
    <root>/300w/300W/01_Indoor, 02_Outdoor (the 300-W private test set)
    <root>/youtube_faces/training

``root`` may also be the ``300w`` folder itself. The default root is the env
var ``PYFLM_DATA`` if set, else ``<repo>/../shared/data``.

Missing data: ``load_split`` raises ``FileNotFoundError`` naming the first
missing folder (the default, so an evaluation never silently runs on part of
a split); with ``missing="warn"`` it warns, naming the folders, and returns the
samples of the folders that exist (possibly none).

Landmarks are read with ``read_pts`` (1-based files, converted to 0-based).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pyflm.data.readers import read_pts
from pyflm.data.schemes import get_scheme

__all__ = ["Sample", "SPLITS", "default_data_root", "load_folder", "load_split", "split_names"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass
class Sample:
    """One annotated face: image file, [N, 2] float64 landmarks (0-based),
    the scheme name ("68", ...) and the dataset it comes from."""

    image_path: Path
    landmarks: np.ndarray
    scheme: str = "68"
    dataset: str = ""
    box: np.ndarray | None = None  # optional face box (x_min, y_min, x_max, y_max)
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.image_path = Path(self.image_path)
        self.landmarks = np.asarray(self.landmarks, dtype=np.float64)
        n = get_scheme(self.scheme).num_points
        if self.landmarks.shape != (n, 2):
            raise ValueError(f"{self.image_path}: landmarks {self.landmarks.shape} do not fit scheme {self.scheme} ({n}, 2)")


# name -> list of (folder relative to the 300-W root or data root, dataset name)
_PARTS = {
    "afw": [("300w:afw", "afw")],
    "helen-train": [("300w:helen/trainset", "helen")],
    "lfpw-train": [("300w:lfpw/trainset", "lfpw")],
    "helen-test": [("300w:helen/testset", "helen")],
    "lfpw-test": [("300w:lfpw/testset", "lfpw")],
    "ibug": [("300w:ibug", "ibug")],
    "300w-indoor": [("300w:300W/01_Indoor", "300w-indoor")],
    "300w-outdoor": [("300w:300W/02_Outdoor", "300w-outdoor")],
    "youtube-train": [("data:youtube_faces/training", "youtube_faces")],
}
SPLITS: dict[str, list[tuple[str, str]]] = dict(_PARTS)
SPLITS["300w-train"] = _PARTS["afw"] + _PARTS["helen-train"] + _PARTS["lfpw-train"]
SPLITS["common"] = _PARTS["helen-test"] + _PARTS["lfpw-test"]
SPLITS["challenging"] = _PARTS["ibug"]
SPLITS["full"] = SPLITS["common"] + SPLITS["challenging"]
SPLITS["300w-test"] = _PARTS["300w-indoor"] + _PARTS["300w-outdoor"]


def split_names() -> list[str]:
    return sorted(SPLITS)


def default_data_root() -> Path:
    env = os.environ.get("PYFLM_DATA")
    if env:
        return Path(env)
    import pyflm

    return Path(pyflm.__file__).resolve().parents[1].parent / "shared" / "data"


def _resolve(root: Path, spec: str) -> Path:
    kind, rel = spec.split(":", 1)
    if kind == "300w":
        base = root / "300w" if (root / "300w").is_dir() else root
        return base / rel
    return root / rel


def load_folder(folder, scheme: str = "68", dataset: str | None = None,
                one_based: bool = True, recursive: bool = False) -> list[Sample]:
    """All image + ``.pts`` pairs of a folder (sorted by file name). Images
    without a ``.pts`` are skipped; a ``.pts`` without an image is an error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"landmark folder not found: {folder}")
    n = get_scheme(scheme).num_points
    pts_files = sorted(folder.rglob("*.pts") if recursive else folder.glob("*.pts"))
    out = []
    for pts_path in pts_files:
        image = next((pts_path.with_suffix(ext) for ext in IMAGE_EXTENSIONS
                      if pts_path.with_suffix(ext).is_file()), None)
        if image is None:
            raise FileNotFoundError(f"{pts_path}: no image beside it (tried {', '.join(IMAGE_EXTENSIONS)})")
        out.append(Sample(image, read_pts(pts_path, one_based=one_based, num_points=n),
                          scheme=get_scheme(scheme).name, dataset=dataset or folder.name))
    return out


def load_split(name: str, root=None, missing: str = "error") -> list[Sample]:
    """Samples of a named split (see ``split_names()``) or of any folder of
    image + ``.pts`` pairs (pass its path as ``name``).

    ``missing="error"`` (default) raises FileNotFoundError naming the missing
    folder; ``missing="warn"`` warns and skips it.
    """
    if missing not in ("error", "warn"):
        raise ValueError(f"missing must be 'error' or 'warn', got {missing!r}")
    if name not in SPLITS:
        if Path(name).is_dir():
            return load_folder(name)
        raise ValueError(f"unknown split {name!r}; known: {split_names()} (or pass a folder path)")
    root = Path(root) if root is not None else default_data_root()
    out: list[Sample] = []
    absent = []
    for spec, dataset in SPLITS[name]:
        folder = _resolve(root, spec)
        if not folder.is_dir():
            if missing == "error":
                raise FileNotFoundError(f"split {name!r} needs the folder {folder}, which does not exist")
            absent.append(str(folder))
            continue
        out.extend(load_folder(folder, dataset=dataset))
    if absent:
        warnings.warn(f"split {name!r}: folders not found, skipped: {', '.join(absent)}", stacklevel=2)
    return out
