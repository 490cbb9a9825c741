"""Augmentation (pyflm.data.augment): geometry, flip permutation, colour, occluders."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import pyflm
from pyflm.data import (
    PAPER1,
    PAPER2,
    AugmentConfig,
    AugmentParams,
    Crop,
    augment,
    augmentation_matrix,
    color_jitter,
    get_scheme,
    load_split,
    occlude,
    sample_params,
    transform_points,
)

S68 = get_scheme("68")
GEOMETRY_ONLY = AugmentConfig(rotation_deg=50, scale_range=(0.6, 1.2), translation=0.05, flip_prob=0.5)


@pytest.fixture
def seed():
    s = int(np.random.SeedSequence().entropy % 2**32)
    print(f"seed={s}")
    return s


def _face_like_points(rng, n=68, lo=60, hi=140, spacing=7):
    grid = np.array([(x, y) for x in range(lo, hi, spacing) for y in range(lo, hi, spacing)], float)
    return grid[rng.choice(len(grid), size=n, replace=False)]


def _blob_stack(shape, pts, sigma=1.2):
    """One channel per landmark holding a small Gaussian dot at it."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.empty((h, w, len(pts)), np.float32)
    for k, (x, y) in enumerate(pts):
        out[:, :, k] = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return out


def _centroids(stack):
    h, w, n = stack.shape
    yy, xx = np.mgrid[0:h, 0:w]
    m = stack.reshape(-1, n).astype(np.float64)
    tot = m.sum(0)
    return np.stack([(xx.reshape(-1, 1) * m).sum(0) / tot, (yy.reshape(-1, 1) * m).sum(0) / tot], axis=1)


@pytest.mark.parametrize("flip_prob", [0.0, 1.0, 0.5])
def test_dots_follow_landmarks(seed, flip_prob):
    """Render each landmark as a dot in its own channel, augment (rotation,
    scale, shift, flip), and find every dot where the returned landmarks say:
    dot of old point k at new point mirror[k] when flipped, else at k."""
    rng = np.random.default_rng(seed)
    pts = _face_like_points(rng)
    img = _blob_stack((200, 200), pts)
    crop = Crop.from_square(100.0, 100.0, 150.0, 96)
    cfg = GEOMETRY_ONLY.replace(flip_prob=flip_prob)
    n_checked = 0
    for _ in range(4):
        res = augment(img, pts, crop.matrix, 96, "68", rng, cfg)
        assert res.image.shape == (96, 96, 68) and res.landmarks.shape == (68, 2)
        if flip_prob in (0.0, 1.0):
            assert res.params.flip == bool(flip_prob)
        owner = S68.mirror_array if res.params.flip else np.arange(68)  # new index of old point k
        found = _centroids(res.image)  # by old index
        expected = res.landmarks[owner]
        # the matrix maps the original landmarks to the (un-permuted) outputs
        np.testing.assert_allclose(transform_points(res.matrix, pts), expected, atol=1e-9)
        inside = np.all((expected > 5) & (expected < 90), axis=1)
        err = np.linalg.norm(found[inside] - expected[inside], axis=1)
        assert err.max() < 1.0, err.max()
        n_checked += inside.sum()
        if res.params.flip:  # without the permutation the dots would be far off
            wrong = np.linalg.norm(found - res.landmarks, axis=1)[inside & (S68.mirror_array != np.arange(68))]
            assert np.median(wrong) > 3
    assert n_checked > 100


def test_flip_maps_named_points(seed):
    """After a flip (no rotation), point 36 (the outer corner of the eye on the
    image's left) is again on the image's left: it is the old point 45."""
    rng = np.random.default_rng(seed)
    pts = np.zeros((68, 2))
    pts[:, 0] = np.linspace(50, 150, 68)
    pts[:, 1] = 100
    pts[36] = (70, 90)
    pts[45] = (130, 90)
    crop = Crop.from_square(100.0, 100.0, 200.0, 200)  # identity-like: maps x -> x - 0.5
    cfg = AugmentConfig(rotation_deg=0, scale_range=(1.0, 1.0), flip_prob=1.0)
    res = augment(np.zeros((200, 200), np.uint8), pts, crop.matrix, 200, "68", rng, cfg)
    q = crop.to_crop(pts)
    assert res.landmarks[36][0] < 100 < res.landmarks[45][0]
    np.testing.assert_allclose(res.landmarks[36], (199 - q[45][0], q[45][1]), atol=1e-9)


