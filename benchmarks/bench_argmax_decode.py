"""Benchmark pyflm.argmax_decode (compiled op) against its eager reference.

    python -m benchmarks.bench_argmax_decode [--device cpu|cuda] [--quick]

Times each refine mode at [64, 68, 64, 64] (float32 and float16) with
benchmarks.common.median_seconds; ratio = reference_time / op_time. On CUDA a
larger batch [256, 98, 64, 64] is timed too. torch.amax over each map (one
read of the data) is timed as the memory-bound floor. Results go to
benchmarks/results/argmax_decode_<device>.jsonl.
"""

from __future__ import annotations


import torch

from benchmarks import common
from pyflm.ops.argmax_decode import argmax_decode_reference

MODES = ("none", "quarter", "dark")


def _maps(shape, dtype, device):
    # Blurred noise: realistic smooth maps with an interior peak per channel.
    h = torch.rand(shape, device=device, dtype=torch.float32)
    h = torch.nn.functional.avg_pool2d(h.flatten(0, 1).unsqueeze(1), 5, 1, 2).view(shape)
    return h.to(dtype)


def run(device: str = "cpu", quick: bool = False) -> list[dict]:
    if not hasattr(torch.ops.pyflm, "argmax_decode"):
        raise RuntimeError("pyflm compiled ops are not loaded; build them first")
    op = torch.ops.pyflm.argmax_decode
    min_run_time = 0.2 if quick else 1.0
    cases = [((64, 68, 64, 64), torch.float32), ((64, 68, 64, 64), torch.float16)]
    if device.startswith("cuda"):
        cases.append(((256, 98, 64, 64), torch.float32))
        cases.append(((256, 98, 64, 64), torch.float16))
    if quick:
        cases = [((8, 68, 64, 64), dt) for _, dt in cases[:2]]
    facts = common.machine()
    records = []
    for shape, dtype in cases:
        h = _maps(shape, dtype, device)
        for refine in MODES:
            # Same answer first, so the timing compares like with like.
            got = op(h, refine)
            want = argmax_decode_reference(h, refine)
            torch.testing.assert_close(got[1], want[1])
            t_op = common.median_seconds(lambda: op(h, refine), min_run_time=min_run_time)
            t_ref = common.median_seconds(lambda: argmax_decode_reference(h, refine), min_run_time=min_run_time)
            # One read of the data (torch.amax per map): the memory-bound floor.
            t_floor = common.median_seconds(lambda: h.flatten(2).amax(-1), min_run_time=min_run_time)
            records.append(
                {
                    "op": "argmax_decode",
                    "device": device,
                    "shape": list(shape),
                    "dtype": str(dtype).replace("torch.", ""),
                    "refine": refine,
                    "op_ms": t_op * 1e3,
                    "ref_ms": t_ref * 1e3,
                    "ratio": t_ref / t_op,
                    "amax_ms": t_floor * 1e3,
                    "op_vs_amax": t_op / t_floor,
                    "GB_per_s": h.numel() * h.element_size() / t_op / 1e9,
                    **facts,
                }
            )
    return records


COLUMNS = ["shape", "dtype", "refine", "op_ms", "ref_ms", "ratio", "amax_ms", "op_vs_amax", "GB_per_s"]


def main(argv: list[str] | None = None) -> None:
    common.bench_main("argmax_decode", run, COLUMNS, argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
