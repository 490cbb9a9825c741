"""A compact copy of named splits, for a machine the data cannot reach otherwise.

    python -m training.pack_data --out .devdata [--splits 300w-train common]
        [--max-side 352] [--quality 85] [--root DATA]

A lent GPU machine gets only the repository and the paths a call carries, 64 MiB
in all; the 300-W photos here are 85 MB. This writes each image of the splits
again, downscaled (INTER_AREA) so its longer side is at most ``--max-side``
and JPEG-encoded at ``--quality``, in the same folder layout under ``--out``,
with its ``.pts`` beside it mapped by the same scale in pyflm's convention
(0-based, pixel centres at integers: x' = (x + 0.5) * s - 0.5, per axis with
s = new size / old size; written to 1e-3 px). ``PYFLM_DATA=<out>`` (or a
config's ``data.root``) then reads it like the original. ``<out>/PACK.json``
records the settings, the counts and the bytes. At the defaults the 300-W
training photos (2,012 faces) and the common test set (554) come to 52 MB
(2026-12-06; 60 MB of JPEGs at quality 90, 44 MB at 320 px and quality 85);
the paper models crop at 224-256 px from faces that fill about half of a
photo, so at 352 px their crops are cut at about the network's resolution.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

__all__ = ["pack", "scale_points"]


def scale_points(points: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """Points of an image resized by (sx, sy): pixel centres map to pixel centres."""
    p = np.asarray(points, dtype=np.float64)
    return np.stack([(p[:, 0] + 0.5) * sx - 0.5, (p[:, 1] + 0.5) * sy - 0.5], axis=1)


def pack(splits: list[str], out: Path, root=None, max_side: int = 352, quality: int = 85) -> dict:
    """Write the compact copy (see the module docstring); returns what PACK.json holds."""
    import cv2

    from pyflm.data import load_split, write_pts
    from pyflm.data.splits import default_data_root
    from pyflm.io import atomic_write, load_image, write_json_atomic

    root = Path(root) if root is not None else default_data_root()
    out = Path(out)
    if out.resolve() == root.resolve():
        raise ValueError(f"--out must differ from the data root {root}")
    done: dict[Path, int] = {}
    counts = {}
    for split in splits:
        samples = load_split(split, root=root)
        counts[split] = len(samples)
        for s in samples:
            try:
                rel = s.image_path.resolve().relative_to(root.resolve())
            except ValueError:
                raise ValueError(f"{s.image_path} is not under the data root {root}") from None
            if rel in done:
                continue
            img = load_image(s.image_path)
            h, w = img.shape[:2]
            k = min(1.0, max_side / max(h, w))
            nw, nh = max(1, round(w * k)), max(1, round(h * k))
            if (nw, nh) != (w, h):
                img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
            ok, jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
            if not ok:
                raise ValueError(f"cannot encode {s.image_path}")
            dest = (out / rel).with_suffix(".jpg")
            dest.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(dest, lambda f, data=jpg.tobytes(): f.write(data))
            # 1e-3 px is far below annotation noise, and a third of the bytes of write_pts' default
            write_pts(dest.with_suffix(".pts"), scale_points(s.landmarks, nw / w, nh / h), precision=3)
            done[rel] = dest.stat().st_size + dest.with_suffix(".pts").stat().st_size
    info = {"splits": counts, "images": len(done), "bytes": int(sum(done.values())), "max_side": max_side,
            "quality": quality, "source": str(root),
            "convention": "x' = (x + 0.5) * (new width / old width) - 0.5, the same in y"}
    write_json_atomic(out / "PACK.json", info)
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.pack_data", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder to write (e.g. .devdata, which git ignores)")
    p.add_argument("--splits", nargs="+", default=["300w-train", "common"])
    p.add_argument("--max-side", type=int, default=352, help="longer side in pixels, at most (default 352)")
    p.add_argument("--quality", type=int, default=85, help="JPEG quality 1-100 (default 85)")
    p.add_argument("--root", default=None, help="data root (default PYFLM_DATA or ../shared/data)")
    a = p.parse_args(argv)
    if a.max_side < 32:
        p.error("--max-side must be >= 32")
    if not 1 <= a.quality <= 100:
        p.error("--quality must be in 1..100")
    try:
        info = pack(a.splits, a.out, a.root, a.max_side, a.quality)
    except (FileNotFoundError, ValueError) as e:
        print(f"training.pack_data: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
