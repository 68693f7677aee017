"""The monitor's decision rule (pipeline/monitoring/stats.py) on tiny seeded samples: no TF, no pipeline."""

from __future__ import annotations

import random

from pipeline.monitoring import stats

KINDS = {"x": stats.NUMERIC, "color": stats.CATEGORICAL, "group": stats.CATEGORICAL}


def rows(
    n: int,
    seed: int,
    shift: float = 0.0,
    shift_group: str | None = None,
    span: int = 0,
    new_color: float = 0.0,
    missing: float = 0.0,
) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        group = rng.choice(["a", "b", "c", "d"])
        x = rng.gauss(10, 2) * (1 + shift if shift_group in (None, group) else 1)
        color = "new" if rng.random() < new_color else rng.choices(["red", "green", "blue"], [5, 3, 2])[0]
        out.append({"x": None if rng.random() < missing else x, "color": color, "group": group, stats.SPAN: span})
    return out


def check(base, cur, **kw):
    found, phis = stats.compare(
        base,
        cur,
        KINDS,
        slice_features=("group",),
        seasonal=set(),
        alpha=0.01,
        min_distance=0.03,
        feature_floors={},
        min_slice_examples=30,
        **kw,
    )
    return {(r["feature"], r["slice"]) for r in found if r["alert"]}, found, phis


def test_noise_does_not_alert_and_shifts_do_with_their_feature_and_slice():
    base = rows(3000, seed=1)
    for seed in range(2, 7):  # windows of 500 rows of the same population
        alerting, found, _ = check(base, rows(500, seed=seed))
        assert alerting == set()
        assert all(r["p_value"] >= r["p_threshold"] or r["distance"] <= 0.03 for r in found)
    alerting, _, _ = check(base, rows(500, seed=8, shift=0.3))
    assert ("x", None) in alerting and {f for f, _ in alerting} == {"x"}
    # +60% on one group of four only: found, and the group is named.
    alerting, found, _ = check(base, rows(500, seed=9, shift=0.6, shift_group="c"))
    assert ("x", "group=c") in alerting and {f for f, _ in alerting} == {"x"}
    assert min((r for r in found if r["alert"]), key=lambda r: r["p_value"])["slice"] == "group=c"
    alerting, found, _ = check(base, rows(500, seed=10, new_color=0.05))
    assert {f for f, _ in alerting} == {"color"}
    assert next(r for r in found if r["feature"] == "color" and r["slice"] is None)["statistic"] == "NEW_VALUES"
    alerting, found, _ = check(base, rows(500, seed=11, missing=0.2))
    assert {f for f, _ in alerting} == {"x"}
    assert next(r for r in found if r["feature"] == "x" and r["slice"] is None)["statistic"] == "MISSING"


def test_a_huge_window_does_not_page_on_a_trivial_shift():
    base = rows(20000, seed=1)
    alerting, found, _ = check(base, rows(20000, seed=2, shift=0.01))
    x = next(r for r in found if r["feature"] == "x" and r["slice"] is None)
    assert alerting == set() and x["distance"] < 0.03


def test_seasonal_features_are_reported_not_alerting():
    base, cur = rows(3000, seed=1), rows(500, seed=2, shift=0.5)
    found, _ = stats.compare(
        base,
        cur,
        KINDS,
        slice_features=("group",),
        seasonal={"x"},
        alpha=0.01,
        min_distance=0.03,
        feature_floors={},
        min_slice_examples=30,
    )
    x = [r for r in found if r["feature"] == "x"]
    assert len(x) == 1 and x[0]["slice"] is None  # reported over all rows, not tested in slices
    assert x[0]["expected"] and not x[0]["alert"] and x[0]["p_value"] < x[0]["p_threshold"]


def test_variation_between_training_spans_widens_the_band():
    # Three spans whose x differs by +-8%: a window 8% off is normal evolution, not a page...
    base = rows(1000, seed=1, span=1) + rows(1000, seed=2, shift=0.08, span=2) + rows(1000, seed=3, shift=-0.08, span=3)
    window = rows(500, seed=4, shift=0.12)
    alerting, found, phis = check(base, window)
    assert phis["x"] > 2 and phis["color"] < 1.5
    assert ("x", None) not in alerting
    # ...which the same window is, against the same rows without span labels (phi 1).
    flat = [dict(r, **{stats.SPAN: 0}) for r in base]
    alerting, _, phis = check(flat, window)
    assert phis["x"] == 1.0 and ("x", None) in alerting
    # A real shift is still far beyond the widened band.
    alerting, _, _ = check(base, rows(500, seed=5, shift=0.5))
    assert ("x", None) in alerting
