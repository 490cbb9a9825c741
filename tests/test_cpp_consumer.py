"""The ops from a libtorch C++ program: build csrc/tools/run_scripted against the
installed torch, run a scripted module calling every pyflm op, and compare its
outputs with the same module run in Python."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import pyflm

TOOLS = Path(__file__).resolve().parents[1] / "csrc" / "tools"


class AllOps(torch.nn.Module):
    """forward() takes no input (the C++ runner passes none): inputs are buffers."""

    def __init__(self, coords: torch.Tensor, block: torch.nn.Module):
        super().__init__()
        self.register_buffer("coords", coords)
        self.block = block

    def forward(self):
        maps, mask = torch.ops.pyflm.heatmap_targets(self.coords, None, 32, 24, 1.5, "gaussian", True)
        k = self.coords.size(1)
        refined = self.block(maps[:, :k])
        soft, conf = torch.ops.pyflm.soft_argmax(refined, 0.1)
        dark, score = torch.ops.pyflm.argmax_decode(refined, "dark")
        return maps, mask, refined, soft, conf, dark, score


@pytest.fixture(scope="module")
def runner(tmp_path_factory) -> Path:
    if shutil.which("cmake") is None or shutil.which("c++") is None:
        pytest.skip("needs cmake and a C++ compiler")
    build = tmp_path_factory.mktemp("tools-build")
    prefix = torch.utils.cmake_prefix_path
    cfg = subprocess.run(
        ["cmake", "-S", str(TOOLS), "-B", str(build), f"-DCMAKE_PREFIX_PATH={prefix}",
         "-DCMAKE_BUILD_TYPE=Release"],
        capture_output=True, text=True,
    )
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    bld = subprocess.run(["cmake", "--build", str(build), "-j2"], capture_output=True, text=True)
    assert bld.returncode == 0, bld.stdout + bld.stderr
    return build / "run_scripted"


def test_cpp_program_matches_python(compiled, runner, tmp_path):
    k = 5
    coords = torch.rand(2, k, 2) * torch.tensor([20.0, 28.0]) + 2
    block = pyflm.DilatedSkipBlock(channels=k, growth=3, dilations=(1, 2, 4))
    module = torch.jit.script(AllOps(coords, block).eval())
    model_path = tmp_path / "all_ops.pt"
    module.save(str(model_path))
    out_path = tmp_path / "out.pkl"

    run = subprocess.run(
        [str(runner), str(pyflm.library_path()), str(model_path), str(out_path)],
        capture_output=True, text=True,
    )
    assert run.returncode == 0, run.stderr
    assert '"version": "%s"' % pyflm.__version__ in run.stderr
    from_cpp = torch.load(out_path, weights_only=True)
    with torch.no_grad():
        from_python = module()
    assert len(from_cpp) == len(from_python) == 7
    for a, b in zip(from_cpp, from_python):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_cpp_program_reports_missing_library(runner, tmp_path):
    run = subprocess.run(
        [str(runner), str(tmp_path / "nope.so"), str(tmp_path / "m.pt"), str(tmp_path / "o.pkl")],
        capture_output=True, text=True,
    )
    assert run.returncode == 2
    assert "cannot load op library" in run.stderr


def test_cpp_program_reports_bad_model(compiled, runner, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    run = subprocess.run(
        [str(runner), str(pyflm.library_path()), str(bad), str(tmp_path / "o.pkl")],
        capture_output=True, text=True,
    )
    assert run.returncode == 1
    assert "run_scripted:" in run.stderr
    assert not (tmp_path / "o.pkl").exists()
