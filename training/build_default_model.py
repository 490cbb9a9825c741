"""Train, evaluate and package pyflm's bundled models in one command.

    python -m training.build_default_model [--model default|fast] [--out runs/default]
        [--skip-train] [--stage1 FILE] [--from-stage N] [--final FILE] [--detectors NAME...]
        [--device cpu|cuda] [--root DATA]

Steps (each writes under ``--out``; a finished step's outputs are reused with
``--skip-train`` / when present):

1. ``training.train --config training/configs/default.toml`` (the compact
   heatmap model, 300-W train minus a held-out 10%, crops centred at the
   landmarks' centroid) into ``--out``; ``--stage1 FILE`` skips it and starts
   stage 2 from FILE's weights instead (a checkpoint or model file, e.g. a
   copy of the bundled model this stage once produced);
2. ``training.train --config training/configs/default_box.toml``, initialised
   from stage 1: fine-tuned on crops centred at the landmarks' box centre, the
   centre a face box determines, into ``--out``/box;
   ``training/configs/default_long.toml``, initialised from stage 2's best: one
   more learning-rate cycle on the same crops, into ``--out``/long (the final
   stage of ``--model default``); ``--model fast`` adds three:
   ``training/configs/fast.toml``, initialised from that: the same network
   fine-tuned at 128 px input, into ``--out``/fast;
   ``training/configs/fast_slim.toml``: that network's inverted residuals
   pruned to half their hidden width (``training/prune_compact.py``, written
   to ``--out``/slim/pruned.pt) and fine-tuned, into ``--out``/slim; and
   ``training/configs/fast_slim_long.toml``, one more learning-rate cycle,
   into ``--out``/slim_long; and ``training/configs/fast_swa.toml``, Adam at a
   constant learning rate with a snapshot every 200 steps, into ``--out``/swa,
   whose second half's snapshots ``training.average`` averages into
   ``--out``/swa/averaged.pt (stochastic weight averaging); and
   ``training/configs/fast_distill.toml``, distilled from the ensemble of the
   default's final stage (``--out``/long) and that average, into
   ``--out``/distill (e.g. ``--model fast --from-stage 4`` when the default's
   stages exist);
3. ``training.fit_detector_crops --detector NAME --center box`` on the 300-W
   train images for each of ``--detectors`` (default ``haar dlib-hog``; dlib's
   detector needs ``pip install dlib-bin``, checked before any training): each
   detector's box -> crop rule (and the tight-landmark-box rule);
4. ``training.calibrate`` of the final stage's ``best.pt`` (``averaged.pt``
   for an averaging stage; ``--final FILE``:
   of FILE instead, e.g. an existing bundled model, with no training): the
   per-landmark offset fitted on the held-out 10%, into ``calibrated.pt``;
5. ``training.fit_inference_crops`` of ``calibrated.pt`` on the same held-out
   photos: the square refinement rounds cut around predicted landmarks (larger
   than the training square: the augmentation trained the network on smaller
   faces), the tight-box scale, and each detector's rule scaled to that square
   (``inference_crops.json``; ``calibrated.pt`` with them: ``with_crops.pt``);
6. ``training.evaluate`` of ``with_crops.pt`` on the 300-W common, HELEN
   and LFPW test sets, with ground-truth crops and with each detector's crops
   followed by the refinement rounds ``FaceLandmarker.detect`` gives detected
   faces by default (``--refine 2``), so the model card shows what a user gets;
7. the model file ``pyflm/weights/<model>.pt`` (:mod:`pyflm.deploy` format):
   weights, calibration offset, the fitted crop rules and the measured accuracy
   in its meta, so ``pyflm info`` shows them.

The data are the 300-W images in ``../shared/data`` (or ``--root``); their
licence (non-commercial research) carries over to the weights.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pyflm import deploy

__all__ = ["package", "main"]

DATA_LICENCE = ("Trained on the 300-W training images (AFW, HELEN, LFPW; iBUG annotations), which are licensed "
                "for non-commercial research only; the weights carry the same restriction.")
SPLITS = ("common", "helen-test", "lfpw-test")
DEFAULT_OUT = "runs/default"  # --out; training/configs/fast_distill.toml names files under it
# (config, run folder under --out): each stage starts from the previous one's best.pt
STAGES = (("training/configs/default.toml", "."), ("training/configs/default_box.toml", "box"),
          ("training/configs/default_long.toml", "long"))
PRUNE = "prune"  # a stage's third item: start from the previous weights pruned to its model.expand
AVERAGE = "average"  # a stage's third item: its weights are the mean of its second half's snapshots (SWA)
# the bundled models (pyflm.deploy.BUNDLED_MODELS) and their stages: "fast" is the
# default's network fine-tuned at 128 px from its final stage, then pruned to half
# the hidden width, fine-tuned in two cycles, weight-averaged and distilled
FAST_STAGES = (("training/configs/fast.toml", "fast"), ("training/configs/fast_slim.toml", "slim", PRUNE),
               ("training/configs/fast_slim_long.toml", "slim_long"),
               ("training/configs/fast_swa.toml", "swa", AVERAGE),
               ("training/configs/fast_distill.toml", "distill"))
# a stage (by folder) distilled from the final weights of earlier stages (by folder), given
# as --teacher: the networks the config's distill.teacher names as bundled files
TEACHERS = {"distill": ("long", "swa")}
MODEL_STAGES = {"default": STAGES, "fast": STAGES + FAST_STAGES}
# the face detectors whose box -> crop rules the model file carries, each evaluated for the
# model card; the first one's figures also fill meta.crop.fitted_on (the default detector)
DETECTORS = ("haar", "dlib-hog")
KEPT = ("nme", "eye_nme", "fr@0.08", "fr@0.1", "auc@0.08", "n", "detected", "detection_misses", "detected_fraction")


def _metrics(results_file: Path) -> dict:
    data = json.loads(Path(results_file).read_text(encoding="utf-8"))
    (label,) = [k for k in data if not k.startswith("_")]
    out = {split: {k: m[k] for k in KEPT if k in m} for split, m in data[label].items()}
    det = data.get("_meta", {}).get("detector")
    if det:
        for split, st in det["splits"].items():
            out.setdefault(split, {}).update(st)
    return out


def _pruned_init(source: str, config: str, folder: Path) -> Path:
    """``folder``/pruned.pt: ``source``'s compact net pruned to ``config``'s
    ``model.expand`` (training/prune_compact.py), to start that stage from."""
    from training.config import load_config
    from training.prune_compact import prune_model_file

    return prune_model_file(source, float(load_config(config)["model"]["expand"]), folder / "pruned.pt")


def _weights(stage: tuple, folder: Path) -> Path:
    """The weights a finished stage hands on: its best.pt, or for an AVERAGE stage averaged.pt."""
    return folder / ("averaged.pt" if AVERAGE in stage[2:] else "best.pt")


def _average_snapshots(config: str, folder: Path, dev: list, root: list) -> int:
    """training.average of the snapshots (train.keep_every) of the second half of
    the stage's run, steps >= max_steps / 2 (the first half is SWA's burn-in)."""
    from training import average
    from training.config import load_config

    half = load_config(config)["train"]["max_steps"] / 2
    snaps = sorted(p for p in folder.glob("step_*.pt") if int(p.stem.split("_")[1]) >= half)
    if not snaps:
        print(f"training.build_default_model: error: no snapshots from step {half:g} on in {folder} "
              f"(does {config} set train.keep_every?)", file=sys.stderr)
        return 2
    return average.main(["--models", *map(str, snaps), "--out", str(folder / "averaged.pt"), *dev, *root])


def package(checkpoint, rules_files, out_file, eval_gt=None, eval_detectors=None, stages=STAGES,
            inference_crops=None) -> Path:
    """Write the bundled model file from a training checkpoint, the fitted crop
    rules (one fit_detector_crops JSON, or a list: one per detector) and
    evaluation results (evaluate JSON): ``eval_gt`` with ground-truth crops,
    ``eval_detectors`` with detector crops (one file, the first detector's, or a
    list aligned with the rules, None where a detector was not evaluated).
    ``inference_crops`` (training.fit_inference_crops JSON): the refinement
    square (meta.crop.refine), the tight rule and the detectors' rules scaled
    to it replace the training-square ones."""
    mf = deploy.load_model_file(checkpoint)
    meta = mf["meta"]
    files = [rules_files] if isinstance(rules_files, (str, Path)) else list(rules_files)
    fits = [json.loads(Path(f).read_text(encoding="utf-8")) for f in files]
    rules = fits[0]
    meta["crop"]["boxes"]["tight"] = rules["tight_rule"]
    for fit in fits:
        meta["crop"]["boxes"][fit["detector"]] = fit["rule"]
    if inference_crops:
        inf = json.loads(Path(inference_crops).read_text(encoding="utf-8"))
        missing = [fit["detector"] for fit in fits if fit["detector"] not in inf["rules"]]
        if missing:
            raise ValueError(f"{inference_crops} has no scaled rule for {missing}")
        meta["crop"]["boxes"]["tight"] = inf["tight_rule"]
        meta["crop"]["boxes"].update({fit["detector"]: inf["rules"][fit["detector"]] for fit in fits})
        meta["crop"]["refine"] = {
            **inf["refine"], "fitted_on": inf["fitted_on"]["photos"], "faces": inf["fitted_on"]["faces"],
            "note": (f"refinement rounds and video tracking cut this square around the predicted landmarks; it and "
                     f"the tight-box scale were chosen by mean NME on these photos ({inf['rounds']} rounds from each "
                     f"detector's boxes, one pass from tight boxes); each detector's rule is its fitted one (which "
                     f"targets the {inf['training_scale']:g} training square) scaled by {inf['refine']['scale']:g} / "
                     f"{inf['training_scale']:g}, so its first crop is framed like the rounds'"),
            "nme": {"refine": inf["grid"]["refine_nme"], "tight": inf["grid"]["tight_nme"]}}
    meta["crop"]["fitted_on"] = {"split": rules.get("split"), "detected_fraction": rules["fit"]["detected_fraction"]}
    if len(fits) > 1:  # the first detector's figures stay where they were; every detector's beside them
        meta["crop"]["fitted_on"]["detectors"] = {
            fit["detector"]: {"split": fit.get("split"), "detected_fraction": fit["fit"]["detected_fraction"]}
            for fit in fits}
    metrics = {}
    if eval_gt:
        metrics["gt_crops"] = _metrics(eval_gt)
    evals = [eval_detectors] if isinstance(eval_detectors, (str, Path)) else list(eval_detectors or [])
    if len(evals) > len(fits):
        raise ValueError(f"{len(evals)} detector evaluations for {len(fits)} crop rules")
    rounds_of = {}  # refinement rounds -> the metrics keys measured with them
    for fit, results in zip(fits, evals):
        if results:
            metrics[f"{fit['detector']}_crops"] = _metrics(results)
            rounds = json.loads(Path(results).read_text(encoding="utf-8")).get("_meta", {}).get("refine", 0)
            rounds_of.setdefault(rounds, []).append(f"{fit['detector']}_crops")
    meta["metrics"] = metrics
    meta["metrics_note"] = "fractions; nme = inter-ocular (outer eye corners 36, 45); 300-W test sets"
    for rounds, keys in rounds_of.items():
        whose = "the detector's" if len(keys) == 1 else "each detector's"
        meta["metrics_note"] += (f"; {', '.join(keys)}: {whose} boxes by its fitted crop rule, then "
                                 f"{rounds} refinement round{'' if rounds == 1 else 's'} from the predicted landmarks")
    meta["licence"] = DATA_LICENCE
    meta["training"]["source"] = " then ".join(
        stage[0] + (" (pruned)" if PRUNE in stage[2:] else "") + (" (snapshots averaged)" if AVERAGE in stage[2:] else "")
        for stage in stages)
    return deploy.save_model_file(out_file, mf["task"], mf["model_kwargs"], mf["state_dict"], meta)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.build_default_model", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(MODEL_STAGES), default="default",
                   help="which bundled model to build (default: default; fast adds 128 px stages after it)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"run folder (default {DEFAULT_OUT})")
    p.add_argument("--model-out", default=None,
                   help="model file to write (default: the bundled pyflm/weights/<model>.pt)")
    p.add_argument("--skip-train", action="store_true", help="use the final stage's weights as they are")
    p.add_argument("--stage1", default=None, metavar="FILE",
                   help="start stage 2 from these weights instead of training stage 1 (with --from-stage N: "
                        "start stage N from them)")
    p.add_argument("--from-stage", type=int, default=None, metavar="N",
                   help="skip the stages before N (their best.pt must exist); default 1, or 2 with --stage1")
    p.add_argument("--final", default=None, metavar="FILE",
                   help="the final stage's weights (checkpoint or model file) instead of training: recalibrate, "
                        "re-evaluate and repackage them (outputs under --out)")
    p.add_argument("--detectors", nargs="+", default=list(DETECTORS), metavar="NAME",
                   help=f"face detectors to fit crop rules for and evaluate (default: {' '.join(DETECTORS)}; "
                        "dlib-hog needs dlib: pip install dlib-bin)")
    p.add_argument("--device", default=None)
    p.add_argument("--root", default=None, help="data root (default PYFLM_DATA or ../shared/data)")
    args = p.parse_args(argv)
    if args.final is not None:  # before the minutes of fitting crop rules, not after
        try:
            deploy.load_model_file(args.final)
        except deploy.ModelFileError as e:
            p.error(f"--final: {e}")
    from pyflm import face_detection

    for name in args.detectors:  # now, not after the hours of training
        if name not in face_detection.DETECTOR_NAMES:
            valid = ", ".join(face_detection.DETECTOR_NAMES)
            p.error(f"--detectors: unknown detector {name!r}; valid names: {valid}")
        try:
            face_detection.get_face_detector(name)
        except ImportError as e:
            p.error(f"--detectors {name}: {e} (or leave it out: --detectors haar)")
    stages = MODEL_STAGES[args.model]
    model_out = args.model_out or str(deploy.bundled_model_path(args.model))
    out = Path(args.out)
    root = ["--root", args.root] if args.root else []
    from training import calibrate, evaluate, fit_detector_crops, train
    from training.config import load_config

    dev = ["--device", args.device] if args.device else []
    folders = [out / stage[1] for stage in stages]
    final = folders[-1]
    first = args.from_stage if args.from_stage is not None else (2 if args.stage1 else 1)
    if not 1 <= first <= len(stages):
        p.error(f"--from-stage must be 1..{len(stages)}, got {first}")
    if args.final is not None:
        final.mkdir(parents=True, exist_ok=True)
    elif not args.skip_train:
        weights_of = {stage[1]: _weights(stage, f) for stage, f in zip(stages, folders)}  # by folder name
        for i in range(first - 1, len(stages)):
            init = ([] if i == 0 else
                    ["--init-from", args.stage1 if (args.stage1 and i == first - 1)
                     else str(_weights(stages[i - 1], folders[i - 1]))])
            folder = folders[i]
            resume = ["--resume"] if (folder / "last.pt").is_file() else []  # an interrupted run goes on
            if PRUNE in stages[i][2:] and init and not resume:
                init = ["--init-from", str(_pruned_init(init[1], stages[i][0], folder))]
            teach = (["--teacher", *(str(weights_of[name]) for name in TEACHERS[stages[i][1]])]
                     if stages[i][1] in TEACHERS else [])
            rc = train.main(["--config", stages[i][0], "--out", str(folder), *resume, *dev, *init, *teach])
            if not rc and AVERAGE in stages[i][2:]:
                rc = _average_snapshots(stages[i][0], folder, dev, root)
            if rc:
                return rc
    center = load_config(stages[-1][0])["data"]["crop_center"]
    rule_files = [final / "detector_crops" / f"{name}.json" for name in args.detectors]
    for name, rules in zip(args.detectors, rule_files):
        if not rules.is_file():
            rc = fit_detector_crops.main(["--detector", name, "--split", "300w-train", "--center", center,
                                          "--out", str(rules), *root])
            if rc:
                return rc
    calibrated = final / "calibrated.pt"
    rc = calibrate.main(["--model", args.final or str(_weights(stages[-1], final)), "--out", str(calibrated),
                         *dev, *root])
    if rc:
        return rc
    from pyflm.landmarker import AUTO_REFINE_ROUNDS
    from pyflm.io import write_json_atomic
    from training import fit_inference_crops

    inference = final / "inference_crops.json"  # the refinement square, fitted on the held-out photos
    rc = fit_inference_crops.main(["--model", str(calibrated), "--rules", *map(str, rule_files), "--out",
                                   str(inference), "--rounds", str(AUTO_REFINE_ROUNDS), *root])
    if rc:
        return rc
    # what the model file will hold, to evaluate: its crops, no metrics yet
    with_crops = package(calibrated, rule_files, final / "with_crops.pt", stages=stages, inference_crops=inference)
    scaled = json.loads(inference.read_text(encoding="utf-8"))["rules"]
    eval_rules = []
    for name in args.detectors:
        eval_rules.append(final / "detector_crops" / f"{name}.inference.json")
        write_json_atomic(eval_rules[-1], {"detector": name, "rule": scaled[name]})
    # ground-truth crops, then each detector's crops with the rounds detect() gives them
    runs = [("eval", [])] + [(f"eval-{name}", ["--detector", name, "--rule", str(rules), "--refine",
                                               str(AUTO_REFINE_ROUNDS)]) for name, rules in zip(args.detectors, eval_rules)]
    for folder, extra in runs:
        rc = evaluate.main(["--checkpoint", str(with_crops), "--splits", *SPLITS,
                            "--crops", "detector" if extra else "gt", *extra, "--out", str(final / folder), *dev, *root])
        if rc:
            return rc
    path = package(calibrated, rule_files, model_out, final / "eval" / "results.json",
                   [final / folder / "results.json" for folder, _ in runs[1:]], stages, inference_crops=inference)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
