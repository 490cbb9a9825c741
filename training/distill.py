"""Knowledge distillation for distribution tasks (config section ``[distill]``).

One or more trained pyflm models (the *teachers*: model files or training
checkpoints) run on every training batch, in eval mode and without gradients;
their spatial distributions, each averaged with those of the mirrored crops
when ``flip`` is set (the flip test, exact on the map grid: cell ``j``
mirrors to ``w - 1 - j``), are averaged over the teachers (an ensemble) and
mixed into the student's target::

    target = (1 - weight) * ground-truth Gaussian + weight * teachers

so the KL loss pulls the student toward the teachers' flip-averaged
prediction, which is more accurate than any single crop and model (the
soft-argmax of the averaged maps *is* the average of their positions).

A teacher may work at another input size than the student (e.g. the 160 px
default teaching a 128 px student): it sees the student's crop resized to its
own size (bilinear; the same square of the photo, pixel centres mapped by
``(u + 0.5) * S_to / S_from - 0.5``), and its maps are carried onto the
student's grid by splatting each cell's probability linearly onto the two
nearest student cells per axis, which keeps every map's mean position exact
(mass beyond the student's outer cell centres goes to the edge cells).
Teachers and student must share the input normalisation; anything else fails
before training, naming the key.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyflm.codecs.base import heatmap_to_input, input_to_heatmap
from training.config import ConfigError

__all__ = ["Teacher", "build_teacher", "splat_matrix"]


def splat_matrix(n_from: int, size_from: int, n_to: int, size_to: int) -> Tensor:
    """``[n_to, n_from]`` float64: column ``j`` spreads map cell ``j`` of an
    ``n_from``-cell axis over an input of ``size_from`` pixels onto the two
    nearest cells of an ``n_to``-cell axis over ``size_to`` pixels (the same
    span of the photo), with linear weights; columns sum to 1."""
    j = torch.arange(n_from, dtype=torch.float64)
    u = (heatmap_to_input(j, size_from / n_from) + 0.5) * (size_to / size_from) - 0.5  # target input px
    c = input_to_heatmap(u, size_to / n_to).clamp(0, n_to - 1)  # target cell coordinate
    i0 = c.floor().clamp(max=max(n_to - 2, 0))
    f = c - i0
    m = torch.zeros(n_to, n_from, dtype=torch.float64)
    m[i0.long(), j.long()] += 1 - f
    if n_to > 1:
        m[i0.long() + 1, j.long()] += f
    return m


class _Member(nn.Module):
    """One frozen teacher network, with what carries its maps to the student's grid."""

    def __init__(self, net: nn.Module, temperature: float, mirror: list[int] | None, input_size: int,
                 map_size: int, student_input: int, student_map: int):
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.temperature = float(temperature)
        self.input_size = int(input_size)
        self.register_buffer("mirror", torch.as_tensor(mirror) if mirror is not None else None, persistent=False)
        same = (input_size, map_size) == (student_input, student_map)
        self.register_buffer("splat", None if same else splat_matrix(map_size, input_size, student_map, student_input),
                             persistent=False)  # float64, cast to the maps' dtype where used

    def _probs(self, x: Tensor) -> Tensor:
        logits = self.net(x)
        if logits.dtype in (torch.float16, torch.bfloat16):  # autocast: normalise in float32
            logits = logits.float()
        return torch.softmax(logits.flatten(2) / self.temperature, -1).view_as(logits)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > self.input_size)
        p = self._probs(x)
        if self.mirror is not None:
            p = 0.5 * (p + self._probs(x.flip(-1)).flip(-1)[:, self.mirror])
        if self.splat is not None:
            a = self.splat.to(p.dtype)
            p = torch.einsum("ij,bkjl,ml->bkim", a, p, a)
        return p


class Teacher(nn.Module):
    """Frozen distribution models whose averaged maps become part of the targets."""

    def __init__(self, members: list[_Member], weight: float):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.weight = float(weight)

    def train(self, mode: bool = True):  # always eval: BatchNorm statistics stay the teachers'
        return super().train(False)

    @torch.no_grad()
    def distributions(self, x: Tensor) -> Tensor:
        """``[B, K, h, w]`` maps on the student's grid that sum to 1: the
        teachers' (each flip-averaged if it has a mirror), averaged."""
        return torch.stack([m(x) for m in self.members]).mean(0)

    def mix(self, x: Tensor, targets: dict[str, Tensor]) -> dict[str, Tensor]:
        """``targets`` with ``"distribution"`` blended toward the teachers' maps
        (landmarks with mask 0 keep their all-zero target)."""
        gt = targets["distribution"]
        teach = self.distributions(x).to(gt.dtype)
        if teach.shape != gt.shape:
            raise ValueError(f"distill: teacher maps {list(teach.shape)} differ from the targets {list(gt.shape)}")
        keep = (targets["mask"] > 0)[..., None, None]
        mixed = torch.where(keep, (1 - self.weight) * gt + self.weight * teach, torch.zeros_like(gt))
        return {**targets, "distribution": mixed}


def teacher_paths(d_cfg: dict) -> list[str]:
    """``distill.teacher`` as a list of paths (``""`` or ``[]``: none)."""
    t = d_cfg["teacher"]
    return [t] if isinstance(t, str) and t else list(t) if isinstance(t, list) else []


def build_teacher(d_cfg: dict, student, mean=None, std=None) -> Teacher | None:
    """The :class:`Teacher` (on the CPU) of a validated ``[distill]`` section
    (None when ``distill.teacher`` is empty); ``mean`` / ``std`` are the
    student's input normalisation (None: none). ConfigError naming the key on
    a missing or damaged file or a teacher that does not fit the student."""
    paths = teacher_paths(d_cfg)
    if not paths:
        return None
    if student.kind != "distribution":
        raise ConfigError(f"distill.teacher: distillation needs a distribution task (compact, distribution); "
                          f"the student is {student.name!r}")
    return Teacher([_member(path, d_cfg["flip"], student, mean, std) for path in paths], d_cfg["weight"])


def _member(path, flip: bool, student, mean, std) -> _Member:
    from pyflm.data.schemes import model_mirror
    from pyflm.deploy import ModelFileError, load_model_file, task_from_model_file

    try:
        mf = load_model_file(path)
        teacher = task_from_model_file(mf)
    except ModelFileError as e:
        raise ConfigError(f"distill.teacher: {e}") from None
    if teacher.kind != "distribution":
        raise ConfigError(f"distill.teacher: {path} is a {mf['task']!r} model, not a distribution model")
    if teacher.num_landmarks != student.num_landmarks:
        raise ConfigError(f"distill.teacher: {path} has {teacher.num_landmarks} landmarks, "
                          f"the student {student.num_landmarks}")
    norm = mf["meta"].get("normalize") or {}
    want = {"mean": list(mean if mean is not None else (0.0, 0.0, 0.0)),
            "std": list(std if std is not None else (1.0, 1.0, 1.0))}
    got = {k: [float(v) for v in norm.get(k, want[k])] for k in want}
    if any(abs(a - b) > 1e-6 for k in want for a, b in zip(got[k], want[k])):
        raise ConfigError(f"distill.teacher: {path} expects normalisation {got}, data.normalize gives {want}")
    mirror = model_mirror(mf["meta"]) if flip else None
    if flip and mirror is None:
        raise ConfigError(f"distill.flip: {path} has no mirror permutation for its landmarks")
    tc, sc = teacher.codec, student.codec
    return _Member(teacher.model, tc.temperature, mirror, tc.input_size, tc.heatmap_size, sc.input_size,
                   sc.heatmap_size)
