"""Per-face latency of the C++ binary ``pyflm-detect`` on real faces, for the peer table.

    python -m benchmarks.peers.cpp_latency [--model default|fast|FILE] [--images 200]
        [--split helen-test] [--out FILE.json]

Exports the model (a bundled one, ``default`` unless ``--model`` says, or a
model file) to TorchScript, then runs ``pyflm-detect`` once per thread count
(1 and 2) and box source on the first ``--images`` images of the split, batch
1: ``boxes`` gives the tight ground-truth box of each face (``--boxes``),
``detect`` lets the binary run its Haar detector. The figure is
the median over images of the binary's own per-image ``timings_ms.landmarks``
(crop + forward + decode + mapping back) divided by the faces in the image,
and the median ``timings_ms.detect``; process start and model load are not in
it. Each row runs under every OpenMP wait policy of ``--wait-policies``:
``default`` leaves ``OMP_WAIT_POLICY`` unset (what a user gets), ``passive``
sets it to PASSIVE (the README's advice for a busy machine, where spinning
threads fight over the cores; on a quiet one it makes libtorch's second thread
cost more than it gives, since every small parallel region then wakes a
sleeping thread). Writes JSON (atomically) with the machine and versions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import pyflm
from benchmarks import common
from pyflm import deploy
from pyflm.data import load_split, tight_box
from pyflm.io import write_json_atomic

RESULTS = Path(__file__).resolve().parents[1] / "results" / "peers"


WAIT_POLICIES = {"default": None, "passive": "PASSIVE", "active": "ACTIVE"}


def run_binary(binary: Path, model_ts: Path, images: list[Path], threads: int, boxes_file: Path | None,
               wait_policy: str = "default") -> dict:
    from pyflm._cpp_tool import cascade_args  # the cascade file Python's Haar detector reads

    args = [str(binary), "--model", str(model_ts), "--ops", str(pyflm.library_path()), *cascade_args([]),
            "--batch", "1", "--threads", str(threads)]
    if boxes_file is not None:
        args += ["--boxes", str(boxes_file)]
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if WAIT_POLICIES[wait_policy] is not None:
        env["OMP_WAIT_POLICY"] = WAIT_POLICIES[wait_policy]
    proc = subprocess.run([*args, *map(str, images)], capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"pyflm-detect failed ({proc.returncode}): {proc.stderr[-2000:]}")
    per_face, detect = [], []
    for r in json.loads(proc.stdout)["images"]:
        n = len(r.get("faces", []))
        if n:
            per_face.append(r["timings_ms"]["landmarks"] / n)
            detect.append(r["timings_ms"]["detect"])
    return {"landmarks_ms_per_face": round(statistics.median(per_face), 2) if per_face else None,
            "detect_ms": round(statistics.median(detect), 2) if detect else None, "images": len(per_face)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.peers.cpp_latency", description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--split", default="helen-test")
    p.add_argument("--root", default=None, help="data root (default PYFLM_DATA or ../shared/data)")
    p.add_argument("--model", default="default", help="bundled model name or model file (default: default)")
    p.add_argument("--wait-policies", nargs="+", choices=sorted(WAIT_POLICIES), default=["default", "passive"],
                   help="OpenMP wait policies to run under (default: default passive)")
    p.add_argument("--out", default=None,
                   help="JSON to write (default results/peers/cpp_binary_latency.json; "
                        "cpp_binary_latency_<model>.json for another bundled model)")
    a = p.parse_args(argv)
    if a.out is None:
        a.out = RESULTS / ("cpp_binary_latency.json" if a.model == "default" else
                           f"cpp_binary_latency_{Path(a.model).stem}.json")
    model_file = deploy.model_path(a.model)
    try:
        model = deploy.load_model_file(model_file)
    except deploy.ModelFileError as e:
        p.error(f"--model: {e}")
    from pyflm._cpp_tool import binary_path

    binary = binary_path()
    if binary is None:
        print("pyflm-detect was not built with this install (see the README's system packages)", file=sys.stderr)
        return 2
    samples = load_split(a.split, root=a.root)
    by_image: dict[Path, list] = {}
    for s in samples:
        by_image.setdefault(s.image_path, []).append(tight_box(s.landmarks).tolist())
    images = sorted(by_image)[: a.images]
    results = {}
    with tempfile.TemporaryDirectory(prefix="pyflm-cpp-latency-") as tmp:
        model_ts = deploy.export_torchscript(model, Path(tmp) / "m.ts")
        boxes_file = Path(tmp) / "boxes.json"
        boxes_file.write_text(json.dumps({str(i): by_image[i] for i in images}))
        for policy in a.wait_policies:  # rows keyed "<threads>thr_<boxes|detect>[_<policy>]"
            for threads in (1, 2):
                for kind, boxes in (("boxes", boxes_file), ("detect", None)):
                    key = f"{threads}thr_{kind}" + ("" if policy == "default" else f"_{policy}")
                    results[key] = r = run_binary(binary, model_ts, images, threads, boxes, policy)
                    print(f"OMP_WAIT_POLICY {policy}, {threads} thread(s), {kind}: {r}")
    write_json_atomic(a.out, {"what": __doc__.split("\n\n")[2].replace("\n", " "), "split": a.split,
                              "model": str(model_file), "wait_policies": a.wait_policies,
                              "binary": str(binary), "machine": common.machine(), "results": results})
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
