"""The calibration offset (meta decode.offset): fitted by training.calibrate,
added to decoded points by every backend, and kept by the flip test."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from pyflm import deploy
from pyflm.data import get_scheme
from pyflm.landmarker import FaceLandmarker
from tests.test_deploy import _tiny_model_file
from training.calibrate import calibrate, fit_offset
from training.calibrate import main as calibrate_main

S = 64
SIDE = S / 1.3  # a tight box of this side gives a crop of exactly S image px: crop px == image px


def _with_offset(mf: dict, offset) -> dict:
    out = copy.deepcopy(mf)
    out["meta"]["decode"]["offset"] = np.asarray(offset, dtype=np.float64).tolist()
    return out


def _random_offset(rng, k: int = 68) -> np.ndarray:
    # not mirror-symmetric: a flip test that only mirrored it would be off
    return rng.uniform(-2.0, 2.0, (k, 2)).round(4)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return _tiny_model_file("compact", S)


def test_decode_offset_reads_and_checks(tiny):
    assert deploy.decode_offset(tiny["meta"]) is None
    off = _random_offset(np.random.default_rng())
    got = deploy.decode_offset(_with_offset(tiny, off)["meta"])
    assert got.dtype == torch.float32 and got.shape == (68, 2)
    np.testing.assert_allclose(got.numpy(), off, atol=1e-6)
    for bad in (off[:-1], np.full((68, 2), np.nan), off[:, :1], [["a", "b"]] * 68):
        mf = _with_offset(tiny, off)
        mf["meta"]["decode"]["offset"] = bad.tolist() if isinstance(bad, np.ndarray) else bad
        with pytest.raises(deploy.ModelFileError, match="decode.offset"):
            deploy.build_predictor(mf)


@pytest.mark.parametrize("task", ["compact", "heatmap"])
def test_predictor_adds_the_offset(task):
    """Soft-argmax and argmax decoding: the same points plus the offset."""
    size = S if task == "compact" else 224
    torch.manual_seed(1)
    mf = _tiny_model_file(task, size)
    off = _random_offset(np.random.default_rng())
    crops = torch.randint(0, 256, (3, size, size, 3), dtype=torch.uint8)
    with torch.inference_mode():
        c0, s0 = deploy.build_predictor(mf)(crops)
        c1, s1 = deploy.build_predictor(_with_offset(mf, off))(crops)
    torch.testing.assert_close(c1 - c0, torch.tensor(off, dtype=torch.float32).expand(3, -1, -1), atol=1e-4, rtol=0)
    torch.testing.assert_close(s1, s0)


def test_torchscript_export_adds_the_offset(tiny, compiled, tmp_path):
    off = _random_offset(np.random.default_rng())
    ts, meta = deploy.load_torchscript(deploy.export_torchscript(_with_offset(tiny, off), tmp_path / "m.ts"))
    assert np.allclose(meta["decode"]["offset"], off)
    crops = torch.randint(0, 256, (2, S, S, 3), dtype=torch.uint8)
    with torch.inference_mode():
        c0, _ = deploy.build_predictor(tiny)(crops)
        c1, _ = ts(crops)
    torch.testing.assert_close(c1 - c0, torch.tensor(off, dtype=torch.float32).expand(2, -1, -1), atol=1e-4, rtol=0)


BACKENDS = ["torch", pytest.param("onnxruntime", marks=pytest.mark.skipif(
    not all(__import__("importlib").util.find_spec(m) for m in ("onnx", "onnxruntime")), reason="no onnxruntime"))]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("flip_test", [False, True])
def test_landmarker_keeps_the_offset(tiny, backend, flip_test):
    """FaceLandmarker, plain and with the flip test, on either backend: the
    landmarks of the model with offset o are those without it plus o (the
    box is sized so that crop px are image px). A flip test that merely
    mirrored the offset back would give (o + its mirror image) / 2."""
    rng = np.random.default_rng()
    off = _random_offset(rng)
    image = rng.integers(0, 256, (120, 140, 3), dtype=np.uint8)
    boxes = [[30.25, 20.5, 30.25 + SIDE, 20.5 + SIDE], [5.0, 40.0, 5.0 + SIDE, 40.0 + SIDE]]
    kw = dict(detector=None, backend=backend, flip_test=flip_test, num_threads=1)
    plain = FaceLandmarker(model=copy.deepcopy(tiny), **kw).detect(image, boxes=boxes)
    shifted = FaceLandmarker(model=_with_offset(tiny, off), **kw).detect(image, boxes=boxes)
    for a, b in zip(plain, shifted):
        np.testing.assert_allclose(b.landmarks - a.landmarks, off, atol=2e-3)
        np.testing.assert_allclose(b.scores, a.scores, atol=1e-5)


def test_flip_shift_formula():
    """flip_shift against the definition, point by point, on the 68-point mirror."""
    mirror = get_scheme("68").mirror_array
    off = torch.tensor(_random_offset(np.random.default_rng()), dtype=torch.float64)
    got = deploy.flip_shift(off, mirror)
    for i in range(68):
        j = int(mirror[i])
        back = torch.stack((-off[j, 0], off[j, 1]))  # what the mirrored pass brings back for point i
        torch.testing.assert_close(back + got[i], off[i])


def test_fit_offset():
    rng = np.random.default_rng()
    gt = rng.normal(size=(5, 3, 2))
    pred = gt - np.array([[1.0, -2.0], [0.5, 0.25], [0.0, 3.0]])
    np.testing.assert_allclose(fit_offset(pred, gt), [[1.0, -2.0], [0.5, 0.25], [0.0, 3.0]], atol=1e-12)
    vis = np.ones((5, 3))
    vis[0, 1] = 0
    pred2 = pred.copy()
    pred2[0, 1] += 100.0  # a hidden point's wild guess is left out
    np.testing.assert_allclose(fit_offset(pred2, gt, vis)[1], [0.5, 0.25], atol=1e-12)
    vis[:, 2] = 0
    with pytest.raises(ValueError, match=r"points \[2\]"):
        fit_offset(pred, gt, vis)
    with pytest.raises(ValueError, match="must both be"):
        fit_offset(pred[:, :2], gt)


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    from tests.test_training import write_dataset

    folder = tmp_path_factory.mktemp("calib") / "faces"
    write_dataset(folder, 6, size=96, seed=4)
    return folder


def _model_with_config(tiny, folder) -> dict:
    mf = copy.deepcopy(tiny)
    mf["meta"]["crop"]["landmarks"] = {"scale": 1.3, "center": "box"}
    mf["meta"]["training"] = {"config": {"model": {"task": "compact", "input_size": S},
                                         "data": {"train": str(folder), "val": "holdout", "val_fraction": 0.5,
                                                  "crop_center": "box"}}}
    return mf


def test_calibrate_zeroes_the_mean_error_where_the_landmarker_sees_it(tiny, faces):
    """Fitted on every face of a folder, the offset is the mean (gt - prediction)
    that FaceLandmarker itself makes from tight boxes (crop px), and the
    calibrated model's mean error there is zero."""
    from pyflm.data import load_split
    from pyflm.data.crops import tight_box

    mf = _model_with_config(tiny, faces)
    cal = calibrate(mf, split=str(faces), num_workers=0)
    off = np.asarray(cal["meta"]["decode"]["offset"])
    c = cal["meta"]["calibration"]
    assert c["faces"] == 6 and c["nme_after"] < c["nme_before"] and str(faces) in c["fitted_on"]
    assert "offset" not in mf["meta"]["decode"]  # the input is not modified

    def mean_error(model):
        lm = FaceLandmarker(model=copy.deepcopy(model), detector=None, backend="torch")
        errs = []
        for s in load_split(str(faces)):
            box = tight_box(s.landmarks)
            side = 1.3 * max(box[2] - box[0], box[3] - box[1])
            (face,) = lm.detect(s.image_path, boxes=[box])
            errs.append((s.landmarks - face.landmarks) * (S / side))  # image px -> crop px (no rotation)
        return np.mean(errs, axis=0)

    np.testing.assert_allclose(mean_error(mf), off, atol=2e-3)
    np.testing.assert_allclose(mean_error(cal), 0.0, atol=2e-3)
    again = calibrate(cal, split=str(faces), num_workers=0)  # refitting replaces the offset, does not stack it
    np.testing.assert_allclose(again["meta"]["decode"]["offset"], off, atol=1e-4)


