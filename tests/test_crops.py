"""Crops as affine matrices (pyflm.data.crops)."""

from __future__ import annotations

import numpy as np
import pytest

from pyflm.data import (
    BoxToSquare,
    Crop,
    compose_affine,
    crop_matrix,
    fit_box_to_square,
    invert_affine,
    similarity_matrix,
    square_from_landmarks,
    transform_points,
    warp_image,
)


@pytest.fixture
def rng():
    seed = int(np.random.SeedSequence().entropy % 2**32)
    print(f"seed={seed}")
    return np.random.default_rng(seed)


def test_square_from_landmarks_hand_values():
    pts = np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 4.0], [0.0, 4.0], [5.0, 2.0]])
    cx, cy, side = square_from_landmarks(pts)
    assert (cx, cy) == (5.0, 2.0) and side == pytest.approx(13.0, abs=1e-12)
    # centroid, not box centre
    pts2 = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [8.0, 0.0], [0.0, 2.0]])
    cx, cy, side = square_from_landmarks(pts2, scale=1.0)
    assert (cx, cy, side) == (pytest.approx(1.6), pytest.approx(0.4), 8.0)
    assert square_from_landmarks(pts2, scale=1.0, center="box") == (4.0, 1.0, 8.0)
    with pytest.raises(ValueError, match="center must be"):
        square_from_landmarks(pts2, center="mean")
    with pytest.raises(ValueError, match="zero extent"):
        square_from_landmarks(np.ones((5, 2)))


def test_crop_matrix_maps_edges_and_centre():
    cx, cy, side, s = 100.0, 50.0, 40.0, 64
    m = crop_matrix((cx, cy), side, s)
    np.testing.assert_allclose(transform_points(m, [[cx - side / 2, cy - side / 2]]), [[-0.5, -0.5]], atol=1e-12)
    np.testing.assert_allclose(transform_points(m, [[cx + side / 2, cy + side / 2]]), [[s - 0.5, s - 0.5]], atol=1e-12)
    np.testing.assert_allclose(transform_points(m, [[cx, cy]]), [[(s - 1) / 2, (s - 1) / 2]], atol=1e-12)
    # rotation by 90 degrees (counter-clockwise on screen): a point to the right of
    # the centre ends up above it
    m90 = crop_matrix((cx, cy), side, s, angle_deg=90)
    np.testing.assert_allclose(transform_points(m90, [[cx + 10, cy]]), [[(s - 1) / 2, (s - 1) / 2 - 10 * s / side]], atol=1e-9)


@pytest.mark.parametrize("out_size", [1, 7, 64, (96, 128)])
def test_round_trip_and_inverse(rng, out_size):
    for _ in range(20):
        pts = rng.uniform(-50, 500, size=(68, 2))
        cx, cy, side = square_from_landmarks(pts, scale=rng.uniform(0.5, 2.0))
        crop = Crop.from_square(cx + rng.normal(), cy + rng.normal(), side, out_size, angle_deg=rng.uniform(-180, 180))
        back = crop.to_image(crop.to_crop(pts))
        np.testing.assert_allclose(back, pts, rtol=0, atol=1e-9)
        ident = np.hstack([np.eye(2), np.zeros((2, 1))])
        np.testing.assert_allclose(compose_affine(crop.matrix, crop.inverse), ident, atol=1e-12)
        np.testing.assert_allclose(compose_affine(crop.inverse, crop.matrix), ident, atol=1e-12)
        np.testing.assert_allclose(invert_affine(crop.inverse), crop.matrix, rtol=1e-12, atol=1e-9)


def test_crop_matrix_and_inverse_match_matrix_algebra(rng):
    # crop_matrix is written out in scalars for speed: check it against the same map
    # composed from similarity_matrix, and invert_affine against np.linalg.inv
    for _ in range(200):
        c, side, ang = rng.uniform(-500, 1500, 2), rng.uniform(1, 900), rng.choice([0.0, rng.uniform(-180, 180)])
        ow, oh = rng.integers(1, 300, 2)
        ref = similarity_matrix(1.0, ang, c, (0.0, 0.0))
        ref = np.diag([ow / side, oh / side]) @ ref + [[0, 0, (ow - 1) / 2], [0, 0, (oh - 1) / 2]]
        m = crop_matrix(c, side, (ow, oh), angle_deg=ang)
        assert m.dtype == np.float64 and m.shape == (2, 3)
        np.testing.assert_allclose(m, ref, rtol=1e-13, atol=1e-12)
        full = np.vstack([m, [0, 0, 1]])
        np.testing.assert_allclose(invert_affine(m), np.linalg.inv(full)[:2], rtol=1e-12, atol=1e-9)
    with pytest.raises(ValueError, match="side"):
        crop_matrix((0, 0), 0.0, 8)
    with pytest.raises(ValueError):
        crop_matrix((0, 0, 0), 4.0, 8)


def test_invert_affine_errors():
    with pytest.raises(ValueError, match="singular"):
        invert_affine(np.array([[1.0, 2.0, 0.0], [2.0, 4.0, 1.0]]))
    with pytest.raises(ValueError, match="2x3"):
        invert_affine(np.eye(3))


