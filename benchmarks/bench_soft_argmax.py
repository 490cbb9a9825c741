"""Benchmark pyflm.soft_argmax (forward and backward) against its eager reference.

    python -m benchmarks.bench_soft_argmax [--device cpu|cuda] [--quick]

ratio = reference_time / op_time (> 1: the fused op is faster). The reference is
the plain-PyTorch softmax + weighted sums (pyflm.ops.soft_argmax_reference) run
eagerly; its backward is autograd's.
"""

from __future__ import annotations


import torch

from benchmarks import common
from pyflm.ops.soft_argmax import soft_argmax_reference

COLUMNS = ["case", "shape", "dtype", "op_ms", "ref_ms", "ratio"]


def _cases(device: str, quick: bool) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    if device.startswith("cuda"):
        shapes = [(64, 68, 64, 64)] if quick else [(64, 68, 64, 64), (256, 98, 64, 64)]
    else:
        shapes = [(8, 68, 64, 64)] if quick else [(64, 68, 64, 64)]
    cases = []
    for shape in shapes:
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            cases.append(("forward", shape, dtype))
        cases.append(("backward", shape, torch.float32))
    return cases


def run(device: str = "cpu", quick: bool = False) -> list[dict]:
    import pyflm

    if not pyflm.HAS_OPS:
        raise RuntimeError(f"pyflm compiled ops are not loaded: {pyflm._library.LOAD_ERROR}")
    min_run_time = 0.2 if quick else 1.0
    machine = common.machine()
    rows = []
    for case, shape, dtype in _cases(device, quick):
        h = torch.randn(shape, device=device).mul_(3).to(dtype)
        if case == "forward":
            def op():
                return torch.ops.pyflm.soft_argmax(h, 1.0)

            def ref():
                return soft_argmax_reference(h, 1.0)
        else:
            # Backward only: the graphs are built once and replayed.
            h_op = h.clone().requires_grad_()
            h_ref = h.clone().requires_grad_()
            c_op, _ = torch.ops.pyflm.soft_argmax(h_op, 1.0)
            c_ref, _ = soft_argmax_reference(h_ref, 1.0)
            g = torch.randn_like(c_op)

            def op():
                return torch.autograd.grad(c_op, h_op, g, retain_graph=True)

            def ref():
                return torch.autograd.grad(c_ref, h_ref, g, retain_graph=True)

        t_op = common.median_seconds(op, min_run_time=min_run_time)
        common.sync(device)
        t_ref = common.median_seconds(ref, min_run_time=min_run_time)
        rows.append(
            dict(
                op="soft_argmax",
                case=case,
                device=device,
                shape="x".join(map(str, shape)),
                dtype=str(dtype).replace("torch.", ""),
                temperature=1.0,
                op_ms=t_op * 1e3,
                ref_ms=t_ref * 1e3,
                ratio=t_ref / t_op,
                machine=machine,
            )
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    common.bench_main("soft_argmax", run, COLUMNS, argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
