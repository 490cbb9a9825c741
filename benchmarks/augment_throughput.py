"""Training-data cost per sample: augmentation in the DataLoader workers
(data.warp = "cpu") against the batched device warp (data.warp = "device").

    python -m benchmarks.augment_throughput [--device cpu|cuda] [--size 128] [--augment paper1]
        [--batch 32] [--samples 96] [--rounds 3] [--split 300w-train]

A worker's time per sample (decode + crop + augment + normalise on the CPU
path; decode + region cut + canvas on the device path) is timed on the same
photos, the two paths alternating each round; the device's time for one
batch of ``augment_batch`` (warp, jitter, occluders, normalisation) is the
torch.utils.benchmark median on ``--device``. The table gives medians of the
round medians and the worker-time ratio device / cpu. Writes JSON with the
machine and versions (atomically) to
``benchmarks/results/augment_throughput_<device>.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import default_collate

from benchmarks.common import machine, markdown_table, median_seconds, sync

RESULTS = Path(__file__).resolve().parent / "results"


def measure(samples, size: int, augment: str, device: str, batch: int, rounds: int) -> list[dict]:
    from training.dataset import AUGMENT_PRESETS, IMAGENET_MEAN, IMAGENET_STD, LandmarkDataset

    cfg = AUGMENT_PRESETS[augment]
    sets = {w: LandmarkDataset(samples, size, cfg, mean=IMAGENET_MEAN, std=IMAGENET_STD, seed=0, warp=w)
            for w in ("cpu", "device")}
    per_round = {w: [] for w in sets}
    for r in range(rounds):
        for w, ds in sets.items():
            ts = []
            for i in range(len(samples)):
                t0 = time.perf_counter()
                ds[(i, r)]
                ts.append(time.perf_counter() - t0)
            per_round[w].append(1e3 * float(np.median(ts)))
    cpu = np.array(per_round["cpu"])
    dev_ds = sets["device"]
    b = default_collate([dev_ds[(i % len(samples), 0)] for i in range(batch)])
    b = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in b.items()}

    def run():
        dev_ds.images(b, device)
        sync(device)

    batch_ms = 1e3 * median_seconds(run, min_run_time=1.0)
    rows = []
    for w, v in per_round.items():
        rows.append({"warp": w, "augment": augment, "size": size, "worker_ms_per_sample": round(float(np.median(v)), 3),
                     "worker_ratio_to_cpu": round(float(np.median(np.array(v) / cpu)), 3),
                     "device": device if w == "device" else "",
                     "device_ms_per_batch": round(batch_ms, 3) if w == "device" else None,
                     "device_ms_per_sample": round(batch_ms / batch, 4) if w == "device" else None,
                     "round_medians_ms": [round(x, 3) for x in v]})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.augment_throughput", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", type=int, default=128, help="crop side (input size)")
    p.add_argument("--augment", default="paper1", choices=("paper1", "paper2"))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--samples", type=int, default=96, help="photos per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--split", default="300w-train", help="split name or folder of image + .pts pairs")
    p.add_argument("--root", default=None, help="data root (default PYFLM_DATA or ../shared/data)")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/augment_throughput_<device>.json)")
    a = p.parse_args(argv)
    from pyflm.data import load_split

    if a.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")
    samples = load_split(a.split, root=a.root)
    if not samples:
        p.error(f"--split {a.split}: no samples")
    samples = samples[:: max(1, len(samples) // a.samples)][: a.samples]
    rows = measure(samples, a.size, a.augment, a.device, a.batch, a.rounds)
    print(markdown_table(rows, ["warp", "augment", "size", "worker_ms_per_sample", "worker_ratio_to_cpu", "device",
                                "device_ms_per_batch", "device_ms_per_sample"]))
    from pyflm.io import write_json_atomic

    out = Path(a.out) if a.out else RESULTS / f"augment_throughput_{a.device.split(':')[0]}.json"
    write_json_atomic(out, {"what": " ".join(__doc__.split("\n\n")[1].split()), "machine": machine(),
                            "split": a.split, "samples": len(samples), "batch": a.batch, "rounds": a.rounds,
                            "results": rows})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