def test_deterministic_given_generator(seed):
    rng0 = np.random.default_rng(seed)
    img = rng0.integers(0, 256, size=(120, 100, 3), dtype=np.uint8)
    pts = rng0.uniform(30, 80, size=(68, 2))
    crop = Crop.from_landmarks(pts, 64)
    cfg = PAPER2.replace(occlusion_prob=1.0)
    a = augment(img, pts, crop.matrix, 64, "68", np.random.default_rng(seed + 1), cfg)
    b = augment(img, pts, crop.matrix, 64, "68", np.random.default_rng(seed + 1), cfg)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.landmarks, b.landmarks)
    assert a.params == b.params
    c = augment(img, pts, crop.matrix, 64, "68", np.random.default_rng(seed + 2), cfg)
    assert not np.array_equal(a.landmarks, c.landmarks)
    # replaying the params reproduces the result without drawing
    d = augment(img, pts, crop.matrix, 64, "68", None, cfg, params=a.params)
    np.testing.assert_array_equal(d.image, a.image)


@pytest.mark.parametrize("cfg", [PAPER1, PAPER2], ids=["paper1", "paper2"])
def test_param_ranges(cfg, seed):
    rng = np.random.default_rng(seed)
    ps = [sample_params(rng, cfg, 256) for _ in range(400)]
    ang = np.array([p.angle_deg for p in ps])
    sc = np.array([p.scale for p in ps])
    assert np.all(np.abs(ang) <= cfg.rotation_deg) and np.abs(ang).max() > 0.8 * cfg.rotation_deg
    assert np.all((sc >= cfg.scale_range[0]) & (sc <= cfg.scale_range[1]))
    assert 0.3 < np.mean([p.flip for p in ps]) < 0.7
    shifts = np.array([p.shift for p in ps])
    assert np.all(np.abs(shifts) <= cfg.translation * 256)
    for p in ps:
        for x0, y0, x1, y1, _ in p.occluders:
            assert 0 <= x0 < x1 <= 256 and 0 <= y0 < y1 <= 256
    assert PAPER1.rotation_deg == 30 and PAPER1.scale_range == (0.6, 1.0)
    assert PAPER2.rotation_deg == 50 and PAPER2.scale_range == (0.8, 1.2)


def test_augmentation_matrix_hand_values():
    # scale 2 about the centre of a 11x11 crop, shift (1, -2), no rotation
    m = augmentation_matrix(AugmentParams(scale=2.0, shift=(1.0, -2.0)), 11)
    np.testing.assert_allclose(m, [[2, 0, -5 + 1], [0, 2, -5 - 2]], atol=1e-12)
    # flip only: x -> 10 - x
    m = augmentation_matrix(AugmentParams(flip=True), 11)
    np.testing.assert_allclose(m, [[-1, 0, 10], [0, 1, 0]], atol=1e-12)


def test_color_jitter_hand_values():
    img = np.array([[[0, 100, 200], [100, 100, 100]]], np.uint8)  # 1 x 2 x 3
    np.testing.assert_array_equal(color_jitter(img, brightness=1.5)[0, 1], [150, 150, 150])
    np.testing.assert_array_equal(color_jitter(img, brightness=2.0)[0, 0], [0, 200, 255])  # clipped
    # contrast 0.5 around the global mean 100
    np.testing.assert_array_equal(color_jitter(img, contrast=0.5)[0, 0], [50, 100, 150])
    # saturation 0: each pixel becomes its grey (channel mean)
    np.testing.assert_array_equal(color_jitter(img, saturation=0.0)[0, 0], [100, 100, 100])
    f = img.astype(np.float32) / 255
    out = color_jitter(f, brightness=1.5)
    assert out.dtype == np.float32 and out.max() <= 1.0
    g = np.full((4, 4), 80, np.uint8)
    np.testing.assert_array_equal(color_jitter(g, brightness=1.25, saturation=0.0), np.full((4, 4), 100))


