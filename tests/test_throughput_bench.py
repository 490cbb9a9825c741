"""benchmarks.throughput on the CPU: rows for every batch size and dtype, eager
fp32 checked against itself, bf16 close, the JSON lines written."""

from __future__ import annotations

import json

import pytest

from pyflm import deploy

pytestmark = pytest.mark.skipif(not deploy.default_model_path().is_file(), reason="no bundled model file")


def test_cpu_smoke(tmp_path, capsys):
    from benchmarks import throughput

    out = tmp_path / "t.jsonl"
    throughput.main(["--device", "cpu", "--quick", "--models", "default", "--batches", "1", "3", "--out", str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["batch"], r["dtype"], r["mode"]) for r in rows] == [
        (1, "fp32", "eager"), (1, "bf16", "eager"), (3, "fp32", "eager"), (3, "bf16", "eager")]
    assert all(r["faces_per_s"] > 0 and r["machine"]["torch"] for r in rows)
    assert all(r["max_px"] == 0 for r in rows if r["dtype"] == "fp32")
    assert all(0 < r["max_px"] < 3 for r in rows if r["dtype"] == "bf16")  # bf16 differs, a little
    assert "best default:" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        throughput.main(["--device", "cpu", "--modes", "cudagraph"])
