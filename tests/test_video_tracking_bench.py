"""benchmarks/video_tracking.py: synthetic clips whose landmarks follow the pixels, the
rows equal detect_video's own NME, and one-line errors for bad arguments."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

import pyflm
from benchmarks import video_tracking
from pyflm import FaceLandmarker, deploy
from pyflm.data import tight_box
from pyflm.metrics import nme

needs_model = pytest.mark.skipif(not deploy.default_model_path().is_file(), reason="no bundled model file")


def test_clip_landmarks_follow_the_pixels():
    rng = np.random.default_rng()
    grid = np.array([[90, 90], [150, 90], [90, 150], [150, 150], [120, 120], [120, 90]], float)
    pts = grid + rng.uniform(-4, 4, grid.shape)  # dots >= 20 px apart: one dot per window below
    img = np.zeros((240, 240, 3), np.uint8)
    for x, y in np.round(pts).astype(int):
        img[y - 1:y + 2, x - 1:x + 2] = 255  # a 3x3 dot centred on the rounded point
    pts = np.round(pts)
    images, points = video_tracking.synthetic_clip(img, pts, 5, video_tracking.LEVELS["large"], rng)
    assert len(images) == len(points) == 5 and images[0] is img and np.array_equal(points[0], pts)
    assert not np.allclose(points[1], points[4])  # it moves
    grid_y, grid_x = np.mgrid[:240, :240]
    for frame, want in zip(images[1:], points[1:]):
        grey = frame[..., 0].astype(np.float64)
        for x, y in want:  # intensity centroid of the dot near where the landmark says it is
            win = (np.abs(grid_x - x) <= 4) & (np.abs(grid_y - y) <= 4)
            w = grey * win
            assert w.sum() > 0
            got = np.array([(w * grid_x).sum(), (w * grid_y).sum()]) / w.sum()
            assert np.abs(got - [x, y]).max() < 0.35


@needs_model
def test_with_refine_square_copies():
    mf = deploy.load_model_file(deploy.default_model_path())
    before = dict(mf["meta"]["crop"]["refine"])
    out = video_tracking.with_refine_square(mf, 1.7, "centroid")
    assert out["meta"]["crop"]["refine"] == {"scale": 1.7, "center": "centroid"}
    assert mf["meta"]["crop"]["refine"] == before  # the input is left alone
    assert FaceLandmarker(model=out, detector=None).landmark_rule == (1.7, "centroid")


@needs_model
def test_rows_are_detect_videos_nme():
    img = cv2.imread(str(Path(pyflm.__file__).parent / "assets" / "astronaut.jpg"))
    face = np.array([177.5, 66.5, 269.5, 158.5])
    truth = FaceLandmarker(detector=None).detect(img, boxes=[face])[0].landmarks.astype(np.float64)
    rng = np.random.default_rng(3)
    clips = {"large": [video_tracking.synthetic_clip(img, truth, 4, video_tracking.LEVELS["large"], rng)]}
    mf = deploy.load_model_file(deploy.default_model_path())
    rows = video_tracking.measure("default", mf, clips)
    assert [(r["square"], r["motion"], r["frames"]) for r in rows] == [("refinement", "large", 3), ("training", "large", 3)]
    assert rows[0]["scale"] == mf["meta"]["crop"]["refine"]["scale"] and rows[1]["scale"] == 1.3
    images, points = clips["large"][0]
    lm = FaceLandmarker(detector=None)  # the bundled file as shipped: its own refinement square
    out = list(lm.detect_video(images, boxes=[tight_box(points[0])], box_type="tight", smooth=False, min_score=0.0))
    pred = np.stack([faces[0].landmarks for _, _, faces in out][1:]).astype(np.float64)
    assert rows[0]["nme"] == pytest.approx(float(nme(pred, np.stack(points[1:]), norm="corners").mean()), abs=1e-5)
    assert rows[0]["nme"] != rows[1]["nme"]


def test_bad_arguments_are_one_line(tmp_path, capsys):
    for args, what in ((["--frames", "1"], "--frames"), (["--models", str(tmp_path / "none.pt")], "none.pt"),
                       (["--root", str(tmp_path)], "300w-train")):
        with pytest.raises(SystemExit) as e:
            video_tracking.main([*args, "--out", str(tmp_path / "v.json")])
        assert e.value.code == 2 and what in capsys.readouterr().err
    assert not (tmp_path / "v.json").exists()
