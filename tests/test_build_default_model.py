"""training.build_default_model: the stages run in order, each from the previous
stage's best weights (train / fit / evaluate / package stubbed out)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training import build_default_model as bdm


@pytest.fixture
def calls(monkeypatch, tmp_path):
    from pyflm import face_detection
    from training import calibrate, evaluate, fit_detector_crops, fit_inference_crops, train

    log = []
    monkeypatch.setattr(train, "main", lambda argv: log.append(("train", argv)) or 0)
    monkeypatch.setattr(calibrate, "main", lambda argv: log.append(("calibrate", argv)) or 0)
    monkeypatch.setattr(fit_detector_crops, "main", lambda argv: log.append(("fit", argv)) or 0)
    monkeypatch.setattr(evaluate, "main", lambda argv: log.append(("eval", argv)) or 0)

    def fit_inference(argv):  # writes what the real one would: each detector's rule scaled to the square
        log.append(("fit_inference", argv))
        names = [Path(f).stem for f in argv[argv.index("--rules") + 1:argv.index("--out")]]
        Path(argv[argv.index("--out") + 1]).parent.mkdir(parents=True, exist_ok=True)
        Path(argv[argv.index("--out") + 1]).write_text(json.dumps(
            {"rules": {n: {"dx": 0.0, "dy": 0.0, "scale": 1.5, "size": "max"} for n in names}}))
        return 0

    monkeypatch.setattr(fit_inference_crops, "main", fit_inference)
    # logged as the positional arguments, then the keyword ones as a dict
    monkeypatch.setattr(bdm, "package", lambda *a, **k: log.append(("package", (*a, k))) or Path(a[2]))
    # the up-front check that each detector can be built (dlib may be missing here)
    monkeypatch.setattr(face_detection, "get_face_detector", lambda name: log.append(("detector", name)))
    return log


def _trains(log):
    return [(argv[argv.index("--config") + 1], argv[argv.index("--out") + 1],
             argv[argv.index("--init-from") + 1] if "--init-from" in argv else None)
            for what, argv in log if what == "train"]


def test_stages_chain_their_weights(calls, tmp_path):
    out = tmp_path / "run"
    assert bdm.main(["--out", str(out), "--model-out", str(tmp_path / "m.pt")]) == 0
    configs = [c for c, _ in bdm.STAGES]
    folders = [str(out / sub) for _, sub in bdm.STAGES]
    assert _trains(calls) == [(configs[0], folders[0], None)] + [
        (configs[i], folders[i], f"{folders[i - 1]}/best.pt") for i in range(1, len(configs))]
    # the final stage's best.pt is calibrated, and the calibrated file is evaluated and packaged
    (cal,) = [argv for what, argv in calls if what == "calibrate"]
    calibrated = f"{folders[-1]}/calibrated.pt"
    assert cal[cal.index("--model") + 1] == f"{folders[-1]}/best.pt" and cal[cal.index("--out") + 1] == calibrated
    evals = [argv for what, argv in calls if what == "eval"]
    # evaluated as the model file will be: the calibrated weights with the fitted inference crops
    (inf,) = [argv for what, argv in calls if what == "fit_inference"]
    inference = f"{folders[-1]}/inference_crops.json"
    assert inf[inf.index("--model") + 1] == calibrated and inf[inf.index("--out") + 1] == inference
    assert inf[inf.index("--rounds") + 1] == "2"
    with_crops = [a for what, a in calls if what == "package"][0]
    assert str(with_crops[0]) == calibrated and str(with_crops[2]) == f"{folders[-1]}/with_crops.pt"
    assert str(with_crops[-1]["inference_crops"]) == inference
    assert len(evals) == 3 and all(argv[argv.index("--checkpoint") + 1] == str(with_crops[2]) for argv in evals)
    # detected faces are evaluated after the refinement rounds detect() gives them by default
    from pyflm.landmarker import AUTO_REFINE_ROUNDS

    assert "--refine" not in evals[0] and evals[0][evals[0].index("--crops") + 1] == "gt"
    assert all(e[e.index("--refine") + 1] == str(AUTO_REFINE_ROUNDS) for e in evals[1:])
    assert [what for what, _ in calls[-7:]] == ["calibrate", "fit_inference", "package", "eval", "eval", "eval",
                                                "package"]
    assert str(calls[-1][1][0]) == calibrated
    # a crop rule per detector, checked before any training, and each detector's crops evaluated
    assert [a for what, a in calls if what == "detector"] == list(bdm.DETECTORS) == ["haar", "dlib-hog"]
    assert [what for what, _ in calls].index("train") > 1
    fits = [argv for what, argv in calls if what == "fit"]
    rules = [f"{folders[-1]}/detector_crops/{name}.json" for name in bdm.DETECTORS]
    assert [(f[f.index("--detector") + 1], f[f.index("--out") + 1]) for f in fits] == list(zip(bdm.DETECTORS, rules))
    assert inf[inf.index("--rules") + 1:inf.index("--out")] == rules
    # the detectors are evaluated with their rules scaled to the refinement square
    scaled = [f"{folders[-1]}/detector_crops/{name}.inference.json" for name in bdm.DETECTORS]
    assert [(e[e.index("--crops") + 1], e[e.index("--detector") + 1], e[e.index("--rule") + 1],
             e[e.index("--out") + 1]) for e in evals[1:]] == [
        ("detector", name, rule, f"{folders[-1]}/eval-{name}") for name, rule in zip(bdm.DETECTORS, scaled)]
    assert all(json.loads(Path(f).read_text())["rule"]["scale"] == 1.5 for f in scaled)
    package_args = calls[-1][1]
    assert str(package_args[-1]["inference_crops"]) == inference
    assert [str(r) for r in package_args[1]] == rules and str(package_args[3]) == f"{folders[-1]}/eval/results.json"
    assert [str(r) for r in package_args[4]] == [f"{folders[-1]}/eval-{name}/results.json" for name in bdm.DETECTORS]


def test_detectors_option(calls, tmp_path, monkeypatch, capsys):
    from pyflm import face_detection

    out, model = str(tmp_path / "run"), str(tmp_path / "m.pt")
    assert bdm.main(["--out", out, "--model-out", model, "--detectors", "haar"]) == 0
    assert [argv[argv.index("--detector") + 1] for what, argv in calls if what == "fit"] == ["haar"]
    with pytest.raises(SystemExit):
        bdm.main(["--out", out, "--model-out", model, "--detectors", "mtcnn"])
    assert "unknown detector 'mtcnn'" in capsys.readouterr().err

    def no_dlib(name):
        raise ImportError("the 'dlib-hog' face detector needs dlib: pip install dlib-bin")

    monkeypatch.setattr(face_detection, "get_face_detector", no_dlib)
    n = len(calls)
    with pytest.raises(SystemExit):
        bdm.main(["--out", out, "--model-out", model])
    err = capsys.readouterr().err
    assert "pip install dlib-bin" in err and "--detectors haar" in err
    assert len(calls) == n  # nothing trained or fitted


def test_final_file_skips_training(calls, tmp_path, capsys):
    from pyflm import deploy

    out = tmp_path / "run"
    final = str(deploy.default_model_path())
    assert bdm.main(["--out", str(out), "--final", final, "--model-out", str(tmp_path / "m.pt")]) == 0
    assert _trains(calls) == []
    (cal,) = [argv for what, argv in calls if what == "calibrate"]
    assert cal[cal.index("--model") + 1] == final
    assert str(calls[-1][1][0]) == str(out / bdm.STAGES[-1][1] / "calibrated.pt")
    calls.clear()
    with pytest.raises(SystemExit):  # a missing file is reported before any step runs
        bdm.main(["--out", str(out), "--final", str(tmp_path / "nope.pt")])
    assert calls == [] and "--final: model file not found" in capsys.readouterr().err


def test_stage1_file_and_from_stage(calls, tmp_path):
    out = tmp_path / "run"
    folders = [str(out / sub) for _, sub in bdm.STAGES]
    assert bdm.main(["--out", str(out), "--stage1", "w.pt"]) == 0
    trains = _trains(calls)
    assert [t[1] for t in trains] == folders[1:] and trains[0][2] == "w.pt" and trains[1][2] == f"{folders[1]}/best.pt"
    calls.clear()
    last = len(bdm.STAGES)
    assert bdm.main(["--out", str(out), "--from-stage", str(last)]) == 0
    assert _trains(calls) == [(bdm.STAGES[-1][0], folders[-1], f"{folders[-2]}/best.pt")]
    calls.clear()
    assert bdm.main(["--out", str(out), "--skip-train"]) == 0 and _trains(calls) == []
    with pytest.raises(SystemExit):
        bdm.main(["--out", str(out), "--from-stage", "0"])


def test_fast_model_is_five_more_stages(calls, tmp_path, monkeypatch):
    from pyflm import deploy

    monkeypatch.setattr(bdm, "_pruned_init", lambda src, cfg, folder: folder / "pruned.pt")
    averaged = []
    monkeypatch.setattr(bdm, "_average_snapshots", lambda cfg, folder, dev, root: averaged.append((cfg, folder)) or 0)
    out = tmp_path / "run"
    stages = bdm.MODEL_STAGES["fast"]
    assert stages[:-5] == bdm.STAGES and [s[0] for s in stages[-5:]] == [
        "training/configs/fast.toml", "training/configs/fast_slim.toml", "training/configs/fast_slim_long.toml",
        "training/configs/fast_swa.toml", "training/configs/fast_distill.toml"]
    assert bdm.main(["--model", "fast", "--out", str(out), "--from-stage", str(len(bdm.STAGES) + 1)]) == 0
    assert _trains(calls) == [(stages[-5][0], str(out / "fast"), str(out / "long" / "best.pt")),
                              (stages[-4][0], str(out / "slim"), str(out / "slim" / "pruned.pt")),
                              (stages[-3][0], str(out / "slim_long"), str(out / "slim" / "best.pt")),
                              (stages[-2][0], str(out / "swa"), str(out / "slim_long" / "best.pt")),
                              (stages[-1][0], str(out / "distill"), str(out / "swa" / "averaged.pt"))]
    assert averaged == [(stages[-2][0], out / "swa")]  # after its training, and only for it
    # only the distillation stage gets teachers: the default's final weights and the average
    teachers = [argv[argv.index("--teacher") + 1:] if "--teacher" in argv else None
                for what, argv in calls if what == "train"]
    assert teachers == [None] * 4 + [[str(out / "long" / "best.pt"), str(out / "swa" / "averaged.pt")]]
    evals = [argv for what, argv in calls if what == "eval"]
    (cal,) = [argv for what, argv in calls if what == "calibrate"]
    assert cal[cal.index("--model") + 1] == str(out / "distill" / "best.pt")
    assert evals and all(argv[argv.index("--checkpoint") + 1] == str(out / "distill" / "with_crops.pt")
                         for argv in evals)
    package_args = calls[-1][1]
    assert package_args[2] == str(deploy.bundled_model_path("fast")) and package_args[-2] == stages


def test_fast_distill_config_matches_its_stage():
    """Run by hand, the config distils from the files the pipeline (its default
    --out, runs/default) hands its distill stage: TEACHERS' final weights, and the
    previous stage's as the start (not the bundled fast.pt: this stage's own result)."""
    from training.config import load_config

    cfg = load_config("training/configs/fast_distill.toml")
    stages = {stage[1]: stage for stage in bdm.MODEL_STAGES["fast"]}
    out = Path(bdm.DEFAULT_OUT)
    want = [str(bdm._weights(stages[name], out / name)) for name in bdm.TEACHERS["distill"]]
    assert cfg["distill"]["teacher"] == want == ["runs/default/long/best.pt", "runs/default/swa/averaged.pt"]
    assert [stage[1] for stage in bdm.MODEL_STAGES["fast"][-2:]] == ["swa", "distill"]
    assert cfg["train"]["init_from"] == want[1]


def test_pruning_stage_starts_from_the_pruned_previous_weights(calls, tmp_path, monkeypatch):
    """A stage marked "prune" trains from the previous stage's best.pt pruned to
    its config's model.expand (written to <folder>/pruned.pt); resuming skips it."""
    pruned = []
    monkeypatch.setattr(bdm, "_pruned_init", lambda src, cfg, folder: pruned.append((src, cfg)) or folder / "pruned.pt")
    stages = bdm.STAGES + (("training/configs/fast_slim.toml", "slim", bdm.PRUNE),)
    monkeypatch.setitem(bdm.MODEL_STAGES, "fast", stages)
    out = tmp_path / "run"
    assert bdm.main(["--model", "fast", "--out", str(out), "--from-stage", str(len(stages)),
                     "--model-out", str(tmp_path / "m.pt")]) == 0
    assert pruned == [(str(out / "long" / "best.pt"), "training/configs/fast_slim.toml")]
    assert _trains(calls) == [(stages[-1][0], str(out / "slim"), str(out / "slim" / "pruned.pt"))]
    (out / "slim").mkdir(parents=True, exist_ok=True)  # the run above wrote its inference crops there
    (out / "slim" / "last.pt").write_bytes(b"")
    calls.clear()
    pruned.clear()
    assert bdm.main(["--model", "fast", "--out", str(out), "--from-stage", str(len(stages)),
                     "--model-out", str(tmp_path / "m.pt")]) == 0
    assert pruned == [] and "--resume" in [a for what, argv in calls if what == "train" for a in argv]


