"""training.evaluate on a tiny synthetic split: metrics equal hand-computed
values for a fake model predicting GT + a known offset; JSON / PNG written;
the CLI runs from a checkpoint of the fake task."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pyflm.data import load_folder, square_from_landmarks
from training import evaluate as E
from training import train as T

from test_training import config_text, write_config, write_dataset  # noqa: F401  (registers the fake task)

S = 32


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    folder = tmp_path_factory.mktemp("evalfaces") / "test"
    write_dataset(folder, 5, size=60, seed=7)
    return folder, load_folder(folder)


def test_metrics_match_hand_computed(tmp_path, split):
    folder, samples = split
    offset = torch.tensor([1.5, -2.0], dtype=torch.float64)  # crop px

    def predict(batch):  # a "model" that predicts the ground truth + offset
        return batch["landmarks"] + offset

    res = E.evaluate_models({"gt+offset": {"predict": predict, "input_size": S}}, {"tiny": samples}, tmp_path / "ev",
                            verbose=False)
    m = res["gt+offset"]["tiny"]
    # by hand: a crop px is side / S image px, every point moves by the same vector
    want, want_box = [], []
    for s in samples:
        _, _, side = square_from_landmarks(s.landmarks)
        err = float(np.hypot(*(offset.numpy() * side / S)))
        want.append(err / np.linalg.norm(s.landmarks[36] - s.landmarks[45]))
        wh = s.landmarks.max(0) - s.landmarks.min(0)
        want_box.append(err / np.sqrt(wh[0] * wh[1]))
    np.testing.assert_allclose(m["per_image"]["nme"], want, rtol=1e-9)
    assert m["nme"] == pytest.approx(np.mean(want), rel=1e-9)
    assert m["eye_nme"] == pytest.approx(np.mean(want), rel=1e-9)  # same shift on the eye points
    assert m["nme_box"] == pytest.approx(np.mean(want_box), rel=1e-9)
    assert m["fr@0.1"] == pytest.approx(np.mean(np.asarray(want) > 0.1))
    assert m["auc@0.08"] == pytest.approx(np.mean(np.clip(1 - np.asarray(want) / 0.08, 0, 1)))
    assert m["n"] == 5
    # a perfect model scores 0
    res0 = E.evaluate_models({"gt": {"predict": lambda b: b["landmarks"], "input_size": S}}, {"tiny": samples},
                             verbose=False)
    assert res0["gt"]["tiny"]["nme"] < 1e-12 and res0["gt"]["tiny"]["auc@0.1"] == pytest.approx(1.0)
    # files
    data = json.loads((tmp_path / "ev" / "results.json").read_text())
    per = data["gt+offset"]["tiny"]["per_image"]
    assert [p["image"] for p in per] == [str(s.image_path) for s in samples]
    np.testing.assert_allclose([p["nme"] for p in per], want, rtol=1e-9)
    png = tmp_path / "ev" / "ced_tiny.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "ev").glob("*.tmp"))


def test_table_rows_splits_columns_models(split, capsys):
    _, samples = split
    models = {name: {"predict": (lambda o: lambda b: b["landmarks"] + o)(off), "input_size": S}
              for name, off in (("a", 0.5), ("b", 1.0))}
    res = E.evaluate_models(models, {"s1": samples[:2], "s2": samples[2:]}, verbose=True)
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "| Split | a (%) | b (%) |" in lines
    row = next(line for line in lines if line.startswith("| s1 |"))
    assert f"{res['a']['s1']['nme'] * 100:.2f}" in row and f"{res['b']['s1']['nme'] * 100:.2f}" in row
    assert res["b"]["s1"]["nme"] == pytest.approx(2 * res["a"]["s1"]["nme"])


def test_detector_crops(tmp_path, split):
    folder, samples = split
    with pytest.raises(NotImplementedError, match="need --detector"):
        E.evaluate_models({"m": {"predict": lambda b: b["landmarks"], "input_size": S}}, {"t": samples},
                          crops="detector", verbose=False)
    # boxes from the landmarks' bounding box: predictions of GT still map back exactly
    boxes = {s.image_path.name: [*s.landmarks.min(0), *s.landmarks.max(0)] for s in samples}
    boxes["__rule__"] = {"scale": 1.4}
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    lookup, rule = E.load_boxes(tmp_path / "boxes.json")
    res = E.evaluate_models({"m": {"predict": lambda b: b["landmarks"], "input_size": S}}, {"t": samples},
                            tmp_path / "ev", crops=lookup, boxes_rule=rule, verbose=False)
    assert res["m"]["t"]["nme"] < 1e-12
    assert json.loads((tmp_path / "ev" / "results.json").read_text())["_meta"]["crops"] == "detector crops"


def test_detector_boxes_counts_misses(tmp_path, split):
    folder, samples = split
    assert len({str(x.image_path) for x in samples}) == len(samples)  # one face per image
    calls = []

    def detector(image):  # called once per image, in sample order; "misses" the first face
        i = len(calls)
        calls.append(image.shape)
        if i == 0:
            return np.zeros((0, 4))
        lm = samples[i].landmarks
        return np.array([[*lm.min(0), *lm.max(0)]])

    kept, stats = E.detector_boxes({"t": samples}, detector, out_file=tmp_path / "boxes.json")
    assert len(calls) == len(samples)
    assert stats["t"] == {"faces": len(samples), "detected": len(samples) - 1, "detection_misses": 1,
                          "detected_fraction": (len(samples) - 1) / len(samples)}
    assert [str(x.image_path) for x in kept["t"]] == [str(x.image_path) for x in samples[1:]]
    saved = json.loads((tmp_path / "boxes.json").read_text())
    assert str(samples[0].image_path) not in saved and len(saved) == len(samples) - 1
    lookup, _ = E.load_boxes(tmp_path / "boxes.json")
    np.testing.assert_allclose(lookup(samples[1]), [*samples[1].landmarks.min(0), *samples[1].landmarks.max(0)])


def test_cli_from_checkpoint(tmp_path, split, capsys):
    folder, samples = split
    train_dir = tmp_path / "train"
    write_dataset(train_dir, 6, seed=3)
    cfg = write_config(tmp_path, config_text(train_dir, folder, steps=2, val_every=2))
    assert T.main(["--config", str(cfg), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    ck = tmp_path / "run" / "best.pt"
    capsys.readouterr()
    rc = E.main(["--checkpoint", str(ck), "--splits", str(folder), "--out", str(tmp_path / "ev"), "--device", "cpu",
                 "--workers", "0"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| Split | run (%) |" in out
    assert "crops: ground-truth crops (each model's training crop rule)" in out
    data = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert data["_meta"]["crops"] == "ground-truth crops (each model's training crop rule)"
    m = data["run"][str(folder)]
    assert len(m["per_image"]) == 5 and np.isfinite(m["nme"])
    # the CLI's NME equals the training run's validation NME (same crops, same model)
    assert m["nme"] == pytest.approx(T.load_checkpoint(ck)["best_metric"], rel=1e-6)
    assert (tmp_path / "ev" / f"ced_{E._file_safe(str(folder))}.png").is_file()
    assert E.main(["--checkpoint", str(ck), "--splits", str(folder), "--crops", "detector"]) == 3
    bad = tmp_path / "bad.pt"
    bad.write_bytes(ck.read_bytes()[:100])
    assert E.main(["--checkpoint", str(bad), "--splits", str(folder)]) == 2


@pytest.mark.parametrize("with_offset", [False, True])
def test_cli_from_model_file(tmp_path, split, with_offset):
    """A pyflm model file is evaluated through its deployable predictor: the NME
    is what FaceLandmarker gives from tight boxes (the model's gt crop rule),
    calibration offset included."""
    from pyflm import deploy
    from pyflm.data import tight_box
    from pyflm.landmarker import FaceLandmarker
    from pyflm.metrics import nme
    from tests.test_deploy import _tiny_model_file

    folder, samples = split
    torch.manual_seed(0)
    mf = _tiny_model_file("compact", 64)
    mf["meta"]["crop"]["landmarks"] = {"scale": 1.3, "center": "box"}
    if with_offset:
        mf["meta"]["decode"]["offset"] = np.random.default_rng().uniform(-3, 3, (68, 2)).tolist()
    path = deploy.save_model_file(tmp_path / "m.pt", mf["task"], mf["model_kwargs"], mf["state_dict"], mf["meta"])
    assert E.main(["--checkpoint", str(path), "--splits", str(folder), "--out", str(tmp_path / "ev"),
                   "--workers", "0"]) == 0
    got = json.loads((tmp_path / "ev" / "results.json").read_text())[tmp_path.name][str(folder)]["nme"]
    lm = FaceLandmarker(model=mf, detector=None, backend="torch")
    pred = np.stack([lm.detect(s.image_path, boxes=[tight_box(s.landmarks)])[0].landmarks for s in samples])
    want = nme(pred, np.stack([s.landmarks for s in samples])).mean()
    assert got == pytest.approx(want, rel=1e-4)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(path.read_bytes()[:100])
    assert E.main(["--checkpoint", str(bad), "--splits", str(folder)]) == 2


def test_refine_recrops_from_the_predictions(tmp_path, split):
    """refine=N: N more passes, each on the square of the previous pass's
    predicted landmarks (the model's landmark rule), as FaceLandmarker's
    refinement does. A fake model that shrinks the shape toward the crop centre
    and shifts it makes every pass move; the expected points are computed here
    pass by pass."""
    from pyflm.data import BoxToSquare, Crop, square_from_landmarks

    _, samples = split
    c = (S - 1) / 2
    shift = np.array([1.0, -0.5])

    def predict(batch):  # ground truth (crop px) shrunk by 0.9 about the centre, then shifted
        return (batch["landmarks"] - c) * 0.9 + c + torch.as_tensor(shift)

    rule = BoxToSquare(dx=0.05, dy=-0.04, scale=1.2)
    rng = np.random.default_rng()
    boxes = {}
    for s in samples:
        lo, hi = s.landmarks.min(0), s.landmarks.max(0)
        boxes[str(s.image_path)] = np.array([*(lo - rng.uniform(0, 4, 2)), *(hi + rng.uniform(0, 4, 2))])
    spec = {"predict": predict, "input_size": S, "crop_scale": 1.3, "crop_center": "box"}
    got = {}
    for n in (0, 1, 2):
        res = E.evaluate_models({"m": spec}, {"t": samples}, tmp_path / f"ev{n}",
                                crops=lambda s: boxes[str(s.image_path)], boxes_rule=rule, refine=n, verbose=False)
        got[n] = res["m"]["t"]["per_image"]["nme"]
        meta = json.loads((tmp_path / f"ev{n}" / "results.json").read_text())["_meta"]
        assert meta["refine"] == n and (f"{n} refinement round" in meta["crops"]) == (n > 0)
    for n in (0, 1, 2):
        want = []
        for s in samples:
            square = rule(boxes[str(s.image_path)])
            for _ in range(n + 1):
                crop = Crop.from_square(*square, S)
                pred = crop.to_image((crop.to_crop(s.landmarks) - c) * 0.9 + c + shift)
                square = square_from_landmarks(pred, 1.3, "box")
            want.append(np.linalg.norm(pred - s.landmarks, axis=1).mean()
                        / np.linalg.norm(s.landmarks[36] - s.landmarks[45]))
        np.testing.assert_allclose(got[n], want, rtol=1e-6)
    assert not np.allclose(got[0], got[2], rtol=1e-3)  # the passes differ
    with pytest.raises(ValueError, match="refine"):
        E.evaluate_models({"m": spec}, {"t": samples}, crops="gt", refine=-1, verbose=False)
    with pytest.raises(SystemExit):  # a usage error before anything is read
        E.main(["--checkpoint", "none.pt", "--refine", "-1"])


def test_refined_crop_fn_keeps_the_square_of_a_degenerate_prediction(split):
    from pyflm.data import square_from_landmarks

    _, samples = split
    pred = np.stack([s.landmarks + 2.0 for s in samples])
    pred[1] = np.nan
    pred[2] = 7.0  # all one point
    fn = E.refined_crop_fn(samples, pred, None, 1.3, "box")
    assert fn(samples[0]) == pytest.approx(square_from_landmarks(samples[0].landmarks + 2.0, 1.3, "box"))
    for i in (1, 2):  # no previous crop_fn: the ground-truth rule's square
        assert fn(samples[i]) == pytest.approx(square_from_landmarks(samples[i].landmarks, 1.3, "box"))
    prev = E.refined_crop_fn(samples, pred + 5.0, None, 1.3, "box")
    fn2 = E.refined_crop_fn(samples, pred, prev, 1.3, "box")
    assert fn2(samples[1]) == pytest.approx(prev(samples[1]))


def test_detector_crops_of_a_model_file_use_its_own_rule(tmp_path, monkeypatch):
    """training.evaluate --crops detector on a model file: the rule the file carries
    for that detector (FaceLandmarker's), not runs/detector_crops/<name>.json."""
    from pyflm import deploy
    from pyflm.data import BoxToSquare
    from training import evaluate

    path = deploy.default_model_path()
    boxes = deploy.load_model_file(path)["meta"]["crop"]["boxes"]
    assert evaluate._model_rule(path, "haar") == BoxToSquare(**boxes["haar"])
    pytest.importorskip("dlib")
    assert evaluate._model_rule(path, "dlib") == BoxToSquare(**boxes["dlib-hog"])  # by the detector's name
    monkeypatch.chdir(tmp_path)  # a file without rules falls back to the fitted-rules file
    with pytest.raises(FileNotFoundError, match="runs/detector_crops/haar.json"):
        evaluate._model_rule(tmp_path / "best.pt", "haar")
