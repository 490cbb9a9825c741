"""ONNX export and an ONNX Runtime backend for CPU inference.

The predictor of a pyflm model exports to ONNX: uint8 BGR crops ``[B, S, S, 3]``
-> normalisation -> CNN -> for soft-argmax models (the bundled ones) the decoding
too, the formula of pyflm's soft-argmax reference and fused op as one MatMul
over a constant grid (``_soft_argmax_matmul``), giving ``coords [B, K, 2]``
(crop pixels) and ``scores [B, K]``. Other models' graphs end at the network's
output (``maps``), decoded by the pyflm ops (``argmax_decode``'s refinements
have no ONNX equivalent). Whole-graph decoding
matters for speed: a torch op between ONNX Runtime calls wakes torch's thread
pool, and the two pools spinning on a small CPU made one face 2.7x slower here.

Why a second backend: a small network like the bundled one is bound by per-op
dispatch overhead in PyTorch on the CPU (one face through the TorchScript
predictor costs about twice what ONNX Runtime's fused graph costs for the same
arithmetic; ``pyflm bench --backend torch`` and ``--backend onnxruntime``
measure both). onnx (to export) and onnxruntime (to run) are dependencies of
pyflm; ``FaceLandmarker``'s default ``backend="auto"`` uses this backend on the
CPU where the model allows.
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

__all__ = ["OnnxPredictor", "decodes_in_graph", "export_onnx", "onnx_bytes", "output_names"]

_HINT = "the ONNX backend needs onnx and onnxruntime (dependencies of pyflm): pip install onnx onnxruntime"
OPSET = 17


def decodes_in_graph(predictor: LandmarkPredictor) -> bool:
    return predictor.decode_kind == "soft"


class _Graph(nn.Module):
    """uint8 crops -> (coords, scores) for soft-argmax models, else -> the
    network's output (the predictor's preprocessing + network)."""

    def __init__(self, predictor: LandmarkPredictor, map_shape: tuple[int, int, int]):
        super().__init__()
        self.predictor = predictor
        self.map_shape = map_shape  # (K, H, W) of the maps soft-argmax reads, as Python ints
        k, h, w = map_shape
        self.register_buffer("grid", _soft_argmax_grid(h, w, predictor.stride), persistent=False)

    def forward(self, crops: Tensor):
        p = self.predictor
        out = p.net(p.preprocess(crops))
        if not decodes_in_graph(p):
            return out
        k, h, w = self.map_shape
        coords, scores = _soft_argmax_matmul(p._prepare_maps(out), self.grid, k, h * w, p.temperature)
        if p.has_offset:  # the model's calibration offset (pyflm.deploy.decode_offset): one Add
            coords = coords + p.offset
        return coords, scores


def _soft_argmax_grid(h: int, w: int, stride: float) -> Tensor:
    """``[h * w, 3]``: each map cell's (x, y) in input pixels (the predictor's
    ``_to_input``: ``x * stride + (stride - 1) / 2``) and a 1, row-major."""
    xs = torch.arange(w, dtype=torch.float64).repeat(h)
    ys = torch.arange(h, dtype=torch.float64).repeat_interleave(w)
    off = (stride - 1.0) / 2.0
    return torch.stack((xs * stride + off, ys * stride + off, torch.ones_like(xs)), dim=1).float()


def _soft_argmax_matmul(maps: Tensor, grid: Tensor, k: int, hw: int, temperature: float) -> tuple[Tensor, Tensor]:
    """Soft-argmax (the reference's formula, mapped to input pixels) as the
    graph computes it: ``e = exp((logits - max) / T)``, then one MatMul
    ``e @ grid`` gives ``(sum e x, sum e y, sum e)``; coords are the first two
    over the third, and the confidence ``max p = 1 / sum e`` (the largest ``e``
    is 1). The MatMul replaces softmax, two products, two sums, a stack and
    a max: 5% of a face's time at 128 px (ONNX Runtime, 1 thread, paired
    A/B). The map size comes in as ints, so no Shape / Gather / Range nodes."""
    logits = maps.float().reshape(-1, k, hw)
    e = torch.exp((logits - logits.amax(dim=-1, keepdim=True)) * (1.0 / temperature))
    m = e @ grid
    total = m[..., 2:]
    return m[..., :2] / total, (1.0 / total).squeeze(-1)  # squeeze, not [..., 0]: a Gather node


def output_names(predictor: LandmarkPredictor) -> list[str]:
    return ["coords", "scores"] if decodes_in_graph(predictor) else ["maps"]


def onnx_bytes(predictor: LandmarkPredictor) -> bytes:
    """The ONNX graph (opset 17, dynamic batch) of ``predictor`` (see the
    module docstring), with the model meta as metadata ``pyflm``."""
    try:
        import onnx
    except ImportError as e:
        raise ImportError(_HINT) from e
    s = predictor.input_size
    example = torch.zeros(1, s, s, 3, dtype=torch.uint8)
    buf = io.BytesIO()
    # eval() on the wrapper too: the exporter restores the wrapper's mode recursively afterwards
    predictor = predictor.cpu().eval()
    map_shape = (0, 0, 0)
    if decodes_in_graph(predictor):
        with torch.inference_mode(False), torch.no_grad():
            maps = predictor._prepare_maps(predictor.net(predictor.preprocess(example)))
        map_shape = tuple(int(n) for n in maps.shape[1:])
    net = _Graph(predictor, map_shape).eval()
    names = output_names(predictor)
    # The crop checks in preprocess are Python branches: fine to fix at trace time. The
    # TorchScript-based exporter (deprecated since torch 2.9, still in 2.13/2.14) needs only
    # onnx; the torch.export-based one would add onnxscript: the warning is ours to carry.
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, (example,), buf, dynamo=False, opset_version=OPSET, input_names=["crops"],
                          output_names=names, dynamic_axes={n: {0: "batch"} for n in ["crops", *names]})
    model = onnx.load_from_string(buf.getvalue())
    entry = model.metadata_props.add()
    entry.key, entry.value = "pyflm", predictor.meta_json
    return model.SerializeToString()


def export_onnx(model_file: dict, path) -> Path:
    """Write the ONNX graph of ``model_file``'s predictor (atomically). Input
    ``crops``: uint8 ``[B, S, S, 3]`` BGR. Outputs ``coords`` ``[B, K, 2]``
    (crop pixels) and ``scores`` ``[B, K]`` for soft-argmax models, else
    ``maps``, which the model meta's ``decode`` section says how to decode."""
    from pyflm.io import atomic_write

    data = onnx_bytes(build_predictor(model_file))
    return atomic_write(Path(path), lambda f: f.write(data))


class OnnxPredictor:
    """Drop-in for :class:`pyflm.deploy.LandmarkPredictor` on the CPU:
    ``predictor(crops uint8 [B, S, S, 3]) -> (coords [B, K, 2] crop px, scores [B, K])``,
    run by ONNX Runtime (decoding too for soft-argmax models, else by the pyflm ops)."""

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
        if crops.shape[0] == 0:  # ONNX Reshape cannot infer -1 beside a 0-sized batch
            k = self.predictor.num_landmarks
            return torch.zeros(0, k, 2), torch.zeros(0, k)
        outs = self.session.run(None, {"crops": np.ascontiguousarray(crops.cpu().numpy())})
        if decodes_in_graph(self.predictor):
            return torch.from_numpy(outs[0]), torch.from_numpy(outs[1])
        return self.predictor.decode(torch.from_numpy(outs[0]))

    def __repr__(self) -> str:
        return f"OnnxPredictor(input_size={self.input_size}, providers={self.session.get_providers()})"
