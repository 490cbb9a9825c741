"""Benchmark pyflm.heatmap_targets against (a) a per-sample NumPy generator of
the kind common pose/landmark toolkits use in their datasets and (b) the eager
PyTorch reference, for every kind.

    python -m benchmarks.bench_heatmap_targets [--device cpu|cuda] [--quick]

The NumPy baseline lives here on purpose (it is not part of pyflm): like the
HRNet/mmpose dataset code it loops over samples and landmarks and pastes a
Gaussian window of radius 3 sigma (sub-pixel centred, as in mmpose's UDP
variant) into a zeroed [K, H, W] array per sample; it only exists for kind
"gaussian". As in those toolkits' data pipelines, each sample gets its own
zeroed [K, H, W] array and the batch is collated into one tensor
(``torch.from_numpy(np.stack(...))``), which is what a training step consumes.
"""

from __future__ import annotations


import numpy as np
import torch

from benchmarks import common
from pyflm.ops.heatmap_targets import heatmap_targets_reference

TARGETS = {"numpy_per_sample": 20.0, "reference": 3.0}


def numpy_gaussian_targets_sample(joints: np.ndarray, visible: np.ndarray, height: int, width: int,
                                  sigma: float, out: np.ndarray) -> np.ndarray:
    """One sample, toolkit style: joints [K, 2] (x, y) -> out [K, H, W] (zeroed)."""
    radius = int(3 * sigma)
    size = 2 * radius + 1
    grid = np.arange(size, dtype=np.float32)
    for k in range(joints.shape[0]):
        if not visible[k]:
            continue
        mu_x, mu_y = float(joints[k, 0]), float(joints[k, 1])
        cx, cy = int(mu_x + 0.5), int(mu_y + 0.5)
        ul = (cx - radius, cy - radius)
        br = (cx + radius + 1, cy + radius + 1)
        if ul[0] >= width or ul[1] >= height or br[0] <= 0 or br[1] <= 0:
            continue
        # Gaussian in window coordinates, centred at the sub-pixel position
        x0 = radius + (mu_x - cx)
        y0 = radius + (mu_y - cy)
        g = np.exp(-((grid[None, :] - x0) ** 2 + (grid[:, None] - y0) ** 2) / (2 * sigma**2))
        gx0, gx1 = max(0, -ul[0]), min(br[0], width) - ul[0]
        gy0, gy1 = max(0, -ul[1]), min(br[1], height) - ul[1]
        ix0, ix1 = max(0, ul[0]), min(br[0], width)
        iy0, iy1 = max(0, ul[1]), min(br[1], height)
        out[k, iy0:iy1, ix0:ix1] = g[gy0:gy1, gx0:gx1]
    return out


def numpy_gaussian_targets(coords: np.ndarray, visible: np.ndarray, height: int, width: int,
                           sigma: float) -> np.ndarray:
    B, K = coords.shape[:2]
    samples = [
        numpy_gaussian_targets_sample(coords[b], visible[b], height, width, sigma,
                                      np.zeros((K, height, width), dtype=np.float32))
        for b in range(B)
    ]
    return torch.from_numpy(np.stack(samples))  # the collate step


def _record(device, kind, background, dtype, B, K, H, W, sigma, baseline, t_op, t_op_out, t_base,
            machine):
    """``ratio``: the op into a fresh tensor; ``ratio_out``: into a reused buffer
    (``out=``), as a training loop would call it. The target is judged on the
    better of the two, and both are recorded."""
    ratio, ratio_out = t_base / t_op, t_base / t_op_out
    return {
        "op": "heatmap_targets",
        "device": device,
        "kind": kind + ("+bg" if background else ""),
        "dtype": str(dtype).replace("torch.", ""),
        "B": B, "K": K, "H": H, "W": W, "sigma": sigma,
        "baseline": baseline,
        "op_ms": t_op * 1e3,
        "op_out_ms": t_op_out * 1e3,
        "baseline_ms": t_base * 1e3,
        "ratio": ratio,
        "ratio_out": ratio_out,
        "target": TARGETS[baseline],
        "meets_target": max(ratio, ratio_out) >= TARGETS[baseline],
        "machine": machine,
    }


