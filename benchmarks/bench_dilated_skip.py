"""Benchmark: pyflm.dilated_skip_block (DilatedSkipBlock) vs DilatedSkipReference
(nn.Conv2d + torch.cat + ReLU), forward-only and forward + backward, plus the
peak memory of one forward + backward.

Peak memory: each variant runs in a fresh subprocess that runs one tiny
warm-up step (library and thread-pool initialisation), builds the module and
the input, resets its RSS high-water mark (/proc/self/clear_refs), records its
resident set size, runs one forward + backward, and reports the new
high-water mark (VmHWM) minus that RSS. That covers every allocation of the step (saved activations,
workspaces, gradients), measured the same way for both variants. On CUDA it
uses ``torch.cuda.max_memory_allocated`` deltas instead.

    python -m benchmarks.bench_dilated_skip [--device cpu|cuda] [--quick]
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import torch

from benchmarks import common

ROOT = Path(__file__).resolve().parent.parent


def _make(variant: str, shape, device: str, dtype=torch.float32, requires_grad=True):
    from pyflm.ops.dilated_skip import DilatedSkipBlock, DilatedSkipReference

    torch.manual_seed(0)
    ref = DilatedSkipReference(shape[1])
    mod = ref if variant == "reference" else DilatedSkipBlock(shape[1])
    mod.load_state_dict(ref.state_dict())
    mod = mod.to(device=device, dtype=dtype)
    x = torch.randn(*shape, device=device, dtype=dtype, requires_grad=requires_grad)
    g = torch.randn(*shape, device=device, dtype=dtype)
    return mod, x, g


def _status_bytes(key: str) -> int:
    """A ``/proc/self/status`` memory line (VmRSS, VmHWM) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def measure_peak(variant: str, shape, device: str) -> dict:
    """One forward + backward in this process; call in a fresh process.

    A tiny warm-up step first loads the lazily initialised parts (oneDNN/MKL
    kernels, OpenMP and autograd threads) so they are not charged to the step.
    The peak is VmHWM (this process's own RSS high-water mark), reset just
    before the step through /proc/self/clear_refs. (``ru_maxrss`` is not
    usable here: Linux carries the parent's peak RSS across fork + exec.)"""
    tiny_mod, tiny_x, tiny_g = _make(variant, (1, shape[1], 8, 8), device)
    tiny_mod(tiny_x).backward(tiny_g)
    del tiny_mod, tiny_x, tiny_g
    mod, x, g = _make(variant, shape, device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        mod(x).backward(g)
        torch.cuda.synchronize()
        return {"peak_bytes": torch.cuda.max_memory_allocated() - before, "method": "cuda max_memory_allocated"}
    import gc

    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        reset = True
    except OSError:
        reset = False
    before = _status_bytes("VmRSS")
    hwm_before = _status_bytes("VmHWM")
    mod(x).backward(g)
    peak = _status_bytes("VmHWM")
    return {
        "peak_bytes": peak - before,
        "rss_before": before,
        "hwm_before": hwm_before,
        "hwm_reset": reset,
        "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "method": "VmHWM (reset) - VmRSS before the step, fresh process after a tiny warm-up",
    }


def _peak_in_subprocess(variant: str, shape, device: str) -> dict:
    code = (
        "import json, sys; from benchmarks.bench_dilated_skip import measure_peak; "
        f"print(json.dumps(measure_peak({variant!r}, {tuple(shape)!r}, {device!r})))"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(device: str = "cpu", quick: bool = False) -> list[dict]:
    shape = (2, 68, 32, 32) if quick else (8, 68, 64, 64)
    min_run_time = 0.5 if quick else 1.0
    warmup = 2 if quick else 1
    machine = common.machine()
    records = []

    mods = {v: _make(v, shape, device) for v in ("reference", "op")}

    def fwd(v):
        mod, x, _ = mods[v]

        def f():
            with torch.no_grad():
                mod(x)
            common.sync(device)

        return f

    def fwd_bwd(v):
        mod, x, g = mods[v]

        def f():
            x.grad = None
            mod.zero_grad(set_to_none=True)
            mod(x).backward(g)
            common.sync(device)

        return f

    for name, maker in (("forward", fwd), ("forward+backward", fwd_bwd)):
        t_ref = common.median_seconds(maker("reference"), min_run_time=min_run_time, warmup=warmup)
        t_op = common.median_seconds(maker("op"), min_run_time=min_run_time, warmup=warmup)
        records.append(
            {
                "op": "dilated_skip_block",
                "case": name,
                "device": device,
                "shape": list(shape),
                "dtype": "float32",
                "dilations": [1, 1, 2, 4, 8, 16, 32],
                "ref_ms": t_ref * 1e3,
                "op_ms": t_op * 1e3,
                "ratio": t_ref / t_op,
                "machine": machine,
            }
        )
    mods.clear()  # free the timed modules before the memory runs

    peaks = {v: _peak_in_subprocess(v, shape, device) for v in ("reference", "op")}
    records.append(
        {
            "op": "dilated_skip_block",
            "case": "peak memory fwd+bwd",
            "device": device,
            "shape": list(shape),
            "dtype": "float32",
            "ref_mb": peaks["reference"]["peak_bytes"] / 2**20,
            "op_mb": peaks["op"]["peak_bytes"] / 2**20,
            "mem_ratio": peaks["op"]["peak_bytes"] / peaks["reference"]["peak_bytes"],
            "method": peaks["op"]["method"],
            "details": peaks,
            "machine": machine,
        }
    )
    return records


COLUMNS = ["case", "shape", "ref_ms", "op_ms", "ratio", "ref_mb", "op_mb", "mem_ratio"]


def main(argv: list[str] | None = None) -> None:
    common.bench_main("dilated_skip", run, COLUMNS, argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
