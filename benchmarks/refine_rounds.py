"""Accuracy of refinement rounds from face-detector boxes, on held-out training photos.

    python -m benchmarks.refine_rounds [--models default fast] [--rounds 0 1 2 3] [--detector haar]

The numbers behind ``FaceLandmarker(refine="auto")``: the held-out 10% of the
300-W training photos (``holdout_split(300w-train, 0.1, seed 0)``, the bundled
models' validation set; the test sets are not used to choose a default). The
detector runs once per photo; its box matched to the annotated face (IoU >= 0.3
with the landmarks' tight box) is given to ``detect(boxes=..., box_type=<the
detector's name>)`` with ``refine=N``, plain and with the flip test, and with the
tight box for reference (the bundled models' calibration offsets were fitted on
these photos, so that column is in-sample). NME by the outer eye corners. Writes
JSON (atomically) with the machine and versions to
``benchmarks/results/refine_rounds.json``.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np

from benchmarks.common import load_model_files, machine, markdown_table

RESULTS = Path(__file__).resolve().parent / "results" / "refine_rounds.json"


def held_out_faces(detector: str, root=None) -> tuple[list, dict]:
    """[(image, detector box, tight box, landmarks)] of the held-out photos the
    detector found, and the detection counts."""
    from pyflm.data import load_split, tight_box
    from pyflm.face_detection import get_face_detector
    from pyflm.io import load_image
    from training.dataset import holdout_split
    from training.fit_detector_crops import detect_faces

    _, val = holdout_split(load_split("300w-train", root=root), 0.1, 0)
    found = detect_faces(val, get_face_detector(detector), 0.3)["boxes"]
    faces = [(load_image(s.image_path), b, tight_box(s.landmarks), s.landmarks)
             for s, b in zip(val, found) if np.isfinite(b).all()]
    return faces, {"faces": len(val), "detected": len(faces)}


def measure(model: str, rounds: list[int], detector: str, faces: list, model_file: dict | None = None) -> list[dict]:
    """Rows for ``model`` (a name or path; ``model_file``, its loaded dict, saves reading it again)."""
    from pyflm import FaceLandmarker
    from pyflm.metrics import nme

    gt = np.stack([f[3] for f in faces])
    rows = []
    settings = [(n, flip, detector) for flip in (False, True) for n in rounds] + [(0, False, "tight")]
    for n, flip, box_type in settings:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation notices
            lm = FaceLandmarker(model=model_file or model, detector=None, refine=n, flip_test=flip)
        t0 = time.perf_counter()
        pred = np.stack([lm.detect(img, boxes=[box if box_type != "tight" else tight], box_type=box_type)[0]
                         .landmarks for img, box, tight, _ in faces])
        rows.append({"model": model, "boxes": box_type, "refine": n, "flip_test": flip,
                     "nme": round(float(nme(pred, gt, norm="corners").mean()), 5),
                     "ms_per_face": round(1e3 * (time.perf_counter() - t0) / len(faces), 2)})
    return rows


def main(argv=None) -> int:
    from pyflm.io import write_json_atomic

    p = argparse.ArgumentParser(prog="python -m benchmarks.refine_rounds", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["default", "fast"])
    p.add_argument("--rounds", nargs="+", type=int, default=[0, 1, 2, 3])
    p.add_argument("--detector", default="haar", help="face detector name (default haar)")
    p.add_argument("--root", default=None, help="data root (default PYFLM_DATA or ../shared/data)")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    if any(not 0 <= n <= 10 for n in a.rounds):
        p.error("--rounds: each in 0..10")
    files = load_model_files(p, a.models)
    try:
        faces, counts = held_out_faces(a.detector, a.root)
    except (FileNotFoundError, ValueError) as e:
        p.error(str(e))
    if not faces:
        p.error(f"the {a.detector!r} detector found no held-out face")
    rows = [r for m in a.models for r in measure(m, a.rounds, a.detector, faces, files[m])]
    print(f"held-out 300-W training photos, {counts['detected']} of {counts['faces']} faces found by {a.detector}")
    print(markdown_table([{**r, "nme": f"{100 * r['nme']:.2f}%"} for r in rows],
                         ["model", "boxes", "refine", "flip_test", "nme", "ms_per_face"]))
    write_json_atomic(a.out, {"what": __doc__.split("\n\n")[2].replace("\n", " "), "detector": a.detector,
                              **counts, "machine": machine(), "rows": rows})
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
