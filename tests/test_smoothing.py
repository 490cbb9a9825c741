"""pyflm.smoothing.OneEuroFilter."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pyflm.smoothing import OneEuroFilter


@pytest.fixture
def rng():
    return np.random.default_rng()


def _scalar_reference(xs, ts, min_cutoff, beta, d_cutoff):
    """Straight scalar transcription of Casiez et al.'s pseudo-code."""
    def alpha(c, dt):
        r = 2 * math.pi * c * dt
        return r / (r + 1)

    out, x_prev, dx_prev = [xs[0]], xs[0], 0.0
    for i in range(1, len(xs)):
        dt = ts[i] - ts[i - 1]
        dx = (xs[i] - x_prev) / dt
        dx_hat = alpha(d_cutoff, dt) * dx + (1 - alpha(d_cutoff, dt)) * dx_prev
        c = min_cutoff + beta * abs(dx_hat)
        x_hat = alpha(c, dt) * xs[i] + (1 - alpha(c, dt)) * x_prev
        out.append(x_hat)
        x_prev, dx_prev = x_hat, dx_hat
    return np.array(out)


def test_matches_scalar_reference_elementwise(rng):
    n = 40
    ts = np.cumsum(rng.uniform(0.01, 0.05, n))
    xs = rng.normal(0, 5, (n, 3, 2)).cumsum(axis=0)
    f = OneEuroFilter(min_cutoff=0.7, beta=0.3, d_cutoff=1.3)
    got = np.stack([f(x, t) for x, t in zip(xs, ts)])
    for idx in np.ndindex(3, 2):
        want = _scalar_reference(xs[(slice(None),) + idx], ts, 0.7, 0.3, 1.3)
        np.testing.assert_allclose(got[(slice(None),) + idx], want, rtol=1e-12, atol=1e-12)


def test_first_sample_returned_unchanged_and_shape_preserved(rng):
    x = rng.normal(size=(68, 2)).astype(np.float32)
    f = OneEuroFilter()
    y = f(x)
    assert y.shape == (68, 2) and y.dtype == np.float64
    np.testing.assert_array_equal(y, x.astype(np.float64))
    assert f(x).shape == (68, 2)
    assert OneEuroFilter()(3.5).shape == () and float(OneEuroFilter()([1.0, 2.0])[1]) == 2.0


def test_output_is_a_copy(rng):
    x = rng.normal(size=(4, 2))
    f = OneEuroFilter()
    y = f(x)
    y[:] = 1e9
    x[:] = -1e9
    z = f(np.zeros((4, 2)))
    assert np.all(np.abs(z) < 1e3)


def test_constant_input_stays_constant(rng):
    c = rng.normal(size=(5, 2)) * 100
    f = OneEuroFilter(min_cutoff=0.5, beta=1.0)
    for _ in range(50):
        np.testing.assert_allclose(f(c), c, rtol=0, atol=1e-9)


def test_step_converges_monotonically():
    f = OneEuroFilter(min_cutoff=1.0, beta=0.0, fps=30)
    f(np.zeros(2))
    ys = np.array([f(np.full(2, 10.0))[0] for _ in range(150)])
    assert np.all(np.diff(ys) > 0) and np.all(ys < 10.0)
    assert ys[0] < 5.0  # smoothed, not passed through
    assert abs(ys[-1] - 10.0) < 1e-3


def test_beta_reduces_lag_on_a_ramp():
    lags = []
    for beta in (0.0, 0.5):
        f = OneEuroFilter(min_cutoff=1.0, beta=beta, fps=30)
        for i in range(60):
            y = f(np.array([i * 2.0]))  # 60 px/s ramp
        lags.append(118.0 - float(y[0]))
    assert lags[1] < 0.5 * lags[0]


def test_noise_variance_reduced(rng):
    truth = np.array([[100.0, 50.0]] * 3)
    f = OneEuroFilter(min_cutoff=1.0, beta=0.01, fps=30)
    noisy = truth + rng.normal(0, 2.0, (300, 3, 2))
    out = np.stack([f(x) for x in noisy])[50:]  # after the start-up
    assert out.var(axis=0).mean() < 0.2 * noisy[50:].var(axis=0).mean()
    assert np.abs(out.mean(axis=0) - truth).max() < 1.0


def test_reset(rng):
    f = OneEuroFilter()
    f(np.zeros(3))
    f(np.ones(3))
    x = rng.normal(size=3)
    f.reset()
    np.testing.assert_array_equal(f(x), x)
    f.reset()
    np.testing.assert_array_equal(f(np.zeros((2, 2))), np.zeros((2, 2)))  # new shape allowed after reset


def test_timestamps_vs_frame_count():
    a = OneEuroFilter(fps=25)
    b = OneEuroFilter(fps=1000)  # fps unused when t is given
    xs = [np.array([v]) for v in (0.0, 3.0, 1.0, 4.0)]
    ya = [a(x) for x in xs]
    yb = [b(x, t=1.0 + i / 25) for i, x in enumerate(xs)]
    np.testing.assert_allclose(np.concatenate(ya), np.concatenate(yb), rtol=1e-12)
    # None after explicit times continues at +1/fps
    c = OneEuroFilter(fps=25)
    c(xs[0], t=7.0)
    c(xs[1])
    assert math.isclose(c._t, 7.04)


def test_non_increasing_time_raises():
    f = OneEuroFilter()
    f(np.zeros(2), t=1.0)
    with pytest.raises(ValueError, match="increase"):
        f(np.ones(2), t=1.0)
    with pytest.raises(ValueError, match="increase"):
        f(np.ones(2), t=0.5)
    with pytest.raises(ValueError, match="finite"):
        f(np.ones(2), t=float("nan"))
    np.testing.assert_array_equal(f(np.zeros(2), t=1.1), np.zeros(2))  # state intact after the errors


def test_bad_samples_and_parameters():
    f = OneEuroFilter()
    f(np.zeros((68, 2)))
    with pytest.raises(ValueError, match=r"shape \(67, 2\)"):
        f(np.zeros((67, 2)))
    with pytest.raises(ValueError, match="NaN or inf"):
        f(np.full((68, 2), np.nan))
    for kw in (dict(min_cutoff=0), dict(d_cutoff=-1), dict(fps=0), dict(beta=-0.1), dict(min_cutoff=float("inf"))):
        with pytest.raises(ValueError, match=next(iter(kw))):
            OneEuroFilter(**kw)
