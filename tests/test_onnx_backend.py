"""pyflm.onnx_backend: the ONNX export of a model's network and FaceLandmarker's
backend="onnxruntime" against the TorchScript predictor on the bundled model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import pyflm
from pyflm import deploy
from pyflm.landmarker import FaceLandmarker

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from pyflm.onnx_backend import OnnxPredictor, export_onnx, onnx_bytes  # noqa: E402

ASTRONAUT = Path(pyflm.__file__).parent / "assets" / "astronaut.jpg"
FACE = [[177.5, 66.5, 269.5, 158.5]]  # the sample photo's face
pytestmark = pytest.mark.skipif(not deploy.default_model_path().is_file(), reason="no bundled model file")


@pytest.fixture(scope="module")
def model_file():
    return deploy.load_model_file(deploy.default_model_path())


@pytest.fixture(scope="module")
def backends():
    return (FaceLandmarker(detector=None, num_threads=1, backend="torch"),
            FaceLandmarker(detector=None, num_threads=1, backend="onnxruntime"))


def test_same_landmarks_as_torch(backends):
    """A real face and a random image with several boxes: the two backends agree."""
    torch_lm, ort_lm = backends
    assert isinstance(ort_lm.predictor, OnnxPredictor) and "onnxruntime" in repr(ort_lm)
    assert torch_lm.backend == "torch" and not isinstance(torch_lm.predictor, OnnxPredictor)
    img = cv2.imread(str(ASTRONAUT))
    noise = np.random.default_rng().integers(0, 256, (97, 131, 3), dtype=np.uint8)
    for image, boxes in ((img, FACE), (noise, [[3, 4, 60, 70], [50.5, 10, 120, 90], [-5, -5, 30, 40]])):
        a, b = torch_lm.detect(image, boxes=boxes), ort_lm.detect(image, boxes=boxes)
        assert len(a) == len(b) == len(boxes)
        for fa, fb in zip(a, b):
            np.testing.assert_allclose(fb.landmarks, fa.landmarks, atol=2e-3)
            np.testing.assert_allclose(fb.scores, fa.scores, atol=1e-4)
    assert ort_lm.detect(noise, boxes=np.zeros((0, 4))) == []


def test_flip_test_on_onnxruntime(backends):
    """flip_test works on either backend alike (it wraps the predictor)."""
    img = cv2.imread(str(ASTRONAUT))
    a = FaceLandmarker(detector=None, num_threads=1, backend="torch", flip_test=True).detect(img, boxes=FACE)[0]
    b = FaceLandmarker(detector=None, num_threads=1, backend="onnxruntime", flip_test=True).detect(img, boxes=FACE)[0]
    np.testing.assert_allclose(b.landmarks, a.landmarks, atol=2e-3)
    plain = backends[1].detect(img, boxes=FACE)[0]
    assert np.abs(b.landmarks - plain.landmarks).max() > 0.01  # the flip changed something


def test_predictor_batches_and_errors(model_file):
    p = deploy.build_predictor(model_file)
    op = OnnxPredictor(p, num_threads=1)
    s = p.input_size
    crops = torch.from_numpy(np.random.default_rng().integers(0, 256, (3, s, s, 3), dtype=np.uint8))
    with torch.inference_mode():
        want = p(crops)
        got = op(crops)
        one = op(crops[1:2])  # another batch size than the export's example
        empty = op(crops[:0])
    torch.testing.assert_close(got[0], want[0], atol=2e-3, rtol=0)
    torch.testing.assert_close(one[0], want[0][1:2], atol=2e-3, rtol=0)
    assert empty[0].shape == (0, 68, 2) and empty[1].shape == (0, 68)
    with pytest.raises(ValueError, match="uint8"):
        op(crops.float())
    with pytest.raises(ValueError, match=f"{s}x{s}"):
        op(crops[:, :-1])


def test_export_onnx_file(tmp_path, model_file):
    path = export_onnx(model_file, tmp_path / "m.onnx")
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    meta = json.loads({p.key: p.value for p in model.metadata_props}["pyflm"])
    assert meta["input_size"] == model_file["meta"]["input_size"] and meta["decode"]["kind"] == "soft"
    assert not list(tmp_path.glob("*.tmp*"))
    p = deploy.build_predictor(model_file)
    s = p.input_size
    crops = torch.from_numpy(np.random.default_rng().integers(0, 256, (2, s, s, 3), dtype=np.uint8))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # the bundled model decodes by soft-argmax: in the graph, as coordinates and scores
    assert [o.name for o in session.get_outputs()] == ["coords", "scores"]
    coords, scores = session.run(None, {"crops": crops.numpy()})
    with torch.inference_mode():
        want = p(crops)
    np.testing.assert_allclose(coords, want[0].numpy(), atol=2e-3, rtol=0)
    np.testing.assert_allclose(scores, want[1].numpy(), atol=1e-5, rtol=1e-4)
    assert onnx_bytes(p) == onnx_bytes(p)  # deterministic
    assert not p.training  # exporting leaves the predictor in eval mode


@pytest.mark.parametrize("stride", [1.0, 4.0])
def test_graph_soft_argmax_is_the_reference(stride):
    """The graph's soft-argmax (one MatMul over a constant grid, map size as
    ints) against the reference mapped to input pixels: odd non-square maps,
    a batch of 3, fresh random logits with a wide range."""
    from pyflm.onnx_backend import _soft_argmax_grid, _soft_argmax_matmul
    from pyflm.ops.soft_argmax import soft_argmax_reference

    maps = torch.randn(3, 5, 7, 9) * 8
    grid = _soft_argmax_grid(7, 9, stride)
    for t in (1.0, 0.5):
        got = _soft_argmax_matmul(maps, grid, 5, 63, t)
        coords, conf = soft_argmax_reference(maps.double(), t)
        torch.testing.assert_close(got[0].double(), coords * stride + (stride - 1) / 2, atol=1e-4 * stride, rtol=0)
        torch.testing.assert_close(got[1].double(), conf, atol=1e-6, rtol=1e-5)


def test_graph_has_no_shape_arithmetic(model_file):
    """The bundled model's graph: no Shape / Gather / Range nodes (dynamic batch
    only), which would run on every call."""
    ops = {n.op_type for n in onnx.load_from_string(onnx_bytes(deploy.build_predictor(model_file))).graph.node}
    assert not ops & {"Shape", "Gather", "Range"}, ops


def test_argmax_models_decode_with_pyflm_ops(model_file):
    """Models decoded by argmax_decode (DARK etc.): the graph ends at the maps and
    pyflm's op decodes them; same result as the TorchScript predictor."""
    mf = {**model_file, "meta": {**model_file["meta"], "decode": {**model_file["meta"]["decode"], "kind": "argmax"}}}
    p = deploy.build_predictor(mf)
    op = OnnxPredictor(p, num_threads=1)
    assert [o.name for o in op.session.get_outputs()] == ["maps"]
    s = p.input_size
    crops = torch.from_numpy(np.random.default_rng().integers(0, 256, (2, s, s, 3), dtype=np.uint8))
    with torch.inference_mode():
        want, got = p(crops), op(crops)
    torch.testing.assert_close(got[0], want[0], atol=2e-3, rtol=0)
    torch.testing.assert_close(got[1], want[1], atol=1e-4, rtol=1e-4)