def _dots(shape, pts):
    img = np.zeros(shape, np.uint8)
    ij = np.round(pts).astype(int)
    img[ij[:, 1], ij[:, 0]] = 255
    return img


@pytest.mark.parametrize("zoom", [1, 2])
def test_rendered_dots_land_where_landmarks_say(rng, zoom):
    """Single-pixel dots at integer landmarks; a crop that is a pure integer
    translation (zoom 1) or an integer translation with scale 2 must show the
    dot's full value exactly at the transformed landmark (pixel centres map to
    pixel centres, no half-pixel shift)."""
    h, w = 120, 160
    s = 64
    side = s / zoom
    # choose the centre so the image->crop translation is an integer
    ox, oy = int(rng.integers(10, 40)), int(rng.integers(10, 40))
    # dots 4 px apart, most of them inside the part of the image the crop shows
    grid = np.array([(x, y) for x in range(ox - 4, ox + int(side) + 4, 4)
                     for y in range(oy - 4, oy + int(side) + 4, 4)], float)
    pts = grid[rng.choice(len(grid), size=min(40, len(grid) // 2), replace=False)]
    img = _dots((h, w), pts)
    # x' = zoom * (x - cx) + (s - 1) / 2 = zoom * x - zoom * ox  <=>  cx = ox + (s - 1) / (2 zoom)
    crop = Crop.from_square(ox + (s - 1) / (2 * zoom), oy + (s - 1) / (2 * zoom), side, s)
    np.testing.assert_allclose(crop.matrix, [[zoom, 0, -zoom * ox], [0, zoom, -zoom * oy]], atol=1e-12)
    out = crop.warp(img)
    assert out.shape == (s, s) and out.dtype == np.uint8
    q = crop.to_crop(pts)
    inside = np.all((q >= 1) & (q <= s - 2), axis=1)
    assert inside.sum() >= 10
    for x, y in q[inside]:
        xi, yi = int(round(x)), int(round(y))
        assert abs(x - xi) < 1e-9 and abs(y - yi) < 1e-9
        assert out[yi, xi] == 255, (x, y)
        win = out[yi - 1: yi + 2, xi - 1: xi + 2].astype(int)
        expected_neighbour = 0 if zoom == 1 else 128  # bilinear half-way value (127.5 rounds to 128)
        assert win[1, 0] == expected_neighbour and win[1, 2] == expected_neighbour
    # every bright pixel is explained by a landmark
    bright = np.argwhere(out == 255)[:, ::-1]
    d = np.linalg.norm(bright[:, None, :] - q[None], axis=-1).min(axis=1)
    assert np.all(d < 1e-9)


def test_warp_border_and_channels():
    img = np.full((10, 12, 3), 200, np.uint8)
    m = crop_matrix((5.5, 4.5), 30.0, 30)  # much larger than the image: border shows
    out = warp_image(img, m, 30, border_value=7)
    assert out.shape == (30, 30, 3)
    np.testing.assert_array_equal(out[0, 0], [7, 7, 7])
    np.testing.assert_array_equal(out[15, 15], [200, 200, 200])
    out = warp_image(img, m, (20, 30), border_value=(1, 2, 3))
    assert out.shape == (30, 20, 3)
    np.testing.assert_array_equal(out[0, 0], [1, 2, 3])
    with pytest.raises(ValueError, match="interpolation"):
        warp_image(img, m, 30, interpolation="fancy")


def test_box_rule_and_fit(rng):
    rule = BoxToSquare(dx=0.05, dy=0.12, scale=1.25)
    cx, cy, side = rule([10, 20, 110, 140])  # w 100, h 120
    assert (cx, cy, side) == (pytest.approx(60 + 5), pytest.approx(80 + 14.4), pytest.approx(150))
    g = BoxToSquare(scale=2.0, size="geometric")([0, 0, 4, 9])
    assert g[2] == pytest.approx(12.0)
    boxes = []
    squares = []
    for _ in range(50):
        x0, y0 = rng.uniform(0, 300, 2)
        w, h = rng.uniform(40, 200), rng.uniform(40, 200)
        b = [x0, y0, x0 + w, y0 + h]
        boxes.append(b)
        squares.append(rule(b))
    fitted = fit_box_to_square(boxes, squares)
    assert fitted.dx == pytest.approx(0.05) and fitted.dy == pytest.approx(0.12) and fitted.scale == pytest.approx(1.25)
    crop = Crop.from_box(boxes[0], 64, fitted)
    np.testing.assert_allclose(crop.to_crop([squares[0][:2]]), [[31.5, 31.5]], atol=1e-9)
    with pytest.raises(ValueError, match="x_max > x_min"):
        rule([10, 10, 5, 20])


def test_crop_from_landmarks_contains_face(rng):
    pts = rng.normal(size=(68, 2)) * [30, 40] + [200, 150]
    crop = Crop.from_landmarks(pts, 256)
    q = crop.to_crop(pts)
    # 1.3 x extent centred at the centroid: the extent spans 1/1.3 of the crop
    ext = q.max(0) - q.min(0)
    assert ext.max() == pytest.approx(256 / 1.3)
    np.testing.assert_allclose(q.mean(0), [127.5, 127.5], atol=1e-9)
