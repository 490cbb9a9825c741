"""Every op against its plain-PyTorch reference, in one run.

    python -m benchmarks.run_ops [--device cpu|cuda] [--quick]

Each bench_<op> module prints its own table and writes
benchmarks/results/<op>_<device>.jsonl; this runs them all in sequence.
:func:`run_all` gives the same rows to other reports (the peers comparison
puts them in peers.json)."""

from __future__ import annotations

import argparse
import importlib

OPS = ["soft_argmax", "argmax_decode", "heatmap_targets", "dilated_skip"]


def run_all(device: str = "cpu", quick: bool = False) -> dict[str, dict]:
    """{op: {"columns": the module's table columns, "rows": its records}}."""
    out = {}
    for op in OPS:
        module = importlib.import_module(f"benchmarks.bench_{op}")
        out[op] = {"columns": list(module.COLUMNS), "rows": module.run(device, quick)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes, short timings")
    args = parser.parse_args()
    for op in OPS:
        print(f"\n=== {op} ({args.device})")
        module = importlib.import_module(f"benchmarks.bench_{op}")
        module.main(["--device", args.device] + (["--quick"] if args.quick else []))


if __name__ == "__main__":
    main()