def test_backend_errors(tmp_path, model_file, monkeypatch):
    with pytest.raises(ValueError, match="backend must be one of"):
        FaceLandmarker(detector=None, backend="tensorrt")
    with pytest.raises(ValueError, match="runs on the CPU"):
        FaceLandmarker(detector=None, backend="onnxruntime", device="cuda")
    if pyflm.HAS_OPS:
        ts = deploy.export_torchscript(model_file, tmp_path / "m.ts")
        with pytest.raises(ValueError, match="needs a model file"):
            FaceLandmarker(model=ts, detector=None, backend="onnxruntime")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(ImportError, match="pip install onnx onnxruntime"):
        FaceLandmarker(detector=None, backend="onnxruntime")


def test_auto_backend(tmp_path, model_file, monkeypatch):
    """backend="auto" (the default) runs ONNX Runtime on the CPU where the model
    allows it, and TorchScript where it does not."""
    assert FaceLandmarker(detector=None).backend == "onnxruntime"
    assert isinstance(FaceLandmarker(detector=None).predictor, OnnxPredictor)
    assert FaceLandmarker(detector=None, backend="torch").backend == "torch"
    argmax = {**model_file, "meta": {**model_file["meta"], "decode": {**model_file["meta"]["decode"], "kind": "argmax"}}}
    assert FaceLandmarker(model=argmax, detector=None).backend == "torch"  # decoding outside the graph
    if pyflm.HAS_OPS:
        ts = deploy.export_torchscript(model_file, tmp_path / "m.ts")
        assert FaceLandmarker(model=ts, detector=None).backend == "torch"

    def unexportable(*a, **k):
        raise torch.onnx.errors.UnsupportedOperatorError("pyflm::dilated_skip_block", 17, None)

    with monkeypatch.context() as m:  # a network ONNX cannot express (the DSC model's op)
        m.setattr(torch.onnx, "export", unexportable)
        assert FaceLandmarker(model=model_file, detector=None).backend == "torch"
        with pytest.raises(torch.onnx.OnnxExporterError):
            FaceLandmarker(model=model_file, detector=None, backend="onnxruntime")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    lm = FaceLandmarker(detector=None)
    assert lm.backend == "torch" and "backend='torch'" in repr(lm)
    assert len(lm.detect(cv2.imread(str(ASTRONAUT)), boxes=FACE)[0].landmarks) == 68


def test_cli_bench_backend(capsys):
    from pyflm.cli import main

    assert main(["bench", "--backend", "onnxruntime", "--threads", "1", "--min-time", "0.05"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.strip().startswith("1 ")]
    assert "backend='onnxruntime'" in out and len(rows) == 1 and all(float(v) > 0 for v in rows[0][1:])
