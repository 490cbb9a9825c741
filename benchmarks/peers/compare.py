"""pyflm against dlib and OpenCV's LBF on the 300-W common / HELEN test / LFPW test faces.

    bash benchmarks/peers/setup_env.sh                  # once: the peers' venv .venv-peers
    python -m benchmarks.peers.compare                  # full run (all faces)
    python -m benchmarks.peers.compare --quick          # ~50 faces, smoke check
    python -m benchmarks.peers.compare --methods dlib,lbf --pyflm-model paper=runs/x/model.pt

Every method sees identical faces and these kinds of box:

* ``gt``: the tight box of the 68 ground-truth landmarks. pyflm takes it as is
  (``box_type="tight"``); dlib and LBF expect their own detector's boxes, so the
  tight box goes through a fixed linear map to such a box (``BoxMap``, fitted on
  the 300-W *train* images, stored in box_maps.json, refit with --fit-box-maps).
* ``own``: each method's own detector (dlib: HOG frontal face detector,
  upsampling 1; LBF: OpenCV Haar cascade haarcascade_frontalface_alt2; pyflm:
  its default detector), matched to the annotated face by IoU with its tight box
  (>= MATCH_MIN_IOU). A face without a match is a detection miss: counted, and
  left out of the NME/FR/AUC.
* ``hog`` (pyflm rows, when dlib runs too): dlib's own detections, the very
  boxes dlib's row used, read with the model's ``"dlib-hog"`` crop rule (and the
  refinement rounds of its settings): both landmarkers on identical detector
  boxes. Faces dlib missed are misses here too.

Own detectors miss different faces, so besides each method's NME over the faces
it found, the report gives every method's NME over the faces *all* the own
detectors found ("found by all" rows, ``shared_summary``).

Each method runs in a subprocess (peer_worker.py): dlib and LBF with the peers'
venv, pyflm with this Python. Latency: per-face landmark time and per-image
detection + landmark time, medians over ``--timing-faces`` faces, with 1 and 2
threads (OMP/OpenBLAS/MKL env vars, cv2.setNumThreads, torch.set_num_threads).
Peak RSS: the worker's VmHWM in the 1-thread timing run (it includes Python,
NumPy and OpenCV for reading images, the "start" value in peers.json).

Kernels: the op library's microbenchmarks (benchmarks.run_ops: each op against its
plain-PyTorch reference, ratio in the same run) run after the methods, on this
machine, in the same report (``--kernels quick``, the default; ``full`` for the
sizes of ``python -m benchmarks.run_ops``; ``off``).

Writes <out>/peers.json (atomic: results, kernels, machine, versions, date),
<out>/ced.png and prints the tables (markdown) that the README quotes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import deque
from pathlib import Path

import numpy as np
from tqdm import tqdm

from benchmarks.common import markdown_table
from benchmarks.peers.evaluation import (
    MATCH_MIN_IOU,
    BoxMap,
    accuracy_summary,
    accuracy_table,
    latency_summary,
    match_detection,
    shared_summary,
    speed_table,
    write_json_atomic,
)
from pyflm import deploy
from pyflm.data import tight_box

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
WORKER = HERE / "peer_worker.py"
BOX_MAPS = HERE / "box_maps.json"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "peers"
PEER_METHODS = ("dlib", "lbf")
HOG_BOX_TYPE = "dlib-hog"  # the crop rule pyflm's model files carry for dlib's HOG boxes
# "youtube": the YouTube Faces frames of ../shared/data, which neither pyflm's bundled models nor,
# as far as is known, dlib's or LBF's were trained on (pyflm's never: they were its check set)
SPLIT_PARTS = {"common": ("helen-test", "lfpw-test"), "helen": ("helen-test",), "lfpw": ("lfpw-test",),
               "youtube": ("youtube-train",)}
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS")


def peers_python(arg: str | None) -> Path:
    """The peers' venv Python: --peers-python, $PYFLM_PEERS_VENV/bin/python or <repo>/.venv-peers."""
    if arg:
        p = Path(arg)
    else:
        venv = os.environ.get("PYFLM_PEERS_VENV") or str(REPO / ".venv-peers")
        p = Path(venv) / "bin" / "python"
    if not p.exists():
        raise FileNotFoundError(f"peers' Python not found at {p}: run `bash benchmarks/peers/setup_env.sh` "
                                "(or pass --peers-python)")
    return p


