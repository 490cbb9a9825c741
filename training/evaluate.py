"""Evaluate trained checkpoints and model files on 300-W style splits.

    python -m training.evaluate --checkpoint runs/hybrid/best.pt [more.pt | pyflm/weights/default.pt ...]
        --splits common helen-test lfpw-test [--crops gt|detector [--boxes boxes.json]] [--refine N]
        [--out DIR] [--device cpu|cuda] [--root DATA]

Each model runs on crops of every image (``gt``: the paper's ground-truth crop,
the rule and size stored in the checkpoint's config or the model file's meta; a
model file runs its deployable predictor, calibration offset included; ``detector``: squares from
face boxes, see below); predictions are mapped back to image pixels with the
exact inverse of the crop matrix and compared with the original annotation.

Reported per (model, split), as fractions (printed as %): NME normalised by the
outer eye corners (``nme``, the default "inter-ocular"), by the eye centres
(``nme_pupils``) and by sqrt(w h) of the ground-truth landmark box
(``nme_box``); the eye-anchor NME (points 36-47, inter-ocular); failure rates
FR@0.08 / 0.10 and AUC@0.07 / 0.08 / 0.10 (exact integral of the CED, see
pyflm.metrics) of the inter-ocular NME.

Outputs in ``--out`` (default: ``eval`` beside the first checkpoint):
``results.json`` (written atomically; every metric plus per-image errors with
the image paths), ``ced_<split>.png`` (one curve per model; path characters replaced by _), and a
paper-1 Table-2-style table on stdout (rows: splits, columns: models).

Detector crops (``--crops detector``): ``--detector haar`` runs that face
detector (pyflm.face_detection) on every image, matches its boxes to the
annotated faces (IoU >= 0.3 with the landmarks' bounding box) and crops with
the box -> square rule fitted on the *training* images by
``python -m training.fit_detector_crops`` (``--rule FILE``, default
``runs/detector_crops/<detector>.json``). Faces the detector misses are left
out of the NME and reported as ``detection_misses`` / ``detected_fraction``;
the boxes used are written to ``<out>/boxes_<detector>.json``. Or give
``--boxes FILE``: a JSON object mapping image file names (or full paths) to
``[x_min, y_min, x_max, y_max]``, with an optional ``"__rule__": {"dx": ..,
"dy": .., "scale": .., "size": "max"}`` (a pyflm.data.BoxToSquare). From
Python, pass any callable ``sample -> box``.

``--refine N``: after the first pass, N rounds of re-cropping every face from
its predicted landmarks by the model's refinement square (``meta.crop.refine``
of a model file; else its ground-truth crop rule) and predicting again, as
``FaceLandmarker(refine=N)`` does (``refine="auto"``, its
default, gives faces from a face detector ``AUTO_REFINE_ROUNDS`` = 2 rounds, so
``--crops detector --detector haar --refine 2`` measures what ``detect()``
returns for detected faces). A face whose prediction is not finite or all one
point keeps its crop.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from pyflm.data import BoxToSquare, Sample, load_split
from pyflm.metrics import evaluate as _metrics
from pyflm.metrics import format_table, nme, plot_ced
from training.dataset import IMAGENET_MEAN, IMAGENET_STD, LandmarkDataset, make_loader
from training.train import CheckpointError, _atomic_write, _to_float, crop_to_image, load_checkpoint, task_from_checkpoint

__all__ = ["compute_metrics", "predict_split", "evaluate_models", "load_boxes", "model_file_spec", "refined_crop_fn",
           "main", "METRIC_COLUMNS"]

METRIC_COLUMNS = ("nme", "nme_pupils", "nme_box", "eye_nme", "fr@0.08", "fr@0.1", "auc@0.07", "auc@0.08", "auc@0.1")


def compute_metrics(pred, gt, scheme: str = "68") -> dict:
    """All reported metrics for image-px predictions [N, K, 2] vs ground truth
    (fractions), plus per-image arrays under "per_image"."""
    m = _metrics(pred, gt, norm="corners", scheme=scheme)
    out = {k: v for k, v in m.items() if k != "per_image"}
    per = {"nme": m["per_image"],
           "nme_pupils": nme(pred, gt, norm="pupils", scheme=scheme),
           "nme_box": nme(pred, gt, norm="box", scheme=scheme)}
    from pyflm.metrics import eye_anchor_nme

    per["eye_nme"] = eye_anchor_nme(pred, gt, scheme=scheme)
    out["nme_pupils"] = float(per["nme_pupils"].mean())
    out["nme_box"] = float(per["nme_box"].mean())
    out["per_image"] = per
    return out


def _crop_fn(crops, boxes_rule=None):
    """None for gt crops, else sample -> (cx, cy, side)."""
    if crops in (None, "gt"):
        return None
    rule = boxes_rule or BoxToSquare()
    if callable(crops):
        return lambda s: rule(crops(s))
    if crops == "detector":
        raise NotImplementedError(
            "detector crops need --detector NAME (with its fitted --rule) or --boxes FILE (JSON: image name -> "
            "[x_min, y_min, x_max, y_max])")
    raise ValueError(f"crops must be 'gt', 'detector' or a callable, got {crops!r}")


def _face_key(s: Sample) -> tuple[str, bytes]:
    """Identifies a face across DataLoader workers (its image and annotation)."""
    return str(s.image_path), np.ascontiguousarray(s.landmarks, dtype=np.float64).tobytes()


def refined_crop_fn(samples: Sequence[Sample], pred: np.ndarray, square_fn, crop_scale: float = 1.3,
                    crop_center: str = "centroid"):
    """The crop_fn of one refinement round: each face's square from its
    predicted landmarks ``pred`` [N, K, 2] (image px, in ``samples`` order) by
    the landmark crop rule, as FaceLandmarker's refinement does. ``square_fn``:
    the squares of the previous pass (None: the ground-truth rule), kept for a
    face whose prediction is not finite or all one point."""
    from pyflm.data import square_from_landmarks

    squares = {}
    for s, p in zip(samples, np.asarray(pred, dtype=np.float64)):
        if np.isfinite(p).all() and np.ptp(p, axis=0).max() > 0:
            squares[_face_key(s)] = square_from_landmarks(p, crop_scale, crop_center)
        else:
            squares[_face_key(s)] = (square_fn(s) if square_fn is not None
                                     else square_from_landmarks(s.landmarks, crop_scale, crop_center))
    return lambda s: squares[_face_key(s)]


def load_boxes(path) -> tuple[Callable[[Sample], np.ndarray], BoxToSquare]:
    """Read a boxes JSON (see the module docstring) into (sample -> box, rule)."""
    path = Path(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    rule = BoxToSquare(**data.pop("__rule__")) if "__rule__" in data else BoxToSquare()

    def lookup(s: Sample):
        for key in (str(s.image_path), s.image_path.name):
            if key in data:
                return np.asarray(data[key], dtype=np.float64)
        raise KeyError(f"{path}: no box for {s.image_path}")

    return lookup, rule


@torch.no_grad()
def predict_split(predict: Callable[[dict], torch.Tensor], samples: Sequence[Sample], input_size: int,
                  crop_scale: float = 1.3, crop_center: str = "centroid", mean=IMAGENET_MEAN, std=IMAGENET_STD,
                  batch_size: int = 16, crop_fn=None, num_workers: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(pred, gt) in image px, float64 [N, K, 2]. ``predict(batch) -> crop-px
    coords [B, K, 2]`` gets the dataset's batch dict (image, matrix, ...)."""
    ds = LandmarkDataset(samples, input_size, None, crop_scale=crop_scale, crop_center=crop_center, mean=mean, std=std,
                         crop_fn=crop_fn)
    loader = make_loader(ds, batch_size, num_workers=num_workers)
    preds, gts = [], []
    for batch in loader:
        coords = predict(batch)
        preds.append(crop_to_image(coords.detach().cpu(), batch["matrix"]).numpy())
        gts.append(batch["image_landmarks"].numpy())
    return np.concatenate(preds), np.concatenate(gts)


