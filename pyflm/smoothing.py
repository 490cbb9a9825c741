"""Temporal smoothing of landmarks in video: the One Euro filter.

Casiez, Roussel, Vogel, "1 Euro Filter: A Simple Speed-based Low-pass Filter
for Noisy Input in Interactive Systems", CHI 2012. An exponential low-pass
filter whose cutoff rises with the signal's speed: still points are smoothed
hard (little jitter), fast motion little (little lag).

    cutoff = min_cutoff + beta * |dx/dt (smoothed with d_cutoff)|
    alpha  = 1 / (1 + tau / dt),   tau = 1 / (2 pi cutoff)
    x_hat  = alpha * x + (1 - alpha) * x_hat_prev

Every element of the array (e.g. each x and y of [68, 2] landmarks) is
filtered independently, vectorised. Units: ``min_cutoff`` and ``d_cutoff`` in
Hz, ``beta`` in 1 / (signal unit), i.e. per pixel for pixel coordinates.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["OneEuroFilter"]


def _alpha(cutoff, dt: float):
    tau = 1.0 / (2.0 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """One Euro filter over arrays of any (fixed) shape.

    ``f(x, t=None)`` returns the filtered value, float64 with x's shape.
    ``t`` is the sample time in seconds; when None, the previous time plus
    ``1 / fps`` (so a plain frame-by-frame call treats samples as ``fps``
    frames per second; the first sample is at t = 0). The first sample after
    construction or ``reset()`` is returned unchanged. A ``t`` not later than
    the previous one (dt <= 0) raises ValueError: timestamps must increase
    (repeated frames should be skipped or given their own later time).
    Non-finite samples and a change of shape raise ValueError.
    """

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.05, d_cutoff: float = 1.0, fps: float = 30.0):
        for name, v in (("min_cutoff", min_cutoff), ("d_cutoff", d_cutoff), ("fps", fps)):
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive finite number, got {v}")
        if not (math.isfinite(beta) and beta >= 0):
            raise ValueError(f"beta must be a finite number >= 0, got {beta}")
        self.min_cutoff = float(min_cutoff)
        self.beta = float(beta)
        self.d_cutoff = float(d_cutoff)
        self.fps = float(fps)
        self.reset()

    def reset(self) -> None:
        """Forget the history: the next sample is returned unchanged."""
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None
        self._t: float | None = None

    def __call__(self, x, t: float | None = None) -> np.ndarray:
        x = np.array(x, dtype=np.float64, copy=True)
        if not np.all(np.isfinite(x)):
            raise ValueError("OneEuroFilter: sample holds NaN or inf values")
        if t is not None:
            t = float(t)
            if not math.isfinite(t):
                raise ValueError(f"OneEuroFilter: time must be finite, got {t}")
        if self._x is None:
            self._x, self._dx = x, np.zeros_like(x)
            self._t = 0.0 if t is None else t
            return x.copy()
        if x.shape != self._x.shape:
            raise ValueError(f"OneEuroFilter: sample shape {x.shape} differs from the first sample's {self._x.shape}; "
                             "call reset() to start a new track")
        if t is None:
            t = self._t + 1.0 / self.fps
        dt = t - self._t
        if not dt > 0:
            raise ValueError(f"OneEuroFilter: time must increase, got t={t} after t={self._t} (dt={dt})")
        a_d = _alpha(self.d_cutoff, dt)
        dx = a_d * ((x - self._x) / dt) + (1.0 - a_d) * self._dx
        cutoff = self.min_cutoff + self.beta * np.abs(dx)
        a = _alpha(cutoff, dt)
        x_hat = a * x + (1.0 - a) * self._x
        self._x, self._dx, self._t = x_hat, dx, t
        return x_hat.copy()