# ---------------------------------------------------------------- running workers


def run_worker(python, job: dict, desc: str, workdir: Path) -> dict:
    """Run peer_worker.py with ``python`` on ``job`` in a subprocess with
    ``job["threads"]`` threads; returns its result plus "child_maxrss_kb"
    (ru_maxrss of that child from os.wait4). Raises RuntimeError with the
    worker's last stderr lines when it fails."""
    workdir.mkdir(parents=True, exist_ok=True)
    fd, job_path = tempfile.mkstemp(dir=workdir, prefix="job-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(job, f)
    out_path = Path(job_path).with_name(Path(job_path).name.replace("job-", "result-"))
    env = dict(os.environ)
    env.update({v: str(job.get("threads", 1)) for v in THREAD_VARS})
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    cmd = [str(python), str(WORKER), "--job", job_path, "--out", str(out_path), "--progress"]
    tail: deque[str] = deque(maxlen=30)
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # disable=None: a bar on a terminal, none in logs
    with tqdm(total=len(job["items"]), desc=desc, unit="img", leave=False, disable=None) as bar:
        for line in proc.stderr:
            if line.startswith("@progress "):
                bar.n = int(line.split()[1])
                bar.refresh()
            else:
                tail.append(line.rstrip())
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    try:
        if proc.returncode != 0:
            raise RuntimeError(f"{desc}: worker exited with {proc.returncode}: " + "\n".join(tail))
        result = json.loads(out_path.read_text())
    finally:
        for p in (Path(job_path), out_path):
            p.unlink(missing_ok=True)
    result["child_maxrss_kb"] = usage.ru_maxrss
    return result


# ---------------------------------------------------------------- faces and box maps


def load_faces(splits: list[str], quick: bool, root=None, stride: int = 1) -> list[dict]:
    """Test faces of the union of ``splits`` as {"id", "image", "gt" [68, 2], "part"}.
    ``quick``: every k-th face, about 25 per test set; ``stride``: every stride-th face."""
    return load_faces_of_parts(sorted({part for s in splits for part in SPLIT_PARTS[s]}), quick, root, stride)


def load_faces_of_parts(parts: list[str], quick: bool, root=None, stride: int = 1) -> list[dict]:
    """Faces of pyflm.data split names (e.g. "helen-test"); see load_faces."""
    from pyflm.data.splits import load_split

    faces = []
    for part in parts:
        samples = load_split(part, root=root)[::stride]
        if quick:
            samples = samples[:: max(1, len(samples) // 25)][:25]
        for s in samples:
            faces.append({"id": f"{part}/{s.image_path.stem}", "image": str(s.image_path), "gt": s.landmarks,
                          "part": part})
    return faces


def load_box_maps(path: Path = BOX_MAPS) -> dict[str, BoxMap]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return {k: BoxMap.from_dict(v) for k, v in data.get("maps", {}).items()}


def fit_box_maps(methods: list[str], python, quick: bool, workdir: Path, root=None) -> dict:
    """Run each peer's own detector on the 300-W train images and fit the
    tight-box -> detector-box map on the matched faces; writes box_maps.json."""
    from pyflm.data.splits import load_split

    samples = load_split("300w-train", root=root)
    if quick:
        samples = samples[:: max(1, len(samples) // 100)]
    data = json.loads(BOX_MAPS.read_text()) if BOX_MAPS.is_file() else {"maps": {}, "fitted": {}}
    for m in methods:
        items = [{"id": str(i), "image": str(s.image_path), "detect": True} for i, s in enumerate(samples)]
        res = run_worker(python, {"method": m, "threads": 2, "items": items, "warmup": 1},
                         f"{m} fit box map (train)", workdir)
        tight, native, preds = [], [], []
        for s, it in zip(samples, res["items"]):
            tb = tight_box(s.landmarks)
            k = match_detection(tb, [f["box"] for f in it["faces"]])
            preds.append(None if k is None else np.asarray(it["faces"][k]["landmarks"]))
            if k is not None:
                tight.append(tb)
                native.append(it["faces"][k]["box"])
        bm = BoxMap.fit(tight, native)
        # the method's accuracy on the train images, own detector: a method trained
        # on these images does about as well here as on the test images
        train = accuracy_summary(preds, [s.landmarks for s in samples])
        train.pop("per_image")
        data["maps"][m] = bm.to_dict()
        data["fitted"][m] = {"images": len(samples), "matched": len(tight), "versions": res["versions"],
                             "options": res["options"], "split": "300w-train", "train_accuracy_own": train}
        print(f"{m}: box map fitted on {len(tight)}/{len(samples)} train faces, mean IoU {bm.mean_iou:.3f}; "
              f"NME on these train faces (own detector) {100 * train['nme']:.2f}%")
    write_json_atomic(BOX_MAPS, data)
    return data


def train_check(methods: list[str], python, quick: bool, workdir: Path, root=None) -> dict:
    """Own-detector accuracy of each peer on the HELEN and LFPW *train* faces,
    to set beside its test numbers: a model that never saw the test faces does
    worse on them than on its training faces; no gap suggests it saw them."""
    out = {}
    for m in methods:
        out[m] = {}
        for part in ("helen-train", "lfpw-train"):
            faces = load_faces_of_parts([part], quick, root)
            items = [{"id": f["id"], "image": f["image"], "detect": True} for f in faces]
            res = run_worker(python, {"method": m, "threads": 2, "items": items, "warmup": 1},
                             f"{m} {part} (train check)", workdir)
            acc = accuracy_summary(predictions("own", faces, res), [f["gt"] for f in faces])
            acc.pop("per_image")
            out[m][part] = acc
            print(f"{m} {part}: NME {100 * acc['nme']:.2f}% over {acc['n'] - acc['misses']} detected faces")
    return out


# ---------------------------------------------------------------- one method


def method_jobs(kind: str, faces: list[dict], box_map: BoxMap | None) -> dict[str, list[dict]]:
    """Job items for the two box sources. ``kind``: "peer" (boxes mapped to the
    detector's kind) or "pyflm" (tight boxes)."""
    gt_items = []
    for f in faces:
        tb = tight_box(f["gt"])
        if kind == "pyflm":
            gt_items.append({"id": f["id"], "image": f["image"], "boxes": [tb.tolist()], "box_type": "tight"})
        else:
            gt_items.append({"id": f["id"], "image": f["image"], "boxes": [box_map(tb).tolist()],
                             "box_type": "native"})
    own_items = [{"id": f["id"], "image": f["image"], "detect": True} for f in faces]
    return {"gt": gt_items, "own": own_items}


def hog_items(faces: list[dict], boxes: list) -> list[dict]:
    """Job items giving pyflm dlib's boxes (``boxes``: per face dlib's matched
    detection, or None where dlib missed it: no item)."""
    return [{"id": f["id"], "image": f["image"], "boxes": [list(b[:4])], "box_type": HOG_BOX_TYPE}
            for f, b in zip(faces, boxes) if b is not None]


def matched(faces: list[dict], result: dict) -> list:
    """Own-detector result -> per face (box, [68, 2] landmarks) of the detection
    matched to it, or None (no matching detection)."""
    by_id = {it["id"]: it for it in result["items"]}
    out = []
    for f in faces:
        it = by_id[f["id"]]
        if it.get("error"):
            raise RuntimeError(f"{result['method']}: {it['error']}")
        k = match_detection(tight_box(f["gt"]), [fc["box"] for fc in it["faces"]])
        out.append(None if k is None else (it["faces"][k]["box"], np.asarray(it["faces"][k]["landmarks"])))
    return out


def predictions(source: str, faces: list[dict], result: dict) -> list:
    """Per face the [68, 2] landmarks, or None (own detector: no matching
    detection; "hog": a face dlib missed, which has no item)."""
    if source == "own":
        return [None if m is None else m[1] for m in matched(faces, result)]
    by_id = {it["id"]: it for it in result["items"]}
    out = []
    for f in faces:
        it = by_id.get(f["id"])
        if it is None and source == "hog":
            out.append(None)
            continue
        if it.get("error"):
            raise RuntimeError(f"{result['method']}: {it['error']}")
        out.append(np.asarray(it["faces"][0]["landmarks"]))
    return out


def has_hog_rule(model: str) -> bool:
    """Whether pyflm model ``model`` (a bundled name or a file) has a crop rule for dlib's boxes."""
    try:
        return HOG_BOX_TYPE in deploy.load_model_file(deploy.model_path(model))["meta"]["crop"].get("boxes", {})
    except deploy.ModelFileError:
        return False


def evaluate_method(label: str, kind: str, python, options: dict, faces: list[dict], splits: list[str],
                    box_map: BoxMap | None, timing_faces: int, workdir: Path, hog_boxes: list | None = None) -> dict:
    """Accuracy (gt and own boxes, and dlib's ``hog_boxes`` when given) per
    split, latency (1 and 2 threads), RSS, model size, and the own detector's
    box matched to each face ("own_boxes", None where missed)."""
    jobs = method_jobs(kind, faces, box_map)
    if hog_boxes is not None:
        jobs["hog"] = hog_items(faces, hog_boxes)
    method = "pyflm" if kind == "pyflm" else label
    acc, raw, own_boxes = {}, {}, None
    for source in jobs:
        raw[source] = run_worker(python, {"method": method, "threads": 1, "options": options,
                                          "items": jobs[source]}, f"{label} {source} boxes", workdir)
        if source == "own":  # the matched detections give the landmarks and the boxes
            found = matched(faces, raw[source])
            preds = [None if m is None else m[1] for m in found]
            own_boxes = [None if m is None else m[0] for m in found]
        else:
            preds = predictions(source, faces, raw[source])
        for s in splits:
            keep = [i for i, f in enumerate(faces) if f["part"] in SPLIT_PARTS[s]]
            acc[f"{s}/{source}"] = accuracy_summary([preds[i] for i in keep], [faces[i]["gt"] for i in keep])
    # timing: the same evenly spread faces for both thread counts, own detector
    step = max(1, len(faces) // timing_faces)
    timed_items = jobs["own"][::step][:timing_faces]
    speed = {}
    for threads in (1, 2):
        r = run_worker(python, {"method": method, "threads": threads, "options": options, "items": timed_items,
                                "warmup": 3}, f"{label} timing {threads} thr", workdir)
        speed[f"lat{threads}"] = latency_summary(r["items"])
        if threads == 1:
            # VmHWM of the worker, not the child's ru_maxrss: Linux's ru_maxrss of a
            # child started by fork/vfork + exec includes the parent's pages at the
            # fork (here the parent's ~290 MB), so it cannot tell the methods apart
            speed["rss_mb"] = r["rss_kb"]["peak"] / 1024
            speed["rss_kb"] = {**r["rss_kb"], "child_ru_maxrss": r["child_maxrss_kb"]}
    files = raw["gt"]["model_files"]
    landmark_file = next((v for k, v in files.items() if k != "haar_cascade"), None)
    speed["model_mb"] = landmark_file["bytes"] / 2**20 if landmark_file else None
    return {"label": label, "method": method, "options": options, "versions": raw["gt"]["versions"],
            "model_files": files, "accuracy": acc, "speed": speed,
            "box_map": box_map.to_dict() if box_map else None, "own_boxes": own_boxes}


def pyflm_available() -> str | None:
    """None if pyflm.FaceLandmarker exists, else why not."""
    import pyflm

    if not hasattr(pyflm, "FaceLandmarker"):
        return f"pyflm {pyflm.__version__} has no FaceLandmarker yet (the inference API); pyflm rows skipped"
    return None


# ---------------------------------------------------------------- report


SOURCE_NAMES = {"gt": "gt boxes", "own": "own boxes", "hog": "dlib HOG boxes", "shared": "own boxes, found by all"}


def source_summary(r: dict, key: str) -> dict | None:
    """r's accuracy for "<split>/<source>"; dlib's "hog" boxes are its own."""
    split, _, source = key.partition("/")
    if source == "hog" and r["method"] == "dlib":
        return r["accuracy"].get(f"{split}/own")
    return r["accuracy"].get(key)


def present_sources(results: list[dict], splits: list[str]) -> list[str]:
    """The box sources some result has (dlib's "hog" rows only beside pyflm's)."""
    return [src for src in SOURCE_NAMES if any(f"{s}/{src}" in r["accuracy"] for r in results for s in splits)]


def add_shared(results: list[dict], splits: list[str]) -> None:
    """r["accuracy"]["<split>/shared"]: each method over the faces all own detectors
    found (set anew: a result list reported again gets no stale rows)."""
    for s in splits:
        for r in results:
            r["accuracy"].pop(f"{s}/shared", None)
        own = {i: r["accuracy"][f"{s}/own"] for i, r in enumerate(results)
               if "per_face" in r["accuracy"].get(f"{s}/own", {})}
        if len(own) < 2:
            continue
        for i, summary in shared_summary(own).items():
            results[i]["accuracy"][f"{s}/shared"] = summary


def report(results: list[dict], splits: list[str], out: Path, meta: dict) -> dict:
    add_shared(results, splits)
    acc_rows = {}
    for source in present_sources(results, splits):
        for r in results:
            for s in splits:
                summary = source_summary(r, f"{s}/{source}")
                if summary is not None:
                    acc_rows[f"{r['label']}, {s}, {SOURCE_NAMES[source]}"] = summary
    speed_rows = {r["label"]: r["speed"] for r in results}
    tables = {"accuracy": accuracy_table(acc_rows), "speed": speed_table(speed_rows)}
    kernels = meta.get("kernels") or {}
    if kernels.get("ops"):
        tables["kernels"] = "\n\n".join(f"{op}:\n\n" + markdown_table(k["rows"], k["columns"])
                                        for op, k in kernels["ops"].items())
    ced_path = plot_ced_grid(results, splits, out / "ced.png") if results else None
    doc = {**meta, "tables": tables, "methods": results, "ced_png": str(ced_path) if ced_path else None}
    write_json_atomic(out / "peers.json", doc)
    return doc


def plot_ced_grid(results: list[dict], splits: list[str], path: Path) -> Path:
    """One PNG: a CED panel per (split, box source), one curve per method in the
    same colour in every panel, and one legend below them all (AUC and misses
    are in the table)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from pyflm.metrics import ced_curve

    sources = present_sources(results, splits)
    colours = plt.get_cmap("tab10").colors
    legend_rows = (len(results) + 1) // 2
    size = (4.2 * len(splits), 3.4 * len(sources) + 0.3 * legend_rows)
    fig, axes = plt.subplots(len(sources), len(splits), figsize=size, squeeze=False)
    try:
        handles = {}
        for j, s in enumerate(splits):
            for i, src in enumerate(sources):
                ax = axes[i][j]
                for k, r in enumerate(results):
                    a = source_summary(r, f"{s}/{src}")
                    if not a or not a["per_image"]:
                        continue
                    t, f = ced_curve(a["per_image"], 0.10)  # detected faces, as in the table
                    (line,) = ax.plot(t, f, color=colours[k % len(colours)], linestyle="-" if k < 10 else "--")
                    handles.setdefault(r["label"], line)
                ax.set_title(f"{s}, {SOURCE_NAMES[src]}", fontsize=10)
                ax.set_xlim(0, 0.10)
                ax.set_ylim(0, 1)
                ax.grid(True, alpha=0.3)
                ax.set_xlabel("NME (outer eye corners)")
                ax.set_ylabel("fraction of faces")
                if not ax.lines:
                    ax.text(0.05, 0.5, "no detected faces", transform=ax.transAxes)
        bottom = 0.3 * legend_rows / fig.get_figheight() + 0.02
        if handles:
            fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=2, fontsize=9, frameon=False)
        fig.tight_layout(rect=(0, bottom, 1, 1))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
        os.close(fd)
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
    return path


# ---------------------------------------------------------------- CLI


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--quick", action="store_true", help="~50 faces, short timing: a smoke check")
    p.add_argument("--splits", default="common,helen,lfpw",
                   help="comma list of common, helen, lfpw, youtube (the YouTube Faces frames: held out for pyflm)")
    p.add_argument("--stride", type=int, default=1, metavar="K",
                   help="every K-th face of each split (default 1: all; e.g. 5 for the 3,462 YouTube frames)")
    p.add_argument("--methods", default="pyflm,dlib,lbf", help="comma list of pyflm, dlib, lbf")
    p.add_argument("--pyflm-backend", nargs="+", default=["onnxruntime"], choices=("torch", "onnxruntime"),
                   help="FaceLandmarker backends to run pyflm's models with, one row each (default: onnxruntime, "
                        "what backend='auto' picks on the CPU for the bundled models)")
    p.add_argument("--pyflm-bundled", nargs="*", default=None, metavar="NAME",
                   help="bundled pyflm models to evaluate (default: every one whose file is installed: "
                        "default, fast)")
    p.add_argument("--pyflm-options", nargs="+", default=["plain"], metavar="OPTS",
                   help='FaceLandmarker settings, a row each (per backend): "plain" (its defaults: no flip test, '
                        'refine="auto") or "+"-joined "flip" (flip_test=True) and "refine=N" (N in 0..10 or auto), '
                        'e.g. flip+refine=1 (default: plain)')
    p.add_argument("--pyflm-model", action="append", default=[], metavar="LABEL=PATH",
                   help="also evaluate this pyflm model file (repeatable)")
    p.add_argument("--kernels", choices=("quick", "full", "off"), default="quick",
                   help="the op library's microbenchmarks in the same report (default: quick sizes)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for peers.json and ced.png")
    p.add_argument("--peers-python", help="Python of the peers' venv (default <repo>/.venv-peers/bin/python)")
    p.add_argument("--timing-faces", type=int, default=None, help="faces timed per thread count (default 200)")
    p.add_argument("--fit-box-maps", action="store_true", help="refit box_maps.json on the 300-W train images")
    p.add_argument("--train-check", action="store_true",
                   help="also score dlib and LBF (own detector) on the HELEN and LFPW train faces")
    p.add_argument("--data-root", help="data root (default: pyflm's, ../shared/data)")
    a = p.parse_args(argv)
    a.splits = [s.strip() for s in a.splits.split(",") if s.strip()]
    bad = [s for s in a.splits if s not in SPLIT_PARTS]
    if bad or not a.splits:
        p.error(f"--splits: unknown {bad}; choose from {sorted(SPLIT_PARTS)}")
    a.methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    bad = [m for m in a.methods if m not in ("pyflm",) + PEER_METHODS]
    if bad:
        p.error(f"--methods: unknown {bad}; choose from pyflm, dlib, lbf")
    models = []
    for spec in a.pyflm_model:
        label, sep, path = spec.partition("=")
        if not sep or not label or not path:
            p.error(f"--pyflm-model wants LABEL=PATH, got {spec!r}")
        if not Path(path).is_file():
            p.error(f"--pyflm-model {label}: no such file {path}")
        models.append((label, path))
    a.pyflm_models = models
    if a.pyflm_bundled is None:
        a.pyflm_bundled = [n for n in deploy.BUNDLED_MODELS if deploy.bundled_model_path(n).is_file()] or ["default"]
    bad = [n for n in a.pyflm_bundled if n not in deploy.BUNDLED_MODELS]
    if bad:
        p.error(f"--pyflm-bundled: unknown {bad}; choose from {', '.join(deploy.BUNDLED_MODELS)}")
    try:
        a.pyflm_settings = [parse_pyflm_options(spec) for spec in a.pyflm_options]
    except ValueError as e:
        p.error(f"--pyflm-options: {e}")
    if a.stride < 1:
        p.error(f"--stride must be >= 1, got {a.stride}")
    if a.timing_faces is None:
        a.timing_faces = 50 if a.quick else 200
    return a


def parse_pyflm_options(spec: str) -> dict:
    """ "plain" | "+"-joined "flip" and "refine=N" (N in 0..10 or "auto") ->
    {"flip_test": bool, "refine": int or "auto"}; "plain" is FaceLandmarker's defaults."""
    out = {"flip_test": False, "refine": "auto"}
    if spec == "plain":
        return out
    for part in spec.split("+"):
        name, _, value = part.partition("=")
        if part == "flip":
            out["flip_test"] = True
        elif name == "refine" and value == "auto":
            out["refine"] = value
        elif name == "refine" and value.isdigit() and 0 <= int(value) <= 10:
            out["refine"] = int(value)
        else:
            raise ValueError(f"{spec!r}: {part!r} is not flip or refine=N (N in 0..10 or auto)")
    return out


def pyflm_rows(label: str, model: str, a) -> list[tuple[str, dict]]:
    """(row label, PyflmMethod options) for one pyflm model: one row per
    ``--pyflm-backend`` and ``--pyflm-options`` setting."""
    rows = []
    for backend in a.pyflm_backend:
        for opts in a.pyflm_settings:
            tags = (([backend] if backend != "torch" else []) + (["flip test"] if opts["flip_test"] else [])
                    + ([f"refine {opts['refine']}"] if opts["refine"] != "auto" else []))
            suffix = f" ({', '.join(tags)})" if tags else ""
            rows.append((f"pyflm {label}{suffix}", {"model": model, "backend": backend, **opts}))
    return rows


def run_kernels(mode: str) -> dict | None:
    """benchmarks.run_ops on the CPU (``mode`` quick or full), or None for off;
    {"mode", "ops": {op: {"columns", "rows"}}} or {"mode", "error"} when the op
    library is missing."""
    if mode == "off":
        return None
    from benchmarks.run_ops import run_all

    print(f"kernels: benchmarks.run_ops ({mode}) on the CPU")
    try:
        return {"mode": mode, "ops": run_all("cpu", quick=mode == "quick")}
    except RuntimeError as e:  # no compiled op library
        return {"mode": mode, "error": str(e)}


def main(argv=None) -> int:
    a = parse_args(argv)
    from benchmarks.common import machine

    peers = [m for m in a.methods if m in PEER_METHODS]
    py_peers = peers_python(a.peers_python) if peers else None
    try:
        faces = load_faces(a.splits, a.quick, a.data_root, a.stride)
    except FileNotFoundError as e:  # a split's folder is missing under the data root
        print(f"benchmarks.peers.compare: error: {e}", file=sys.stderr)
        return 2
    todo = []  # (label, kind, python, options)
    skipped = {}
    why = pyflm_available() if ("pyflm" in a.methods or a.pyflm_models) else None
    if why:
        print(why)
        skipped["pyflm"] = why
    else:
        models = ([(name, name) for name in a.pyflm_bundled] if "pyflm" in a.methods else [])
        models += [(label, str(Path(path).resolve())) for label, path in a.pyflm_models]
        for label, model in models:
            todo += [(row, "pyflm", sys.executable, opts) for row, opts in pyflm_rows(label, model, a)]
    todo += [(m, "peer", py_peers, {}) for m in peers]
    print(f"{len(faces)} faces ({', '.join(a.splits)}); timing on {min(a.timing_faces, len(faces))} faces; "
          f"methods: {', '.join(t[0] for t in todo) or 'none'}")

    load_before = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="pyflm-peers-"))
    results, checked = [], None
    try:
        box_maps = load_box_maps()
        missing = [m for m in peers if m not in box_maps]
        if a.fit_box_maps or missing:
            fit_box_maps(peers if a.fit_box_maps else missing, py_peers, a.quick, workdir, a.data_root)
            box_maps = load_box_maps()
        done, hog = {}, None
        # the peers first: dlib's detections are the "hog" boxes of the pyflm rows
        for i in sorted(range(len(todo)), key=lambda i: todo[i][1] == "pyflm"):
            label, kind, python, options = todo[i]
            with_hog = hog if kind == "pyflm" and hog is not None and has_hog_rule(options["model"]) else None
            if kind == "pyflm" and hog is not None and with_hog is None:
                print(f"{label}: its model has no {HOG_BOX_TYPE!r} crop rule; no dlib HOG box rows")
            done[i] = evaluate_method(label, kind, python, options, faces, a.splits,
                                      box_maps.get(label) if kind == "peer" else None, a.timing_faces, workdir,
                                      hog_boxes=with_hog)
            if label == "dlib":
                hog = done[i]["own_boxes"]
        results = [done[i] for i in range(len(todo))]
        if a.train_check and peers:
            checked = train_check(peers, py_peers, a.quick, workdir, a.data_root)
        kernels = run_kernels(a.kernels)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    meta = {"machine": machine(), "command": " ".join(["python -m benchmarks.peers.compare"] + list(
                sys.argv[1:] if argv is None else argv)),
            "quick": a.quick, "stride": a.stride, "splits": a.splits, "faces": len(faces), "skipped": skipped,
            "match_min_iou": MATCH_MIN_IOU, "load_average": {"before": load_before, "after": os.getloadavg()},
            "train_check": checked, "kernels": kernels}
    doc = report(results, a.splits, a.out, meta)
    print("\nAccuracy (NME normalised by the outer eye corners; over detected faces):\n")
    print(doc["tables"]["accuracy"])
    print("\nSpeed and memory (medians; this machine, see peers.json 'machine'):\n")
    print(doc["tables"]["speed"])
    if doc["tables"].get("kernels"):
        print("\nKernels: each pyflm op against its plain-PyTorch reference (ratio = reference / op, same run):\n")
        print(doc["tables"]["kernels"])
    print(f"\nwrote {a.out / 'peers.json'}" + (f" and {doc['ced_png']}" if doc["ced_png"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
