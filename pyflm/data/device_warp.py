"""Training augmentation split in two so the warp runs batched on the GPU.

The CPU path (:func:`pyflm.data.augment.augment`) warps, jitters and
occludes every sample in a DataLoader worker. With ``data.warp = "device"``
the worker only decodes the image and cuts out the face's *region*: the
axis-aligned box of image pixels the augmented crop can sample, plus a
one-pixel margin for bilinear sampling, clipped to the image
(:func:`cut_region`). Regions of one batch are pasted into equal "canvases";
then, for the whole batch at once on any device, :func:`augment_batch`
applies the same image -> crop matrix with ``grid_sample`` (bilinear, zero
border, as ``cv2.warpAffine`` with a constant 0 border), the colour jitter,
the occluders and the input normalisation.

The landmarks and matrices stay exactly those of the CPU path (they are
computed by the same code from the same draw); the images agree to
interpolation rounding (cv2 quantises sampling positions to 1/32 px and
rounds to uint8 between steps). A region larger than the canvas is shrunk to
fit with ``cv2.INTER_AREA`` first (the matrix accounts for it), which only
happens for faces much larger than the crop.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pyflm.data.augment import AugmentParams
from pyflm.data.crops import compose_affine, invert_affine

__all__ = ["MAX_OCCLUDERS", "cut_region", "pack_params", "augment_batch"]

MAX_OCCLUDERS = 4  # rows of the packed occluder table (AugmentConfig.occlusion_max beyond this is refused)


def cut_region(image: np.ndarray, matrix, out_size: int, canvas: int) -> tuple[np.ndarray, np.ndarray]:
    """(region uint8 [h, w, C] with h, w <= canvas, crop_to_region [2, 3]):
    the pixels of ``image`` that the ``out_size`` crop of ``matrix`` (image
    px -> crop px) samples, and the matrix from crop px to region px that
    :func:`augment_batch` samples with."""
    import cv2

    inv = invert_affine(np.asarray(matrix, dtype=np.float64))
    s = float(out_size)
    corners = np.array([[-0.5, -0.5, 1], [s - 0.5, -0.5, 1], [-0.5, s - 0.5, 1], [s - 0.5, s - 0.5, 1]])
    xy = corners @ inv.T  # the crop's footprint in image px
    h, w = image.shape[:2]
    x0 = max(0, min(w, math.floor(xy[:, 0].min()) - 1))
    x1 = max(x0, min(w, math.ceil(xy[:, 0].max()) + 2))
    y0 = max(0, min(h, math.floor(xy[:, 1].min()) - 1))
    y1 = max(y0, min(h, math.ceil(xy[:, 1].max()) + 2))
    region = image[y0:y1, x0:x1]
    to_region = np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0]])  # image px -> region px
    rh, rw = region.shape[:2]
    if max(rh, rw) > canvas:  # shrink to fit: area averaging, the matrix maps pixel edges onto pixel edges
        f = canvas / max(rh, rw)
        nw, nh = max(1, min(canvas, round(rw * f))), max(1, min(canvas, round(rh * f)))
        region = cv2.resize(region, (nw, nh), interpolation=cv2.INTER_AREA)
        sx, sy = nw / rw, nh / rh
        to_region = compose_affine(np.array([[sx, 0.0, (sx - 1) / 2], [0.0, sy, (sy - 1) / 2]]), to_region)
    if region.size == 0:  # the crop lies outside the image: an empty (all-border) region
        region = np.zeros((1, 1) + image.shape[2:], dtype=image.dtype)
    return np.ascontiguousarray(region), compose_affine(to_region, inv)


def pack_params(params: AugmentParams) -> tuple[np.ndarray, np.ndarray]:
    """(jitter float32 [3]: brightness, contrast, saturation; occluders
    float32 [MAX_OCCLUDERS, 7]: x0, y0, x1, y1 (half-open, crop px), r, g, b
    in [0, 1]; unused rows have x1 = x0 = 0)."""
    if len(params.occluders) > MAX_OCCLUDERS:
        raise ValueError(f"at most {MAX_OCCLUDERS} occluders per sample on the device path, got {len(params.occluders)}")
    occ = np.zeros((MAX_OCCLUDERS, 7), dtype=np.float32)
    for i, (x0, y0, x1, y1, colour) in enumerate(params.occluders):
        # the CPU path fills uint8 images with rint(colour * 255)
        occ[i] = (x0, y0, x1, y1, *(np.rint(np.resize(np.asarray(colour, dtype=np.float64), 3) * 255) / 255))
    return np.array([params.brightness, params.contrast, params.saturation], dtype=np.float32), occ


def augment_batch(canvas: Tensor, crop_to_canvas: Tensor, out_size: int, jitter: Tensor | None = None,
                  occluders: Tensor | None = None, mean=None, std=None) -> Tensor:
    """uint8 canvases ``[B, H, W, 3]`` (on the device that should do the
    work) -> float32 crops ``[B, 3, S, S]`` in [0, 1], jittered, occluded,
    then normalised by ``mean`` / ``std`` (per channel; None: none).
    ``crop_to_canvas [B, 2, 3]`` maps crop px to canvas px."""
    if canvas.dtype != torch.uint8 or canvas.dim() != 4 or canvas.shape[-1] != 3:
        raise ValueError(f"canvas must be uint8 [B, H, W, 3], got {canvas.dtype} {list(canvas.shape)}")
    b, h, w, _ = canvas.shape
    dev = canvas.device
    x = canvas.permute(0, 3, 1, 2).float().div_(255.0)
    s = int(out_size)
    ys, xs = torch.meshgrid(torch.arange(s, device=dev, dtype=torch.float32),
                            torch.arange(s, device=dev, dtype=torch.float32), indexing="ij")
    base = torch.stack([xs, ys, torch.ones_like(xs)], -1).reshape(1, s * s, 3)
    m = crop_to_canvas.to(dev, torch.float64)
    p = (base.double() @ m.transpose(1, 2)).float()  # [B, S*S, 2] canvas px, pixel centres at integers
    scale = torch.tensor([w, h], device=dev, dtype=torch.float32)
    grid = ((2 * p + 1) / scale - 1).view(b, s, s, 2)  # align_corners=False: pixel edges at -1 and 1
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if jitter is not None:
        j = jitter.to(dev, torch.float32)
        x = x * j[:, 0, None, None, None]  # brightness, contrast, saturation: the order of augment.color_jitter
        mu = x.mean(dim=(1, 2, 3), keepdim=True)
        x = mu + (x - mu) * j[:, 1, None, None, None]
        grey = x.mean(dim=1, keepdim=True)
        x = grey + (x - grey) * j[:, 2, None, None, None]
        x = x.clamp_(0.0, 1.0)
    if occluders is not None:
        o = occluders.to(dev, torch.float32)
        col = torch.arange(s, device=dev, dtype=torch.float32)
        for i in range(o.shape[1]):
            r = o[:, i]
            inside = ((col[None, None, :] >= r[:, 0, None, None]) & (col[None, None, :] < r[:, 2, None, None])
                      & (col[None, :, None] >= r[:, 1, None, None]) & (col[None, :, None] < r[:, 3, None, None]))
            x = torch.where(inside[:, None], r[:, 4:7, None, None], x)
    if mean is not None:
        mu = torch.as_tensor(mean, device=dev, dtype=torch.float32).view(1, -1, 1, 1)
        sd = torch.as_tensor(std, device=dev, dtype=torch.float32).view(1, -1, 1, 1)
        x = (x - mu) / sd
    return x
