"""The soak benchmark's pure helpers: histogram quantiles from bucket deltas, the trend check."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "soak.py"
_spec = importlib.util.spec_from_file_location("soak_bench", _PATH)
soak = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(soak)


def _hist(counts: list[float], bounds=(0.1, 0.25, 0.5, math.inf)) -> np.ndarray:
    return np.array(list(zip(bounds, np.cumsum(counts))), dtype=np.float64)


def test_quantile_of_the_interval_uses_bucket_deltas():
    before = _hist([100, 0, 0, 0])
    now = _hist([100, 0, 100, 0])  # 100 new observations, all in (0.25, 0.5]
    assert math.isclose(soak._quantile(now, before, 0.5), 0.375)
    assert math.isclose(soak._quantile(now, before, 0.99), 0.25 + 0.99 * 0.25)
    assert math.isclose(soak._quantile(now, None, 0.25), 0.05)  # cumulative since start
    assert math.isnan(soak._quantile(before, before, 0.99))  # nothing new
    assert soak._quantile(_hist([0, 0, 0, 5]), None, 0.5) == 0.5  # +Inf: its lower bound


def test_trend_flags_a_steady_rise_and_not_noise():
    rng = np.random.default_rng(0)
    t = np.arange(0, 1800, 5.0)
    flat = 400 + rng.normal(0, 5, t.size)
    rising = 400 + t / 1800 * 40 + rng.normal(0, 5, t.size)  # +10% over the run
    assert soak._trend(t, flat, 0.02, 1.0)["verdict"] == "no upward trend"
    out = soak._trend(t, rising, 0.02, 1.0)
    assert out["verdict"] == "upward trend"
    assert 60 < out["slope_per_hour"] < 100  # 80 per hour
    falling = 400 - t / 1800 * 40 + rng.normal(0, 5, t.size)
    assert soak._trend(t, falling, 0.02, 1.0)["verdict"] == "no upward trend"
