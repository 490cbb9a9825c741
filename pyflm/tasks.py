"""Tasks: a network plus the codec, loss and decoding that give its outputs meaning.

``build_task(name, num_landmarks=68, **cfg)`` builds the model registered as
``name`` in :mod:`pyflm.models` (``direct``, ``cascade``, ``distribution``,
``heatmap``, ``pwc``, ``hybrid``, ``dsc``, ``compact``; ``pwc+disc`` and
``hybrid+disc`` add the shape discriminator of Hsu et al. 2020) and wraps it in
a :class:`LandmarkTask`:

* ``task.model`` / ``task(images)``: the network's raw outputs,
* ``task.encode(coords, visibility=None) -> dict`` of targets (coords in input
  pixels ``[B, K, 2]``, pyflm convention; always has ``"coords"`` and ``"mask"``),
* ``task.loss(outputs, targets) -> dict[str, Tensor]`` with the total ``"loss"``
  and its named terms,
* ``task.decode(outputs) -> (coords [B, K, 2] input px, scores [B, K])``,
* ``+disc`` tasks: ``task.discriminator`` and ``task.discriminator_loss(outputs,
  targets)``; ``task.loss`` then includes the adversarial term ``"adv"``.

==============  ==================================  ===============================  ======================
task            codec (default sigma, heatmap px)   loss                             decode
==============  ==================================  ===============================  ======================
direct          RegressionCodec                     coord L2 in [-1, 1] units        affine map back
cascade         RegressionCodec                     sum over stages of coord L2      last stage
distribution    DistributionCodec (3)               spatial KL                       soft-argmax
heatmap         GaussianHeatmapCodec + bg (3)       heatmap L2                       argmax + DARK
pwc             PWCCodec (3)                        soft-label CE, K + 1 classes     softmax, argmax + DARK
hybrid          PWCCodec (3)                        CE + 0.25 coord L2 (soft-argmax) soft-argmax
dsc             GaussianHeatmapCodec (8)            L2 on initial + refined maps     refined, argmax + DARK
compact         DistributionCodec (1.5), stride 4   spatial KL                       soft-argmax
                (``target="heatmap"``: Gaussian,    (heatmap L2)                     (argmax + DARK)
                sigma 1.5)
==============  ==================================  ===============================  ======================

Config keys taken by the task (the rest go to the model's constructor, e.g.
``input_size``, ``num_stages``, ``width``): ``sigma``, ``decode`` (``"dark"``,
``"quarter"``, ``"none"``, ``"soft"``; for pwc/hybrid ``"soft"`` means
``decode_soft``), ``blur_kernel`` (DARK modulation), ``coord_loss`` (``"l2"`` or
``"l1"``, regression tasks), ``hybrid_weight`` (0.25), ``target`` (compact:
``"distribution"`` or ``"heatmap"``), ``adv_weight`` (``+disc``: 0.01, our
choice), ``discriminator_hidden`` (``(128, 128)``), ``model`` (use this module
instead of building one; it must have ``input_size`` and ``output_stride``).

Sigma defaults are our choices (the papers' values were not available): for
``dsc`` the model's fixed 45x45 kernel convolution blurs with sigma ~7.33 px,
so targets narrower than that cannot be matched by the initial maps; 8 leaves
the backbone a ~3.2 px Gaussian to produce.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from pyflm import losses as L
from pyflm.codecs import DistributionCodec, GaussianHeatmapCodec, PWCCodec, RegressionCodec

__all__ = ["LandmarkTask", "build_task", "TASKS"]

TASKS = ("direct", "cascade", "distribution", "heatmap", "pwc", "hybrid", "dsc", "compact",
         "pwc+disc", "hybrid+disc")

_SIGMA = {"distribution": 3.0, "heatmap": 3.0, "pwc": 3.0, "hybrid": 3.0, "dsc": 8.0, "compact": 1.5}


class LandmarkTask(nn.Module):
    """A model, its codec, its loss and its decoder (see the module docstring).

    ``LandmarkTask`` is an ``nn.Module`` holding ``model`` (and ``discriminator``
    for ``+disc`` tasks), so ``.to()``, ``.train()``, ``.eval()`` and
    ``state_dict()`` cover both; optimise ``task.model.parameters()`` and
    ``task.discriminator.parameters()`` separately.
    """

    def __init__(self, name: str, model: nn.Module, codec, kind: str, *, coord_loss: str = "l2",
                 hybrid_weight: float = 0.25, decode_mode: str | None = None,
                 discriminator: nn.Module | None = None, adv_weight: float = 0.01):
        super().__init__()
        self.name = name
        self.model = model
        self.codec = codec
        self.kind = kind
        self.input_size = int(model.input_size)
        self.num_landmarks = int(getattr(model, "num_landmarks", 0)) or None
        if coord_loss not in ("l2", "l1"):
            raise ValueError(f"coord_loss must be 'l2' or 'l1', got {coord_loss!r}")
        self.coord_loss = coord_loss
        self.hybrid_weight = float(hybrid_weight)
        self.decode_mode = decode_mode
        self.discriminator = discriminator
        self.adv_weight = float(adv_weight)

    # ------------------------------------------------------------------ forward
    def forward(self, images: Tensor):
        return self.model(images)

    # ------------------------------------------------------------------ encode
    def encode(self, coords: Tensor, visibility: Tensor | None = None) -> dict[str, Tensor]:
        """Targets for ``coords`` ``[B, K, 2]`` (input px) and optional ``visibility`` ``[B, K]``.

        Keys: ``"coords"`` (the input, detached), ``"mask"`` ``[B, K]`` (1 =
        supervised) and the codec's targets under ``"values"`` (regression, in
        [-1, 1]), ``"heatmaps"``, ``"distribution"`` or ``"pwc"``.
        """
        coords = coords.detach()
        if not coords.dtype.is_floating_point:
            coords = coords.float()
        targets, mask = self.codec.encode(coords, visibility)
        key = {"regression": "values", "heatmap": "heatmaps", "dsc": "heatmaps",
               "distribution": "distribution", "pwc": "pwc", "hybrid": "pwc"}[self.kind]
        return {"coords": coords, "mask": mask, key: targets}

    # ------------------------------------------------------------------ loss
    def _coord(self, pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        fn = L.coord_l2 if self.coord_loss == "l2" else L.coord_l1
        return fn(pred, target, mask)

    def _norm(self, coords: Tensor) -> Tensor:
        return L.normalise_coords(coords, self.input_size)

    def loss(self, outputs, targets: dict[str, Tensor]) -> dict[str, Tensor]:
        """Loss terms for the model's raw ``outputs``; ``"loss"`` is the total to backpropagate."""
        mask = targets["mask"]
        out: dict[str, Tensor]
        if self.kind == "regression":
            if self.name == "cascade":
                # every stage's shape (in input pixels) is supervised; the terms are summed
                tgt = targets["values"]
                terms = {f"stage{i}": self._coord(self._norm(outputs[:, i]), tgt, mask)
                         for i in range(outputs.shape[1])}
                out = {"loss": sum(terms.values()), **terms}
            else:
                out = {"loss": self._coord(outputs, targets["values"], mask)}
        elif self.kind == "heatmap":
            out = {"loss": L.heatmap_l2(outputs, targets["heatmaps"], mask)}
        elif self.kind == "dsc":
            initial, refined = outputs
            li = L.heatmap_l2(initial, targets["heatmaps"], mask)
            lr = L.heatmap_l2(refined, targets["heatmaps"], mask)
            out = {"loss": li + lr, "initial": li, "refined": lr}
        elif self.kind == "distribution":
            out = {"loss": L.distribution_kl(outputs, targets["distribution"], mask)}
        elif self.kind == "pwc":
            out = {"loss": L.pwc_cross_entropy(outputs, targets["pwc"], mask)}
        elif self.kind == "hybrid":
            pred, _ = self.codec.decode_soft(outputs)
            out = L.hybrid_loss(outputs, targets["pwc"], mask, pred, targets["coords"], self.input_size,
                                self.hybrid_weight)
        else:  # pragma: no cover
            raise AssertionError(self.kind)
        if self.discriminator is not None:
            fake = self.fake_shapes(outputs)
            # critic weights detached: the detector's loss leaves no gradient in the critic
            # (its BatchNorm running statistics do see the fake batch in train mode)
            params = {n: p.detach() for n, p in self.discriminator.named_parameters()}
            adv = L.generator_loss(functional_call(self.discriminator, params, (fake,)), self.adv_weight)
            out["adv"] = adv
            out["loss"] = out["loss"] + adv
        return out

    # ------------------------------------------------------------------ discriminator
    def fake_shapes(self, outputs) -> Tensor:
        """Differentiable predicted shapes for the critic, normalised to [-1, 1] (``[B, K, 2]``)."""
        pred, _ = self.codec.decode_soft(outputs)
        return self._norm(pred)

    def real_shapes(self, targets: dict[str, Tensor], fake: Tensor) -> Tensor:
        """Ground-truth shapes in [-1, 1]; landmarks without annotation take the
        (detached) predicted position so the critic always sees complete shapes."""
        real = self._norm(targets["coords"]).to(fake.dtype)
        ok = (targets["mask"] > 0)[..., None] & torch.isfinite(real)
        return torch.where(ok, real, fake.detach())

    def discriminator_loss(self, outputs, targets: dict[str, Tensor]) -> dict[str, Tensor]:
        """Critic loss on real (ground truth) vs fake (detached predictions) shapes:
        ``{"loss", "real_logits", "fake_logits"}``."""
        if self.discriminator is None:
            raise RuntimeError(f"task {self.name!r} has no discriminator (use '{self.name}+disc')")
        fake = self.fake_shapes(outputs).detach()
        real = self.real_shapes(targets, fake)
        rl = self.discriminator(real)
        fl = self.discriminator(fake)
        return {"loss": L.discriminator_loss(rl, fl), "real_logits": rl.detach(), "fake_logits": fl.detach()}

    # ------------------------------------------------------------------ decode
    @torch.no_grad()
    def decode(self, outputs) -> tuple[Tensor, Tensor]:
        """Landmarks ``[B, K, 2]`` in input pixels and scores ``[B, K]`` (ones for regressors)."""
        if self.kind == "regression":
            if self.name == "cascade":
                last = outputs[:, -1]
                return last, last.new_ones(last.shape[:2])
            return self.codec.decode(outputs)
        if self.kind == "dsc":
            return self.codec.decode(outputs[1])
        if self.kind in ("pwc", "hybrid") and self.decode_mode == "soft":
            return self.codec.decode_soft(outputs)
        return self.codec.decode(outputs)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, input_size={self.input_size}, codec={self.codec!r}"