def run(device: str = "cpu", quick: bool = False) -> list[dict]:
    import pyflm  # noqa: F401  (loads the op library)

    op = torch.ops.pyflm.heatmap_targets
    min_run = 0.2 if quick else 1.0
    if device == "cpu":
        sizes = [(8, 68, 64, 64)] if quick else [(64, 68, 64, 64)]
    else:
        sizes = [(64, 68, 64, 64)] if quick else [(64, 68, 64, 64), (256, 98, 64, 64), (64, 68, 128, 128)]
    dtype, sigma = torch.float32, 2.0
    machine = common.machine()
    records = []
    for B, K, H, W in sizes:
        g = torch.Generator().manual_seed(0)
        coords = torch.rand(B, K, 2, generator=g) * torch.tensor([W + 4.0, H + 4.0]) - 2.0
        vis = torch.rand(B, K, generator=g) > 0.1
        coords_d, vis_d = coords.to(device), vis.to(device)

        if device == "cpu":
            # the toolkit code pastes clipped windows for centres just off the map;
            # give it pyflm's validity rule so both produce the same maps
            inside = ((coords >= -0.5) & (coords < torch.tensor([W - 0.5, H - 0.5]))).all(-1)
            cn, vn = coords.numpy(), (vis & inside).numpy()
            # sanity: same maps up to the window truncation (exp(-4.5) ~ 0.011)
            ours, _ = op(coords_d, vis_d, H, W, sigma, "gaussian", False)
            diff = (numpy_gaussian_targets(cn, vn, H, W, sigma) - ours).abs().max().item()
            assert diff < 0.02, f"NumPy baseline disagrees with the op by {diff}"
            t_np = common.median_seconds(lambda: numpy_gaussian_targets(cn, vn, H, W, sigma),
                                         min_run_time=min_run, warmup=1)
            t_op = common.median_seconds(lambda: op(coords_d, vis_d, H, W, sigma, "gaussian", False),
                                         min_run_time=min_run)
            t_out = _time_out(coords_d, vis_d, H, W, sigma, "gaussian", False, min_run)
            records.append(_record(device, "gaussian", False, dtype, B, K, H, W, sigma,
                                   "numpy_per_sample", t_op, t_out, t_np, machine))

        for kind, bg in [("gaussian", False), ("gaussian", True), ("distribution", False), ("pwc", False)]:
            t_op = common.median_seconds(lambda: op(coords_d, vis_d, H, W, sigma, kind, bg),
                                         min_run_time=min_run)
            t_ref = common.median_seconds(
                lambda: heatmap_targets_reference(coords_d, vis_d, H, W, sigma, kind, bg),
                min_run_time=min_run)
            t_out = _time_out(coords_d, vis_d, H, W, sigma, kind, bg, min_run)
            records.append(_record(device, kind, bg, dtype, B, K, H, W, sigma, "reference",
                                   t_op, t_out, t_ref, machine))
    return records


def _time_out(coords, vis, H, W, sigma, kind, bg, min_run) -> float:
    """The op writing into buffers allocated once (heatmap_targets.out)."""
    out = tuple(t.clone() for t in torch.ops.pyflm.heatmap_targets(coords, vis, H, W, sigma, kind, bg))
    return common.median_seconds(
        lambda: torch.ops.pyflm.heatmap_targets.out(coords, vis, H, W, sigma, kind, bg,
                                                    targets=out[0], mask=out[1]),
        min_run_time=min_run)


COLUMNS = ["device", "kind", "dtype", "B", "K", "H", "W", "baseline", "op_ms", "op_out_ms", "baseline_ms", "ratio",
           "ratio_out", "target", "meets_target"]


def main(argv: list[str] | None = None) -> None:
    common.bench_main("heatmap_targets", run, COLUMNS, argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
