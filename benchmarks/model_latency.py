"""Per-face CPU latency of several pyflm models, measured interleaved on real faces.

    python -m benchmarks.model_latency [--models default fast FILE ...] [--threads 1 2] [--rounds 6]

``FaceLandmarker.detect(image, boxes=[tight box])`` (crop + network + mapping
back; the landmarker's default backend) on every third 300-W common test image.
Each round times every model once over the same faces, so a slow spell of a
shared VM (this one's speed moves by up to 50% within an hour) hits all models
alike; the table gives the median of the round medians and each model's
median paired ratio to the first model. Writes JSON with the machine and
versions (atomically) to ``benchmarks/results/model_latency.json``.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import machine, markdown_table

RESULTS = Path(__file__).resolve().parent / "results" / "model_latency.json"


def _faces(limit: int, root=None) -> list:
    from pyflm.data import load_split, tight_box
    from pyflm.io import load_image

    samples = load_split("common", root=root)[::3][:limit]
    return [(load_image(s.image_path), tight_box(s.landmarks)) for s in samples]


def measure(models: list[str], threads: int, rounds: int, faces: list) -> list[dict]:
    from pyflm import FaceLandmarker

    torch.set_num_threads(threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notices
        lms = {m: FaceLandmarker(model=m, detector=None, num_threads=threads) for m in models}
    per_round = {m: [] for m in models}
    for _ in range(rounds):
        for m, lm in lms.items():
            for img, box in faces[:10]:  # warm-up
                lm.detect(img, boxes=[box])
            ts = []
            for img, box in faces:
                t0 = time.perf_counter()
                lm.detect(img, boxes=[box])
                ts.append(time.perf_counter() - t0)
            per_round[m].append(1e3 * float(np.median(ts)))
    first = np.array(per_round[models[0]])
    return [{"model": m, "threads": threads, "backend": lms[m].backend, "ms_per_face": round(float(np.median(v)), 3),
             "ratio_to_first": round(float(np.median(np.array(v) / first)), 3),
             "round_medians_ms": [round(x, 3) for x in v]} for m, v in per_round.items()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.model_latency", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["default", "fast"], help="bundled names or model files")
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--faces", type=int, default=150, help="faces per round (default 150)")
    p.add_argument("--root", default=None, help="data root (default PYFLM_DATA or ../shared/data)")
    p.add_argument("--out", default=str(RESULTS))
    a = p.parse_args(argv)
    from pyflm.deploy import ModelFileError

    faces = _faces(a.faces, a.root)
    try:
        rows = [r for t in a.threads for r in measure(a.models, t, a.rounds, faces)]
    except ModelFileError as e:
        p.error(f"--models: {e}")
    cols = ["model", "threads", "backend", "ms_per_face", "ratio_to_first"]
    print(markdown_table(rows, cols))
    from pyflm.io import write_json_atomic

    write_json_atomic(a.out, {"what": " ".join(__doc__.split("\n\n")[2].split()), "machine": machine(),
                              "models": a.models, "faces": len(faces), "rounds": a.rounds, "results": rows})
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
