""".ci/device-checks, dry-run on the CPU (PYFLM_DEVICE=cpu): its train stage packs
nothing itself, reads the carried pack, trains each config for --minutes with the
batch size overridden, evaluates the best checkpoint on the three test splits, and
brings everything back as results.tar.gz plus the small checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from pyflm.data import write_pts
from training import pack_data

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / ".ci" / "device-checks"

CONFIG = """
[model]
task = "compact"
num_landmarks = 68
input_size = 64

[data]
train = "300w-train"
val = "holdout"
val_fraction = 0.25
augment = "none"

[optim]
name = "adam"
lr = 1e-3

[train]
batch_size = 8
max_steps = 1000
val_every = 1000
log_every = 1
num_workers = 0
"""


def _pack(tmp_path: Path) -> Path:
    """A synthetic 300-W root (4 training faces, 1 + 1 test faces) packed as the device sees it."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for sub, n in (("afw", 2), ("helen/trainset", 1), ("lfpw/trainset", 1), ("helen/testset", 1),
                   ("lfpw/testset", 1)):
        d = root / "300w" / sub
        d.mkdir(parents=True)
        for k in range(n):
            cv2.imwrite(str(d / f"f{k}.jpg"), rng.integers(0, 256, (120, 100, 3), dtype=np.uint8))
            write_pts(d / f"f{k}.pts", np.c_[rng.uniform(30, 70, 68), rng.uniform(30, 90, 68)])
    pack_data.pack(["300w-train", "common"], tmp_path / "pack", root=root, max_side=96)
    return tmp_path / "pack"


@pytest.mark.skipif(sys.platform != "linux", reason="a bash script for the lent Linux machine")
def test_train_stage_dry_run(tmp_path):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(CONFIG)
    out = tmp_path / "out"
    env = {**os.environ, "PYFLM_DEVICE": "cpu", "PYFLM_DEVDATA": str(_pack(tmp_path)), "OUT": str(out),
           "PYTHON": sys.executable, "TMPDIR": str(tmp_path)}
    proc = subprocess.run(["bash", str(SCRIPT), "--stages", "train", "--configs", str(cfg), "--minutes", "0.0001",
                           "--batch", "2", "--workers", "0"], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "tiny_best.pt").is_file()
    with tarfile.open(out / "results.tar.gz") as tar:
        names = set(tar.getnames())
        summary = json.load(tar.extractfile("./runs/tiny/summary.json"))
        results = json.load(tar.extractfile("./eval/tiny/results.json"))
        used = tar.extractfile("./tiny.toml").read().decode()
        steps = tar.extractfile("./steps.tsv").read().decode().split()
    assert not any(n.endswith(".pt") for n in names)  # checkpoints travel on their own
    assert summary["time_limit_reached"] and summary["steps"] == 1 and summary["train_samples"] == 3
    assert "batch_size = 2" in used and "num_workers = 0" in used
    assert {"facts", "train_tiny", "eval_tiny"} <= set(steps)
    assert "common" in json.dumps(results) and "lfpw-test" in json.dumps(results)
    assert not list(tmp_path.glob("pyflm-device.*"))  # its work folder is gone


def test_bad_argument_and_missing_pack(tmp_path):
    env = {**os.environ, "PYFLM_DEVICE": "cpu", "PYFLM_DEVDATA": str(tmp_path / "none"), "OUT": str(tmp_path / "o"),
           "PYTHON": sys.executable, "TMPDIR": str(tmp_path)}
    proc = subprocess.run(["bash", str(SCRIPT), "--bogus"], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2 and "--bogus" in proc.stderr
    proc = subprocess.run(["bash", str(SCRIPT), "--stages", "train"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 1 and "pack_data" in proc.stdout
    assert (tmp_path / "o" / "results.tar.gz").is_file()


def _env(tmp_path: Path, **extra) -> dict:
    return {**os.environ, "PYFLM_DEVICE": "cpu", "OUT": str(tmp_path / "out"), "PYTHON": sys.executable,
            "TMPDIR": str(tmp_path), **extra}


@pytest.mark.skipif(sys.platform != "linux", reason="a bash script for the lent Linux machine")
def test_deadline_stops_a_stage_and_the_archive_keeps_what_finished(tmp_path):
    """A stage still running at --deadline is stopped (rc 124) and the archive,
    rewritten after every stage, holds the stages before it and its log."""
    import time

    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(SCRIPT), "--stages", "ops", "--deadline", "25"], capture_output=True,
                          text=True, env=_env(tmp_path), timeout=300)
    took = time.monotonic() - t0
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert took < 60  # run_ops on the CPU alone takes minutes
    with tarfile.open(tmp_path / "out" / "results.tar.gz") as tar:
        steps = dict(line.split("\t")[:2] for line in tar.extractfile("./steps.tsv").read().decode().splitlines()[1:])
        log = tar.extractfile("./logs/ops_cpu.log").read().decode()
    assert steps == {"facts": "0", "ops_cpu": "124"} and "stopped at --deadline 25" in log
    assert not list((tmp_path / "out").glob(".results*"))  # no half-written archive left


@pytest.mark.skipif(sys.platform != "linux", reason="a bash script for the lent Linux machine")
def test_deadline_shares_the_training_time_and_skips_what_cannot_fit(tmp_path):
    pack = _pack(tmp_path)
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(CONFIG.replace("max_steps = 1000", "max_steps = 2"))
    args = ["bash", str(SCRIPT), "--stages", "train", "--configs", str(cfg), "--minutes", "5", "--batch", "2",
            "--workers", "0"]
    # 200 s, 60 s of overhead per config: one config gets (200 - ~10 - 60) / 60, about 2 minutes, not 5
    proc = subprocess.run(args + ["--deadline", "200"], capture_output=True, text=True, timeout=600,
                          env=_env(tmp_path, PYFLM_DEVDATA=str(pack), TRAIN_OVERHEAD_S="60"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    minutes = float(proc.stdout.split("--max-minutes ")[1].split()[0])
    assert 1.5 < minutes < 2.2
    # under 30 s per config left: skipped, rc 124, nothing trained
    proc = subprocess.run(args + ["--deadline", "60"], capture_output=True, text=True, timeout=600,
                          env=_env(tmp_path, PYFLM_DEVDATA=str(pack), TRAIN_OVERHEAD_S="60", OUT=str(tmp_path / "o2")))
    assert proc.returncode == 1 and "tiny skipped" in proc.stdout
    with tarfile.open(tmp_path / "o2" / "results.tar.gz") as tar:
        assert "train_tiny\t124" in tar.extractfile("./steps.tsv").read().decode()
    assert not (tmp_path / "o2" / "tiny_best.pt").exists()
