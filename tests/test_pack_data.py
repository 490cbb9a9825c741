"""training/pack_data.py: the compact copy loads like the original, its landmarks sit
where the downscaled image shows them, and bad input fails cleanly."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from pyflm.data import load_split, write_pts
from training import pack_data


@pytest.fixture
def rng():
    return np.random.default_rng()


def _blob_centre(img: np.ndarray) -> np.ndarray:
    """Intensity-weighted centre (x, y) of a grey image, pixel centres at integers."""
    g = img.astype(np.float64)
    ys, xs = np.mgrid[: g.shape[0], : g.shape[1]]
    return np.array([(g * xs).sum(), (g * ys).sum()]) / g.sum()


def _root(tmp_path, rng, sizes=((300, 400), (200, 150), (500, 500))):
    """A 300-W-like root: afw + the two train sets + the common test sets; each image
    holds one smooth blob at landmark 0 (the other landmarks anywhere inside)."""
    root = tmp_path / "data"
    folders = ["afw", "helen/trainset", "lfpw/trainset", "helen/testset", "lfpw/testset"]
    made = {}
    for i, sub in enumerate(folders):
        h, w = sizes[i % len(sizes)]
        pts = np.c_[rng.uniform(0.2 * w, 0.8 * w, 68), rng.uniform(0.2 * h, 0.8 * h, 68)]
        ys, xs = np.mgrid[:h, :w]
        sigma = 0.03 * max(h, w)
        blob = np.exp(-((xs - pts[0, 0]) ** 2 + (ys - pts[0, 1]) ** 2) / (2 * sigma**2))
        img = np.repeat(np.rint(blob * 250)[..., None], 3, axis=2).astype(np.uint8)
        d = root / "300w" / sub
        d.mkdir(parents=True)
        name = f"img_{i}"
        cv2.imwrite(str(d / f"{name}.png"), img)  # lossless: the blob's centre is the landmark's
        write_pts(d / f"{name}.pts", pts)
        made[f"{sub}/{name}"] = (img, pts)
    return root, made


def test_pack_scales_images_and_landmarks_together(tmp_path, rng):
    root, made = _root(tmp_path, rng)
    out = tmp_path / "pack"
    assert pack_data.main(["--root", str(root), "--out", str(out), "--max-side", "160", "--quality", "100"]) == 0
    info = json.loads((out / "PACK.json").read_text())
    assert info["splits"] == {"300w-train": 3, "common": 2} and info["images"] == 5 and info["max_side"] == 160
    packed = {s.image_path.relative_to(out / "300w").with_suffix("").as_posix(): s
              for split in ("300w-train", "common") for s in load_split(split, root=out)}
    assert sorted(packed) == sorted(made)
    for key, (img, pts) in made.items():
        s = packed[key]
        small = cv2.imread(str(s.image_path), cv2.IMREAD_GRAYSCALE)
        h, w = img.shape[:2]
        assert max(small.shape) == min(160, max(h, w))
        sx, sy = small.shape[1] / w, small.shape[0] / h
        np.testing.assert_allclose(s.landmarks, pack_data.scale_points(pts, sx, sy), atol=6e-4)  # .pts: 3 decimals
        # the blob, drawn at landmark 0 in the original, is where the packed landmark 0 says
        # (tolerance 0.15 px: x * s without the half-pixel terms is 0.3-0.34 px off at s = 0.4 and 0.32)
        np.testing.assert_allclose(_blob_centre(small), s.landmarks[0], atol=0.15)


def test_scale_points_round_trip(rng):
    p = rng.uniform(-5, 500, (68, 2))
    sx, sy = rng.uniform(0.2, 3.0, 2)
    np.testing.assert_allclose(pack_data.scale_points(pack_data.scale_points(p, sx, sy), 1 / sx, 1 / sy), p,
                               atol=1e-10)


def test_bad_input(tmp_path, rng, capsys):
    root, _ = _root(tmp_path, rng)
    assert pack_data.main(["--root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert pack_data.main(["--root", str(root), "--out", str(root)]) == 2
    assert "must differ" in capsys.readouterr().err
    for bad in (["--max-side", "8"], ["--quality", "0"]):
        with pytest.raises(SystemExit) as e:
            pack_data.main(["--root", str(root), "--out", str(tmp_path / "o"), *bad])
        assert e.value.code == 2
    assert not (tmp_path / "o").exists()
