"""benchmarks/model_latency.py: the multiply-adds behind each model's compute floor
(against a count of every convolution's own arithmetic), and one round of the
measurement on a tiny model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

import pyflm
from benchmarks import model_latency
from pyflm import deploy
from tests.test_deploy import _tiny_model_file


def _conv_macs(net: nn.Module, size: int) -> int:
    """Every Conv2d's multiply-adds from its output shape: H' W' C_out (C_in / groups) k_h k_w."""
    total = 0

    def hook(conv, _, out):
        nonlocal total
        total += out[0].numel() * (conv.in_channels // conv.groups) * conv.kernel_size[0] * conv.kernel_size[1]

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, nn.Conv2d)]
    with torch.inference_mode():
        net(torch.zeros(1, 3, size, size))
    for h in handles:
        h.remove()
    return total


@pytest.fixture
def tiny(tmp_path):
    mf = _tiny_model_file("compact", 64)
    return deploy.save_model_file(tmp_path / "tiny.pt", mf["task"], mf["model_kwargs"], mf["state_dict"], mf["meta"])


def test_multiply_adds_counts_every_convolution(tiny):
    net = deploy.build_predictor(deploy.load_model_file(tiny)).net.eval()
    want = _conv_macs(net, 64)
    assert model_latency.multiply_adds(str(tiny)) == want
    assert any(m.groups > 1 for m in net.modules() if isinstance(m, nn.Conv2d))  # depthwise ones are counted too


@pytest.mark.skipif(not deploy.default_model_path().is_file(), reason="no bundled model file")
def test_bundled_models_arithmetic():
    # the README's "95 M" (default, 160 px) and "41 M" (fast, 128 px pruned) multiply-adds
    assert model_latency.multiply_adds("default") / 1e6 == pytest.approx(95.2, abs=0.05)
    assert model_latency.multiply_adds("fast") / 1e6 == pytest.approx(40.6, abs=0.05)


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="needs onnxruntime")
def test_one_round(tiny):
    img = cv2.imread(str(Path(pyflm.__file__).parent / "assets" / "astronaut.jpg"))
    faces = [(img, np.array([177.5, 66.5, 269.5, 158.5]) + d) for d in (0.0, 2.0, -3.0)] * 4
    rows = model_latency.measure([str(tiny)], threads=1, rounds=2, faces=faces)
    (row,) = rows
    assert row["threads"] == 1 and row["ratio_to_first"] == 1.0
    assert len(row["round_medians_ms"]) == len(row["round_network_ms"]) == len(row["round_gemm_gmacs"]) == 2
    assert row["ms_per_face"] > 0 and row["network_ms"] > 0 and row["gemm_gmacs"] > 0
    macs = model_latency.multiply_adds(str(tiny))
    assert row["mmacs"] == round(macs / 1e6, 1)
    assert row["floor_ms"] == pytest.approx(macs / 1e6 / row["gemm_gmacs"], rel=0.01, abs=1e-3)
