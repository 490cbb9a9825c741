"""Landmark accuracy metrics: NME, failure rate, CED curve and AUC.

Definitions (per image, with predictions p_i and ground truth g_i, i over the
evaluated points P):

    NME = mean_{i in P} ||p_i - g_i||_2 / d

with the normaliser d from the ground truth:

* ``norm="corners"`` (default): distance between the scheme's outer eye
  corners (points 36 and 45 for 68 points, 60 and 72 for WFLW, 8 and 9 for
  COFW);
* ``norm="pupils"``: distance between the eye centroids (mean of 36-41 and of
  42-47 for 68 points; the annotated pupils for WFLW/COFW);
* ``norm="box"``: sqrt(w * h) of the ground-truth box (given, or the bounding
  box of the ground-truth landmarks);
* an array of per-image distances (e.g. AFLW's stored ``box_size``).

Failure rate at t: the fraction of images with NME > t.

CED(t): the fraction of images with NME <= t (a right-continuous step function).
AUC at T: the area under the CED from 0 to T divided by T, so a perfect
method scores 1. ``method="exact"`` (default) integrates the step function
exactly: AUC_T = mean_k max(0, 1 - NME_k / T). ``method="trapezoid"`` uses the
trapezoid rule on the grid 0, h, 2h, ..., T (``step`` h, default T / 1000),
as many published evaluation scripts do; per image it differs from the
exact value by at most h / (2T) (an NME exactly on a grid point gains h / (2T)),
so the two agree to 5e-4 at the default step.

Inputs are [B, N, 2] or [N, 2] arrays (NumPy, or anything np.asarray takes,
e.g. CPU tensors); everything is computed in float64.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from pyflm.data.schemes import get_scheme

__all__ = [
    "normalizer",
    "nme",
    "eye_anchor_nme",
    "failure_rate",
    "ced_curve",
    "auc",
    "evaluate",
    "plot_ced",
    "format_table",
]

DEFAULT_FR_THRESHOLDS = (0.08, 0.10)
DEFAULT_AUC_THRESHOLDS = (0.07, 0.08, 0.10)


def _batch(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[-1] != 2:
        raise ValueError(f"{name} must be [B, N, 2] or [N, 2], got {a.shape}")
    return a


def normalizer(gt, norm="corners", scheme="68", boxes=None) -> np.ndarray:
    """Per-image normalising distance [B] (see the module docstring).
    ``boxes``: [B, 4] as (x_min, y_min, x_max, y_max), only for ``norm="box"``."""
    g = _batch(gt, "gt")
    if not isinstance(norm, str):
        d = np.asarray(norm, dtype=np.float64).reshape(-1)
        if d.shape != (len(g),):
            raise ValueError(f"norm given as {d.size} distances for {len(g)} images")
    elif norm == "corners":
        sch = get_scheme(scheme)
        _check_points(g, sch)
        a, b = sch.norm_indices
        d = np.linalg.norm(g[:, a] - g[:, b], axis=-1)
    elif norm == "pupils":
        sch = get_scheme(scheme)
        _check_points(g, sch)
        left, right = sch.pupil_groups
        d = np.linalg.norm(g[:, list(left)].mean(1) - g[:, list(right)].mean(1), axis=-1)
    elif norm == "box":
        if boxes is None:
            lo, hi = g.min(axis=1), g.max(axis=1)
        else:
            bx = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
            if len(bx) != len(g):
                raise ValueError(f"boxes has {len(bx)} rows for {len(g)} images")
            lo, hi = bx[:, :2], bx[:, 2:]
        wh = hi - lo
        d = np.sqrt(wh[:, 0] * wh[:, 1])
    else:
        raise ValueError(f"norm must be 'corners', 'pupils', 'box' or per-image distances, got {norm!r}")
    if np.any(~(d > 0)):
        raise ValueError(f"zero or invalid normalising distance ({norm}) for images {np.nonzero(~(d > 0))[0].tolist()}")
    return d


def _check_points(g: np.ndarray, sch) -> None:
    if g.shape[1] != sch.num_points:
        raise ValueError(f"scheme {sch.name} expects {sch.num_points} points, got {g.shape[1]}")


def nme(pred, gt, norm="corners", scheme="68", boxes=None, points=None) -> np.ndarray:
    """Per-image NME [B] (a fraction, not %). ``points``: indices to average
    over (default all); the normaliser always uses the full ground truth."""
    p, g = _batch(pred, "pred"), _batch(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred {p.shape} and gt {g.shape} differ in shape")
    d = normalizer(g, norm, scheme, boxes)
    err = np.linalg.norm(p - g, axis=-1)
    if points is not None:
        err = err[:, list(points)]
    return err.mean(axis=1) / d


def eye_anchor_nme(pred, gt, scheme="68", norm="corners") -> np.ndarray:
    """NME over the eye-anchor points only (36-47 for 68 points), per image."""
    return nme(pred, gt, norm=norm, scheme=scheme, points=get_scheme(scheme).eye_anchor)


def failure_rate(nmes, threshold: float = 0.08) -> float:
    """Fraction of images with NME strictly above ``threshold``."""
    e = np.asarray(nmes, dtype=np.float64).ravel()
    if e.size == 0:
        raise ValueError("no NME values")
    return float(np.mean(e > threshold))


def ced_curve(nmes, max_threshold: float = 0.10, num: int = 1001) -> tuple[np.ndarray, np.ndarray]:
    """(thresholds, fraction of images with NME <= threshold) on
    ``linspace(0, max_threshold, num)``."""
    e = np.sort(np.asarray(nmes, dtype=np.float64).ravel())
    if e.size == 0:
        raise ValueError("no NME values")
    t = np.linspace(0.0, max_threshold, num)
    return t, np.searchsorted(e, t, side="right") / e.size


def auc(nmes, threshold: float = 0.08, method: str = "exact", step: float | None = None) -> float:
    """Area under the CED from 0 to ``threshold``, divided by ``threshold``
    (in [0, 1]); see the module docstring for both methods."""
    e = np.asarray(nmes, dtype=np.float64).ravel()
    if e.size == 0:
        raise ValueError("no NME values")
    if not threshold > 0:
        raise ValueError("threshold must be > 0")
    if method == "exact":
        return float(np.mean(np.clip(1.0 - e / threshold, 0.0, 1.0)))
    if method == "trapezoid":
        h = threshold / 1000 if step is None else float(step)
        num = int(round(threshold / h)) + 1
        t, f = ced_curve(e, threshold, num)
        return float(np.sum((f[1:] + f[:-1]) * np.diff(t)) / 2 / threshold)
    raise ValueError(f"method must be 'exact' or 'trapezoid', got {method!r}")


def evaluate(pred, gt, norm="corners", scheme="68", boxes=None,
             fr_thresholds: Sequence[float] = DEFAULT_FR_THRESHOLDS,
             auc_thresholds: Sequence[float] = DEFAULT_AUC_THRESHOLDS) -> dict[str, float]:
    """{"nme", "eye_nme" (68/98/29 points), "fr@t", "auc@t"} for a set of
    images (fractions, not %); also "n" and the per-image values in "per_image"."""
    e = nme(pred, gt, norm, scheme, boxes)
    out: dict = {"n": int(e.size), "nme": float(e.mean())}
    try:
        eye_norm = "corners" if isinstance(norm, str) and norm == "box" else norm
        out["eye_nme"] = float(eye_anchor_nme(pred, gt, scheme, eye_norm).mean())
    except ValueError:
        pass
    for t in fr_thresholds:
        out[f"fr@{t:g}"] = failure_rate(e, t)
    for t in auc_thresholds:
        out[f"auc@{t:g}"] = auc(e, t)
    out["per_image"] = e
    return out


def plot_ced(curves: Mapping[str, Sequence[float]], path, max_threshold: float = 0.10,
             title: str | None = None, dpi: int = 120) -> Path:
    """Write a CED plot (PNG) of {label: per-image NMEs} to ``path``. Needs
    matplotlib (imported here, with the non-interactive Agg backend)."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("pyflm.metrics.plot_ced needs the 'matplotlib' package: pip install matplotlib") from None
    path = Path(path)
    fig, ax = plt.subplots(figsize=(5, 4))
    try:
        for label, e in curves.items():
            t, f = ced_curve(e, max_threshold)
            ax.plot(t, f, label=f"{label} (AUC {auc(e, max_threshold):.3f})")
        ax.set_xlim(0, max_threshold)
        ax.set_ylim(0, 1)
        ax.set_xlabel("NME")
        ax.set_ylabel("fraction of images")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right")
        if title:
            ax.set_title(title)
        fig.tight_layout()
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)
    return path


