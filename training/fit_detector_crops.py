"""Fit the detector-box -> square-crop rule of a face detector to ground truth.

    python -m training.fit_detector_crops --detector haar [--split 300w-train]
        [--eval-split common] [--out FILE.json] [--boxes-out FILE.json]
        [--max-images N] [--min-iou 0.3] [--center centroid|box] [--root DATA]

Every detector draws its box around a different part of the face, so the
crop the models were trained on (the paper's square: 1.3 x the larger side of
the landmarks' bounding box, centred at their centroid, or at the box centre
with ``--center box`` for models trained that way) has to be predicted
from the box by a rule fitted per detector (``pyflm.data.BoxToSquare``: centre
offset in box units, side = scale x box size).

For each image of ``--split``: run the detector, match every annotated face
(the tight box of its landmarks) to a detection (``match_detections``, greedy
IoU >= ``--min-iou``), then fit the rule on the matched faces with
``fit_box_to_square``. The same is done for the "tight" box type (the
landmarks' bounding box itself: the rule users get when they pass such a box).

Reported (stdout and the JSON): faces, detected fraction, the fitted rule,
and how well the predicted squares match the ground-truth squares: centre
error and |side ratio - 1| as fractions of the ground-truth side (median and
90th percentile), and the fraction of faces whose 68 landmarks all lie inside
the predicted square. With ``--eval-split`` the train-fitted rules are scored
on a second split too (held-out numbers). The JSON is written atomically
(default ``runs/detector_crops/<detector>.json``). ``--boxes-out`` writes the
matched boxes with the rule in the format ``training.evaluate --boxes`` reads
(faces without a detection are left out).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from pyflm.data import BoxToSquare, Sample, fit_box_to_square, load_split, square_from_landmarks, tight_box
from pyflm.face_detection import FaceDetector, box_iou, get_face_detector, match_detections
from pyflm.io import load_image, write_json_atomic

__all__ = ["detect_faces", "crop_quality", "fit_rule", "run", "main"]


def _group_by_image(samples: Sequence[Sample]) -> dict[Path, list[int]]:
    groups: dict[Path, list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault(s.image_path, []).append(i)
    return groups


def detect_faces(samples: Sequence[Sample], detector: FaceDetector, min_iou: float = 0.3,
                 progress: bool = True) -> dict:
    """Run ``detector`` once per image and match its boxes to the samples'
    faces. Returns {"boxes": float64 [N, 4] (NaN where unmatched),
    "iou": [N] (0 where unmatched), "detections": int total,
    "images": int}."""
    from tqdm import tqdm

    n = len(samples)
    boxes = np.full((n, 4), np.nan)
    iou = np.zeros(n)
    total = 0
    groups = _group_by_image(samples)
    for path, idx in tqdm(groups.items(), desc=f"{detector.name} detections", unit="img", disable=not progress,
                          file=sys.stderr):
        det_boxes, _ = detector(load_image(path))
        total += len(det_boxes)
        gt = np.stack([tight_box(samples[i].landmarks) for i in idx])
        match = match_detections(det_boxes, gt, min_iou)
        for k, (i, m) in enumerate(zip(idx, match)):
            if m >= 0:
                boxes[i] = det_boxes[m]
                iou[i] = box_iou(gt[k], det_boxes[m])[0, 0]
    return {"boxes": boxes, "iou": iou, "detections": total, "images": len(groups)}


def _percentiles(a: np.ndarray) -> dict:
    if len(a) == 0:
        return {"median": None, "p90": None}
    return {"median": float(np.median(a)), "p90": float(np.percentile(a, 90))}


def crop_quality(rule: BoxToSquare, boxes, landmarks, scale: float = 1.3, center: str = "centroid") -> dict:
    """How well ``rule(box)`` reproduces the ground-truth squares of
    ``landmarks`` [M, K, 2]: centre error / true side, |side ratio - 1|,
    the side ratio itself, and the fraction of faces with all landmarks
    inside the predicted square."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        return {"faces": 0}
    gt = np.array([square_from_landmarks(lm, scale, center) for lm in landmarks])
    pred = np.array([rule(b) for b in boxes])
    centre_err = np.hypot(pred[:, 0] - gt[:, 0], pred[:, 1] - gt[:, 1]) / gt[:, 2]
    ratio = pred[:, 2] / gt[:, 2]
    half = pred[:, 2:3] / 2
    lm = np.asarray(landmarks, dtype=np.float64)
    inside = np.all(np.abs(lm - pred[:, None, :2]) <= half[:, None, :], axis=(1, 2))
    return {"faces": int(len(boxes)),
            "centre_error": _percentiles(centre_err),
            "side_error": _percentiles(np.abs(ratio - 1)),
            "side_ratio": {"p10": float(np.percentile(ratio, 10)), "median": float(np.median(ratio)),
                           "p90": float(np.percentile(ratio, 90))},
            "landmarks_inside": float(inside.mean())}