def test_pruned_init_reads_the_configs_expand(tmp_path):
    from pyflm import deploy
    from pyflm.models.compact import CompactHeatmapNet

    net = CompactHeatmapNet(num_landmarks=68, input_size=128, width=0.5, decoder_channels=16)
    src = deploy.save_model_file(tmp_path / "src.pt", "compact", net.init_kwargs, net.state_dict(),
                                 deploy.default_meta("compact", 128, 68, 4))
    path = bdm._pruned_init(str(src), "training/configs/fast_slim.toml", tmp_path / "slim")
    assert path == tmp_path / "slim" / "pruned.pt" and deploy.load_model_file(path)["model_kwargs"]["expand"] == 2.0


def test_averaging_stage_averages_its_second_half(tmp_path, monkeypatch, capsys):
    """_average_snapshots hands training.average the snapshots from max_steps / 2 on,
    in step order, and fails with a clear message when there are none."""
    from training import average

    got = []
    monkeypatch.setattr(average, "main", lambda argv: got.append(argv) or 0)
    folder = tmp_path / "swa"
    folder.mkdir()
    for step in (200, 1200, 2400, 1400):  # fast_swa.toml: 2,400 steps
        (folder / f"step_{step:07d}.pt").write_bytes(b"")
    assert bdm._average_snapshots("training/configs/fast_swa.toml", folder, [], []) == 0
    (argv,) = got
    models = argv[argv.index("--models") + 1:argv.index("--out")]
    assert models == [str(folder / f"step_{s:07d}.pt") for s in (1200, 1400, 2400)]
    assert argv[argv.index("--out") + 1] == str(folder / "averaged.pt")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert bdm._average_snapshots("training/configs/fast_swa.toml", empty, [], []) == 2
    assert "no snapshots from step 1200 on" in capsys.readouterr().err


