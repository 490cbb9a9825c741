"""Torch datasets over pyflm.data samples: load, crop, augment, normalise.

Every item is a dict:

* ``image``: float32 [3, S, S], RGB in [0, 1] then normalised (ImageNet mean /
  std by default);
* ``landmarks``: float64 [K, 2], crop pixels (after augmentation, mirror
  permuted on a flip); cast to float32 for the network by the caller;
* ``visibility``: float32 [K] (1 = annotated; all 300-W points are);
* ``matrix``: float64 [2, 3], original image px -> crop px, so predictions map
  back with its exact inverse (``pyflm.data.invert_affine``);
* ``image_landmarks``: float64 [K, 2], the original annotation (image px);
* ``index``: int, the sample's position in the list.

With ``warp="device"`` (training config ``data.warp``) an augmented item has
no ``image``: it carries the face's region pasted into a uint8 ``canvas``
[C, C, 3] with ``crop_to_canvas`` [2, 3], and the packed ``jitter`` and
``occluders``, and :meth:`LandmarkDataset.images` makes the batch's images
on the training device in one batched warp (:mod:`pyflm.data.device_warp`).
Landmarks and matrices are the CPU path's, exactly.

Randomness: the augmentation of a sample draws from
``numpy.random.default_rng((seed, epoch, index))``, so a given (epoch, index)
always yields the same crop, whatever the worker or the number of workers.
That (plus :class:`ResumableSampler`) is what makes ``--resume`` exact.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pyflm.data import (PAPER1, PAPER2, AugmentConfig, Crop, Sample, augment, augment_geometry, get_scheme,
                        sample_params, square_from_landmarks)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "AUGMENT_PRESETS",
    "LandmarkDataset",
    "ResumableSampler",
    "load_image",
    "holdout_split",
    "make_loader",
    "seed_worker",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# "light": a last fine-tuning stage framed like inference: faces 0.8-1.0 of the training
# square (the bundled models' refinement squares, 1.45-1.5, frame a face like 0.87-0.9 of
# it), +-20 degrees, half paper 1's shift and colour jitter. Tried on fast and not shipped
# (training/configs/fast_light.toml says why); the bundled models use paper1.
LIGHT = PAPER1.replace(rotation_deg=20.0, scale_range=(0.8, 1.0), translation=0.03, brightness=0.1, contrast=0.1,
                       saturation=0.1)
AUGMENT_PRESETS: dict[str, AugmentConfig | None] = {"paper1": PAPER1, "paper2": PAPER2, "light": LIGHT, "none": None}


def load_image(path) -> np.ndarray:
    """Read an image as uint8 RGB [H, W, 3]; missing or unreadable files raise
    an error naming the file (cv2.imread itself just returns None)."""
    import cv2

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise ValueError(f"cannot decode image (corrupt or not an image): {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def holdout_split(samples: Sequence[Sample], fraction: float, seed: int = 0) -> tuple[list[Sample], list[Sample]]:
    """(train, held_out): a deterministic random ``fraction`` of the samples,
    chosen per *source photo* so that faces of one AFW photo (``<id>_1``,
    ``<id>_2``) never fall on both sides."""
    if not 0 < fraction < 1:
        raise ValueError(f"holdout fraction must be in (0, 1), got {fraction}")
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        stem = s.image_path.stem
        key = f"{s.dataset}/{stem.rsplit('_', 1)[0] if s.dataset == 'afw' else stem}"
        groups.setdefault(key, []).append(i)
    keys = sorted(groups)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(keys))
    want = max(1, int(round(fraction * len(samples))))
    held: set[int] = set()
    for j in order:
        if len(held) >= want:
            break
        held.update(groups[keys[j]])
    train = [s for i, s in enumerate(samples) if i not in held]
    val = [s for i, s in enumerate(samples) if i in held]
    return train, val


@dataclass
class CropRule:
    scale: float = 1.3
    center: str = "centroid"


class LandmarkDataset(Dataset):
    """Samples -> normalised crops with landmarks (see the module docstring).

    ``augment_cfg`` None gives the plain ground-truth crop (evaluation).
    ``crop_fn(sample) -> (cx, cy, side)`` overrides the ground-truth rule
    (e.g. detector boxes). Indices may be ints or ``(index, epoch)`` pairs
    (what :class:`ResumableSampler` yields)."""

    def __init__(self, samples: Sequence[Sample], input_size: int, augment_cfg: AugmentConfig | None = None,
                 crop_scale: float = 1.3, crop_center: str = "centroid", mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 seed: int = 0, crop_fn=None, warp: str = "cpu", canvas: int | None = None):
        if len(samples) == 0:
            raise ValueError("LandmarkDataset: no samples")
        if not isinstance(input_size, int) or input_size < 1:
            raise ValueError(f"input_size must be a positive int, got {input_size!r}")
        if warp not in ("cpu", "device"):
            raise ValueError(f"warp must be 'cpu' or 'device', got {warp!r}")
        # device: the canvas holds the region at >= crop resolution for paper-2 zooms and rotations
        self.warp = warp if augment_cfg is not None else "cpu"
        self.canvas = int(canvas) if canvas else 3 * input_size
        self.samples = list(samples)
        self.input_size = input_size
        self.augment_cfg = augment_cfg
        self.crop = CropRule(float(crop_scale), crop_center)
        self.mean = np.asarray(mean if mean is not None else (0.0, 0.0, 0.0), dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(std if std is not None else (1.0, 1.0, 1.0), dtype=np.float32).reshape(3, 1, 1)
        self.seed = int(seed)
        self.crop_fn = crop_fn

    def __len__(self) -> int:
        return len(self.samples)

    def square(self, sample: Sample) -> tuple[float, float, float]:
        if self.crop_fn is not None:
            return self.crop_fn(sample)
        return square_from_landmarks(sample.landmarks, self.crop.scale, self.crop.center)

    def __getitem__(self, key):
        index, epoch = (key if isinstance(key, tuple) else (key, 0))
        index = int(index)
        sample = self.samples[index]
        image = load_image(sample.image_path)
        crop = Crop.from_square(*self.square(sample), self.input_size)
        k = get_scheme(sample.scheme).num_points
        if self.warp == "device":
            return self._device_item(index, epoch, sample, image, crop, k)
        if self.augment_cfg is not None:
            rng = np.random.default_rng((self.seed, int(epoch), index))
            res = augment(image, sample.landmarks, crop.matrix, self.input_size, sample.scheme, rng, self.augment_cfg)
            out, pts, matrix = res.image, res.landmarks, res.matrix
        else:
            out, pts, matrix = crop.warp(image), crop.to_crop(sample.landmarks), crop.matrix
        x = out.astype(np.float32).transpose(2, 0, 1) / 255.0
        x = (x - self.mean) / self.std
        return {
            "image": torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
            "landmarks": torch.from_numpy(np.asarray(pts, dtype=np.float64)),
            "visibility": torch.ones(k, dtype=torch.float32),
            "matrix": torch.from_numpy(np.asarray(matrix, dtype=np.float64)),
            "image_landmarks": torch.from_numpy(sample.landmarks.copy()),
            "index": index,
        }


    def _device_item(self, index: int, epoch: int, sample: Sample, image: np.ndarray, crop: Crop, k: int) -> dict:
        from pyflm.data.device_warp import cut_region, pack_params

        # the same draw, in the same order, as augment() on the CPU path
        params = sample_params(np.random.default_rng((self.seed, int(epoch), index)), self.augment_cfg,
                               self.input_size)
        matrix, pts = augment_geometry(sample.landmarks, crop.matrix, self.input_size, sample.scheme, params)
        region, to_region = cut_region(image, matrix, self.input_size, self.canvas)
        canvas = np.zeros((self.canvas, self.canvas, 3), dtype=np.uint8)
        canvas[: region.shape[0], : region.shape[1]] = region
        jitter, occluders = pack_params(params)
        return {
            "canvas": torch.from_numpy(canvas),
            "crop_to_canvas": torch.from_numpy(to_region),
            "jitter": torch.from_numpy(jitter),
            "occluders": torch.from_numpy(occluders),
            "landmarks": torch.from_numpy(np.asarray(pts, dtype=np.float64)),
            "visibility": torch.ones(k, dtype=torch.float32),
            "matrix": torch.from_numpy(np.asarray(matrix, dtype=np.float64)),
            "image_landmarks": torch.from_numpy(sample.landmarks.copy()),
            "index": index,
        }

    def images(self, batch: dict, device="cpu") -> torch.Tensor:
        """The batch's network input ``[B, 3, S, S]`` on ``device``: moved
        there, or (``warp="device"``) warped, jittered, occluded and
        normalised there in one batched pass."""
        if "image" in batch:
            return batch["image"].to(device, non_blocking=True)
        from pyflm.data.device_warp import augment_batch

        return augment_batch(batch["canvas"].to(device, non_blocking=True), batch["crop_to_canvas"],
                             self.input_size, batch["jitter"], batch["occluders"],
                             self.mean.reshape(-1).tolist(), self.std.reshape(-1).tolist())


class ResumableSampler(Sampler):
    """An endless stream of ``(index, epoch)`` pairs: epoch e is a permutation
    of the dataset seeded by (seed, e), sharded over ``num_replicas`` ranks
    like DistributedSampler (padded by wrapping so every rank gets the same
    count). ``start`` skips that many items of this rank's stream, so a resumed
    run sees exactly the items the uninterrupted run would have seen."""

    def __init__(self, size: int, seed: int = 0, shuffle: bool = True, rank: int = 0, num_replicas: int = 1,
                 start: int = 0):
        if size < 1:
            raise ValueError("ResumableSampler: empty dataset")
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.rank, self.num_replicas = rank, num_replicas
        self.per_rank = -(-size // num_replicas)
        self.start = start

    def _epoch(self, epoch: int) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        total = self.per_rank * self.num_replicas
        order = (order * (total // self.size + 1))[:total]
        return order[self.rank::self.num_replicas]

    def __iter__(self):
        epoch, offset = divmod(self.start, self.per_rank)
        while True:
            for i in self._epoch(epoch)[offset:]:
                yield (i, epoch)
            epoch, offset = epoch + 1, 0


def seed_worker(worker_id: int) -> None:
    """Seed python / numpy / torch in each worker from the loader's base seed
    (torch gives every worker base_seed + worker_id)."""
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


def make_loader(dataset: Dataset, batch_size: int, sampler=None, num_workers: int = 2, seed: int = 0,
                shuffle: bool = False, drop_last: bool = False, pin_memory: bool = False) -> DataLoader:
    """A DataLoader with seeded, persistent workers (persistent only when
    ``num_workers > 0``)."""
    g = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=shuffle if sampler is None else False,
                      num_workers=num_workers, persistent_workers=num_workers > 0, worker_init_fn=seed_worker,
                      generator=g, drop_last=drop_last, pin_memory=pin_memory)
