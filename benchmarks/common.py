"""Shared benchmark plumbing: timing with torch.utils.benchmark (warm-up, medians),
machine facts, a printed table and JSON lines written atomically."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Callable

import torch
import torch.utils.benchmark as tb

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    """Facts that make a timing meaningful later."""
    import pyflm

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyflm": pyflm.__version__,
        "pyflm_compiled": pyflm.HAS_OPS,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def load_model_files(parser, models: list[str]) -> dict:
    """``{name: loaded model file}`` for a benchmark's ``--models``, each read once; a
    missing or damaged file is a one-line ``parser.error`` before any long work."""
    from pyflm import deploy

    files = {}
    for m in models:
        try:
            files[m] = deploy.load_model_file(deploy.model_path(m))
        except deploy.ModelFileError as e:
            parser.error(f"--models: {e}")
    return files


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_seconds(fn: Callable[[], object], *, min_run_time: float = 1.0, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` in seconds, after ``warmup`` untimed calls.

    torch.utils.benchmark.Timer synchronises CUDA itself and runs enough
    blocks to fill ``min_run_time``."""
    for _ in range(warmup):
        fn()
    timer = tb.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(columns, widths)))


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    """``rows`` as a markdown table of ``columns`` (floats to 4 significant digits)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def write_jsonl(path: Path | str, records: list[dict]) -> Path:
    """Write ``records`` (one JSON object a line) atomically: temp file + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            for r in records:
                f.write(json.dumps(r, sort_keys=True) + "\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def bench_main(op: str, run: Callable[[str, bool], list[dict]], columns: list[str],
               argv: list[str] | None, description: str) -> None:
    """The command line every bench_<op> module shares: --device, --quick; runs
    ``run(device, quick)``, prints ``columns`` and writes results/<op>_<device>.jsonl."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="small sizes, short timings")
    args = parser.parse_args(argv)
    records = run(args.device, args.quick)
    print_table(records, columns)
    path = write_jsonl(RESULTS_DIR / f"{op}_{args.device}.jsonl", records)
    print(f"wrote {path}")
