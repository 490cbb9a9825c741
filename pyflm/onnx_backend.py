"""ONNX export and an ONNX Runtime backend for CPU inference.

The network of a pyflm model (normalisation + CNN, uint8 BGR crops
``[B, S, S, 3]`` -> raw maps or coordinates) exports to ONNX; decoding stays in
pyflm (``pyflm.soft_argmax`` / ``argmax_decode``: custom ops ONNX has no
equivalent of), so results equal the TorchScript predictor's.

Why a second backend: a small network like the bundled one is bound by per-op
dispatch overhead in PyTorch on the CPU (one face through the TorchScript
predictor costs about twice what ONNX Runtime's fused graph costs for the same
arithmetic; ``pyflm bench --backend onnxruntime`` measures both). ONNX Runtime
is optional: ``pip install "pyflm[onnx]"`` (onnx to export, onnxruntime to run).
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from pyflm.deploy import LandmarkPredictor, build_predictor

__all__ = ["OnnxPredictor", "export_onnx", "onnx_bytes"]

_HINT = 'the ONNX backend needs onnx and onnxruntime: pip install "pyflm[onnx]"'
OPSET = 17


class _Network(nn.Module):
    """uint8 crops -> what the predictor decodes (its preprocessing + network)."""

    def __init__(self, predictor: LandmarkPredictor):
        super().__init__()
        self.predictor = predictor

    def forward(self, crops: Tensor) -> Tensor:
        return self.predictor.net(self.predictor.preprocess(crops))


def onnx_bytes(predictor: LandmarkPredictor) -> bytes:
    """The ONNX graph (opset 17, dynamic batch) of ``predictor``'s
    preprocessing + network, with the model meta as metadata ``pyflm``."""
    try:
        import onnx
    except ImportError as e:
        raise ImportError(_HINT) from e
    s = predictor.input_size
    example = torch.zeros(1, s, s, 3, dtype=torch.uint8)
    buf = io.BytesIO()
    # eval() on the wrapper too: the exporter restores the wrapper's mode recursively afterwards
    net = _Network(predictor.cpu()).eval()
    # The crop checks in preprocess are Python branches: fine to fix at trace time. The
    # TorchScript-based exporter (deprecated since torch 2.9, still in 2.13/2.14) needs only
    # onnx; the torch.export-based one would add onnxscript: the warning is ours to carry.
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, (example,), buf, dynamo=False, opset_version=OPSET, input_names=["crops"],
                          output_names=["maps"], dynamic_axes={"crops": {0: "batch"}, "maps": {0: "batch"}})
    model = onnx.load_from_string(buf.getvalue())
    entry = model.metadata_props.add()
    entry.key, entry.value = "pyflm", predictor.meta_json
    return model.SerializeToString()


def export_onnx(model_file: dict, path) -> Path:
    """Write the ONNX graph of ``model_file``'s network (atomically). Inputs:
    ``crops`` uint8 ``[B, S, S, 3]`` BGR; output ``maps``, which the model
    meta's ``decode`` section says how to turn into coordinates."""
    from pyflm.io import atomic_write

    data = onnx_bytes(build_predictor(model_file))
    return atomic_write(Path(path), lambda f: f.write(data))


class OnnxPredictor:
    """Drop-in for :class:`pyflm.deploy.LandmarkPredictor` on the CPU:
    ``predictor(crops uint8 [B, S, S, 3]) -> (coords [B, K, 2] crop px, scores [B, K])``,
    the network run by ONNX Runtime, decoding by the pyflm ops."""

    def __init__(self, predictor: LandmarkPredictor, num_threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ImportError(_HINT) from e
        self.predictor = predictor.cpu().eval()
        self.input_size = predictor.input_size
        self.meta = json.loads(predictor.meta_json)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(num_threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(onnx_bytes(self.predictor), options, providers=["CPUExecutionProvider"])

    def __call__(self, crops: Tensor) -> tuple[Tensor, Tensor]:
        self.predictor.check_crops(crops)  # the same errors for wrong dtypes and shapes
        (maps,) = self.session.run(None, {"crops": np.ascontiguousarray(crops.cpu().numpy())})
        return self.predictor.decode(torch.from_numpy(maps))

    def __repr__(self) -> str:
        return f"OnnxPredictor(input_size={self.input_size}, providers={self.session.get_providers()})"
