"""Per-face CPU latency of several pyflm models, measured interleaved on real faces.

    python -m benchmarks.model_latency [--models default fast FILE ...] [--threads 1 2] [--rounds 6]

``FaceLandmarker.detect(image, boxes=[tight box])`` (crop + network + mapping
back; the landmarker's default backend) on every third 300-W common test image.
Each round times every model once over the same faces, so a slow spell of a
shared VM (this one's speed moves by up to 50% within an hour) hits all models
alike; the table gives the median of the round medians and each model's
median paired ratio to the first model. Writes JSON with the machine and
versions (atomically) to ``benchmarks/results/model_latency.json``.

Each round also times the network alone (the landmarker's predictor on each
face's crop, warped beforehand: ``network_ms``, so the rest of ``ms_per_face``
is the Python, warp and mapping around it) and this CPU's float32 matrix
multiply (``torch`` 1024^3, ``gemm_gmacs``, multiply-adds per second). Each
model's ``floor_ms`` is its network's multiply-adds (``mmacs``, torch's
FlopCounterMode) at that rate: the time one face would take if every
convolution ran as fast as a large matrix multiply. No runtime beats that much,
so a target under a model's floor needs a smaller network, not more tuning.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import machine, markdown_table, median_seconds

RESULTS = Path(__file__).resolve().parent / "results" / "model_latency.json"


def _faces(limit: int, root=None) -> list:
    from pyflm.data import load_split, tight_box
    from pyflm.io import load_image

    samples = load_split("common", root=root)[::3][:limit]
    return [(load_image(s.image_path), tight_box(s.landmarks)) for s in samples]


def multiply_adds(model: str) -> int:
    """Multiply-adds of ``model``'s network for one face (FlopCounterMode
    counts two flops per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    from pyflm import FaceLandmarker

    predictor, meta, _ = FaceLandmarker._load(model, torch.device("cpu"))
    size = int(meta["input_size"])
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        predictor.net(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() // 2


def gemm_gmacs(threads: int, n: int = 1024) -> float:
    """This CPU's float32 matrix-multiply rate (10^9 multiply-adds per second)
    with ``threads`` threads: the median of torch's ``n x n`` by ``n x n`` product."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    return n ** 3 / median_seconds(lambda: a @ b, min_run_time=0.5) / 1e9


def _median_ms(fn, items) -> float:
    ts = []
    for item in items:
        t0 = time.perf_counter()
        fn(item)
        ts.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(ts))


def measure(models: list[str], threads: int, rounds: int, faces: list) -> list[dict]:
    from pyflm import FaceLandmarker
    from pyflm.data.crops import Crop

    torch.set_num_threads(threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notices
        lms = {m: FaceLandmarker(model=m, detector=None, num_threads=threads) for m in models}
    crops = {m: [torch.from_numpy(Crop.from_square(*lm.box_rules["tight"](box), lm.input_size).warp(img)[None])
                 for img, box in faces] for m, lm in lms.items()}
    macs = {m: multiply_adds(m) for m in models}
    per_round = {m: [] for m in models}
    network = {m: [] for m in models}
    rates = []
    for _ in range(rounds):
        rates.append(gemm_gmacs(threads))  # leaves torch at `threads` threads
        for m, lm in lms.items():
            for img, box in faces[:10]:  # warm-up
                lm.detect(img, boxes=[box])
            per_round[m].append(_median_ms(lambda f: lm.detect(f[0], boxes=[f[1]]), faces))
            with torch.inference_mode():
                network[m].append(_median_ms(lm.predictor, crops[m]))
    first = np.array(per_round[models[0]])
    rate = float(np.median(rates))
    return [{"model": m, "threads": threads, "backend": lms[m].backend, "ms_per_face": round(float(np.median(v)), 3),
             "ratio_to_first": round(float(np.median(np.array(v) / first)), 3),
             "network_ms": round(float(np.median(network[m])), 3), "mmacs": round(macs[m] / 1e6, 1),
             "gemm_gmacs": round(rate, 1), "floor_ms": round(macs[m] / rate / 1e6, 3),
             "round_medians_ms": [round(x, 3) for x in v], "round_network_ms": [round(x, 3) for x in network[m]],
             "round_gemm_gmacs": [round(x, 1) for x in rates]} for m, v in per_round.items()]


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
    cols = ["model", "threads", "backend", "ms_per_face", "ratio_to_first", "network_ms", "mmacs", "gemm_gmacs",
            "floor_ms"]
    print(markdown_table(rows, cols))
    from pyflm.io import write_json_atomic

    write_json_atomic(a.out, {"what": " ".join(" ".join(__doc__.split("\n\n")[2:4]).split()), "machine": machine(),
                              "models": a.models, "faces": len(faces), "rounds": a.rounds, "results": rows})
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
