"""Faces per second of a landmark predictor against batch size.

    python -m benchmarks.throughput --device cuda                # the GPU run (all models, modes, dtypes)
    python -m benchmarks.throughput --device cpu --quick         # a smoke check here

Each row is one model, mode, dtype and batch size. The predictor runs end to
end on the device, from uint8 crops to coordinates: normalisation, network,
decoding (the pyflm ops). Modes:

* ``eager``: the predictor as it is (``torch.inference_mode``);
* ``compiled``: ``torch.compile(predictor)`` (one compile per batch size; the
  compile time is not timed, it is reported);
* ``cudagraph``: the eager predictor captured once per batch size into a
  ``torch.cuda.CUDAGraph`` on a static input and replayed (CUDA only).

Dtypes: ``fp32``, and ``bf16`` (``torch.autocast``; decoding accumulates in
fp32). Before timing, every mode's landmarks are checked against eager fp32 on
the same crops (``max_px``: the largest difference, in crop pixels), so a fast
row that computes something else is visible (for the untrained ``dsc`` its
flat maps make bf16's ``max_px`` large: read it for ``default``).

Models: ``default`` (the bundled model), ``dsc`` (paper 2's FC-DenseNet56 +
dilated skip convolution at 256x256, random weights: throughput does not
depend on them). Timing: ``torch.utils.benchmark`` medians (it synchronises
CUDA). Prints a table, writes ``benchmarks/results/throughput_<device>.jsonl``
with the machine and versions. The issue's target is >= 20,000 faces/s for the
default model on an H100.
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext

import torch

from benchmarks import common

COLUMNS = ["model", "mode", "dtype", "batch", "faces_per_s", "ms_per_batch", "max_px", "compile_s"]
MODELS = ("default", "dsc")
MODES = ("eager", "compiled", "cudagraph")
DTYPES = ("fp32", "bf16")


def build_predictor(name: str, device: str):
    from pyflm import deploy

    if name == "default":
        mf = deploy.load_model_file(deploy.default_model_path())
    elif name == "dsc":
        from pyflm.tasks import build_task

        task = build_task("dsc", num_landmarks=68, input_size=256)
        meta = deploy.default_meta("dsc", 256, 68, getattr(task.model, "output_stride", None))
        mf = {"format": deploy.MODEL_FORMAT, "version": deploy.MODEL_VERSION, "task": "dsc",
              "model_kwargs": {"num_landmarks": 68, "input_size": 256}, "state_dict": task.model.state_dict(),
              "meta": meta}
    else:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return deploy.build_predictor(mf).to(device).eval()


def _autocast(device: str, dtype: str):
    if dtype == "fp32":
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def _runner(predictor, mode: str, dtype: str, x: torch.Tensor):
    """(a no-argument callable returning (coords, scores) for ``x``, compile seconds or None)."""
    device = x.device.type

    def eager():
        with torch.inference_mode(), _autocast(device, dtype):
            return predictor(x)

    if mode == "eager":
        return eager, None
    if mode == "compiled":
        compiled = torch.compile(predictor)

        def run():
            with torch.inference_mode(), _autocast(device, dtype):
                return compiled(x)

        t0 = time.perf_counter()
        run()
        common.sync(device)
        return run, time.perf_counter() - t0
    if mode == "cudagraph":
        if device != "cuda":
            raise ValueError("cudagraph needs a CUDA device")
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):  # warm-up off the capture stream (allocator, cuDNN autotuning)
                eager()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = eager()

        def replay():
            graph.replay()
            return out

        return replay, None
    raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")


def run(device: str = "cpu", quick: bool = False, models=MODELS, modes=None, dtypes=DTYPES,
        batches=None) -> list[dict]:
    torch.manual_seed(0)
    cuda = device.startswith("cuda")
    modes = modes or (MODES if cuda else ("eager",))
    batches = batches or ((1, 8, 64) if quick else (1, 8, 32, 64, 128, 256, 512))
    min_run_time = 0.2 if quick else 1.0
    machine = common.machine()
    rows = []
    for name in models:
        predictor = build_predictor(name, device)
        s = predictor.input_size
        for batch in batches:
            x = torch.randint(0, 256, (batch, s, s, 3), dtype=torch.uint8, device=device)
            with torch.inference_mode():
                want = predictor(x)[0].float()
            for mode in modes:
                for dtype in dtypes:
                    fn, compile_s = _runner(predictor, mode, dtype, x)
                    got = fn()[0].float()
                    max_px = float((got - want).abs().max()) if batch else 0.0
                    t = common.median_seconds(fn, min_run_time=min_run_time)
                    rows.append(dict(model=name, mode=mode, dtype=dtype, batch=batch, device=device,
                                     input_size=s, faces_per_s=batch / t, ms_per_batch=t * 1e3, max_px=max_px,
                                     compile_s=compile_s, machine=machine))
                    print(common.markdown_table(rows[-1:], COLUMNS).splitlines()[-1], flush=True)
            del x
            if cuda:
                torch.cuda.empty_cache()
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="batch sizes 1, 8, 64 and short timings")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--modes", nargs="+", default=None, choices=MODES,
                   help="default: all three on CUDA, eager on the CPU")
    p.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
    p.add_argument("--batches", nargs="+", type=int, default=None, help="batch sizes (default 1 to 512)")
    p.add_argument("--out", default=None, help="JSON lines file (default benchmarks/results/throughput_<device>.jsonl)")
    a = p.parse_args(argv)
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    if "cudagraph" in (a.modes or ()) and not a.device.startswith("cuda"):
        p.error("--modes cudagraph needs --device cuda")
    if a.batches and min(a.batches) < 1:
        p.error("--batches must be >= 1")
    print("| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS))
    rows = run(a.device, a.quick, a.models, a.modes, a.dtypes, a.batches)
    dev = torch.device(a.device).type
    path = common.write_jsonl(a.out or common.RESULTS_DIR / f"throughput_{dev}.jsonl", rows)
    best = {}
    for r in rows:
        key = r["model"]
        if r["faces_per_s"] > best.get(key, {}).get("faces_per_s", 0):
            best[key] = r
    for name, r in best.items():
        print(f"best {name}: {r['faces_per_s']:.4g} faces/s ({r['mode']}, {r['dtype']}, batch {r['batch']})")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
