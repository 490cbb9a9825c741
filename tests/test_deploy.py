"""pyflm.deploy: model files, the predictor and TorchScript export."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch

from pyflm import deploy
from pyflm.tasks import build_task


def _tiny_model_file(task: str = "compact", input_size: int = 64, k: int = 68) -> dict:
    kwargs = {"num_landmarks": k, "input_size": input_size}
    if task == "compact":
        kwargs.update(width=0.25, decoder_channels=8)
    t = build_task(task, **kwargs)
    meta = deploy.default_meta(task, input_size, k, getattr(t.model, "output_stride", None))
    return {"format": deploy.MODEL_FORMAT, "version": deploy.MODEL_VERSION, "task": task,
            "model_kwargs": kwargs, "state_dict": t.model.state_dict(), "meta": meta}


def _normalised(crops: torch.Tensor, meta: dict) -> torch.Tensor:
    x = crops.permute(0, 3, 1, 2).flip(1).double() / 255  # BGR uint8 -> RGB [0, 1]
    mean = torch.tensor(meta["normalize"]["mean"], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(meta["normalize"]["std"], dtype=torch.float64).view(1, 3, 1, 1)
    return ((x - mean) / std).float()


def test_model_file_round_trip(tmp_path):
    mf = _tiny_model_file()
    path = deploy.save_model_file(tmp_path / "m.pt", mf["task"], mf["model_kwargs"], mf["state_dict"], mf["meta"])
    back = deploy.load_model_file(path)
    assert back["task"] == "compact" and back["meta"] == mf["meta"]
    for k, v in mf["state_dict"].items():
        assert torch.equal(back["state_dict"][k], v.float() if v.is_floating_point() else v), k
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # atomic: no temp file left


@pytest.mark.parametrize("task", ["compact", "heatmap", "pwc", "hybrid", "distribution"])
def test_predictor_matches_the_task_decoder(task):
    size = 64 if task == "compact" else 224
    mf = _tiny_model_file(task, size)
    pred = deploy.build_predictor(mf)
    crops = torch.randint(0, 256, (2, size, size, 3), dtype=torch.uint8)
    t = build_task(task, **mf["model_kwargs"])
    t.model.load_state_dict(mf["state_dict"])
    t.eval()
    with torch.inference_mode():
        coords, scores = pred(crops)
        want_c, want_s = t.decode(t.model(_normalised(crops, mf["meta"])))
    assert coords.shape == (2, 68, 2) and scores.shape == (2, 68)
    torch.testing.assert_close(coords, want_c.float(), atol=2e-3, rtol=0)
    torch.testing.assert_close(scores, want_s.float(), atol=2e-3, rtol=1e-3)


def test_predictor_rejects_bad_crops():
    pred = deploy.build_predictor(_tiny_model_file())
    with pytest.raises(ValueError, match="uint8"):
        pred(torch.zeros(1, 64, 64, 3))
    with pytest.raises(ValueError, match="64x64"):
        pred(torch.zeros(1, 32, 32, 3, dtype=torch.uint8))
    with torch.inference_mode():
        c, s = pred(torch.zeros(0, 64, 64, 3, dtype=torch.uint8))
    assert c.shape == (0, 68, 2) and s.shape == (0, 68)


def test_checkpoint_is_converted(tmp_path):
    mf = _tiny_model_file()
    ckpt = {"format": "pyflm-train-checkpoint", "task": "compact", "step": 7, "input_size": 64, "num_landmarks": 68,
            "model": mf["state_dict"],
            "config": {"model": {"task": "compact", **mf["model_kwargs"]},
                       "data": {"normalize": "imagenet", "crop_scale": 1.3, "crop_center": "centroid"}}}
    torch.save(ckpt, tmp_path / "best.pt")
    back = deploy.load_model_file(tmp_path / "best.pt")
    assert back["meta"]["training"]["step"] == 7
    assert back["meta"]["decode"]["kind"] == "soft" and back["meta"]["decode"]["stride"] == 4.0
    deploy.build_predictor(back)


def test_bad_model_files(tmp_path):
    with pytest.raises(deploy.ModelFileError, match="not found"):
        deploy.load_model_file(tmp_path / "missing.pt")
    mf = _tiny_model_file()
    good = deploy.save_model_file(tmp_path / "m.pt", mf["task"], mf["model_kwargs"], mf["state_dict"], mf["meta"])
    data = good.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(deploy.ModelFileError, match="truncated"):
        deploy.load_model_file(tmp_path / "trunc.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(deploy.ModelFileError, match="text.pt"):
        deploy.load_model_file(tmp_path / "text.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(deploy.ModelFileError, match="not a pyflm model"):
        deploy.load_model_file(tmp_path / "other.pt")
    wrong = dict(mf, model_kwargs={**mf["model_kwargs"], "decoder_channels": 16})
    with pytest.raises(deploy.ModelFileError, match="do not fit"):
        deploy.build_predictor(wrong)


def test_default_model_is_bundled():
    path = deploy.default_model_path()
    assert path.is_file(), "the package must ship its default model"
    mf = deploy.load_model_file(path)
    assert mf["meta"]["num_landmarks"] == 68 and "tight" in mf["meta"]["crop"]["boxes"]
    assert path.stat().st_size < 16 * 2**20


def test_export_load_same_output(tmp_path, compiled):
    mf = _tiny_model_file()
    out = deploy.export_torchscript(mf, tmp_path / "m.ts")
    module, meta = deploy.load_torchscript(out)
    assert meta["input_size"] == 64 and meta["crop"] == mf["meta"]["crop"]
    crops = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8)
    with torch.inference_mode():
        want = deploy.build_predictor(mf)(crops)
        got = module(crops)
    torch.testing.assert_close(got[0], want[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(got[1], want[1], atol=1e-5, rtol=1e-4)
    with zipfile.ZipFile(out) as z:  # the metadata is a plain JSON file inside the archive
        name = next(n for n in z.namelist() if n.endswith("extra/pyflm.json"))
        assert json.loads(z.read(name))["task"] == "compact"


def test_load_torchscript_errors(tmp_path, compiled):
    with pytest.raises(deploy.ModelFileError, match="not found"):
        deploy.load_torchscript(tmp_path / "missing.ts")
    (tmp_path / "junk.ts").write_bytes(b"\x00" * 100)
    with pytest.raises(deploy.ModelFileError, match="cannot load"):
        deploy.load_torchscript(tmp_path / "junk.ts")
    plain = torch.jit.script(torch.nn.Linear(2, 2))
    torch.jit.save(plain, str(tmp_path / "plain.ts"))
    with pytest.raises(deploy.ModelFileError, match="no pyflm metadata"):
        deploy.load_torchscript(tmp_path / "plain.ts")


@pytest.mark.parametrize("name", ["default", "fast"])
def test_bundled_models_have_a_crop_rule_per_detector(name):
    """FaceLandmarker(detector="haar" / "dlib") looks up the rule by the detector's
    name; without it a detector's boxes get the tight rule (and a warning)."""
    from pyflm.face_detection import DlibHogDetector, HaarFaceDetector

    boxes = deploy.load_model_file(deploy.model_path(name))["meta"]["crop"]["boxes"]
    assert {"tight", HaarFaceDetector.name, DlibHogDetector.name} <= set(boxes)
    for rule in boxes.values():
        assert 1.0 < rule["scale"] < 1.6 and abs(rule["dx"]) < 0.1 and abs(rule["dy"]) < 0.3


