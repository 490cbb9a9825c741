"""Fit the crops a model is run on: the refinement square and the tight-box square.

    python -m training.fit_inference_crops --model calibrated.pt --rules haar.json dlib-hog.json
        --out inference_crops.json [--refine-scales 1.3 1.35 ...] [--tight-scales 1.25 1.3 ...]
        [--rounds 2] [--root DATA]

Why: the bundled models were trained on squares of 1.3 x the landmarks' extent,
but their augmentation also shrank every face by a random 0.6-1.0 (paper 1's
range), so the network mostly saw faces smaller in the crop than the 1.3 square
makes them. Re-cropping a face from its predicted landmarks at a larger scale
suits it better: on the held-out photos, Haar boxes + 2 refinement rounds went
from 4.00% NME at 1.3 to 3.73% at 1.5 (``default``), and the tight box's own
square is best a little above 1.3. This measures both on the model's
validation set (the held-out 10% of the training photos its config names;
test sets are never used), with the FaceLandmarker the user runs:

* refinement scale ``r`` (``meta.crop.refine``: the square cut around predicted
  landmarks in refinement rounds and video tracking): for each candidate, every
  detector's fitted box rule (``training.fit_detector_crops``, which targets the
  training square) is scaled by ``r / training scale`` so the first crop is
  framed like the later ones, and the faces each detector found run through
  ``--rounds`` rounds; ``r`` minimises the mean over detectors of the mean NME;
* tight scale ``t`` (``meta.crop.boxes.tight``): one pass on each face's tight
  landmark box; ``t`` minimises the mean NME.

Writes JSON (atomically): ``refine`` {scale, center}, ``tight_rule``, ``rules``
{detector: its scaled rule}, the grid of NMEs, and what it was fitted on.
:func:`training.build_default_model.package` puts them into the model file.
"""

from __future__ import annotations

import argparse
import copy
import sys
import warnings
from pathlib import Path

import numpy as np

__all__ = ["REFINE_SCALES", "TIGHT_SCALES", "scaled_rule", "fit", "main"]

REFINE_SCALES = (1.3, 1.35, 1.4, 1.45, 1.5, 1.55, 1.6)
TIGHT_SCALES = (1.25, 1.3, 1.35, 1.4, 1.45)


def scaled_rule(rule: dict, factor: float) -> dict:
    """A BoxToSquare dict with its square ``factor`` times larger (same centre)."""
    return {**rule, "scale": float(rule["scale"]) * float(factor)}


def _validation_samples(mf: dict, root=None) -> tuple[list, str]:
    from training.calibrate import _validation_set

    ds, where = _validation_set(mf, "validation", root)
    return list(ds.samples), where


def _landmarker(mf: dict, refine_scale: float, center: str, rules: dict, tight_scale: float, rounds: int):
    """A FaceLandmarker (no detector) on a copy of ``mf`` whose meta carries these crops."""
    from pyflm import FaceLandmarker

    meta = copy.deepcopy(mf["meta"])
    boxes = meta["crop"].setdefault("boxes", {})
    boxes.update({name: dict(rule) for name, rule in rules.items()})
    boxes["tight"] = {"dx": 0.0, "dy": 0.0, "scale": float(tight_scale), "size": "max"}
    meta["crop"]["refine"] = {"scale": float(refine_scale), "center": center}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the ONNX exporter's deprecation notices
        return FaceLandmarker(model={**mf, "meta": meta}, detector=None, refine=rounds)


def _mean_nme(lm, images, boxes, box_type, gt) -> float:
    from pyflm.metrics import nme

    pred = np.stack([lm.detect(img, boxes=[b], box_type=box_type)[0].landmarks for img, b in zip(images, boxes)])
    return float(nme(pred, gt, norm="corners").mean())