def _source_model(tmp_path):
    """A small untrained model file and a Haar fit_detector_crops JSON (rules.json) for package()."""
    from pyflm import deploy
    from pyflm.models.compact import CompactHeatmapNet

    net = CompactHeatmapNet(num_landmarks=68, input_size=128, width=0.5, decoder_channels=16)
    meta = deploy.default_meta("compact", 128, 68, 4)
    meta["training"] = {}
    src = deploy.save_model_file(tmp_path / "src.pt", "compact", net.init_kwargs, net.state_dict(), meta)
    rules = {"detector": "haar", "rule": {"dx": 0.01, "dy": 0.15, "scale": 1.1, "size": "max"},
             "tight_rule": {"dx": 0.0, "dy": 0.0, "scale": 1.3, "size": "max"}, "split": "300w-train",
             "fit": {"detected_fraction": 0.9}}
    (tmp_path / "rules.json").write_text(json.dumps(rules))
    return src, rules


def test_package_writes_the_card(tmp_path):
    """package(): crop rules, both evaluations and the refinement rounds of the
    detector rows go into the model file's meta."""
    import json

    from pyflm import deploy

    src, rules = _source_model(tmp_path)
    common = {"nme": 0.04, "eye_nme": 0.03, "fr@0.08": 0.01, "fr@0.1": 0.0, "auc@0.08": 0.5, "n": 3, "extra": 1}
    (tmp_path / "gt.json").write_text(json.dumps({"m": {"common": common}, "_meta": {"refine": 0}}))
    det_stats = {"common": {"faces": 4, "detected": 3, "detection_misses": 1, "detected_fraction": 0.75}}
    (tmp_path / "det.json").write_text(json.dumps({"m": {"common": common},
                                                   "_meta": {"refine": 2, "detector": {"splits": det_stats}}}))
    out = bdm.package(src, tmp_path / "rules.json", tmp_path / "out.pt", tmp_path / "gt.json", tmp_path / "det.json")
    got = deploy.load_model_file(out)["meta"]
    assert got["crop"]["boxes"]["haar"] == rules["rule"] and got["crop"]["boxes"]["tight"] == rules["tight_rule"]
    assert got["metrics"]["gt_crops"]["common"] == {k: v for k, v in common.items() if k != "extra"}
    assert got["metrics"]["haar_crops"]["common"]["detection_misses"] == 1
    assert "haar_crops: the detector's boxes by its fitted crop rule, then 2 refinement rounds" in got["metrics_note"]
    assert got["crop"]["fitted_on"] == {"split": "300w-train", "detected_fraction": 0.9}
    # several detectors: each one's rule; the first one's figures where they were, all beside them
    hog = {**rules, "detector": "dlib-hog", "rule": {"dx": 0.0, "dy": 0.09, "scale": 1.33, "size": "max"},
           "fit": {"detected_fraction": 0.95}}
    (tmp_path / "hog.json").write_text(json.dumps(hog))
    out = bdm.package(src, [tmp_path / "rules.json", tmp_path / "hog.json"], tmp_path / "out2.pt",
                      tmp_path / "gt.json", tmp_path / "det.json")
    got = deploy.load_model_file(out)["meta"]
    assert got["crop"]["boxes"] == {"tight": rules["tight_rule"], "haar": rules["rule"], "dlib-hog": hog["rule"]}
    assert got["crop"]["fitted_on"]["detected_fraction"] == 0.9 and "haar_crops" in got["metrics"]
    assert "dlib-hog_crops" not in got["metrics"]  # one evaluation file: the first detector's
    # an evaluation per detector: each in the card, one note for the rounds they share
    hog_stats = {"common": {"faces": 4, "detected": 4, "detection_misses": 0, "detected_fraction": 1.0}}
    (tmp_path / "det_hog.json").write_text(json.dumps({"m": {"common": {**common, "nme": 0.035}},
                                                       "_meta": {"refine": 2, "detector": {"splits": hog_stats}}}))
    out = bdm.package(src, [tmp_path / "rules.json", tmp_path / "hog.json"], tmp_path / "out3.pt",
                      tmp_path / "gt.json", [tmp_path / "det.json", tmp_path / "det_hog.json"])
    got = deploy.load_model_file(out)["meta"]
    assert got["metrics"]["haar_crops"]["common"]["nme"] == 0.04 and got["metrics"]["haar_crops"]["common"]["n"] == 3
    assert got["metrics"]["dlib-hog_crops"]["common"]["nme"] == 0.035
    assert got["metrics"]["dlib-hog_crops"]["common"]["detection_misses"] == 0
    assert ("haar_crops, dlib-hog_crops: each detector's boxes by its fitted crop rule, then 2 refinement rounds"
            in got["metrics_note"])
    out = bdm.package(src, [tmp_path / "rules.json", tmp_path / "hog.json"], tmp_path / "out4.pt",
                      tmp_path / "gt.json", [None, tmp_path / "det_hog.json"])
    got = deploy.load_model_file(out)["meta"]
    assert "haar_crops" not in got["metrics"] and "dlib-hog_crops: the detector's boxes" in got["metrics_note"]
    with pytest.raises(ValueError, match="3 detector evaluations for 2 crop rules"):
        bdm.package(src, [tmp_path / "rules.json", tmp_path / "hog.json"], tmp_path / "out5.pt", None,
                    [tmp_path / "det.json"] * 3)
    assert got["crop"]["fitted_on"]["detectors"] == {"haar": {"split": "300w-train", "detected_fraction": 0.9},
                                                     "dlib-hog": {"split": "300w-train", "detected_fraction": 0.95}}


