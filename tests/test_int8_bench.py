"""benchmarks.int8_latency on a tiny model: float32 and both int8 graphs timed, JSON written."""

from __future__ import annotations

import importlib.util
import json

import pytest

from pyflm import deploy
from tests.test_deploy import _tiny_model_file

pytestmark = pytest.mark.skipif(not all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime")),
                                reason="needs onnx and onnxruntime")


def test_int8_latency_smoke(tmp_path, capsys):
    from benchmarks import int8_latency

    mf = _tiny_model_file("compact", 64)
    model = deploy.save_model_file(tmp_path / "tiny.pt", mf["task"], mf["model_kwargs"], mf["state_dict"], mf["meta"])
    out = tmp_path / "int8.json"
    assert int8_latency.main(["--models", str(model), "--threads", "1", "--rounds", "2", "--runs", "5",
                              "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert [r["graph"] for r in rows] == ["float32", "int8 QDQ", "int8 QOperator"]
    assert all(r["ms_per_face"] > 0 and len(r["round_medians_ms"]) == 2 for r in rows)
    assert rows[0]["ratio_to_float32"] == 1.0 and rows[0]["max_px_vs_float32"] == 0.0
    assert all(0 < r["max_px_vs_float32"] < 64 for r in rows[1:])  # quantized: moved, but inside the crop
    assert "int8 QDQ" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        int8_latency.main(["--models", str(tmp_path / "missing.pt"), "--out", str(out)])
