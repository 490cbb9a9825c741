"""training.average: snapshot weights averaged, BatchNorm statistics re-estimated."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch

from pyflm import deploy
from tests.test_calibration import _model_with_config, _with_offset
from tests.test_deploy import _tiny_model_file
from training.average import _training_images, average_models, average_state_dicts
from training.average import main as average_main

S = 64


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    from tests.test_training import write_dataset

    folder = tmp_path_factory.mktemp("avg") / "faces"
    write_dataset(folder, 6, size=96, seed=5)
    return folder


def _snapshots(faces, n: int = 3) -> list[dict]:
    """``n`` tiny compact model files of one network with different random weights
    (BatchNorm statistics included) and a training config naming ``faces``."""
    out = []
    for i in range(n):
        torch.manual_seed(10 + i)
        mf = _model_with_config(_tiny_model_file("compact", S), faces)
        for k, v in mf["state_dict"].items():
            if k.endswith("running_var"):
                v.uniform_(0.5, 2.0)
            elif k.endswith("running_mean") or k.endswith(".bias"):
                v.normal_()
        out.append(mf)
    return out


def test_average_state_dicts_is_the_mean():
    rng = np.random.default_rng()
    sds = [{"w": torch.from_numpy(rng.normal(size=(3, 5))).float(), "n": torch.tensor(7 + i)} for i in range(4)]
    got = average_state_dicts(sds)
    want = np.mean([sd["w"].double().numpy() for sd in sds], axis=0)
    np.testing.assert_allclose(got["w"].double().numpy(), want, rtol=0, atol=1e-6)
    assert got["w"].dtype == torch.float32 and int(got["n"]) == 7  # integers: the first one's
    with pytest.raises(ValueError, match="b.pt: w has shape"):
        average_state_dicts([sds[0], {"w": torch.zeros(2), "n": torch.tensor(0)}], ["a.pt", "b.pt"])
    with pytest.raises(ValueError, match="b.pt: its weights are not those of a.pt"):
        average_state_dicts([sds[0], {"v": torch.zeros(3, 5), "n": torch.tensor(0)}], ["a.pt", "b.pt"])
    with pytest.raises(ValueError, match="no inputs"):
        average_state_dicts([])


def test_average_models_keeps_meta_and_drops_the_offset(faces):
    snaps = _snapshots(faces)
    snaps[0] = _with_offset(snaps[0], np.ones((68, 2)))
    snaps[0]["meta"]["calibration"] = {"faces": 1}
    out = average_models(snaps, ["a", "b", "c"], bn_batches=0)
    assert "offset" not in out["meta"]["decode"] and "calibration" not in out["meta"]
    assert out["meta"]["training"]["averaged"] == {"sources": ["a", "b", "c"], "count": 3, "bn_batches": 0}
    assert out["meta"]["crop"] == snaps[0]["meta"]["crop"]
    for k, v in out["state_dict"].items():  # bn_batches=0: every tensor is the plain mean
        if v.is_floating_point():
            want = torch.stack([s["state_dict"][k].double() for s in snaps]).mean(0)
            torch.testing.assert_close(v.double(), want, atol=1e-6, rtol=0)
    assert "offset" in snaps[0]["meta"]["decode"]  # inputs untouched
    other = _tiny_model_file("compact", 96)
    with pytest.raises(ValueError, match="c: a 'compact' network"):
        average_models([*snaps[:2], other], ["a", "b", "c"], bn_batches=0)


def test_batchnorm_statistics_are_re_estimated(faces):
    """The first BatchNorm's running mean / variance after averaging are the mean
    over the same training batches of its input's per-batch channel mean / unbiased
    variance (update_bn's cumulative average), not the average of the snapshots'."""
    snaps = _snapshots(faces)
    out = average_models(copy.deepcopy(snaps), bn_batches=2, batch_size=2, num_workers=0)
    plain = average_models(copy.deepcopy(snaps), bn_batches=0)
    net = deploy.task_from_model_file(plain).model.eval()
    conv, bn = net.stages[0][0][0], "stages.0.0.1"
    images = itertools.islice(_training_images(snaps[0]["meta"], 2, 0), 2)
    with torch.no_grad():
        feats = [conv(x).double() for x in images]
    mean = torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0)
    var = torch.stack([f.var((0, 2, 3), unbiased=True) for f in feats]).mean(0)
    torch.testing.assert_close(out["state_dict"][f"{bn}.running_mean"].double(), mean, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out["state_dict"][f"{bn}.running_var"].double(), var, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(plain["state_dict"][f"{bn}.running_mean"].double(), mean, atol=1e-2)
    assert out["meta"]["training"]["averaged"]["bn_batches"] == 2
    with torch.inference_mode():  # the averaged model predicts
        c, _ = deploy.build_predictor(out)(torch.randint(0, 256, (1, S, S, 3), dtype=torch.uint8))
    assert torch.isfinite(c).all()


def test_average_command(faces, tmp_path, capsys):
    paths = []
    for i, mf in enumerate(_snapshots(faces, 2)):
        paths.append(str(deploy.save_model_file(tmp_path / f"s{i}.pt", mf["task"], mf["model_kwargs"],
                                                mf["state_dict"], mf["meta"])))
    out = tmp_path / "avg.pt"
    assert average_main(["--models", *paths, "--out", str(out), "--bn-batches", "1", "--workers", "0"]) == 0
    assert "averaged 2 snapshots" in capsys.readouterr().out
    assert deploy.load_model_file(out)["meta"]["training"]["averaged"]["count"] == 2
    bare = deploy.save_model_file(tmp_path / "bare.pt", *(lambda m: (m["task"], m["model_kwargs"], m["state_dict"],
                                                                     m["meta"]))(_tiny_model_file("compact", S)))
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(out.read_bytes()[:500])
    other = tmp_path / "other.pt"
    o = _tiny_model_file("compact", 96)
    deploy.save_model_file(other, o["task"], o["model_kwargs"], o["state_dict"], o["meta"])
    for models, message in (([paths[0], str(tmp_path / "missing.pt")], "not found"),
                            ([paths[0], str(truncated)], "truncated"),
                            ([paths[0], str(other)], "network"),
                            ([str(bare), paths[0]], "no training config")):
        target = tmp_path / "never.pt"
        assert average_main(["--models", *models, "--out", str(target), "--workers", "0"]) == 2
        assert message in capsys.readouterr().err and not target.exists()
