"""Float32 against int8: the bundled networks' ONNX graphs on ONNX Runtime, batch 1.

    python -m benchmarks.int8_latency [--models default fast] [--threads 1 2] [--rounds 5]

Each model's ONNX graph (``pyflm.onnx_backend.onnx_bytes``: uint8 crops in,
decoded points out) is quantized with ONNX Runtime's static quantizer
(``onnxruntime.quantization.quantize_static``: per-channel int8 weights, uint8
activations, Conv layers only, so the soft-argmax decoding stays float32;
after its ``quant_pre_process``) in the QDQ and the QOperator format, calibrated on 16 random crops (the timing
does not depend on the values; ``max_px_vs_float32`` says how far the int8
graphs' points move on such a crop, a check that they run the same network).
Each round times every variant once
(median of ``--runs`` calls after a warm-up), so a slow spell of a shared VM
hits all of them alike; the table gives the median of the round medians and the
median paired ratio to float32. Writes JSON with the machine and versions
(atomically) to ``benchmarks/results/int8_latency.json``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import machine, markdown_table

RESULTS = Path(__file__).resolve().parent / "results" / "int8_latency.json"


def _graphs(model: str, folder: Path) -> tuple[int, dict[str, Path]]:
    """The float32 and the two int8 graphs of ``model`` (written to ``folder``)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from pyflm import deploy
    from pyflm.onnx_backend import onnx_bytes

    predictor = deploy.build_predictor(deploy.load_model_file(deploy.model_path(model)))
    s = predictor.input_size
    f32 = folder / f"{Path(model).stem}.onnx"
    f32.write_bytes(onnx_bytes(predictor))

    class Crops(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.it = iter([{"crops": rng.integers(0, 256, (1, s, s, 3), dtype=np.uint8)} for _ in range(16)])

        def get_next(self):
            return next(self.it, None)

    prep = folder / f"{f32.stem}-prep.onnx"  # the quantizer's recommended pre-processing (folds constant biases)
    quant_pre_process(str(f32), str(prep), skip_symbolic_shape=True)
    out = {"float32": f32}
    for name, fmt in (("int8 QDQ", QuantFormat.QDQ), ("int8 QOperator", QuantFormat.QOperator)):
        path = folder / f"{f32.stem}-{fmt.name}.onnx"
        quantize_static(str(prep), str(path), Crops(), quant_format=fmt, per_channel=True, op_types_to_quantize=["Conv"],
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        out[name] = path
    return s, out


def measure(model: str, threads: int, rounds: int, runs: int, folder: Path) -> list[dict]:
    import onnxruntime as ort

    s, graphs = _graphs(model, folder)
    sessions = {}
    for name, path in graphs.items():
        o = ort.SessionOptions()
        o.intra_op_num_threads, o.inter_op_num_threads = threads, 1
        sessions[name] = ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])
    x = {"crops": np.random.default_rng(1).integers(0, 256, (1, s, s, 3), dtype=np.uint8)}
    ref = sessions["float32"].run(None, x)[0]
    max_px = {n: float(np.abs(sess.run(None, x)[0] - ref).max()) for n, sess in sessions.items()}
    per_round: dict[str, list[float]] = {n: [] for n in sessions}
    for _ in range(rounds):
        for name, sess in sessions.items():
            for _ in range(max(runs // 5, 5)):
                sess.run(None, x)
            ts = []
            for _ in range(runs):
                t0 = time.perf_counter()
                sess.run(None, x)
                ts.append(time.perf_counter() - t0)
            per_round[name].append(1e3 * float(np.median(ts)))
    base = np.array(per_round["float32"])
    return [{"model": model, "threads": threads, "graph": n, "ms_per_face": round(float(np.median(v)), 3),
             "ratio_to_float32": round(float(np.median(np.array(v) / base)), 3),
             "max_px_vs_float32": round(max_px[n], 3),
             "round_medians_ms": [round(t, 3) for t in v]} for n, v in per_round.items()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.int8_latency", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["default", "fast"], help="bundled names or model files")
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--runs", type=int, default=200, help="timed calls per variant and round")
    p.add_argument("--out", default=str(RESULTS))
    a = p.parse_args(argv)
    import logging

    from pyflm.deploy import ModelFileError

    logging.getLogger().setLevel(logging.ERROR)  # the quantizer's "consider pre-processing" notices
    try:
        with tempfile.TemporaryDirectory() as tmp:
            rows = [r for m in a.models for t in a.threads for r in measure(m, t, a.rounds, a.runs, Path(tmp))]
    except ModelFileError as e:
        p.error(f"--models: {e}")
    print(markdown_table(rows, ["model", "threads", "graph", "ms_per_face", "ratio_to_float32", "max_px_vs_float32"]))
    import onnxruntime

    from pyflm.io import write_json_atomic

    write_json_atomic(a.out, {"what": " ".join(__doc__.split("\n\n")[1].split()), "machine": machine(),
                              "onnxruntime": onnxruntime.__version__, "rounds": a.rounds, "runs": a.runs,
                              "results": rows})
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