def fit(mf: dict, rule_fits: list[dict], refine_scales=REFINE_SCALES, tight_scales=TIGHT_SCALES, rounds: int = 2,
        root=None, samples=None, progress: bool = True) -> dict:
    """The fit (see the module docstring) of model-file dict ``mf`` with
    ``rule_fits`` (fit_detector_crops JSON dicts). ``samples``: the photos to
    fit on (default: the model's validation set)."""
    from pyflm.data import tight_box
    from pyflm.face_detection import get_face_detector
    from pyflm.io import load_image
    from training.fit_detector_crops import detect_faces

    if not refine_scales or not tight_scales or min(*refine_scales, *tight_scales) <= 0:
        raise ValueError("refine and tight scales must be non-empty lists of numbers > 0")
    if not rule_fits:
        raise ValueError("at least one detector's fitted rule is needed (training.fit_detector_crops)")
    train = mf["meta"]["crop"]["landmarks"]
    train_scale, center = float(train["scale"]), str(train.get("center", "centroid"))
    where = "given samples"
    if samples is None:
        samples, where = _validation_samples(mf, root)
    if not samples:
        raise ValueError("no photos to fit on")
    images = {s.image_path: load_image(s.image_path) for s in samples}
    gt_all = np.stack([s.landmarks for s in samples])
    found = {}
    for fit_ in rule_fits:
        name = fit_["detector"]
        boxes = detect_faces(samples, get_face_detector(name), progress=progress)["boxes"]
        ok = np.isfinite(boxes).all(1)
        found[name] = (boxes[ok], [images[s.image_path] for s, k in zip(samples, ok) if k], gt_all[ok])
    grid_refine: dict = {}
    for r in refine_scales:
        rules = {f["detector"]: scaled_rule(f["rule"], r / train_scale) for f in rule_fits}
        lm = _landmarker(mf, r, center, rules, train_scale, rounds)
        grid_refine[f"{r:g}"] = {name: _mean_nme(lm, imgs, boxes, name, gt) if len(gt) else None
                                 for name, (boxes, imgs, gt) in found.items()}
        if progress:
            print(f"refine scale {r:g}: " + ", ".join(f"{k} {100 * v:.3f}%" for k, v in grid_refine[f'{r:g}'].items()
                                                       if v is not None), flush=True)
    tight = np.stack([tight_box(s.landmarks) for s in samples])
    all_images = [images[s.image_path] for s in samples]
    grid_tight = {}
    for t in tight_scales:
        lm = _landmarker(mf, refine_scales[0], center, {}, t, 0)
        grid_tight[f"{t:g}"] = _mean_nme(lm, all_images, tight, "tight", gt_all)
        if progress:
            print(f"tight scale {t:g}: {100 * grid_tight[f'{t:g}']:.3f}%", flush=True)

    def score(r):
        vals = [v for v in grid_refine[f"{r:g}"].values() if v is not None]
        return float(np.mean(vals)) if vals else np.inf

    best_r = min(refine_scales, key=score)
    if not np.isfinite(score(best_r)):
        raise ValueError("no detector found any face of the fitting photos")
    best_t = min(tight_scales, key=lambda t: grid_tight[f"{t:g}"])
    return {
        "refine": {"scale": float(best_r), "center": center},
        "tight_rule": {"dx": 0.0, "dy": 0.0, "scale": float(best_t), "size": "max"},
        "rules": {f["detector"]: scaled_rule(f["rule"], best_r / train_scale) for f in rule_fits},
        "training_scale": train_scale, "rounds": int(rounds),
        "fitted_on": {"photos": where, "faces": len(samples),
                      "detected": {name: int(len(v[2])) for name, v in found.items()}},
        "grid": {"refine_nme": grid_refine, "tight_nme": grid_tight,
                 "note": "mean NME (outer eye corners) per candidate scale; refine: each detector's found faces, "
                         f"its rule scaled to the candidate, {rounds} rounds; tight: one pass on tight boxes"},
    }


def main(argv=None) -> int:
    import json

    p = argparse.ArgumentParser(prog="python -m training.fit_inference_crops", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a pyflm model file (e.g. training.calibrate's output)")
    p.add_argument("--rules", nargs="+", required=True, metavar="FILE",
                   help="training.fit_detector_crops JSON, one per detector")
    p.add_argument("--out", required=True, help="JSON to write (atomically)")
    p.add_argument("--refine-scales", nargs="+", type=float, default=list(REFINE_SCALES))
    p.add_argument("--tight-scales", nargs="+", type=float, default=list(TIGHT_SCALES))
    p.add_argument("--rounds", type=int, default=None,
                   help="refinement rounds for detected faces (default: FaceLandmarker's refine='auto' rounds)")
    p.add_argument("--root", default=None, help="data root (default PYFLM_DATA or ../shared/data)")
    a = p.parse_args(argv)
    from pyflm import deploy
    from pyflm.io import write_json_atomic
    from pyflm.landmarker import AUTO_REFINE_ROUNDS
    from training.config import ConfigError

    rounds = AUTO_REFINE_ROUNDS if a.rounds is None else a.rounds
    if not 0 <= rounds <= 10:
        p.error(f"--rounds must be 0..10, got {rounds}")
    try:
        mf = deploy.load_model_file(a.model)
        fits = []
        for f in a.rules:
            if not Path(f).is_file():
                raise FileNotFoundError(f"--rules: no such file {f}")
            try:
                fit_ = json.loads(Path(f).read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise ValueError(f"--rules: {f} is not JSON ({e})") from None
            if not isinstance(fit_, dict) or not {"detector", "rule"} <= set(fit_):
                raise ValueError(f"--rules: {f} is not a training.fit_detector_crops result (no detector / rule)")
            fits.append(fit_)
        result = fit(mf, fits, a.refine_scales, a.tight_scales, rounds, a.root)
    except (deploy.ModelFileError, ConfigError, FileNotFoundError, ValueError, KeyError) as e:
        print(f"training.fit_inference_crops: error: {e}", file=sys.stderr)
        return 2
    write_json_atomic(a.out, result)
    print(f"refine scale {result['refine']['scale']:g}, tight scale {result['tight_rule']['scale']:g}; wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
