"""Shape discriminator of Hsu et al. (2020): a 3-layer fully connected critic that
scores whether 2K normalised landmark coordinates look like a face shape.

Layers: FC(2K -> h1)-BN-ReLU, FC(h1 -> h2)-BN-ReLU, FC(h2 -> 1) (a logit; the
sigmoid / GAN loss is applied by the loss). Trainable parameters
(BN running statistics are buffers, not parameters):

    P = (2K + 1) h1 + 2 h1 + (h1 + 1) h2 + 2 h2 + h2 + 1

With K = 68 and h1 = h2 = h this is h^2 + 143 h + 1; the paper's 34,689 gives
h^2 + 143 h - 34,688 = 0, so h = (-143 + sqrt(143^2 + 4 * 34,688)) / 2
= (-143 + 399) / 2 = 128 exactly (and matches the paper's public release).
"""

from __future__ import annotations

import torch
from torch import nn


class ShapeDiscriminator(nn.Module):
    input_size = None
    output_stride = None
    outputs = "logit [B, 1]: real-face-shape score (sigmoid in the loss)"

    def __init__(self, num_landmarks: int = 68, hidden: tuple[int, int] = (128, 128)):
        super().__init__()
        h1, h2 = hidden
        self.num_landmarks = num_landmarks
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * num_landmarks, h1), nn.BatchNorm1d(h1), nn.ReLU(inplace=True),
            nn.Linear(h1, h2), nn.BatchNorm1d(h2), nn.ReLU(inplace=True),
            nn.Linear(h2, 1),
        )

    def forward(self, shapes: torch.Tensor) -> torch.Tensor:
        """``shapes``: ``[B, K, 2]`` (or ``[B, 2K]``) normalised coordinates -> ``[B, 1]`` logits."""
        if shapes.shape[1:].numel() != 2 * self.num_landmarks:
            raise ValueError(f"expected [B, {self.num_landmarks}, 2] shapes, got {tuple(shapes.shape)}")
        return self.net(shapes)