def task_predictor(task, device) -> Callable[[dict], torch.Tensor]:
    model = task.model.to(device).eval()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if torch.device(device).type == "cuda" else None

    def predict(batch):
        x = batch["image"].to(device)
        if autocast is not None:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = model(x)
        else:
            out = model(x)
        return task.decode(_to_float(out))[0]

    return predict


def evaluate_models(models: Mapping[str, dict], splits: Mapping[str, Sequence[Sample]], out_dir=None,
                    crops="gt", boxes_rule: BoxToSquare | None = None, batch_size: int = 16,
                    verbose: bool = True, num_workers: int = 0, extra_meta: Mapping | None = None,
                    crops_label: str | None = None, refine: int = 0) -> dict:
    """Evaluate several models on several splits.

    ``models``: {label: {"predict": callable(batch) -> crop px [B, K, 2],
    "input_size": int, "crop_scale", "crop_center", "mean", "std",
    "refine_scale", "refine_center"}} (all but the first two optional; the
    refine square defaults to the crop one). ``splits``: {name: samples}.
    Returns {label: {split: metrics}} with per-image errors; writes
    results.json (``extra_meta`` goes into its "_meta") and ced_<split>.png to
    ``out_dir`` when given.
    ``crops_label`` says which crops these are, in the JSON and above the
    printed table (default: from ``crops``). ``refine``: refinement rounds
    after the first pass (module docstring)."""
    if int(refine) != refine or refine < 0:
        raise ValueError(f"refine must be a whole number of rounds >= 0, got {refine!r}")
    crop_fn = _crop_fn(crops, boxes_rule)
    if crops_label is None:
        crops_label = "ground-truth crops" if crops == "gt" else "detector crops"
    if refine:
        crops_label += f", then {int(refine)} refinement round{'s' if refine > 1 else ''} from the predicted landmarks"
    results: dict = {}
    for label, spec in models.items():
        results[label] = {}
        scale, center = spec.get("crop_scale", 1.3), spec.get("crop_center", "centroid")
        # refinement rounds cut the model's refinement square (FaceLandmarker's), if it has one
        r_scale, r_center = spec.get("refine_scale", scale), spec.get("refine_center", center)
        for split, samples in splits.items():
            fn = crop_fn
            for r in range(int(refine) + 1):
                if r:
                    fn = refined_crop_fn(samples, pred, fn, r_scale, r_center)
                pred, gt = predict_split(spec["predict"], samples, spec["input_size"], scale, center,
                                         spec.get("mean", IMAGENET_MEAN), spec.get("std", IMAGENET_STD), batch_size,
                                         fn, num_workers)
            m = compute_metrics(pred, gt, samples[0].scheme)
            m["images"] = [str(s.image_path) for s in samples]
            results[label][split] = m
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        payload = {label: {split: {**{k: v for k, v in m.items() if k not in ("per_image", "images")},
                                   "per_image": [{"image": img, **{k: float(a[i]) for k, a in m["per_image"].items()}}
                                                 for i, img in enumerate(m["images"])]}
                           for split, m in per.items()}
                   for label, per in results.items()}
        payload["_meta"] = {"crops": crops_label, "refine": int(refine),
                            "metrics": "fractions; nme = outer-eye-corner (inter-ocular) normalised",
                            **(extra_meta or {})}
        _atomic_write(out_dir / "results.json", lambda f: f.write(json.dumps(payload, indent=2).encode()))
        for split in splits:
            curves = {label: results[label][split]["per_image"]["nme"] for label in results}
            try:
                plot_ced(curves, out_dir / f"ced_{_file_safe(split)}.png", title=f"CED, {split} (inter-ocular NME)")
            except ImportError as e:
                print(f"training.evaluate: no CED plot ({e})", file=sys.stderr)
    if verbose:
        print(f"crops: {crops_label}")
        print(summary_table(results))
    return results


