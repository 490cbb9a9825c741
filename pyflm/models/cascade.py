"""Cascaded shape regression in the style of the Deep Alignment Network
(Kowalski et al. 2017), as used by Hsu et al. (2020) for their cascade baseline.

Each stage is a VGG-like feed-forward net (2x64, 2x128, 2x256, 2x512 convs with
BN + ReLU, a 2x2 max-pool after each pair, dropout, FC 256-BN-ReLU, FC 2K) on a
112x112 input. Stage 1 sees the image and regresses an update of the mean
shape. Each later stage:

1. estimates the similarity transform T that maps the current shape onto the
   mean shape (least squares, closed form),
2. warps the image with T (``affine_grid`` + ``grid_sample``, differentiable),
3. draws the landmark heatmap ``1 / (1 + min_k ||p - T(s_k)||)`` at every pixel p,
4. maps the previous stage's 256-d FC feature to a (S/2)x(S/2) feature image
   (FC + ReLU) and upsamples it 2x (nearest),
5. regresses an update in the aligned frame from [warped image, heatmap,
   feature image] and maps the result back with T^-1.

Everything stays differentiable (the paper trains the stages jointly; pass
``detach_between_stages=True`` for DAN's stage-wise training behaviour).

Coordinates: (x, y) in input pixels, 0-based, pixel centres at integers (the
pyflm convention). ``mean_shape`` should be set from the training set
(:meth:`CascadeRegression.set_mean_shape`); the default is a generic oval layout
so the model is usable (and the transform well-posed) before that.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pyflm.models.vgg import conv_bn_relu, to_grey


def similarity_params(src: torch.Tensor, dst: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares similarity (rotation + uniform scale + translation) with
    ``src @ A + t ~= dst`` for row-vector points ``src, dst: [B, K, 2]``.
    Returns ``A: [B, 2, 2]`` (= [[a, b], [-b, a]]) and ``t: [B, 1, 2]``."""
    src_mean = src.mean(dim=1, keepdim=True)
    dst_mean = dst.mean(dim=1, keepdim=True)
    s = src - src_mean
    d = dst - dst_mean
    norm2 = (s * s).sum(dim=(1, 2)).clamp_min(1e-12)
    a = (s * d).sum(dim=(1, 2)) / norm2
    b = (s[..., 0] * d[..., 1] - s[..., 1] * d[..., 0]).sum(dim=1) / norm2
    A = torch.stack([torch.stack([a, b], -1), torch.stack([-b, a], -1)], -2)
    t = dst_mean - src_mean @ A
    return A, t


