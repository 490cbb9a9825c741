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
from training.distill import Teacher, build_teacher

S = 64  # small compact net: 16x16 maps
from training.dataset import IMAGENET_MEAN, IMAGENET_STD

DATA = (IMAGENET_MEAN, IMAGENET_STD)


def distill_cfg(teacher, weight=0.5, flip=True) -> dict:
    return {"teacher": str(teacher), "weight": weight, "flip": flip}


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


def test_teacher_stays_frozen_in_eval_mode(teacher_file):
    path, _ = teacher_file
    teacher = build_teacher(distill_cfg(path), build_task("compact", input_size=S), *DATA)
    teacher.train()
    assert not teacher.net.training and not any(p.requires_grad for p in teacher.parameters())


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
    with pytest.raises(ConfigError, match=r"distill\.teacher: .*input_size 64, the student 96"):
        build_teacher(distill_cfg(path), build_task("compact", input_size=96), *DATA)
    with pytest.raises(ConfigError, match=r"distill\.teacher: .*normalisation"):
        build_teacher(distill_cfg(path), student)
    with pytest.raises(ConfigError, match=r"distill\.teacher: .*distribution task"):
        build_teacher(distill_cfg(path), build_task("heatmap", input_size=S), *DATA)


@pytest.mark.parametrize("key,value,match", [
    ("weight", 0.0, r"distill\.weight: must be in \(0, 1\]"),
    ("weight", 1.5, r"distill\.weight: must be in \(0, 1\]"),
    ("flip", "yes", r"distill\.flip: expected bool"),
    ("teachr", "x.pt", r"distill\.teachr: unknown key"),
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
