"""Fit a model's per-landmark calibration offset on held-out training photos.

    python -m training.calibrate --model runs/default/long/best.pt --out calibrated.pt
        [--split validation|NAME] [--root DATA] [--device cpu|cuda] [--workers N]

Why: 300-W's annotation protocol is not mirror-symmetric (the annotators put a
point and its mirrored partner in slightly different places relative to the
face), while horizontal-flip augmentation teaches the network one symmetric
rule. The trained network therefore misses each point by a steady amount,
about half a crop pixel on the bundled models, the same on held-out training
photos and on the test sets. This measures that per point, as the mean of
(ground truth - prediction) in crop pixels over ground-truth crops of the
model's validation set (the held-out 10% of the training photos its training
config names; test sets are never used), and writes it into the model file's
``meta["decode"]["offset"]``, which every backend adds to the decoded points
(:func:`pyflm.deploy.decode_offset`; the flip test keeps it too, see
:func:`pyflm.deploy.flip_shift`). The input model's own offset, if any, is
replaced, not added to. The NME of that set before and after is stored in
``meta["calibration"]``; it is the set the offset was fitted on, so the after
figure is optimistic: judge the offset on the test sets (``training.evaluate``).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from pyflm import deploy
from pyflm.metrics import nme

__all__ = ["fit_offset", "calibrate", "main"]


def fit_offset(pred: np.ndarray, gt: np.ndarray, visibility: np.ndarray | None = None) -> np.ndarray:
    """Per-point mean of ``gt - pred`` (``[N, K, 2]``, crop px) over the
    faces where the point is visible (``visibility [N, K]`` > 0; all when
    None) -> ``[K, 2]``. ValueError when a point is visible in no face, or
    for shapes that differ or are not ``[N, K, 2]``."""
    pred, gt = np.asarray(pred, dtype=np.float64), np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[-1] != 2:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must both be [N, K, 2]")
    vis = np.ones(pred.shape[:2]) if visibility is None else (np.asarray(visibility) > 0).astype(np.float64)
    if vis.shape != pred.shape[:2]:
        raise ValueError(f"visibility {vis.shape} must be [N, K] = {pred.shape[:2]}")
    count = vis.sum(0)
    if (count == 0).any():
        raise ValueError(f"points {np.flatnonzero(count == 0).tolist()} are visible in no face: no offset to fit")
    return ((gt - pred) * vis[..., None]).sum(0) / count[:, None]


def _validation_set(mf: dict, split: str, root):
    """The ground-truth-crop dataset of ``mf``'s validation set (``split`` =
    "validation": what its training config validated on) or of a named split."""
    from training.train import build_datasets, config_of_model, _norm
    from training.dataset import LandmarkDataset

    meta = mf["meta"]
    cfg = config_of_model(meta, root, ": give --split NAME")
    size = int(meta["input_size"])
    if split == "validation":
        return build_datasets(cfg, size)[1], (f"validation set of its training config (data.val = {cfg['data']['val']!r}"
                                              f", fraction {cfg['data']['val_fraction']}, seed {cfg['data']['holdout_seed']})")
    from pyflm.data import load_split

    d = cfg["data"]
    mean, std = _norm(d)
    samples = load_split(split, root=root or d["root"] or None)
    return LandmarkDataset(samples, size, None, crop_scale=d["crop_scale"], crop_center=d["crop_center"],
                           mean=mean, std=std), f"split {split!r}"


@torch.no_grad()
def calibrate(mf: dict, split: str = "validation", root=None, device: str = "cpu", batch_size: int = 32,
              num_workers: int = 2) -> dict:
    """A copy of model file ``mf`` with ``meta["decode"]["offset"]`` fitted on
    ``split`` (see the module docstring) and ``meta["calibration"]`` saying
    where and what it changed."""
    from training.dataset import make_loader
    from training.train import crop_to_image

    meta = {**mf["meta"], "decode": {k: v for k, v in mf["meta"]["decode"].items() if k != "offset"}}
    plain = {**mf, "meta": meta}
    predictor = deploy.build_predictor(plain).to(device).eval()
    ds, where = _validation_set(plain, split, root)
    preds, gts, vis, mats, img_gts = [], [], [], [], []
    for batch in make_loader(ds, batch_size, num_workers=num_workers):
        coords, _ = predictor.decode(predictor.net(batch["image"].to(device)))
        preds.append(coords.double().cpu())
        gts.append(batch["landmarks"])
        vis.append(batch["visibility"])
        mats.append(batch["matrix"])
        img_gts.append(batch["image_landmarks"].numpy())
    pred, gt, matrix = torch.cat(preds), torch.cat(gts), torch.cat(mats)
    offset = fit_offset(pred.numpy(), gt.numpy(), torch.cat(vis).numpy())
    img_gt = np.concatenate(img_gts)
    before = float(nme(crop_to_image(pred, matrix).numpy(), img_gt).mean())
    after = float(nme(crop_to_image(pred + torch.from_numpy(offset), matrix).numpy(), img_gt).mean())
    meta["decode"]["offset"] = [[round(float(dx), 4), round(float(dy), 4)] for dx, dy in offset]
    meta["calibration"] = {
        "fitted_on": where, "faces": int(len(ds)), "crops": "ground truth",
        "nme_before": before, "nme_after": after,
        "note": "decode.offset: per-point mean of (ground truth - prediction), crop px; nme_after is in-sample",
    }
    deploy.decode_offset(meta)  # the same check a reader applies
    return {**plain, "meta": meta}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.calibrate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a pyflm model file or training checkpoint")
    p.add_argument("--out", required=True, help="the calibrated model file to write (atomically)")
    p.add_argument("--split", default="validation",
                   help="'validation' (default: the held-out set its training config names) or a split name")
    p.add_argument("--root", default=None, help="data root (default PYFLM_DATA or ../shared/data)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (0 = load in this process)")
    args = p.parse_args(argv)
    from training.config import ConfigError

    try:
        mf = calibrate(deploy.load_model_file(args.model), args.split, args.root, args.device, args.batch_size,
                       args.workers)
    except (deploy.ModelFileError, ConfigError, FileNotFoundError, ValueError) as e:
        print(f"training.calibrate: error: {e}", file=sys.stderr)
        return 2
    c = mf["meta"]["calibration"]
    off = np.asarray(mf["meta"]["decode"]["offset"])
    print(f"fitted on the {c['fitted_on']}: {c['faces']} faces; offset |d| mean {np.linalg.norm(off, axis=1).mean():.3f}"
          f" px, max {np.linalg.norm(off, axis=1).max():.3f} px; NME {100 * c['nme_before']:.3f}% -> "
          f"{100 * c['nme_after']:.3f}% (in-sample)")
    path = deploy.save_model_file(args.out, mf["task"], mf["model_kwargs"], mf["state_dict"], mf["meta"])
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
