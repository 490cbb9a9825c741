"""training/distill.py: the flip-averaged teacher, the mixed target, its errors, and a run that uses it."""

from __future__ import annotations

import pytest
import torch

from pyflm import deploy
from pyflm.data.schemes import get_scheme
from pyflm.ops import soft_argmax
from pyflm.tasks import build_task
from training import train as T
from training.config import ConfigError, validate_config
from training.distill import Teacher, _Member, build_teacher, splat_matrix

S = 64  # small compact net: 16x16 maps
from training.dataset import IMAGENET_MEAN, IMAGENET_STD

DATA = (IMAGENET_MEAN, IMAGENET_STD)


def distill_cfg(teacher, weight=0.5, flip=True) -> dict:
    return {"teacher": [str(t) for t in teacher] if isinstance(teacher, list) else str(teacher), "weight": weight,
            "flip": flip}


def write_teacher(path, input_size=S, task="compact", seed=0, **meta_kw):
    torch.manual_seed(seed)
    t = build_task(task, input_size=input_size)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode matters
        for m in t.model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    meta = deploy.default_meta(task, input_size, output_stride=getattr(t.model, "output_stride", None), **meta_kw)
    deploy.save_model_file(path, task, {"input_size": input_size}, t.model.state_dict(), meta)
    return t


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    return p, write_teacher(p)


