"""Training losses for pyflm's heads. Every loss takes the head output, the
targets and the ``[B, K]`` validity mask (1 = supervise, 0 = ignore; as returned
by the codecs) and returns a scalar. When nothing is valid the loss is a zero
that is still connected to the graph (``backward`` works, gradients are 0).

Half / bfloat16 outputs are promoted to float32 inside the losses.

Normalisations (all "mean over valid X"):

* :func:`heatmap_l2`: per-map mean squared error over the ``H * W`` pixels,
  averaged over the valid landmark maps (and the background map, which is
  always valid, when the output has K + 1 channels).
* :func:`distribution_kl`: ``KL(target || softmax(logits))`` per map (spatial
  softmax over ``H * W``), averaged over the valid maps.
* :func:`pwc_cross_entropy`: soft-label cross-entropy over K + 1 classes per
  pixel, averaged over pixels and images; invalid landmarks' classes are
  removed from that image's softmax (see the function).
* :func:`coord_l2` / :func:`coord_l1`: squared Euclidean / L1 distance per
  landmark, averaged over valid landmarks.
* :func:`hybrid_loss`: PWC cross-entropy + ``weight`` (0.25) x :func:`coord_l2`
  on soft-argmax coordinates normalised like :class:`~pyflm.codecs.RegressionCodec`
  (``x_n = (2 x + 1) / S - 1``: an error of S / 2 input pixels counts as 1).
* :func:`discriminator_loss` / :func:`generator_loss`: non-saturating GAN losses
  with ``binary_cross_entropy_with_logits`` for the shape critic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "heatmap_l2",
    "distribution_kl",
    "pwc_cross_entropy",
    "coord_l2",
    "coord_l1",
    "hybrid_loss",
    "normalise_coords",
    "discriminator_loss",
    "generator_loss",
]


def _f(x: Tensor) -> Tensor:
    """Losses are computed in float32 for half / bfloat16 head outputs (AMP)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _mask(mask: Tensor | None, B: int, K: int, device) -> Tensor:
    if mask is None:
        return torch.ones(B, K, device=device)
    if tuple(mask.shape) != (B, K):
        raise ValueError(f"mask must be [B, K] = {[B, K]}, got {list(mask.shape)}")
    return (mask > 0).to(torch.float32 if not mask.dtype == torch.float64 else torch.float64)


def _masked_mean(values: Tensor, weights: Tensor) -> Tensor:
    """sum(values * weights) / max(sum(weights), 1): 0 (with a graph) when nothing is valid."""
    values = torch.where(weights > 0, values, torch.zeros_like(values))  # NaN-safe for masked entries
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