def format_table(results: Mapping[str, Mapping[str, float]], columns: Sequence[str] | None = None,
                 percent: Sequence[str] | bool = True, digits: int = 2, style: str = "markdown",
                 row_header: str = "Method") -> str:
    """Format {row: {column: value}} as a Table-2-style table (methods as rows,
    e.g. columns "common", "challenging", "full" of NME).

    ``percent``: True scales every column by 100, False none, or a list of the
    column names to scale. Missing values print as "-". ``style`` is
    "markdown" or "text" (aligned plain columns).
    """
    rows = list(results)
    if columns is None:
        columns = []
        for r in rows:
            for c in results[r]:
                if c not in columns and c != "per_image":
                    columns.append(c)
    scale_cols = set(columns) if percent is True else (set() if percent is False else set(percent))

    def cell(r, c):
        v = results[r].get(c)
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return "-"
        if isinstance(v, (int, np.integer)) and not isinstance(v, bool) and c not in scale_cols:
            return str(v)
        return f"{float(v) * (100 if c in scale_cols else 1):.{digits}f}"

    header = [row_header] + [f"{c} (%)" if c in scale_cols else c for c in columns]
    body = [[str(r)] + [cell(r, c) for c in columns] for r in rows]
    if style == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * len(columns)) + "|"]
        lines += ["| " + " | ".join(b) + " |" for b in body]
        return "\n".join(lines)
    if style == "text":
        widths = [max(len(x[i]) for x in [header] + body) for i in range(len(header))]
        fmt = lambda row: "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths)))
        return "\n".join([fmt(header), "  ".join("-" * w for w in widths)] + [fmt(b) for b in body])
    raise ValueError(f"style must be 'markdown' or 'text', got {style!r}")
