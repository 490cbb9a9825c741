"""training.fit_inference_crops: the refinement square and tight scale chosen on
photos by the landmarker's own NME."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pyflm import deploy
from training import fit_inference_crops as fic

HAAR = {"detector": "haar", "rule": {"dx": 0.008, "dy": 0.15, "scale": 1.135, "size": "max"}}


@pytest.fixture(scope="module")
def photos():
    """A few 300-W training photos with one annotated face each (skips without the data)."""
    from pyflm.data import load_split

    try:
        samples = load_split("lfpw-train")
    except FileNotFoundError as e:
        pytest.skip(str(e))
    return samples[:: max(1, len(samples) // 6)][:6]


def test_scaled_rule():
    r = fic.scaled_rule(HAAR["rule"], 1.5 / 1.3)
    assert r == {**HAAR["rule"], "scale": pytest.approx(1.135 * 1.5 / 1.3, rel=1e-15)}
    assert HAAR["rule"]["scale"] == 1.135  # a copy


def test_fit_picks_the_grids_minimum(photos):
    mf = deploy.load_model_file(deploy.model_path("fast"))
    out = fic.fit(mf, [HAAR], refine_scales=(1.3, 1.5), tight_scales=(1.3, 1.4), rounds=1, samples=photos,
                  progress=False)
    grid_r, grid_t = out["grid"]["refine_nme"], out["grid"]["tight_nme"]
    assert set(grid_r) == {"1.3", "1.5"} and set(grid_t) == {"1.3", "1.4"}
    assert all(0 < v < 0.5 for g in grid_r.values() for v in g.values()) and all(0 < v < 0.5 for v in grid_t.values())
    assert grid_r["1.3"] != grid_r["1.5"]  # the candidates really run with different crops
    r = min((1.3, 1.5), key=lambda s: grid_r[f"{s:g}"]["haar"])
    t = min((1.3, 1.4), key=lambda s: grid_t[f"{s:g}"])
    assert out["refine"] == {"scale": r, "center": mf["meta"]["crop"]["landmarks"]["center"]}
    assert out["tight_rule"] == {"dx": 0.0, "dy": 0.0, "scale": t, "size": "max"}
    assert out["rules"]["haar"]["scale"] == pytest.approx(1.135 * r / 1.3) and out["rules"]["haar"]["dy"] == 0.15
    assert out["fitted_on"]["faces"] == len(photos) and 0 < out["fitted_on"]["detected"]["haar"] <= len(photos)
    json.dumps(out, allow_nan=False)


def test_fit_errors(photos):
    mf = deploy.load_model_file(deploy.model_path("fast"))
    with pytest.raises(ValueError, match="scales"):
        fic.fit(mf, [HAAR], refine_scales=(), samples=photos, progress=False)
    with pytest.raises(ValueError, match="scales"):
        fic.fit(mf, [HAAR], tight_scales=(0.0,), samples=photos, progress=False)
    with pytest.raises(ValueError, match="fitted rule"):
        fic.fit(mf, [], samples=photos, progress=False)
    with pytest.raises(ValueError, match="no photos"):
        fic.fit(mf, [HAAR], samples=[], progress=False)


def test_main_reports_bad_input(tmp_path, capsys):
    model = str(deploy.model_path("fast"))
    assert fic.main(["--model", model, "--rules", str(tmp_path / "nope.json"), "--out", str(tmp_path / "o.json")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "bad.pt").write_bytes(b"not a model")
    (tmp_path / "r.json").write_text(json.dumps(HAAR))
    assert fic.main(["--model", str(tmp_path / "bad.pt"), "--rules", str(tmp_path / "r.json"),
                     "--out", str(tmp_path / "o.json")]) == 2
    assert "training.fit_inference_crops: error" in capsys.readouterr().err
    for content, message in (("nope", "is not JSON"), ('{"x": 1}', "not a training.fit_detector_crops result")):
        (tmp_path / "bad.json").write_text(content)
        assert fic.main(["--model", model, "--rules", str(tmp_path / "bad.json"), "--out",
                         str(tmp_path / "o.json")]) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        fic.main(["--model", model, "--rules", str(tmp_path / "r.json"), "--out", str(tmp_path / "o.json"),
                  "--rounds", "11"])
    assert not (tmp_path / "o.json").exists()


def test_landmarker_reads_the_refinement_square(tmp_path):
    """FaceLandmarker and pyflm-detect's reader: meta.crop.refine for rounds, the
    training square for gt crops and the tight fallback."""
    from pyflm import FaceLandmarker

    mf = deploy.load_model_file(deploy.model_path("fast"))
    meta = {**mf["meta"], "crop": {**mf["meta"]["crop"], "refine": {"scale": 1.6, "center": "box"}}}
    meta["crop"]["boxes"] = {k: v for k, v in meta["crop"]["boxes"].items() if k != "tight"}
    lm = FaceLandmarker(model={**mf, "meta": meta}, detector=None)
    train = mf["meta"]["crop"]["landmarks"]
    assert lm.landmark_rule == (1.6, "box") and lm.training_rule == (train["scale"], train["center"])
    assert lm.box_rules["tight"].scale == train["scale"]
    # a round from a face's landmarks cuts the 1.6 square around their box's centre
    img = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    job = lm._prepare(img, [[50, 50, 150, 150]], "tight", "bgr")
    first = job.crops[0].to_image(lm._forward(job.images)[0][0])
    crops, coords, _ = lm._landmarks(job.crops, [img], job.images, 1)
    s = lm.input_size
    assert s / crops[0].matrix[0, 0] == pytest.approx(1.6 * np.ptp(first, axis=0).max(), rel=1e-9)
    np.testing.assert_allclose(crops[0].to_image([[(s - 1) / 2, (s - 1) / 2]])[0],
                               (first.min(0) + first.max(0)) / 2, atol=1e-9)
    lm.refine = 1
    got = lm.detect(img, boxes=[[50, 50, 150, 150]], box_type="tight")[0].landmarks
    np.testing.assert_allclose(got, crops[0].to_image(coords[0]), atol=1e-3)