def test_flip_averaged_maps_give_the_flip_test_positions(teacher_file):
    """soft-argmax of the teacher's maps == the flip test's average of the two
    crops' positions (mirrored back: x -> S - 1 - x, mirror permutation), in float64."""
    path, ref = teacher_file
    student = build_task("compact", input_size=S)
    teacher = build_teacher(distill_cfg(path), student, *DATA).double()
    net = ref.model.double().eval()
    x = torch.randn(3, 3, S, S, dtype=torch.float64)
    p = teacher.distributions(x)
    assert p.shape == (3, 68, S // 4, S // 4) and torch.allclose(p.sum((2, 3)), torch.ones(3, 68, dtype=p.dtype))
    got = student.codec.to_input(soft_argmax(torch.log(p))[0])
    with torch.no_grad():
        a = ref.codec.decode(net(x))[0]
        b = ref.codec.decode(net(x.flip(-1)))[0][:, list(get_scheme(68).mirror)]
    b[..., 0] = (S - 1) - b[..., 0]
    torch.testing.assert_close(got, (a + b) / 2, atol=1e-9, rtol=0)
    assert (a - b).abs().max() > 0.05  # far above the tolerance: the average is not trivially either crop
    no_flip = build_teacher(distill_cfg(path, flip=False), student, *DATA).double()
    torch.testing.assert_close(student.codec.to_input(soft_argmax(torch.log(no_flip.distributions(x)))[0]), a,
                               atol=1e-9, rtol=0)


@pytest.mark.parametrize("n_from,size_from,n_to,size_to", [(40, 160, 32, 128), (24, 96, 16, 64), (16, 64, 24, 96),
                                                          (7, 28, 5, 20), (10, 30, 10, 40)])
def test_splat_matrix_conserves_mass_and_mean(n_from, size_from, n_to, size_to):
    """Every column sums to 1 and puts its mass where the cell's centre lies on
    the other grid (input px scaled about pixel edges: (u + 0.5) * S'/S - 0.5),
    exactly for cells between the outer cell centres, clamped to the edge beyond."""
    from pyflm.codecs.base import heatmap_to_input

    m = splat_matrix(n_from, size_from, n_to, size_to)
    assert m.shape == (n_to, n_from) and (m >= 0).all()
    torch.testing.assert_close(m.sum(0), torch.ones(n_from, dtype=torch.float64))
    src = heatmap_to_input(torch.arange(n_from, dtype=torch.float64), size_from / n_from)
    want = (src + 0.5) * (size_to / size_from) - 0.5
    centres = heatmap_to_input(torch.arange(n_to, dtype=torch.float64), size_to / n_to)
    got = centres @ m
    inside = (want >= centres[0]) & (want <= centres[-1])
    assert inside.sum() >= n_from - 2
    torch.testing.assert_close(got[inside], want[inside], atol=1e-12, rtol=0)
    torch.testing.assert_close(got[~inside], want[~inside].clamp(centres[0], centres[-1]), atol=1e-12, rtol=0)
    assert (m > 0).sum(0).max() <= 2  # two neighbours at most: a sharp map stays sharp
    if (n_from, size_from) == (n_to, size_to):
        torch.testing.assert_close(m, torch.eye(n_to, dtype=torch.float64))


class _FixedMaps(torch.nn.Module):
    """A stand-in teacher network: the same logits for every input (and its mirror)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(logits)
        self.seen: list = []

    def forward(self, x):
        self.seen.append(tuple(x.shape))
        return self.logits.expand(x.shape[0], *self.logits.shape[1:])


def test_teacher_at_another_size_keeps_positions():
    """A 96 px teacher (24x24 maps) teaching a 64 px student (16x16): the
    student-grid maps sum to 1 and their soft-argmax, in student input px, is
    the teacher's own soft-argmax mapped by (u + 0.5) * 64 / 96 - 0.5, in
    float64; the teacher network sees the crop at its own size."""
    torch.manual_seed(0)
    k = 5
    logits = torch.full((1, k, 24, 24), -1e9, dtype=torch.float64)
    logits[..., 2:22, 2:22] = 3 * torch.randn(1, k, 20, 20, dtype=torch.float64)  # mass clear of the edges
    net = _FixedMaps(logits)
    member = _Member(net, 1.0, None, 96, 24, S, S // 4).double()
    teacher = Teacher([member], 0.5)
    p = teacher.distributions(torch.randn(2, 3, S, S, dtype=torch.float64))
    assert net.seen == [(2, 3, 96, 96)]
    assert p.shape == (2, k, S // 4, S // 4)
    torch.testing.assert_close(p.sum((2, 3)), torch.ones(2, k, dtype=p.dtype))
    got = soft_argmax(torch.log(p))[0] * 4 + 1.5  # student map px -> student input px
    own = soft_argmax(logits)[0] * 4 + 1.5  # teacher input px
    torch.testing.assert_close(got, ((own + 0.5) * S / 96 - 0.5).expand_as(got), atol=1e-9, rtol=0)


class _SpotNet(torch.nn.Module):
    """A stand-in teacher whose maps peak where the crop's channel 0 is bright."""

    def forward(self, x):
        return 10 * torch.nn.functional.avg_pool2d(x[:, :1], 4).expand(-1, 3, -1, -1)


@pytest.mark.parametrize("size,mirror", [(96, None), (96, [0, 1, 2]), (48, None), (S, [0, 1, 2])])
def test_teacher_at_another_size_finds_the_spot(size, mirror):
    """End to end against the photo: a bright spot at a known place in the
    student's crop is found there on the student's grid, whatever size the
    teacher works at (the crop resized up or down for it, flip or not). Within
    0.6 px: a soft-argmax of a blob sampled on a 4 px grid is that far off by
    itself (the exact mapping is tested above); a crop resized the wrong way
    round or a lost flip would be off by 10 px or more."""
    yy, xx = torch.meshgrid(torch.arange(S, dtype=torch.float64), torch.arange(S, dtype=torch.float64), indexing="ij")
    spots = torch.tensor([[20.3, 37.8], [41.6, 12.2]], dtype=torch.float64)
    x = torch.stack([torch.exp(-((xx - sx) ** 2 + (yy - sy) ** 2) / (2 * 6.0 ** 2)) for sx, sy in spots])
    x = x[:, None].expand(-1, 3, -1, -1)
    teacher = Teacher([_Member(_SpotNet(), 1.0, mirror, size, size // 4, S, S // 4)], 0.5).double()
    got = soft_argmax(torch.log(teacher.distributions(x)))[0] * 4 + 1.5  # student input px
    torch.testing.assert_close(got, spots[:, None].expand_as(got), atol=0.6, rtol=0)


def test_ensemble_averages_the_teachers(tmp_path, teacher_file):
    """A list of teachers gives the mean of their (flip-averaged) maps; a 96 px
    model file is accepted for a 64 px student (its maps resampled)."""
    path, _ = teacher_file
    other = tmp_path / "other.pt"
    write_teacher(other, seed=1)
    big = tmp_path / "big.pt"
    write_teacher(big, input_size=96, seed=2)
    student = build_task("compact", input_size=S)
    x = torch.randn(2, 3, S, S, dtype=torch.float64)
    one = [build_teacher(distill_cfg(p), student, *DATA).double().distributions(x) for p in (path, other, big)]
    both = build_teacher(distill_cfg([path, other, big]), student, *DATA).double()
    assert len(both.members) == 3 and both.members[2].splat is not None and both.members[0].splat is None
    torch.testing.assert_close(both.distributions(x), (one[0] + one[1] + one[2]) / 3, atol=1e-12, rtol=0)
    assert (one[0] - one[1]).abs().max() > 1e-6 and (one[0] - one[2]).abs().max() > 1e-6  # random nets: near-flat maps


def test_teacher_stays_frozen_in_eval_mode(teacher_file):
    path, _ = teacher_file
    teacher = build_teacher(distill_cfg(path), build_task("compact", input_size=S), *DATA)
    teacher.train()
    assert not teacher.members[0].net.training and not any(p.requires_grad for p in teacher.parameters())


@pytest.mark.parametrize("weight", [0.25, 1.0])
def test_mixed_target(teacher_file, weight):
    path, _ = teacher_file
    student = build_task("compact", input_size=S)
    teacher = build_teacher(distill_cfg(path, weight=weight), student, *DATA).double()
    x = torch.randn(2, 3, S, S, dtype=torch.float64)
    coords = torch.rand(2, 68, 2, dtype=torch.float64) * 40 + 12
    vis = torch.ones(2, 68)
    vis[1, 5] = 0
    targets = student.encode(coords, vis)
    gt = targets["distribution"].double()
    mixed = teacher.mix(x, {**targets, "distribution": gt})
    t = mixed["distribution"]
    expect = (1 - weight) * gt + weight * teacher.distributions(x)
    torch.testing.assert_close(t[0], expect[0])
    assert t[1, 5].abs().sum() == 0  # an unannotated point keeps its empty target
    torch.testing.assert_close(t[1, :5], expect[1, :5])
    assert torch.allclose(t[0].sum((1, 2)), torch.ones(68, dtype=t.dtype))
    assert mixed["coords"] is targets["coords"] and "distribution" in targets  # the input dict is not changed


def test_build_teacher_errors_name_the_key(tmp_path, teacher_file):
    path, _ = teacher_file
    student = build_task("compact", input_size=S)
    assert build_teacher(distill_cfg(""), student, *DATA) is None
    with pytest.raises(ConfigError, match=r"distill\.teacher: .*not found"):
        build_teacher(distill_cfg(tmp_path / "missing.pt"), student, *DATA)
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ConfigError, match=r"distill\.teacher: .*trunc\.pt"):
        build_teacher(distill_cfg(trunc), student, *DATA)
    misfit = tmp_path / "misfit.pt"
    mf = deploy.load_model_file(path)
    deploy.save_model_file(misfit, mf["task"], {**mf["model_kwargs"], "expand": 2.0}, mf["state_dict"], mf["meta"])
    with pytest.raises(ConfigError, match=r"distill\.teacher: model weights do not fit the 'compact' network"):
        build_teacher(distill_cfg(misfit), student, *DATA)
    with pytest.raises(ConfigError, match=r"distill\.teacher: .*has 68 landmarks, the student 19"):
        build_teacher(distill_cfg(path), build_task("compact", num_landmarks=19, input_size=S), *DATA)
    with pytest.raises(ConfigError, match=r"distill\.teacher: .*missing\.pt"):  # any member of a list
        build_teacher(distill_cfg([path, tmp_path / "missing.pt"]), student, *DATA)
    with pytest.raises(ConfigError, match=r"distill\.teacher: .*normalisation"):
        build_teacher(distill_cfg(path), student)
    with pytest.raises(ConfigError, match=r"distill\.teacher: .*distribution task"):
        build_teacher(distill_cfg(path), build_task("heatmap", input_size=S), *DATA)


@pytest.mark.parametrize("key,value,match", [
    ("weight", 0.0, r"distill\.weight: must be in \(0, 1\]"),
    ("weight", 1.5, r"distill\.weight: must be in \(0, 1\]"),
    ("flip", "yes", r"distill\.flip: expected bool"),
    ("teachr", "x.pt", r"distill\.teachr: unknown key"),
    ("teacher", 3, r"distill\.teacher: .*a path or a list of paths"),
    ("teacher", [], r"distill\.teacher: .*a path or a list of paths"),
])
def test_config_errors(key, value, match):
    with pytest.raises(ConfigError, match=match):
        validate_config({"model": {"task": "compact"}, "distill": {key: value}})


def test_training_run_uses_the_teacher(tmp_path, teacher_file):
    """Two steps of a compact run on synthetic faces: with a teacher the
    logged loss differs from the same run without one, and a bad teacher
    fails before any training (no run folder)."""
    from test_training import config_text, write_dataset

    path, _ = teacher_file
    write_dataset(tmp_path / "train", 6, size=64, seed=1)
    write_dataset(tmp_path / "val", 2, size=64, seed=2)
    base = (config_text(tmp_path / "train", tmp_path / "val", task="compact", steps=2, val_every=2)
            .replace("input_size = 32", f"input_size = {S}"))
    losses = {}
    for name, extra in (("plain", ""), ("distill", f'\n[distill]\nteacher = "{path}"\nweight = 1.0\n')):
        cfg = tmp_path / f"{name}.toml"
        cfg.write_text(base + extra)
        out = tmp_path / name
        assert T.main(["--config", str(cfg), "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
        losses[name] = (out / "log.csv").read_text().splitlines()[1].split(",")[3]
    assert losses["plain"] != losses["distill"]
    bad = tmp_path / "bad.toml"
    bad.write_text(base + f'\n[distill]\nteacher = "{tmp_path / "nope.pt"}"\n')
    assert T.main(["--config", str(bad), "--out", str(tmp_path / "bad"), "--device", "cpu", "--no-progress"]) == 2
    assert not (tmp_path / "bad").exists()
