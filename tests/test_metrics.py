"""Metrics (pyflm.metrics) against hand-computed values."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from pyflm import metrics as M


@pytest.fixture
def rng():
    seed = int(np.random.SeedSequence().entropy % 2**32)
    print(f"seed={seed}")
    return np.random.default_rng(seed)


def _two_faces(rng):
    """GT for two 68-point faces: outer eye corners 100 px and 50 px apart;
    predictions off by (3, 4) (5 px -> NME 0.05) and (3.6, 2.7) (4.5 px ->
    NME 0.09) at every point."""
    gt = rng.uniform(0, 100, size=(2, 68, 2))
    gt[0, 36], gt[0, 45] = (10, 20), (110, 20)
    gt[1, 36], gt[1, 45] = (5, 5), (35, 45)  # 30-40-50 triangle
    pred = gt.copy()
    pred[0] += (3.0, 4.0)
    pred[1] += (3.6, -2.7)
    return pred, gt


def test_nme_fr_auc_two_images(rng):
    pred, gt = _two_faces(rng)
    e = M.nme(pred, gt)
    np.testing.assert_allclose(e, [0.05, 0.09], rtol=1e-12)
    assert M.failure_rate(e, 0.08) == 0.5
    assert M.failure_rate(e, 0.10) == 0.0
    # exact AUC_T = mean(max(0, 1 - e / T))
    assert M.auc(e, 0.08) == pytest.approx((1 - 0.05 / 0.08 + 0) / 2, abs=1e-12)  # 0.1875
    assert M.auc(e, 0.10) == pytest.approx((0.5 + 0.1) / 2, abs=1e-12)  # 0.3
    assert M.auc(e, 0.07) == pytest.approx((2 / 7) / 2, abs=1e-12)
    res = M.evaluate(pred, gt)
    assert res["n"] == 2 and res["nme"] == pytest.approx(0.07)
    assert res["fr@0.08"] == 0.5 and res["fr@0.1"] == 0.0
    assert res["auc@0.08"] == pytest.approx(0.1875) and res["auc@0.1"] == pytest.approx(0.3)
    assert res["auc@0.07"] == pytest.approx(1 / 7)
    assert res["eye_nme"] == pytest.approx(0.07)  # same offsets on the eye points
    res = M.evaluate(pred, gt, norm=[50.0, 45.0])
    np.testing.assert_allclose(res["per_image"], [0.1, 0.1])
    assert res["eye_nme"] == pytest.approx(0.1) and res["fr@0.08"] == 1.0
    assert res["auc@0.1"] == pytest.approx(0.0, abs=1e-12)  # NME 0.1 (up to rounding) at T = 0.1


def test_auc_trapezoid_hand_values():
    e = np.array([0.05, 0.09])
    # grid 0, .02, .04, .06, .08; CED there 0, 0, 0, .5, .5
    # trapezoid: (0 + .5) / 2 * .02 + .5 * .02 = .015; / .08 = .1875
    assert M.auc(e, 0.08, method="trapezoid", step=0.02) == pytest.approx(0.1875, abs=1e-12)
    # grid step .03 on T = .09: CED at 0, .03, .06, .09 is 0, 0, .5, 1 -> (.0075 + .0225) / .09
    assert M.auc(e, 0.09, method="trapezoid", step=0.03) == pytest.approx(0.03 / 0.09, abs=1e-12)
    # the fine default grid agrees with the exact value to h / (2T) = 5e-4
    rng = np.random.default_rng(0)
    many = rng.uniform(0, 0.12, 500)
    for t in (0.07, 0.08, 0.1):
        assert abs(M.auc(many, t, method="trapezoid") - M.auc(many, t)) <= 5e-4
    assert M.auc([0.0, 0.0], 0.08) == 1.0 and M.auc([0.2], 0.08) == 0.0
    with pytest.raises(ValueError, match="method"):
        M.auc(e, 0.08, method="simpson")


def test_ced_curve():
    t, f = M.ced_curve([0.01, 0.03, 0.03, 0.2], max_threshold=0.04, num=5)
    np.testing.assert_allclose(t, [0, 0.01, 0.02, 0.03, 0.04])
    np.testing.assert_allclose(f, [0, 0.25, 0.25, 0.75, 0.75])  # NME <= t counts
    assert M.failure_rate([0.08, 0.0800001], 0.08) == 0.5  # strictly above fails


def test_normalisers(rng):
    gt = rng.uniform(0, 100, size=(68, 2))
    gt[36:42] = [(0, 0), (2, -1), (4, -1), (6, 0), (4, 1), (2, 1)]  # centroid (3, 0)
    gt[42:48] = gt[36:42] + (60, 80)  # centroid (63, 80): pupil distance 100
    assert M.normalizer(gt, "pupils")[0] == pytest.approx(100.0)
    assert M.normalizer(gt, "corners")[0] == pytest.approx(np.linalg.norm(gt[36] - gt[45]))
    assert M.normalizer(gt, "box", boxes=[[10, 20, 50, 110]])[0] == pytest.approx(60.0)  # sqrt(40 * 90)
    lo, hi = gt.min(0), gt.max(0)
    assert M.normalizer(gt, "box")[0] == pytest.approx(np.sqrt(np.prod(hi - lo)))
    pred = gt + (6.0, 8.0)
    assert M.nme(pred, gt, norm="pupils")[0] == pytest.approx(0.1)
    assert M.nme(pred, gt, norm="box", boxes=[[10, 20, 50, 110]])[0] == pytest.approx(10 / 60)
    assert M.nme(pred, gt, norm=[40.0])[0] == pytest.approx(0.25)  # given per-image distances
    with pytest.raises(ValueError, match="2 distances for 1 images"):
        M.nme(pred, gt, norm=[1.0, 2.0])


def test_eye_anchor_nme(rng):
    gt = rng.uniform(0, 100, size=(3, 68, 2))
    gt[:, 36], gt[:, 45] = (0, 0), (0, 80)
    pred = gt.copy()
    pred[:, 36:48] += (0, 4)  # only the 12 eye points move, by 4 px
    np.testing.assert_allclose(M.eye_anchor_nme(pred, gt), 0.05)
    np.testing.assert_allclose(M.nme(pred, gt), 4 * 12 / 68 / 80)


def test_other_schemes_and_tensors(rng):
    gt = rng.uniform(0, 100, size=(98, 2))
    gt[60], gt[72] = (0, 0), (40, 0)
    pred = torch.from_numpy(gt + (0, 2))  # tensors are accepted
    assert M.nme(pred, torch.from_numpy(gt), scheme="98")[0] == pytest.approx(0.05)
    gt29 = rng.uniform(0, 100, size=(29, 2))
    gt29[8], gt29[9] = (10, 10), (10, 30)
    assert M.nme(gt29 + (1, 0), gt29, scheme="29")[0] == pytest.approx(0.05)


def test_errors():
    gt = np.zeros((68, 2))
    with pytest.raises(ValueError, match="zero or invalid normalising distance"):
        M.nme(gt, gt)
    with pytest.raises(ValueError, match="differ in shape"):
        M.nme(np.zeros((2, 68, 2)), np.zeros((1, 68, 2)))
    with pytest.raises(ValueError, match="expects 68 points, got 98"):
        M.nme(np.ones((98, 2)), np.ones((98, 2)))
    with pytest.raises(ValueError, match="norm must be"):
        M.nme(gt, gt, norm="iod")
    with pytest.raises(ValueError, match="no NME values"):
        M.failure_rate([])


def test_format_table():
    res = {"Ours": {"common": 0.0312, "challenging": 0.0551, "full": 0.0359},
           "Baseline": {"common": 0.04, "full": 0.05}}
    md = M.format_table(res, columns=["common", "challenging", "full"])
    assert md == (
        "| Method | common (%) | challenging (%) | full (%) |\n"
        "|---|---:|---:|---:|\n"
        "| Ours | 3.12 | 5.51 | 3.59 |\n"
        "| Baseline | 4.00 | - | 5.00 |"
    )
    txt = M.format_table({"A": {"nme": 0.05, "n": 554}}, percent=["nme"], style="text", digits=1)
    assert txt.splitlines() == ["Method  nme (%)    n", "------  -------  ---", "A           5.0  554"]
    ev = M.evaluate(np.ones((1, 68, 2)) + np.arange(68)[None, :, None], np.arange(68)[None, :, None] * [1.0, 0.5])
    assert "per_image" not in M.format_table({"x": ev})


def test_plot_ced(tmp_path, monkeypatch):
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="'matplotlib' package"):
            M.plot_ced({"a": [0.01, 0.05]}, tmp_path / "ced.png")
        return
    out = M.plot_ced({"a": [0.01, 0.05], "b": [0.02, 0.2]}, tmp_path / "ced.png", max_threshold=0.08)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match="'matplotlib' package"):
        M.plot_ced({"a": [0.01]}, tmp_path / "x.png")
