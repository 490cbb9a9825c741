"""Knowledge distillation for distribution tasks (config section ``[distill]``).

A trained pyflm model (the *teacher*, a model file or training checkpoint)
runs on every training batch, in eval mode and without gradients; its spatial
distributions, averaged with those of the mirrored crops when ``flip`` is set
(the flip test, exact on the map grid: cell ``j`` mirrors to ``w - 1 - j``),
are mixed into the student's target::

    target = (1 - weight) * ground-truth Gaussian + weight * teacher

so the KL loss pulls the student toward the teacher's flip-averaged
prediction, which is more accurate than either of the two crops alone (the
soft-argmax of the averaged maps *is* the flip test's averaged position).
Teacher and student must share the input size, the map grid and the
input normalisation; anything else fails before training, naming the key.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from training.config import ConfigError

__all__ = ["Teacher", "build_teacher"]


class Teacher(nn.Module):
    """A frozen distribution model whose maps become part of the targets."""

    def __init__(self, net: nn.Module, temperature: float, mirror: list[int] | None, weight: float):
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.temperature = float(temperature)
        self.weight = float(weight)
        self.register_buffer("mirror", torch.as_tensor(mirror) if mirror is not None else None, persistent=False)

    def train(self, mode: bool = True):  # always eval: BatchNorm statistics stay the teacher's
        return super().train(False)

    def _probs(self, x: Tensor) -> Tensor:
        logits = self.net(x)
        if logits.dtype in (torch.float16, torch.bfloat16):  # autocast: normalise in float32
            logits = logits.float()
        return torch.softmax(logits.flatten(2) / self.temperature, -1).view_as(logits)

    @torch.no_grad()
    def distributions(self, x: Tensor) -> Tensor:
        """``[B, K, h, w]`` maps that sum to 1: the teacher's, flip-averaged if it has a mirror."""
        p = self._probs(x)
        if self.mirror is not None:
            p = 0.5 * (p + self._probs(x.flip(-1)).flip(-1)[:, self.mirror])
        return p

    def mix(self, x: Tensor, targets: dict[str, Tensor]) -> dict[str, Tensor]:
        """``targets`` with ``"distribution"`` blended toward the teacher's maps
        (landmarks with mask 0 keep their all-zero target)."""
        gt = targets["distribution"]
        teach = self.distributions(x).to(gt.dtype)
        if teach.shape != gt.shape:
            raise ValueError(f"distill: teacher maps {list(teach.shape)} differ from the targets {list(gt.shape)}")
        keep = (targets["mask"] > 0)[..., None, None]
        mixed = torch.where(keep, (1 - self.weight) * gt + self.weight * teach, torch.zeros_like(gt))
        return {**targets, "distribution": mixed}


def build_teacher(d_cfg: dict, student, mean=None, std=None) -> Teacher | None:
    """The :class:`Teacher` (on the CPU) of a validated ``[distill]`` section
    (None when ``distill.teacher`` is empty); ``mean`` / ``std`` are the
    student's input normalisation (None: none). ConfigError naming the key on
    a missing or damaged file or a teacher that does not fit the student."""
    from pyflm.data.schemes import model_mirror
    from pyflm.deploy import ModelFileError, load_model_file, task_from_model_file

    path = d_cfg["teacher"]
    if not path:
        return None
    if student.kind != "distribution":
        raise ConfigError(f"distill.teacher: distillation needs a distribution task (compact, distribution); "
                          f"the student is {student.name!r}")
    try:
        mf = load_model_file(path)
        teacher = task_from_model_file(mf)
    except ModelFileError as e:
        raise ConfigError(f"distill.teacher: {e}") from None
    if teacher.kind != "distribution":
        raise ConfigError(f"distill.teacher: {path} is a {mf['task']!r} model, not a distribution model")
    for what in ("input_size", "heatmap_size"):
        a, b = getattr(teacher.codec, what), getattr(student.codec, what)
        if a != b:
            raise ConfigError(f"distill.teacher: {path} has {what} {a}, the student {b}")
    norm = mf["meta"].get("normalize") or {}
    want = {"mean": list(mean if mean is not None else (0.0, 0.0, 0.0)),
            "std": list(std if std is not None else (1.0, 1.0, 1.0))}
    got = {k: [float(v) for v in norm.get(k, want[k])] for k in want}
    if any(abs(a - b) > 1e-6 for k in want for a, b in zip(got[k], want[k])):
        raise ConfigError(f"distill.teacher: {path} expects normalisation {got}, data.normalize gives {want}")
    mirror = model_mirror(mf["meta"]) if d_cfg["flip"] else None
    if d_cfg["flip"] and mirror is None:
        raise ConfigError(f"distill.flip: {path} has no mirror permutation for its landmarks")
    return Teacher(teacher.model, teacher.codec.temperature, mirror, d_cfg["weight"])