def fit_rule(boxes, landmarks, size: str = "max", scale: float = 1.3, center: str = "centroid") -> BoxToSquare:
    """fit_box_to_square from ``boxes`` [M, 4] to the ground-truth squares."""
    squares = np.array([square_from_landmarks(lm, scale, center) for lm in landmarks])
    return fit_box_to_square(boxes, squares, size=size)


def _rule_dict(rule: BoxToSquare) -> dict:
    return {"dx": rule.dx, "dy": rule.dy, "scale": rule.scale, "size": rule.size}


def _evenly_spaced_images(samples: list[Sample], max_images: int | None) -> list[Sample]:
    """The samples of ``max_images`` images spread evenly over the split (so a
    quick run sees every sub-dataset, not just the first folder)."""
    groups = list(_group_by_image(samples).values())
    if max_images is None or max_images >= len(groups):
        return samples
    if max_images < 1:
        raise ValueError(f"--max-images must be >= 1, got {max_images}")
    keep = np.unique(np.linspace(0, len(groups) - 1, max_images).round().astype(int))
    return [samples[i] for g in keep for i in groups[g]]


def _summary(samples: Sequence[Sample], det: dict, rule: BoxToSquare, tight_rule: BoxToSquare,
             center: str = "centroid") -> dict:
    found = ~np.isnan(det["boxes"][:, 0])
    lms = np.stack([s.landmarks for s in samples])
    tight = np.stack([tight_box(lm) for lm in lms])
    return {"images": det["images"], "faces": len(samples), "detected": int(found.sum()),
            "detected_fraction": float(found.mean()) if len(samples) else 0.0,
            "detections": det["detections"],
            "unmatched_detections": int(det["detections"] - found.sum()),
            "matched_iou": _percentiles(det["iou"][found]),
            "detector_crops": crop_quality(rule, det["boxes"][found], lms[found], center=center),
            "tight_crops": crop_quality(tight_rule, tight, lms, center=center)}


def run(detector, split: str = "300w-train", eval_split: str | None = None, root=None, max_images: int | None = None,
        min_iou: float = 0.3, size: str = "max", progress: bool = True,
        center: str = "centroid") -> tuple[dict, dict]:
    """Fit on ``split``, score on it (and on ``eval_split``); the target is the
    training crop ``square_from_landmarks(landmarks, 1.3, center)``. Returns
    (report, boxes) where boxes maps image path -> matched box of ``split``."""
    if center not in ("centroid", "box"):
        raise ValueError(f"center must be 'centroid' or 'box', got {center!r}")
    detector = get_face_detector(detector)
    if detector is None:
        raise ValueError("a detector is needed (e.g. 'haar')")
    t0 = time.perf_counter()
    samples = _evenly_spaced_images(load_split(split, root=root), max_images)
    if not samples:
        raise ValueError(f"split {split!r} has no samples")
    det = detect_faces(samples, detector, min_iou, progress)
    found = ~np.isnan(det["boxes"][:, 0])
    if not found.any():
        raise ValueError(f"{detector.name}: no face of {split!r} was detected; cannot fit a rule")
    lms = np.stack([s.landmarks for s in samples])
    rule = fit_rule(det["boxes"][found], lms[found], size, center=center)
    tight_rule = fit_rule(np.stack([tight_box(lm) for lm in lms]), lms, size, center=center)
    report = {"detector": detector.name, "detector_repr": repr(detector), "split": split,
              "max_images": max_images, "min_iou": min_iou,
              "target": f"square_from_landmarks(landmarks, 1.3, {center!r})", "center": center,
              "rule": _rule_dict(rule), "tight_rule": _rule_dict(tight_rule),
              "fit": _summary(samples, det, rule, tight_rule, center)}
    if eval_split:
        ev = load_split(eval_split, root=root)
        if max_images is not None:
            ev = _evenly_spaced_images(ev, max_images)
        report["eval_split"] = eval_split
        report["eval"] = _summary(ev, detect_faces(ev, detector, min_iou, progress), rule, tight_rule, center)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    boxes = {str(s.image_path): det["boxes"][i] for i, s in enumerate(samples) if found[i]}
    return report, boxes


