"""Landmark detection networks (plain PyTorch ``nn.Module`` s, raw head outputs).

Build one by name with :func:`build_model`; every model has ``input_size``,
``output_stride`` (None for coordinate regressors) and ``outputs`` (a description
of what ``forward`` returns). Inputs are float image batches ``[B, 3, S, S]``,
normalised by the caller.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from pyflm.models.cascade import CascadeRegression
from pyflm.models.compact import CompactHeatmapNet
from pyflm.models.densenet import FCDenseNet, FCDenseNet56
from pyflm.models.detectors import (
    DirectRegression,
    DistributionDetector,
    HeatmapDetector,
    HybridDetector,
    PWCDetector,
)
from pyflm.models.discriminator import ShapeDiscriminator
from pyflm.models.dsc import DSCNet, GaussianKernelConv, gaussian_1d, gaussian_2d


def _dsc(num_landmarks: int = 68, **kw) -> nn.Module:
    return DSCNet(num_landmarks, **kw)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "direct": DirectRegression,
    "cascade": CascadeRegression,
    "distribution": DistributionDetector,
    "heatmap": HeatmapDetector,
    "pwc": PWCDetector,
    "hybrid": HybridDetector,
    "discriminator": ShapeDiscriminator,
    "dsc": _dsc,
    "fcdensenet56": FCDenseNet56,
    "compact": CompactHeatmapNet,
}


def build_model(name: str, num_landmarks: int = 68, **kwargs) -> nn.Module:
    """Build the model registered as ``name`` (see :data:`MODELS`) for K landmarks.

    Extra keyword arguments go to the model's constructor (e.g. ``input_size``).
    Raises ``ValueError`` naming the valid models for an unknown name.
    """
    try:
        factory = MODELS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"pyflm.models.build_model: unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}"
        ) from None
    if not isinstance(num_landmarks, int) or num_landmarks < 1:
        raise ValueError(f"pyflm.models.build_model: num_landmarks must be a positive int, got {num_landmarks!r}")
    return factory(num_landmarks=num_landmarks, **kwargs)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters; BN running statistics are buffers and not counted."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# Counts the papers report (trainable parameters, K = 68 unless noted).
PAPER_COUNTS = {
    "pwc": 82_947_658,  # Hsu et al. 2020
    "discriminator": 34_689,  # Hsu et al. 2020
    "direct": 178_682_440,  # Hsu et al. 2020
    "fcdensenet56 (11 classes)": 1_500_000,  # Jegou et al. 2017, "1.5M", CamVid head
}


def parameter_table() -> list[tuple[str, int, int | None]]:
    """``(name, ours, paper)`` rows for the default configurations (K = 68).

    Models are built on the meta device (no memory, no init), so this is fast.
    ``paper`` is None where the paper gives no count.
    """
    rows: list[tuple[str, int, int | None]] = []
    with torch.device("meta"):
        for name in ("direct", "cascade", "distribution", "heatmap", "pwc", "hybrid", "discriminator",
                     "fcdensenet56", "dsc", "compact"):
            rows.append((name, count_parameters(build_model(name)), PAPER_COUNTS.get(name)))
        rows.append(("fcdensenet56 (11 classes)", count_parameters(FCDenseNet56(11)),
                     PAPER_COUNTS["fcdensenet56 (11 classes)"]))
    return rows


__all__ = [
    "MODELS",
    "build_model",
    "count_parameters",
    "parameter_table",
    "PAPER_COUNTS",
    "DirectRegression",
    "CascadeRegression",
    "DistributionDetector",
    "HeatmapDetector",
    "PWCDetector",
    "HybridDetector",
    "ShapeDiscriminator",
    "FCDenseNet",
    "FCDenseNet56",
    "DSCNet",
    "GaussianKernelConv",
    "gaussian_1d",
    "gaussian_2d",
    "CompactHeatmapNet",
]