def test_calibrate_uses_the_validation_set(tiny, faces):
    cal = calibrate(_model_with_config(tiny, faces), num_workers=0)
    assert cal["meta"]["calibration"]["faces"] == 3 and "holdout" in cal["meta"]["calibration"]["fitted_on"]


def test_calibrate_command(tiny, faces, tmp_path, capsys):
    src = tmp_path / "in.pt"
    mf = _model_with_config(tiny, faces)
    deploy.save_model_file(src, mf["task"], mf["model_kwargs"], mf["state_dict"], mf["meta"])
    out = tmp_path / "out.pt"
    assert calibrate_main(["--model", str(src), "--out", str(out), "--split", str(faces), "--workers", "0"]) == 0
    assert "wrote" in capsys.readouterr().out
    back = deploy.load_model_file(out)
    assert np.asarray(back["meta"]["decode"]["offset"]).shape == (68, 2)
    # bad input: one line on stderr, exit 2, nothing written
    bare = tmp_path / "bare.pt"
    deploy.save_model_file(bare, tiny["task"], tiny["model_kwargs"], tiny["state_dict"], tiny["meta"])
    for args, message in ((["--model", str(tmp_path / "missing.pt")], "not found"),
                          (["--model", str(bare)], "no training config"),
                          (["--model", str(src), "--split", str(tmp_path / "nowhere")], "nowhere")):
        target = tmp_path / "never.pt"
        assert calibrate_main([*args, "--out", str(target), "--workers", "0"]) == 2
        assert message in capsys.readouterr().err and not target.exists()
