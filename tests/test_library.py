"""The op library loads, reports its build, and the fallback path works."""

import json
import os
import subprocess
import sys

import torch

import pyflm


def test_build_info_reports_facts(compiled):
    info = pyflm.build_info()
    assert info["compiled"] is True
    assert info["version"] == pyflm.__version__
    assert info["torch_version"] == torch.__version__.split("+")[0]
    assert isinstance(info["with_cuda"], bool)
    assert info["num_threads"] == torch.get_num_threads()
    assert (info["cuda_arch_list"] != "") == info["with_cuda"]
    assert pyflm.library_path().exists()


def test_build_info_op_is_json_and_scriptable(compiled):
    @torch.jit.script
    def facts() -> str:
        return torch.ops.pyflm.build_info()

    assert json.loads(facts())["version"] == pyflm.__version__


def test_poison_fixture_fills_fresh_allocations(poison):
    # The fixture the op tests rely on to catch unwritten outputs.
    assert torch.empty(16).isnan().all()


def test_disabled_library_falls_back_with_one_warning():
    code = (
        "import warnings, torch, pyflm\n"
        "assert not pyflm.HAS_OPS\n"
        "h = torch.randn(2, 3, 8, 8)\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    a = pyflm.soft_argmax(h)\n"
        "    b = pyflm.soft_argmax(h)\n"
        "msgs = [str(x.message) for x in w if 'reference' in str(x.message)]\n"
        "assert len(msgs) == 1, msgs\n"
        "print('ok')\n"
    )
    env = dict(os.environ, PYFLM_DISABLE_OPS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
