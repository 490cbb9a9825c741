"""The batched device warp (data.warp = "device") against the CPU path: same
landmarks and matrices exactly, images equal up to interpolation rounding."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from pyflm.data import PAPER1, PAPER2, AugmentParams, Sample, write_pts
from pyflm.data.device_warp import MAX_OCCLUDERS, augment_batch, cut_region, pack_params
from training.dataset import LandmarkDataset

K = 68


def smooth_image(rng, h: int, w: int) -> np.ndarray:
    """Random colour image with features ~8 px wide: a half-pixel error in
    the warp changes it by far more than interpolation rounding does."""
    small = rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    root = tmp_path_factory.mktemp("warp")
    rng = np.random.default_rng(4)
    out = []
    for i, (h, w) in enumerate([(161, 203), (240, 180), (97, 131)]):
        img = smooth_image(rng, h, w)
        path = root / f"im{i}.png"
        cv2.imwrite(str(path), img)
        pts = np.stack([rng.uniform(0.3 * w, 0.7 * w, K), rng.uniform(0.3 * h, 0.7 * h, K)], 1)
        write_pts(root / f"im{i}.pts", pts)
        out.append(Sample(path, pts, "68", "test"))
    return out


def pair(samples, cfg, size, canvas=None):
    kw = dict(mean=None, std=None, seed=9)
    return (LandmarkDataset(samples, size, cfg, **kw),
            LandmarkDataset(samples, size, cfg, warp="device", canvas=canvas, **kw))


@pytest.mark.parametrize("cfg", [PAPER1, PAPER2], ids=["paper1", "paper2"])
@pytest.mark.parametrize("size", [32, 57])
def test_device_path_matches_cpu_path(samples, cfg, size):
    cpu, dev = pair(samples, cfg, size, canvas=256)  # no shrinking: the same sampling as cv2
    for epoch in range(4):
        keys = [(i, epoch) for i in range(len(samples))]
        a = default_collate([cpu[k] for k in keys])
        b = default_collate([dev[k] for k in keys])
        assert "image" not in b and b["canvas"].dtype == torch.uint8
        for name in ("landmarks", "matrix", "image_landmarks", "visibility"):
            assert torch.equal(a[name], b[name]), name
        x = dev.images(b, "cpu")
        assert x.shape == a["image"].shape and x.dtype == torch.float32
        diff = (x - a["image"]).abs()
        # cv2 rounds to uint8 before jitter and quantises positions to 1/32 px
        assert diff.mean() < 1.5 / 255 and diff.max() < 12 / 255, (epoch, float(diff.mean()), float(diff.max()))


def test_shrunk_region_still_lines_up(tmp_path):
    """A canvas smaller than the region: INTER_AREA first, the matrix accounts
    for it. On a smooth photo the result is close to the CPU path's, and much
    closer than the same canvas sampled one crop pixel off."""
    rng = np.random.default_rng(8)
    img = cv2.resize(rng.integers(0, 256, (6, 7, 3), dtype=np.uint8), (420, 360), interpolation=cv2.INTER_CUBIC)
    cv2.imwrite(str(tmp_path / "big.png"), img)
    pts = np.stack([rng.uniform(120, 300, K), rng.uniform(100, 260, K)], 1)
    cpu, dev = pair([Sample(tmp_path / "big.png", pts, "68", "t")], PAPER1, 32)  # canvas 96 < region
    for epoch in range(3):
        a, b = default_collate([cpu[(0, epoch)]]), default_collate([dev[(0, epoch)]])
        assert torch.equal(a["landmarks"], b["landmarks"])
        assert max(cut_region(img, b["matrix"][0].numpy(), 32, 96)[0].shape[:2]) == 96  # it was shrunk
        near = (dev.images(b, "cpu") - a["image"]).abs().mean()
        off = b["crop_to_canvas"].clone()
        off[:, :, 2] += off[:, :, 0]  # one crop px to the right, in canvas px
        far = (augment_batch(b["canvas"], off, 32, b["jitter"], b["occluders"]) - a["image"]).abs().mean()
        assert near < 2 / 255 and near < 0.5 * far, (epoch, float(near), float(far))


def test_a_half_pixel_error_would_fail(samples):
    """The comparison above is sharp enough: shifting the grid by half a pixel fails it."""
    cpu, dev = pair(samples, PAPER1.replace(brightness=0, contrast=0, saturation=0), 32)
    keys = [(i, 0) for i in range(len(samples))]
    a, b = default_collate([cpu[k] for k in keys]), default_collate([dev[k] for k in keys])
    shifted = b["crop_to_canvas"].clone()
    shifted[:, 0, 2] += 0.5
    x = augment_batch(b["canvas"], shifted, 32, b["jitter"], b["occluders"])
    assert (x - a["image"]).abs().mean() > 1.5 / 255


def test_region_outside_the_image_is_border():
    img = np.full((20, 30, 3), 200, np.uint8)
    far = np.array([[1.0, 0.0, 500.0], [0.0, 1.0, 500.0]])  # image px -> crop px: the crop sees x, y < -480
    region, to_region = cut_region(img, far, 16, 48)
    canvas = torch.zeros(1, 48, 48, 3, dtype=torch.uint8)
    canvas[0, : region.shape[0], : region.shape[1]] = torch.from_numpy(region)
    x = augment_batch(canvas, torch.from_numpy(to_region)[None], 16)
    assert torch.equal(x, torch.zeros(1, 3, 16, 16))


def test_jitter_and_occluders_hand_values():
    canvas = torch.full((1, 8, 8, 3), 100, dtype=torch.uint8)
    ident = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]], dtype=torch.float64)
    params = AugmentParams(brightness=1.5, contrast=1.0, saturation=1.0, occluders=[(2, 3, 5, 4, (1.0, 0.0, 0.5))])
    jitter, occ = pack_params(params)
    x = augment_batch(canvas, ident, 8, torch.from_numpy(jitter)[None], torch.from_numpy(occ)[None],
                      mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    inside = torch.zeros(8, 8, dtype=torch.bool)
    inside[3:4, 2:5] = True
    want_out = (150 / 255 - 0.5) / 0.25
    torch.testing.assert_close(x[0, :, ~inside], torch.full((3, int((~inside).sum())), want_out))
    torch.testing.assert_close(x[0, :, inside], ((torch.tensor([255.0, 0.0, 128.0]) / 255 - 0.5) / 0.25)[:, None]
                               .expand(3, 3))


def test_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        augment_batch(torch.zeros(1, 8, 8, 3), torch.zeros(1, 2, 3), 4)
    with pytest.raises(ValueError, match="occluders"):
        pack_params(AugmentParams(occluders=[(0, 0, 1, 1, (0, 0, 0))] * (MAX_OCCLUDERS + 1)))
    with pytest.raises(ValueError, match="warp"):
        LandmarkDataset([Sample("x.png", np.zeros((K, 2)), "68", "t")], 8, PAPER1, warp="gpu")


def test_empty_batch():
    x = augment_batch(torch.zeros(0, 8, 8, 3, dtype=torch.uint8), torch.zeros(0, 2, 3), 4)
    assert x.shape == (0, 3, 4, 4)
