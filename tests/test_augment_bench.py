"""benchmarks.augment_throughput runs end to end on a tiny folder and writes its JSON."""

from __future__ import annotations

import json

import cv2
import numpy as np

from pyflm.data import write_pts


def test_augment_throughput_smoke(tmp_path, capsys):
    from benchmarks.augment_throughput import main

    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"f{i}.png"), rng.integers(0, 255, (60, 50, 3), dtype=np.uint8))
        write_pts(tmp_path / f"f{i}.pts", rng.uniform(10, 40, (68, 2)))
    out = tmp_path / "r.json"
    assert main(["--split", str(tmp_path), "--size", "16", "--batch", "4", "--samples", "3", "--rounds", "1",
                 "--augment", "paper2", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    rows = {r["warp"]: r for r in data["results"]}
    assert set(rows) == {"cpu", "device"} and rows["cpu"]["worker_ratio_to_cpu"] == 1.0
    assert rows["device"]["device_ms_per_batch"] > 0 and data["machine"]["torch"]
    assert "| warp |" in capsys.readouterr().out
