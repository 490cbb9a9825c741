"""benchmarks/peers/cpp_latency.py: every row runs under the OpenMP wait policy it is
labelled with, read from the binary's own per-image timings.

A stand-in for pyflm-detect (a shell script) answers with the JSON the real binary
writes and puts the OMP_WAIT_POLICY it saw into its timings, so the test checks the
plumbing without a C++ build; the real binary runs in test_cli_cpp.py."""

from __future__ import annotations

import json
import stat

import numpy as np
import pytest

from benchmarks.peers import cpp_latency
from pyflm.data import write_pts

# landmarks ms = 1 + (1 if PASSIVE) + (2 if ACTIVE) + 10 * threads, per image of one face
FAKE = r"""#!/usr/bin/env python3
import json, os, sys
args = sys.argv[1:]
threads = int(args[args.index("--threads") + 1])
policy = os.environ.get("OMP_WAIT_POLICY")
ms = 1 + {None: 0, "PASSIVE": 1, "ACTIVE": 2}[policy] + 10 * threads
images = [a for a in args if a.endswith(".jpg")]
detect = 0.0 if "--boxes" in args else 50.0
print(json.dumps({"images": [{"path": p, "faces": [{}], "timings_ms": {"landmarks": ms, "detect": detect}}
                             for p in images]}))
"""


@pytest.fixture
def rng():
    return np.random.default_rng()


@pytest.fixture
def fake_binary(tmp_path, monkeypatch):
    exe = tmp_path / "pyflm-detect"
    exe.write_text(FAKE)
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PYFLM_DETECT_BINARY", str(exe))
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the caller's setting must not leak into "default" rows
    return exe


def _root(tmp_path, rng, n=3):
    d = tmp_path / "data" / "300w" / "helen" / "testset"
    d.mkdir(parents=True)
    for k in range(n):
        write_pts(d / f"img_{k}.pts", rng.uniform(20, 80, (68, 2)))
        (d / f"img_{k}.jpg").write_bytes(b"")  # the stand-in never opens it
    return tmp_path / "data"


def test_rows_run_under_their_wait_policy(fake_binary, tmp_path, rng, monkeypatch):
    monkeypatch.setattr(cpp_latency.deploy, "export_torchscript", lambda model, path: path)
    out = tmp_path / "lat.json"
    rc = cpp_latency.main(["--root", str(_root(tmp_path, rng)), "--images", "2", "--out", str(out),
                           "--wait-policies", "default", "passive"])
    assert rc == 0
    got = json.loads(out.read_text())
    r = got["results"]
    assert got["wait_policies"] == ["default", "passive"]
    for threads in (1, 2):
        assert r[f"{threads}thr_boxes"]["landmarks_ms_per_face"] == 1 + 10 * threads  # OMP_WAIT_POLICY unset
        assert r[f"{threads}thr_boxes_passive"]["landmarks_ms_per_face"] == 2 + 10 * threads
        assert r[f"{threads}thr_detect"]["detect_ms"] == 50.0 and r[f"{threads}thr_boxes"]["detect_ms"] == 0.0
        assert r[f"{threads}thr_boxes"]["images"] == 2
    assert not any(k.endswith("_active") for k in r)


def test_unknown_wait_policy_is_a_usage_error(fake_binary, tmp_path, rng):
    with pytest.raises(SystemExit) as e:
        cpp_latency.main(["--root", str(_root(tmp_path, rng)), "--wait-policies", "sleepy"])
    assert e.value.code == 2