def heatmap_l2(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean over valid maps of the per-map pixel MSE.

    ``pred``, ``target``: ``[B, C, H, W]`` with ``C = K`` or ``K + 1`` (the last
    channel is then a background map, always counted); ``mask``: ``[B, K]``.
    """
    if pred.shape != target.shape:
        raise ValueError(f"heatmap_l2: pred {list(pred.shape)} and target {list(target.shape)} differ")
    B, C = pred.shape[:2]
    K = mask.shape[1] if mask is not None else C
    if C not in (K, K + 1):
        raise ValueError(f"heatmap_l2: {C} channels for a [B, {K}] mask (expected K or K + 1)")
    pred = _f(pred)
    per_map = (pred - target.to(pred.dtype)).pow(2).flatten(2).mean(-1)  # [B, C]
    w = _mask(mask, B, K, pred.device).to(per_map.dtype)
    if C == K + 1:
        w = torch.cat([w, w.new_ones(B, 1)], dim=1)
    return _masked_mean(per_map, w)


def distribution_kl(logits: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean over valid maps of ``KL(target || softmax(logits))``, the softmax over each map's pixels.

    ``logits``, ``target``: ``[B, K, H, W]`` (target maps sum to 1).
    ``KL = sum t log t - sum t log_softmax(logits)``; ``0 log 0 = 0``.
    """
    if logits.shape != target.shape:
        raise ValueError(f"distribution_kl: logits {list(logits.shape)} and target {list(target.shape)} differ")
    B, K = logits.shape[:2]
    logq = torch.log_softmax(_f(logits).flatten(2), dim=-1)
    t = target.flatten(2).to(logq.dtype)
    kl = (torch.xlogy(t, t) - torch.where(t > 0, t * logq, torch.zeros_like(logq))).sum(-1)  # [B, K]
    return _masked_mean(kl, _mask(mask, B, K, logits.device).to(kl.dtype))


def pwc_cross_entropy(logits: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Soft-label cross-entropy over K + 1 classes per pixel, mean over pixels and images.

    ``logits``, ``target``: ``[B, K + 1, H, W]`` (class K = background, the last
    channel; target probabilities sum to 1 per pixel); ``mask``: ``[B, K]``.
    ``CE = -sum_c t_c log softmax(logits)_c``. A landmark with mask 0 (not
    annotated / occluded) has an all-background target; rather than teach the
    net that it is absent, its class is dropped from that image's softmax
    (logit set to -inf), so its channel gets no gradient from that image.
    """
    if logits.shape != target.shape:
        raise ValueError(f"pwc_cross_entropy: logits {list(logits.shape)} and target {list(target.shape)} differ")
    B, C = logits.shape[:2]
    K = C - 1
    logits = _f(logits)
    if mask is not None:
        valid = _mask(mask, B, K, logits.device) > 0
        keep = torch.cat([valid, valid.new_ones(B, 1)], dim=1)[..., None, None]
        logits = logits.masked_fill(~keep, float("-inf"))
    logp = torch.log_softmax(logits, dim=1)
    t = target.to(logp.dtype)
    ce = -torch.where(t > 0, t * logp, torch.zeros_like(logp)).sum(1)  # [B, H, W]
    return ce.mean() if ce.numel() else logits.sum() * 0.0


def _coord_check(pred: Tensor, target: Tensor, name: str) -> None:
    if pred.shape != target.shape or pred.dim() != 3 or pred.shape[-1] != 2:
        raise ValueError(f"{name}: pred and target must both be [B, K, 2], got {list(pred.shape)}, {list(target.shape)}")


def coord_l2(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean over valid landmarks of the squared Euclidean distance ``dx^2 + dy^2``."""
    _coord_check(pred, target, "coord_l2")
    pred = _f(pred)
    d = (pred - target.to(pred.dtype)).pow(2).sum(-1)
    return _masked_mean(d, _mask(mask, *pred.shape[:2], pred.device).to(d.dtype))


def coord_l1(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean over valid landmarks of ``|dx| + |dy|``."""
    _coord_check(pred, target, "coord_l1")
    pred = _f(pred)
    d = (pred - target.to(pred.dtype)).abs().sum(-1)
    return _masked_mean(d, _mask(mask, *pred.shape[:2], pred.device).to(d.dtype))


def normalise_coords(coords: Tensor, input_size: int) -> Tensor:
    """Input pixels -> [-1, 1] (image edges): ``(2 x + 1) / S - 1`` (the RegressionCodec map)."""
    return (2.0 * coords + 1.0) / input_size - 1.0


def hybrid_loss(logits: Tensor, target: Tensor, mask: Tensor | None, pred_coords: Tensor, target_coords: Tensor,
                input_size: int, weight: float = 0.25) -> dict[str, Tensor]:
    """PWC cross-entropy + ``weight`` x coordinate L2 of the soft-argmax landmarks.

    ``pred_coords`` (differentiable, e.g. :meth:`PWCCodec.decode_soft`) and
    ``target_coords`` are ``[B, K, 2]`` in input pixels; both are normalised with
    :func:`normalise_coords` (``S = input_size``) before :func:`coord_l2`, so the
    coordinate term does not depend on the resolution. Returns
    ``{"loss", "ce", "coord"}`` (``loss = ce + weight * coord``).
    """
    ce = pwc_cross_entropy(logits, target, mask)
    coord = coord_l2(normalise_coords(pred_coords, input_size), normalise_coords(target_coords, input_size), mask)
    return {"loss": ce + weight * coord, "ce": ce, "coord": coord}


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Critic loss ``BCE(real, 1) + BCE(fake, 0)`` (each a mean over the batch);
    pass ``fake_logits`` computed from detached shapes."""
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return real + fake


def generator_loss(fake_logits: Tensor, weight: float = 1.0) -> Tensor:
    """Detector's adversarial term ``weight * BCE(fake, 1)`` (non-saturating GAN loss)."""
    return weight * F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