def apply_similarity(points: torch.Tensor, A: torch.Tensor, t: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    if inverse:
        return (points - t) @ torch.linalg.inv(A)
    return points @ A + t


def warp_image(img: torch.Tensor, A: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Resample ``img`` so that output pixel q shows input pixel p with p @ A + t = q.

    Pixel coords p relate to grid_sample's normalised coords n (align_corners=False)
    by p = alpha * n + beta with alpha = S / 2, beta = (S - 1) / 2 per axis.
    """
    B, _, H, W = img.shape
    Ainv = torch.linalg.inv(A)
    # Column-vector form: p = M q + c, with M = Ainv^T, c = -M t^T.
    M = Ainv.transpose(1, 2)
    c = -(M @ t.transpose(1, 2))  # [B, 2, 1]
    alpha = img.new_tensor([W / 2.0, H / 2.0]).view(1, 2, 1)
    beta = img.new_tensor([(W - 1) / 2.0, (H - 1) / 2.0]).view(1, 2, 1)
    # n_in = (M (alpha n_out + beta) + c - beta) / alpha
    lin = M * alpha.transpose(1, 2) / alpha  # M[:, i, j] * alpha_j / alpha_i
    off = (M @ beta + c - beta) / alpha
    theta = torch.cat([lin, off], dim=2)
    grid = F.affine_grid(theta, [B, img.shape[1], H, W], align_corners=False)
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def landmark_heatmap(points: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """DAN's landmark image: ``1 / (1 + distance to the nearest landmark)``, [B, 1, H, W]."""
    ys = torch.arange(height, dtype=points.dtype, device=points.device)
    xs = torch.arange(width, dtype=points.dtype, device=points.device)
    dx = xs.view(1, 1, 1, width) - points[..., 0].view(*points.shape[:2], 1, 1)
    dy = ys.view(1, 1, height, 1) - points[..., 1].view(*points.shape[:2], 1, 1)
    dist = torch.sqrt(dx * dx + dy * dy + 1e-12)  # eps: finite gradient at a landmark
    return (1.0 / (1.0 + dist.min(dim=1).values)).unsqueeze(1)


def default_mean_shape(num_landmarks: int, size: int) -> torch.Tensor:
    """A generic, non-degenerate oval layout (placeholder until a real mean shape is set)."""
    k = torch.arange(num_landmarks, dtype=torch.float32)
    ang = 2 * math.pi * k / num_landmarks
    r = 0.3 * size * (1.0 - 0.3 * (k % 3) / 2)
    c = (size - 1) / 2.0
    return torch.stack([c + r * torch.cos(ang), c + 1.1 * r * torch.sin(ang)], dim=-1)


class DANStageNet(nn.Module):
    """Feed-forward regressor of one stage; returns (shape update [B, K, 2], fc feature [B, 256])."""

    def __init__(self, in_channels: int, num_landmarks: int, input_size: int, dropout: float = 0.5):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for w in (64, 128, 256, 512):
            layers += [conv_bn_relu(cin, w), conv_bn_relu(w, w), nn.MaxPool2d(2, 2)]
            cin = w
        self.features = nn.Sequential(*layers)
        self.fc = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout),
            nn.Linear(512 * (input_size // 16) ** 2, 256), nn.BatchNorm1d(256), nn.ReLU(inplace=True),
        )
        self.out = nn.Linear(256, 2 * num_landmarks)
        self.num_landmarks = num_landmarks

    def forward(self, x: torch.Tensor):
        f = self.fc(self.features(x))
        return self.out(f).view(x.shape[0], self.num_landmarks, 2), f


class CascadeRegression(nn.Module):
    """DAN-style cascade; ``forward`` returns every stage's shape, ``[B, stages, K, 2]``
    (the last one is the prediction)."""

    output_stride = None
    outputs = "coords [B, stages, K, 2]: every stage's (x, y) estimate in input pixels"

    def __init__(self, num_landmarks: int = 68, input_size: int = 112, num_stages: int = 3,
                 grey: bool = True, dropout: float = 0.5, detach_between_stages: bool = False,
                 mean_shape: torch.Tensor | None = None):
        super().__init__()
        if input_size % 16:
            raise ValueError(f"input_size must be divisible by 16, got {input_size}")
        self.num_landmarks = num_landmarks
        self.input_size = input_size
        self.num_stages = num_stages
        self.grey = grey
        self.detach_between_stages = detach_between_stages
        c = 1 if grey else 3
        self.stages = nn.ModuleList(
            [DANStageNet(c if i == 0 else c + 2, num_landmarks, input_size, dropout) for i in range(num_stages)]
        )
        half = input_size // 2
        self.feature_maps = nn.ModuleList(
            [nn.Sequential(nn.Linear(256, half * half), nn.ReLU(inplace=True)) for _ in range(num_stages - 1)]
        )
        if mean_shape is None:
            mean_shape = default_mean_shape(num_landmarks, input_size)
        self.register_buffer("mean_shape", torch.as_tensor(mean_shape, dtype=torch.float32).clone())

    @torch.no_grad()
    def set_mean_shape(self, mean_shape: torch.Tensor) -> None:
        self.mean_shape.copy_(torch.as_tensor(mean_shape).view(self.num_landmarks, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"CascadeRegression built for {self.input_size}x{self.input_size}, got {tuple(x.shape[-2:])}")
        img = to_grey(x) if self.grey else x
        B, S = x.shape[0], self.input_size
        mean = self.mean_shape.to(img.dtype).unsqueeze(0).expand(B, -1, -1)
        delta, feat = self.stages[0](img)
        shape = mean + delta
        shapes = [shape]
        for i in range(1, self.num_stages):
            cur = shape.detach() if self.detach_between_stages else shape
            A, t = similarity_params(cur, mean)
            aligned = warp_image(img, A, t)
            pts = apply_similarity(cur, A, t)
            hm = landmark_heatmap(pts, S, S)
            fmap = self.feature_maps[i - 1](feat).view(B, 1, S // 2, S // 2)
            fmap = F.interpolate(fmap, scale_factor=2, mode="nearest")
            delta, feat = self.stages[i](torch.cat([aligned, hm, fmap], dim=1))
            shape = apply_similarity(pts + delta, A, t, inverse=True)
            shapes.append(shape)
        return torch.stack(shapes, dim=1)
