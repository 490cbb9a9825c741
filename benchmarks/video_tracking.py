"""Accuracy of FaceLandmarker.detect_video's tracking, on synthetic motion of held-out photos.

    python -m benchmarks.video_tracking [--models default fast] [--frames 6] [--seed 0]

No labelled video is at hand (the YouTube Faces frames in ../shared/data are
cropped around each frame's own face, so consecutive files are not frames of one
view), so each held-out 300-W training photo (the bundled models' validation
set; the test sets are not used to choose a default) becomes a short clip: frame
0 is the photo, every later frame the photo under a random walk of similarity
transforms about the face (per frame: a shift of N(0, s) x the face's side, a
zoom of exp(N(0, z)), a rotation of N(0, r) degrees), its landmarks moved with
it. Motion levels (s, z, r): small (0.02, 0.01, 1), medium (0.05, 0.02, 2),
large (0.10, 0.04, 4). ``detect_video`` starts from frame 0's tight landmark box
and then tracks (each crop cut around the previous frame's landmarks, no face
detection, no smoothing, no track dropped), once with the model's own
refinement square (``meta.crop.refine``, what the bundled models ship) and once
with its training square (1.3). The NME (outer eye corners) and FR@0.10 are over
frames 1 onwards. Writes JSON (atomically) with the machine and versions to
``benchmarks/results/video_tracking.json``.
"""

from __future__ import annotations

import argparse
import copy
import math
import time
import warnings
from pathlib import Path

import numpy as np

from benchmarks.common import load_model_files, machine, markdown_table

RESULTS = Path(__file__).resolve().parent / "results" / "video_tracking.json"
LEVELS = {"small": (0.02, 0.01, 1.0), "medium": (0.05, 0.02, 2.0), "large": (0.10, 0.04, 4.0)}


def synthetic_clip(image: np.ndarray, landmarks: np.ndarray, frames: int, level: tuple, rng) -> tuple[list, list]:
    """``frames`` images and their landmarks [K, 2]: the photo, then a random walk of
    similarity transforms about the current face centre (module docstring)."""
    import cv2

    shift, zoom, rot = level
    side = float(np.ptp(landmarks, axis=0).max())
    h, w = image.shape[:2]
    m = np.eye(3)
    images, points = [image], [np.asarray(landmarks, dtype=np.float64)]
    for _ in range(frames - 1):
        cx, cy = points[-1].mean(axis=0)
        step = cv2.getRotationMatrix2D((float(cx), float(cy)), rng.normal(0.0, rot), math.exp(rng.normal(0.0, zoom)))
        step[:, 2] += rng.normal(0.0, shift * side, 2)
        m = np.vstack([step, [0.0, 0.0, 1.0]]) @ m
        images.append(cv2.warpAffine(image, m[:2], (w, h)))
        points.append(points[0] @ m[:2, :2].T + m[:2, 2])
    return images, points


def with_refine_square(model_file: dict, scale: float, center: str) -> dict:
    """A copy of ``model_file`` whose refinement / tracking square is ``scale`` x the
    landmarks' extent around their ``center``."""
    meta = copy.deepcopy(model_file["meta"])
    meta["crop"]["refine"] = {"scale": float(scale), "center": center}
    return {**model_file, "meta": meta}


def measure(model: str, model_file: dict, clips: dict) -> list[dict]:
    """Rows for ``model``: its own refinement square and its training square, per motion level."""
    from pyflm import FaceLandmarker
    from pyflm.data import tight_box
    from pyflm.metrics import nme

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notices
        shipped = FaceLandmarker(model=model_file, detector=None)
        training = FaceLandmarker(model=with_refine_square(model_file, *shipped.training_rule), detector=None)
    rows = []
    for label, lm in (("refinement", shipped), ("training", training)):
        scale = lm.landmark_rule[0]
        for level, clip_list in clips.items():
            errors, t0 = [], time.perf_counter()
            for images, points in clip_list:
                out = lm.detect_video(images, boxes=[tight_box(points[0])], box_type="tight", smooth=False,
                                      min_score=0.0)
                pred = np.stack([faces[0].landmarks for _, _, faces in out][1:]).astype(np.float64)
                errors.append(nme(pred, np.stack(points[1:]), norm="corners"))
            e = np.concatenate(errors)
            frames = sum(len(p) for _, p in clip_list)
            rows.append({"model": model, "square": label, "scale": scale, "motion": level, "frames": int(e.size),
                         "nme": round(float(e.mean()), 5), "fr_010": round(float((e > 0.10).mean()), 5),
                         "ms_per_frame": round(1e3 * (time.perf_counter() - t0) / frames, 2)})
    return rows


def main(argv=None) -> int:
    from pyflm.data import load_split
    from pyflm.io import load_image, write_json_atomic
    from training.dataset import holdout_split

    p = argparse.ArgumentParser(prog="python -m benchmarks.video_tracking", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["default", "fast"])
    p.add_argument("--frames", type=int, default=6, help="frames per clip, the first included (2-100, default 6)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--root", default=None, help="data root (default PYFLM_DATA or ../shared/data)")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    if not 2 <= a.frames <= 100:
        p.error("--frames: 2..100")
    files = load_model_files(p, a.models)
    try:
        _, val = holdout_split(load_split("300w-train", root=a.root), 0.1, 0)
    except (FileNotFoundError, ValueError) as e:
        p.error(str(e))
    rng = np.random.default_rng(a.seed)
    clips = {level: [] for level in LEVELS}
    for s in val:
        image = load_image(s.image_path)
        for level, motion in LEVELS.items():
            clips[level].append(synthetic_clip(image, s.landmarks, a.frames, motion, rng))
    rows = [r for m in a.models for r in measure(m, files[m], clips)]
    print(f"held-out 300-W training photos, {len(val)} clips of {a.frames} frames per motion level")
    print(markdown_table([{**r, "nme": f"{100 * r['nme']:.2f}%", "fr_010": f"{100 * r['fr_010']:.2f}%"} for r in rows],
                         ["model", "square", "scale", "motion", "nme", "fr_010", "ms_per_frame"]))
    write_json_atomic(a.out, {"what": " ".join(__doc__.split("\n\n")[1].split()), "clips": len(val),
                              "frames": a.frames, "seed": a.seed, "levels": LEVELS, "machine": machine(), "rows": rows})
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