@pytest.mark.parametrize("name", ["default", "fast"])
def test_bundled_models_carry_their_fitted_refinement_square(name):
    """meta.crop.refine (training.fit_inference_crops): the chosen scale is the
    grid's best for the detectors, and the detector rules are scaled to it."""
    crop = deploy.load_model_file(deploy.model_path(name))["meta"]["crop"]
    refine, train = crop["refine"], crop["landmarks"]
    assert train["scale"] == 1.3 and refine["center"] == train["center"] == "box"
    grid = refine["nme"]["refine"]
    assert 1.3 <= refine["scale"] <= 1.6 and f"{refine['scale']:g}" in grid
    mean = {r: sum(v.values()) / len(v) for r, v in grid.items()}
    assert min(mean, key=mean.get) == f"{refine['scale']:g}"
    assert min(refine["nme"]["tight"], key=refine["nme"]["tight"].get) == f"{crop['boxes']['tight']['scale']:g}"
    # the detectors' fitted rules (haar 1.1349, dlib-hog 1.3324 of the box, targeting 1.3) scaled by refine / 1.3
    for det, fitted in (("haar", 1.1349), ("dlib-hog", 1.3324)):
        assert crop["boxes"][det]["scale"] == pytest.approx(fitted * refine["scale"] / 1.3, abs=1e-3)


def test_bundled_model_names():
    assert deploy.model_path("default") == deploy.default_model_path()
    assert deploy.model_path("fast") == deploy.bundled_model_path("fast")
    assert deploy.model_path("fast").name == "fast.pt" and deploy.model_path("fast").parent == deploy.default_model_path().parent
    assert deploy.model_path("x/fast") == Path("x/fast")  # a path, not a name
    with pytest.raises(ValueError, match="no bundled model 'tiny'"):
        deploy.bundled_model_path("tiny")
    with pytest.raises(deploy.ModelFileError, match=r"not found: fasst \(bundled models by name: default, fast\)"):
        deploy.load_model_file(deploy.model_path("fasst"))  # a misspelt name