def build_task(name: str, num_landmarks: int = 68, **cfg: Any) -> LandmarkTask:
    """Build the task ``name`` (one of :data:`TASKS`) for ``num_landmarks`` landmarks.

    See the module docstring for the config keys; unknown keys go to the model.
    Raises ``ValueError`` for an unknown name (listing the valid ones).
    """
    from pyflm.models import ShapeDiscriminator, build_model

    if name not in TASKS:
        raise ValueError(f"pyflm.tasks.build_task: unknown task {name!r}; valid names: {', '.join(TASKS)}")
    base, disc = (name.split("+")[0], True) if name.endswith("+disc") else (name, False)
    sigma = float(cfg.pop("sigma", _SIGMA.get(base, 3.0)))
    decode = cfg.pop("decode", None)
    blur_kernel = int(cfg.pop("blur_kernel", 0))
    coord_loss = cfg.pop("coord_loss", "l2")
    hybrid_weight = cfg.pop("hybrid_weight", 0.25)
    target = cfg.pop("target", "distribution")
    adv_weight = cfg.pop("adv_weight", 0.01)
    hidden = tuple(cfg.pop("discriminator_hidden", (128, 128)))
    model = cfg.pop("model", None)
    if model is None:
        model = build_model(base, num_landmarks, **cfg)
    elif cfg:
        raise ValueError(f"build_task: model given, so these keys have nowhere to go: {sorted(cfg)}")
    S = int(model.input_size)
    stride = getattr(model, "output_stride", None)
    hm = S // stride if stride else None

    if base in ("direct", "cascade"):
        codec, kind = RegressionCodec(S), "regression"
    elif base == "distribution":
        codec, kind = DistributionCodec(S, hm, sigma), "distribution"
    elif base == "heatmap":
        codec = GaussianHeatmapCodec(S, hm, sigma, background=True, decode=decode or "dark", blur_kernel=blur_kernel)
        kind = "heatmap"
    elif base == "dsc":
        codec = GaussianHeatmapCodec(S, hm, sigma, decode=decode or "dark", blur_kernel=blur_kernel)
        kind = "dsc"
    elif base in ("pwc", "hybrid"):
        refine = decode if decode in ("dark", "quarter", "none") else "dark"
        codec, kind = PWCCodec(S, hm, sigma, refine=refine, blur_kernel=blur_kernel), base
        if decode is None and base == "hybrid":
            decode = "soft"  # the hybrid loss trains the soft-argmax coordinates
    elif base == "compact":
        if target == "distribution":
            codec, kind = DistributionCodec(S, hm, sigma), "distribution"
        elif target == "heatmap":
            codec = GaussianHeatmapCodec(S, hm, sigma, decode=decode or "dark", blur_kernel=blur_kernel)
            kind = "heatmap"
        else:
            raise ValueError(f"compact target must be 'distribution' or 'heatmap', got {target!r}")
    else:  # pragma: no cover
        raise AssertionError(base)
    discriminator = ShapeDiscriminator(model.num_landmarks, hidden) if disc else None
    return LandmarkTask(name, model, codec, kind, coord_loss=coord_loss, hybrid_weight=hybrid_weight,
                        decode_mode=decode, discriminator=discriminator, adv_weight=adv_weight)