def test_package_with_inference_crops(tmp_path):
    """package(inference_crops=...): the refinement square, the tight rule and the
    detectors' scaled rules replace the training-square ones; a detector the fit
    has no rule for is an error."""
    import json

    from pyflm import deploy

    src, rules = _source_model(tmp_path)
    inf = {"refine": {"scale": 1.5, "center": "box"}, "tight_rule": {"dx": 0.0, "dy": 0.0, "scale": 1.35, "size": "max"},
           "rules": {"haar": {"dx": 0.01, "dy": 0.15, "scale": 1.1 * 1.5 / 1.3, "size": "max"}},
           "training_scale": 1.3, "rounds": 2, "fitted_on": {"photos": "validation set", "faces": 206},
           "grid": {"refine_nme": {"1.3": {"haar": 0.04}, "1.5": {"haar": 0.037}}, "tight_nme": {"1.35": 0.037}}}
    (tmp_path / "inf.json").write_text(json.dumps(inf))
    got = deploy.load_model_file(bdm.package(src, tmp_path / "rules.json", tmp_path / "out.pt",
                                             inference_crops=tmp_path / "inf.json"))["meta"]["crop"]
    assert got["boxes"] == {"tight": inf["tight_rule"], "haar": inf["rules"]["haar"]}
    assert got["refine"]["scale"] == 1.5 and got["refine"]["center"] == "box" and got["refine"]["faces"] == 206
    assert got["refine"]["nme"]["refine"] == inf["grid"]["refine_nme"] and got["landmarks"]["scale"] == 1.3
    from pyflm import FaceLandmarker

    lm = FaceLandmarker(model=tmp_path / "out.pt", detector=None)
    assert lm.landmark_rule == (1.5, "box") and lm.box_rules["tight"].scale == 1.35
    assert lm.training_rule[0] == 1.3
    (tmp_path / "inf2.json").write_text(json.dumps({**inf, "rules": {}}))
    with pytest.raises(ValueError, match="no scaled rule for \\['haar'\\]"):
        bdm.package(src, tmp_path / "rules.json", tmp_path / "out2.pt", inference_crops=tmp_path / "inf2.json")
