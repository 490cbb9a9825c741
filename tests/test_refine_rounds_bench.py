"""benchmarks/refine_rounds.py: each row is FaceLandmarker's NME for its setting on the
faces given (here three copies of the sample photo with loose, detector-like boxes,
scored against the landmarks a prediction from the face's own box made)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

import pyflm
from benchmarks import refine_rounds
from pyflm import FaceLandmarker, deploy
from pyflm.data import tight_box
from pyflm.metrics import nme

pytestmark = pytest.mark.skipif(not deploy.default_model_path().is_file(), reason="no bundled model file")


def test_rows_are_the_landmarkers_nme():
    img = cv2.imread(str(Path(pyflm.__file__).parent / "assets" / "astronaut.jpg"))
    face = np.array([177.5, 66.5, 269.5, 158.5])
    truth = FaceLandmarker(detector=None).detect(img, boxes=[face])[0].landmarks.astype(np.float64)
    # clearly loose boxes (1.6x the face's side, off centre), as a poor detection gives: from
    # ones barely off, one pass can be as good as the rounds' fixed point (~2.94% here)
    loose = [face + np.r_[-30, -20, 25, 35] + d for d in (0.0, 3.0, -4.0)]
    faces = [(img, b, tight_box(truth), truth) for b in loose]
    rows = refine_rounds.measure("default", [0, 2], "haar", faces)
    assert [(r["boxes"], r["refine"], r["flip_test"]) for r in rows] == [
        ("haar", 0, False), ("haar", 2, False), ("haar", 0, True), ("haar", 2, True), ("tight", 0, False)]
    lm = FaceLandmarker(detector=None, refine=2)
    want = np.stack([lm.detect(img, boxes=[b], box_type="haar")[0].landmarks for b in loose])
    assert rows[1]["nme"] == pytest.approx(float(nme(want, np.stack([truth] * 3), norm="corners").mean()), abs=1e-5)
    assert rows[-1]["nme"] < rows[0]["nme"] and rows[1]["nme"] < rows[0]["nme"]


def test_bad_input_is_one_line(tmp_path, capsys):
    for args, what in ((["--models", str(tmp_path / "none.pt")], "none.pt"), (["--root", str(tmp_path)], "300w-train"),
                       (["--rounds", "11"], "--rounds"), (["--detector", "nope"], "nope")):
        with pytest.raises(SystemExit) as e:
            refine_rounds.main([*args, "--out", str(tmp_path / "r.json")])
        assert e.value.code == 2 and what in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()
