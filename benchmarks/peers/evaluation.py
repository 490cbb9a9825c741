"""Pure-Python parts of the peer comparison: face boxes, the fixed linear map
from ground-truth boxes to a method's native boxes, detection matching, the
accuracy / latency summaries, the table and the JSON file.

Boxes are float (x0, y0, x1, y1) in 0-based pixel coordinates. A "tight" box
is the bounding box of the 68 ground-truth landmarks.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pyflm import metrics
from pyflm.face_detection import box_iou

# A detection belongs to the annotated face when its IoU with the face's tight
# box is at least this. Detector boxes differ from tight boxes in shape and size
# (on 300-W train, matched dlib boxes have IoU 0.5-0.94 with them, Haar boxes
# 0.45-0.71), while a box on another face or on background overlaps it hardly at all.
MATCH_MIN_IOU = 0.3


def iou(a, b) -> float:
    """Intersection over union of two (x0, y0, x1, y1[, score]) boxes (0 when either is empty)."""
    return float(box_iou(np.asarray(a, dtype=np.float64)[:4], np.asarray(b, dtype=np.float64)[:4])[0, 0])


def match_detection(face_box, detections, min_iou: float = MATCH_MIN_IOU) -> int | None:
    """Index of the detection with the highest IoU with ``face_box`` if that IoU
    is >= ``min_iou``, else None (a detection miss)."""
    if not detections:
        return None
    ious = [iou(face_box, d) for d in detections]
    k = int(np.argmax(ious))
    return k if ious[k] >= min_iou else None


@dataclass(frozen=True)
class BoxMap:
    """A fixed linear map from a tight box to a method's native detector box.

    With the tight box's centre (cx, cy) and size (w, h)::

        [cx' - cx, cy' - cy, w', h'] = A @ [w, h]      (A: 4 x 2)

    and the native box is (cx' - w'/2, cy' - h'/2, cx' + w'/2, cy' + h'/2).
    It is linear in the box (scale- and translation-equivariant), fitted by least
    squares to (tight box, matched detection) pairs on the 300-W *train* images.
    ``n`` and ``mean_iou`` (mapped box against the detection) describe the fit.
    """

    a: tuple[tuple[float, float], ...] = ((0.0, 0.0), (0.0, 0.0), (1.0, 0.0), (0.0, 1.0))
    n: int = 0
    mean_iou: float | None = None

    def __post_init__(self):
        if np.asarray(self.a).shape != (4, 2):
            raise ValueError(f"BoxMap.a must be 4 x 2, got {np.asarray(self.a).shape}")

    def __call__(self, box) -> np.ndarray:
        return self.apply(np.asarray(box, dtype=np.float64)[None, :4])[0]

    def apply(self, boxes) -> np.ndarray:
        """[B, 4] tight boxes -> [B, 4] native boxes."""
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        c, wh = (b[:, :2] + b[:, 2:]) / 2, b[:, 2:] - b[:, :2]
        d = wh @ np.asarray(self.a, dtype=np.float64).T  # [B, 4]
        cc, nwh = c + d[:, :2], d[:, 2:]
        return np.concatenate([cc - nwh / 2, cc + nwh / 2], axis=1)

    @classmethod
    def fit(cls, tight_boxes, native_boxes) -> "BoxMap":
        """Least-squares fit to [B, 4] tight boxes and their [B, 4] native boxes (B >= 2)."""
        t = np.asarray(tight_boxes, dtype=np.float64).reshape(-1, 4)
        n = np.asarray(native_boxes, dtype=np.float64).reshape(-1, 4)
        if len(t) != len(n):
            raise ValueError(f"{len(t)} tight boxes but {len(n)} native boxes")
        if len(t) < 2:
            raise ValueError(f"need at least 2 box pairs to fit a BoxMap, got {len(t)}")
        tc, twh = (t[:, :2] + t[:, 2:]) / 2, t[:, 2:] - t[:, :2]
        nc, nwh = (n[:, :2] + n[:, 2:]) / 2, n[:, 2:] - n[:, :2]
        y = np.concatenate([nc - tc, nwh], axis=1)  # [B, 4]
        a, *_ = np.linalg.lstsq(twh, y, rcond=None)  # [2, 4]
        m = cls(a=tuple(tuple(float(v) for v in row) for row in a.T), n=len(t))
        mapped = m.apply(t)
        return cls(a=m.a, n=len(t), mean_iou=float(np.mean([iou(p, q) for p, q in zip(mapped, n)])))

    def to_dict(self) -> dict:
        return {"a": [list(r) for r in self.a], "n": self.n, "mean_iou": self.mean_iou}

    @classmethod
    def from_dict(cls, d: dict) -> "BoxMap":
        return cls(a=tuple(tuple(float(v) for v in r) for r in d["a"]), n=int(d.get("n", 0)),
                   mean_iou=d.get("mean_iou"))


def accuracy_summary(pred: list, gt: list) -> dict:
    """Metrics over the faces of one (method, box source, split).

    ``pred``: per face a [68, 2] array, or None for a detection miss; ``gt``:
    per face [68, 2]. Returns n, misses, miss_rate, and over detected faces
    nme, eye_nme, fr@0.08, fr@0.1, auc@0.08 (fractions), plus per_image NMEs
    (detected faces) and per_face NMEs and eye NMEs (every face, None where
    missed: what ``shared_summary`` compares methods on).
    """
    if len(pred) != len(gt):
        raise ValueError(f"{len(pred)} predictions for {len(gt)} faces")
    if not gt:
        raise ValueError("no faces to evaluate")
    hit = [i for i, p in enumerate(pred) if p is not None]
    out = {"n": len(gt), "misses": len(gt) - len(hit), "miss_rate": (len(gt) - len(hit)) / len(gt)}
    if not hit:
        return {**out, "nme": None, "eye_nme": None, "fr@0.08": None, "fr@0.1": None, "auc@0.08": None,
                "per_image": [], "per_face": [None] * len(gt), "per_face_eye": [None] * len(gt)}
    p = np.stack([np.asarray(pred[i], dtype=np.float64) for i in hit])
    g = np.stack([np.asarray(gt[i], dtype=np.float64) for i in hit])
    r = metrics.evaluate(p, g, fr_thresholds=(0.08, 0.10), auc_thresholds=(0.08,))
    bias = (p - g).mean(axis=(0, 1)) / metrics.normalizer(g).mean()
    per_face, per_face_eye = [None] * len(gt), [None] * len(gt)
    for i, e, eye in zip(hit, r["per_image"], metrics.eye_anchor_nme(p, g)):
        per_face[i], per_face_eye[i] = float(e), float(eye)
    return {**out, "nme": r["nme"], "eye_nme": r["eye_nme"], "fr@0.08": r["fr@0.08"], "fr@0.1": r["fr@0.1"],
            "auc@0.08": r["auc@0.08"], "mean_offset_xy": bias.tolist(), "per_image": r["per_image"].tolist(),
            "per_face": per_face, "per_face_eye": per_face_eye}


def shared_summary(summaries: dict[str, dict]) -> dict[str, dict]:
    """Each method's metrics over the faces *every* method found.

    ``summaries``: {label: accuracy_summary(...)} of the same faces (e.g. each
    method with its own detector, which miss different faces, so their NMEs
    over "the faces found" average over different faces). Returns {label:
    summary} with n (all faces), misses (faces some method missed), nme,
    eye_nme, fr@0.08, fr@0.1, auc@0.08 and per_image over the shared faces.
    """
    if not summaries:
        return {}
    sizes = {len(s["per_face"]) for s in summaries.values()}
    if len(sizes) != 1:
        raise ValueError(f"summaries of different face lists (sizes {sorted(sizes)})")
    (n,) = sizes
    keep = [i for i in range(n) if all(s["per_face"][i] is not None for s in summaries.values())]
    out = {}
    for label, s in summaries.items():
        base = {"n": n, "misses": n - len(keep), "miss_rate": (n - len(keep)) / n}
        if not keep:
            out[label] = {**base, "nme": None, "eye_nme": None, "fr@0.08": None, "fr@0.1": None, "auc@0.08": None,
                          "per_image": []}
            continue
        e = np.array([s["per_face"][i] for i in keep])
        eye = np.array([s["per_face_eye"][i] for i in keep])
        out[label] = {**base, "nme": float(e.mean()), "eye_nme": float(eye.mean()),
                      "fr@0.08": metrics.failure_rate(e, 0.08), "fr@0.1": metrics.failure_rate(e, 0.10),
                      "auc@0.08": metrics.auc(e, 0.08), "per_image": e.tolist()}
    return out


def latency_summary(items: list[dict]) -> dict:
    """Medians (ms) over a worker's result items: per-face landmark time, per-image
    detection time, and detection + landmarks of the first face per image; as wall
    time ("*_ms") and as process CPU time ("*_cpu_ms", steadier on a busy machine;
    with several threads it adds them up). An item's "full_s" (pyflm: one call
    that detects and places landmarks) is its detection + landmark time."""

    def med(v):
        return float(np.median(v) * 1e3) if v else None

    out = {}
    for suffix, tag in (("s", "ms"), ("cpu_s", "cpu_ms")):
        lm = [f[f"landmark_{suffix}"] for it in items for f in it.get("faces", []) if f.get(f"landmark_{suffix}") is not None]
        det = [it[f"detect_{suffix}"] for it in items if it.get(f"detect_{suffix}") is not None]
        total = []
        for it in items:
            if it.get(f"full_{suffix}") is not None:
                total.append(it[f"full_{suffix}"])
            elif it.get(f"detect_{suffix}") is not None and it.get("faces"):
                total.append(it[f"detect_{suffix}"] + it["faces"][0][f"landmark_{suffix}"])
        out.update({f"landmark_{tag}": med(lm), f"detect_{tag}": med(det), f"detect_plus_landmark_{tag}": med(total)})
    out["faces_timed"] = sum(len(it.get("faces", [])) for it in items)
    out["images_timed"] = sum(1 for it in items if it.get("detect_s") is not None or it.get("full_s") is not None)
    return out


TABLE_COLUMNS = ["nme", "eye_nme", "fr@0.08", "fr@0.1", "auc@0.08", "misses", "n"]


def accuracy_table(rows: dict[str, dict], style: str = "markdown") -> str:
    """Table of {row label: accuracy_summary(...)}: NME, eye NME, FR and AUC in %
    (over detected faces), detection misses and faces as counts."""
    cells = {label: {c: r.get(c) for c in TABLE_COLUMNS} for label, r in rows.items()}
    return metrics.format_table(cells, columns=TABLE_COLUMNS, percent=TABLE_COLUMNS[:5], digits=2, style=style)


def speed_table(rows: dict[str, dict], style: str = "markdown") -> str:
    """Table of {method: {"lat1": latency_summary, "lat2": ..., "rss_mb", "model_mb"}}:
    wall-time medians with 1 and 2 threads, the 1-thread CPU-time median, peak RSS, model size."""
    spec = [("landmark ms, 1 thr", "lat1", "landmark_ms"), ("landmark ms, 2 thr", "lat2", "landmark_ms"),
            ("landmark CPU ms", "lat1", "landmark_cpu_ms"),
            ("det+landmark ms, 1 thr", "lat1", "detect_plus_landmark_ms"),
            ("det+landmark ms, 2 thr", "lat2", "detect_plus_landmark_ms"),
            ("det+landmark CPU ms", "lat1", "detect_plus_landmark_cpu_ms")]
    cols = [c for c, _, _ in spec] + ["peak RSS MB", "model MB"]
    cells = {}
    for label, r in rows.items():
        cells[label] = {c: (r.get(lat) or {}).get(key) for c, lat, key in spec}
        cells[label].update({"peak RSS MB": r.get("rss_mb"), "model MB": r.get("model_mb")})
    return metrics.format_table(cells, columns=cols, percent=False, digits=1, style=style)


# a JSON list of plain numbers / nulls as json.dumps(indent=1) writes it: one value a line
_NUMBER_LIST = re.compile(r"\[\n\s*((?:-?[0-9.eE+-]+|null)(?:,\n\s*(?:-?[0-9.eE+-]+|null))*)\n\s*\]")


def write_json_atomic(path, obj) -> Path:
    """Write ``obj`` as JSON (sorted keys, NumPy values converted) atomically;
    lists of numbers (the per-face NMEs: thousands per run) on one line each, their
    floats to 7 significant digits."""
    from pyflm.io import atomic_write

    text = json.dumps(obj, indent=1, sort_keys=True, default=_json_default) + "\n"
    text = _NUMBER_LIST.sub(lambda m: "[" + ", ".join(_short(v.strip()) for v in m.group(1).split(",")) + "]", text)
    return atomic_write(path, lambda f: f.write(text.encode()))


def _short(v: str) -> str:
    """A float of a number list to 7 significant digits (NMEs to 1e-7 relative, box
    corners to 1e-4 px), which keeps a run's JSON a third of the size."""
    if v == "null" or not any(c in v for c in ".eE"):
        return v
    return repr(float(f"{float(v):.7g}"))


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if hasattr(o, "__dataclass_fields__"):
        return asdict(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