def test_occluders_touch_image_only(seed):
    rng = np.random.default_rng(seed)
    img = np.zeros((50, 60, 3), np.uint8)
    out = occlude(img, [(5, 6, 15, 20, (1.0, 0.5, 0.0))])
    np.testing.assert_array_equal(out[6:20, 5:15], np.broadcast_to([255, 128, 0], (14, 10, 3)))
    assert out[:6].max() == 0 and out[20:].max() == 0 and out[:, :5].max() == 0
    assert img.max() == 0  # input untouched
    pts = rng.uniform(20, 40, (68, 2))
    crop = Crop.from_landmarks(pts, 48)
    base = AugmentConfig(flip_prob=0.5)
    a = augment(np.full((60, 60, 3), 90, np.uint8), pts, crop.matrix, 48, "68", np.random.default_rng(seed), base)
    cfg = base.replace(occlusion_prob=1.0, occlusion_max=3, brightness=0.3, contrast=0.3, saturation=0.3)
    b = augment(np.full((60, 60, 3), 90, np.uint8), pts, crop.matrix, 48, "68", np.random.default_rng(seed), cfg)
    # same geometric draw (the draw order puts geometry first), same landmarks
    assert a.params.angle_deg == b.params.angle_deg and a.params.flip == b.params.flip
    np.testing.assert_array_equal(a.landmarks, b.landmarks)
    assert 1 <= len(b.params.occluders) <= 3
    x0, y0, x1, y1, col = b.params.occluders[-1]
    np.testing.assert_array_equal(b.image[y0:y1, x0:x1], np.broadcast_to(np.rint(np.asarray(col) * 255), (y1 - y0, x1 - x0, 3)))


def test_config_validation_and_shape_errors():
    with pytest.raises(ValueError, match="scale_range"):
        AugmentConfig(scale_range=(1.2, 0.8))
    with pytest.raises(ValueError, match="probabilities"):
        AugmentConfig(flip_prob=1.5)
    with pytest.raises(ValueError, match="rotation_deg must be >= 0"):
        AugmentConfig(rotation_deg=-1)
    crop = Crop.from_square(10, 10, 10, 8)
    with pytest.raises(ValueError, match=r"landmarks must be \[98, 2\]"):
        augment(np.zeros((20, 20)), np.zeros((68, 2)), crop.matrix, 8, "98", np.random.default_rng(0))


def _data_root() -> Path:
    env = os.environ.get("PYFLM_DATA")
    return Path(env) if env else Path(pyflm.__file__).parents[1].parent / "shared" / "data"


@pytest.mark.skipif(not (_data_root() / "300w" / "lfpw" / "testset").is_dir(), reason="no 300-W data")
def test_real_images_crop_and_augment(seed):
    """Smoke test on real photographs: GT crop, PAPER2 augmentation, the
    augmented landmarks stay where the same matrix puts them."""
    import cv2

    rng = np.random.default_rng(seed)
    samples = load_split("lfpw-test", root=_data_root())[:3]
    for s in samples:
        img = cv2.imread(str(s.image_path), cv2.IMREAD_COLOR)
        assert img is not None
        crop = Crop.from_landmarks(s.landmarks, 128)
        res = augment(img, s.landmarks, crop.matrix, 128, s.scheme, rng, PAPER2)
        assert res.image.shape == (128, 128, 3) and res.image.dtype == np.uint8
        moved = transform_points(res.matrix, s.landmarks)
        if res.params.flip:
            moved = moved[S68.mirror_array]
        np.testing.assert_allclose(res.landmarks, moved, atol=1e-9)
        assert np.all(np.isfinite(res.landmarks)) and np.abs(res.landmarks - 63.5).max() < 128