def _file_safe(name: str) -> str:
    """A split name (or a folder path given as one) as a file-name part."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "split"


def summary_table(results: Mapping[str, Mapping[str, dict]], metric: str = "nme") -> str:
    """Rows: splits; columns: models (paper-1 Table-2 style), then one
    detailed table per model (rows: splits; columns: all metrics)."""
    labels = list(results)
    splits: list[str] = []
    for per in results.values():
        for s in per:
            if s not in splits:
                splits.append(s)
    main_tab = {s: {label: results[label][s][metric] for label in labels if s in results[label]} for s in splits}
    parts = [f"Inter-ocular NME (%) [{metric}], ground truth vs prediction in image pixels",
             format_table(main_tab, columns=labels, row_header="Split")]
    for label in labels:
        rows = {s: {**{c: results[label][s].get(c) for c in METRIC_COLUMNS}, "n": results[label][s]["n"]}
                for s in results[label]}
        parts += ["", f"{label}", format_table(rows, columns=list(METRIC_COLUMNS) + ["n"], percent=list(METRIC_COLUMNS),
                                               row_header="Split")]
    return "\n".join(parts)


def detector_boxes(splits: Mapping[str, Sequence[Sample]], detector: str = "haar", min_iou: float = 0.3,
                   out_file=None) -> tuple[dict, dict]:
    """Run ``detector`` once per image of all ``splits`` and match its boxes to
    the faces. Returns ({split: detected samples}, {split: {"faces",
    "detected", "detection_misses", "detected_fraction"}}); with ``out_file``
    also writes the matched boxes (``--boxes`` format) atomically."""
    from pyflm.face_detection import get_face_detector
    from pyflm.io import write_json_atomic
    from training.fit_detector_crops import detect_faces

    every = {str(s.image_path): s for samples in splits.values() for s in samples}
    samples = list(every.values())
    found = detect_faces(samples, get_face_detector(detector), min_iou)
    box_of = {str(s.image_path): b for s, b in zip(samples, found["boxes"]) if np.isfinite(b).all()}
    kept, stats = {}, {}
    for name, ss in splits.items():
        kept[name] = [s for s in ss if str(s.image_path) in box_of]
        n, d = len(ss), len(kept[name])
        stats[name] = {"faces": n, "detected": d, "detection_misses": n - d, "detected_fraction": d / max(n, 1)}
    if out_file is not None:
        write_json_atomic(out_file, {k: [float(v) for v in b] for k, b in box_of.items()})
    return kept, stats


def _load_rule(path) -> BoxToSquare:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no fitted box rule at {path}: run python -m training.fit_detector_crops first")
    data = json.loads(path.read_text(encoding="utf-8"))
    return BoxToSquare(**data.get("rule", data))


def _model_rule(path, detector: str) -> BoxToSquare:
    """The crop rule ``path``'s model file carries for ``detector``'s boxes (what
    FaceLandmarker uses), else runs/detector_crops/<detector>.json (checkpoints)."""
    from pyflm import deploy
    from pyflm.face_detection import get_face_detector

    try:
        boxes = deploy.load_model_file(path)["meta"].get("crop", {}).get("boxes", {})
    except deploy.ModelFileError:
        boxes = {}
    name = getattr(get_face_detector(detector), "name", detector)
    if name in boxes:
        return BoxToSquare(**boxes[name])
    return _load_rule(f"runs/detector_crops/{detector}.json")


def _model_spec(path, device) -> dict:
    """evaluate_models' entry for a training checkpoint or a pyflm model file
    (pyflm/weights/default.pt, training.calibrate's output): the latter runs its
    deployable predictor's network and decoding, calibration offset included."""
    try:
        ckpt = load_checkpoint(path, map_location="cpu")
    except CheckpointError as e:
        from pyflm import deploy

        try:
            mf = deploy.load_model_file(path)
        except deploy.ModelFileError as e2:
            raise CheckpointError(f"{e} / as a model file: {e2}") from None
        return model_file_spec(mf, device)
    task, cfg = task_from_checkpoint(ckpt, device)
    d = cfg["data"]
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if d["normalize"] == "imagenet" else (None, None)
    return {"predict": task_predictor(task, device), "input_size": int(task.input_size),
            "crop_scale": d["crop_scale"], "crop_center": d["crop_center"], "mean": mean, "std": std}


def model_file_spec(mf: dict, device) -> dict:
    """evaluate_models' entry for a model-file dict: ground-truth crops by the
    model's own rule (meta.crop.landmarks), refinement rounds by its
    meta.crop.refine (if any), normalised as its meta says."""
    from pyflm import deploy

    predictor = deploy.build_predictor(mf).to(device).eval()
    meta = mf["meta"]
    rule, norm = meta["crop"]["landmarks"], meta["normalize"]
    if norm.get("network_channels", "rgb") != "rgb":
        raise ValueError("training.evaluate reads model files whose network takes RGB (meta.normalize.network_channels)")

    def predict(batch):
        return predictor.decode(predictor.net(batch["image"].to(device)))[0]

    refine = meta["crop"].get("refine", rule)  # the square refinement rounds cut (FaceLandmarker's)
    return {"predict": predict, "input_size": int(meta["input_size"]), "crop_scale": float(rule["scale"]),
            "crop_center": str(rule["center"]), "mean": tuple(norm["mean"]), "std": tuple(norm["std"]),
            "refine_scale": float(refine.get("scale", rule["scale"])),
            "refine_center": str(refine.get("center", rule["center"]))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", nargs="+", required=True,
                   help="one or more training checkpoints (best.pt / last.pt) or pyflm model files")
    p.add_argument("--splits", nargs="+", default=["common", "helen-test", "lfpw-test"])
    p.add_argument("--crops", choices=("gt", "detector"), default="gt")
    p.add_argument("--boxes", default=None, help="boxes JSON for --crops detector")
    p.add_argument("--detector", default=None, help="face detector for --crops detector (e.g. haar)")
    p.add_argument("--rule", default=None,
                   help="fitted box rule JSON (default: the model file's own rule for the detector, as "
                        "FaceLandmarker uses; for a checkpoint runs/detector_crops/<detector>.json)")
    p.add_argument("--refine", type=int, default=0, metavar="N",
                   help="refinement rounds after the first pass: re-crop each face from its predicted landmarks "
                        "and predict again, as FaceLandmarker(refine=N) does (default 0)")
    p.add_argument("--out", default=None)
    p.add_argument("--root", default=None, help="data root (default PYFLM_DATA or ../shared/data)")
    p.add_argument("--device", default=None)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (0 = load in this process)")
    args = p.parse_args(argv)
    if args.refine < 0:
        p.error(f"--refine must be >= 0, got {args.refine}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        crops, rule, det_stats = args.crops, None, None
        crops_label = "ground-truth crops (each model's training crop rule)"
        splits = {name: load_split(name, root=args.root) for name in args.splits}
        out = Path(args.out) if args.out else Path(args.checkpoint[0]).parent / "eval"
        if args.crops == "detector":
            if args.detector is not None:
                rule = _load_rule(args.rule) if args.rule else _model_rule(args.checkpoint[0], args.detector)
                boxes_file = out / f"boxes_{args.detector}.json"
                splits, det_stats = detector_boxes(splits, args.detector, out_file=boxes_file)
                crops, _ = load_boxes(boxes_file)
                crops_label = f"detector crops: {args.detector} face boxes, its fitted crop rule"
            elif args.boxes is None:
                _crop_fn("detector")
            else:
                crops, rule = load_boxes(args.boxes)
                crops_label = f"detector crops: boxes from {args.boxes}"
        models = {}
        for path in args.checkpoint:
            label = Path(path).parent.name or Path(path).stem
            if label in models:
                label = f"{label}/{Path(path).stem}"
            models[label] = _model_spec(path, device)
        extra = None
        if det_stats is not None:
            extra = {"detector": {"name": args.detector, "rule": dataclasses.asdict(rule), "splits": det_stats}}
        results = evaluate_models(models, splits, out, crops=crops, boxes_rule=rule, batch_size=args.batch_size,
                                  num_workers=args.workers, extra_meta=extra, crops_label=crops_label,
                                  refine=args.refine)
        if det_stats is not None:
            print(f"\n{args.detector} detections (faces missed are not in the NME):")
            for name, st in det_stats.items():
                print(f"  {name}: {st['detected']}/{st['faces']} detected, {st['detection_misses']} missed")
            for label in results:  # the detection stats beside each model's metrics
                for name, st in det_stats.items():
                    results[label][name].update(st)
        print(f"\nwrote {out / 'results.json'} and CED plots to {out}")
    except NotImplementedError as e:
        print(f"training.evaluate: {e}", file=sys.stderr)
        return 3
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"training.evaluate: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