def _fmt_quality(q: dict) -> str:
    if not q.get("faces"):
        return "no faces"
    return (f"centre error {100 * q['centre_error']['median']:.1f}% / {100 * q['centre_error']['p90']:.1f}% "
            f"(median / p90 of side), |side ratio - 1| {100 * q['side_error']['median']:.1f}% / "
            f"{100 * q['side_error']['p90']:.1f}%, all landmarks inside {100 * q['landmarks_inside']:.1f}%")


def format_report(r: dict) -> str:
    lines = [f"detector {r['detector']} on {r['split']}" + (f" (max {r['max_images']} images)" if r["max_images"] else "")]
    for key, label in (("fit", r["split"] + " (fit)"), ("eval", r.get("eval_split", "") + " (held out)")):
        if key not in r:
            continue
        s = r[key]
        lines += [f"  {label}: {s['faces']} faces in {s['images']} images, detected {s['detected']} "
                  f"({100 * s['detected_fraction']:.1f}%), {s['unmatched_detections']} unmatched detections, "
                  f"matched IoU median {s['matched_iou']['median'] or 0:.2f}",
                  f"    {r['detector']} crops: {_fmt_quality(s['detector_crops'])}",
                  f"    tight crops: {_fmt_quality(s['tight_crops'])}"]
    for key in ("rule", "tight_rule"):
        q = r[key]
        lines.append(f"  {key}: BoxToSquare(dx={q['dx']:.4f}, dy={q['dy']:.4f}, scale={q['scale']:.4f}, "
                     f"size={q['size']!r})")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.fit_detector_crops", description=__doc__.split("\n\n")[1])
    p.add_argument("--detector", default="haar", help="haar | dlib-hog")
    p.add_argument("--split", default="300w-train")
    p.add_argument("--eval-split", default=None, help="score the fitted rules on this split too (e.g. common)")
    p.add_argument("--out", default=None, help="report JSON (default runs/detector_crops/<detector>.json)")
    p.add_argument("--boxes-out", default=None, help="matched boxes + rule, for training.evaluate --boxes")
    p.add_argument("--max-images", type=int, default=None, help="only this many images, spread over the split")
    p.add_argument("--min-iou", type=float, default=0.3)
    p.add_argument("--size", choices=("max", "geometric"), default="max")
    p.add_argument("--center", choices=("centroid", "box"), default="centroid",
                   help="the training crop's centre (the model config's data.crop_center)")
    p.add_argument("--root", default=None, help="data root (default PYFLM_DATA or ../shared/data)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        report, boxes = run(args.detector, args.split, args.eval_split, args.root, args.max_images, args.min_iou,
                            args.size, progress=not args.no_progress, center=args.center)
    except (FileNotFoundError, ValueError, ImportError) as e:
        print(f"training.fit_detector_crops: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path("runs") / "detector_crops" / f"{report['detector']}.json"
    write_json_atomic(out, report)
    print(format_report(report))
    print(f"wrote {out}")
    if args.boxes_out:
        write_json_atomic(args.boxes_out, {**boxes, "__rule__": report["rule"]})
        print(f"wrote {args.boxes_out} ({len(boxes)} boxes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
