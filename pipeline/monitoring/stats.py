"""Sample-size-aware two-sample tests of served traffic against a baseline sample, per feature and slice.

For each feature (and each slice of the configured slice features and their pairs, where both sides
have enough rows), the window's values are compared with the baseline's values:

- numeric: Kolmogorov-Smirnov on the present values (distance: the KS statistic, the largest gap
  between the two CDFs) and Fisher's exact test on the share of missing values (distance: the
  difference of the shares);
- categorical (missing is a category of its own): chi-squared on the category counts, categories
  too rare to test pooled (distance: L-infinity between the two distributions), and a one-sided test of
  the share of values never seen in the baseline against the baseline's own rate of one-off values
  (Good-Turing, with the uncertainty of that estimate; distance: the share of unseen values).

A feature's p-value is the smaller of its two tests' (times 2). A (feature, slice) alerts when its
p-value is below alpha / m (Bonferroni over the m tests of the check) and its distance is above
min_distance: the p-value says the shift is beyond the window's sampling noise, the floor that it is
big enough to matter, so a huge window does not page on a trivial shift. `band` is the distance the
test would need for that p-value at this sample size (the noise band). Pure numpy/scipy.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any

import numpy as np

NUMERIC, CATEGORICAL = "numeric", "categorical"
MISSING = "(missing)"
SPAN = "__span__"  # key of a baseline row's span (dispersion between spans)
SPREADS = "__spreads__"  # key, in dispersion()'s result, of {categorical feature: {value: between-span variance of its share}}
MIN_EXPECTED = 5  # chi-squared: categories expected fewer times than this in the window are pooled
MIN_VALUES = 5  # a KS test needs at least this many present values on each side
MAX_SLICE_VALUES = 8  # a slice feature with more values than this is cut into contiguous ranges
SLICE_RANGES = 6


@dataclasses.dataclass
class Sample:
    """Encoded columns of one side: numeric -> float array (NaN missing); categorical -> int codes (0 missing)."""

    columns: dict[str, np.ndarray]
    size: int


@dataclasses.dataclass
class Encoding:
    kinds: dict[str, str]
    vocab: dict[str, dict[str, int]]  # categorical feature -> value -> code (0 = missing)
    baseline_vocab: dict[str, int]  # codes below this were seen in the baseline


def _category(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if value.is_integer():
            return str(int(value))
    return str(value)


def _number(value) -> float:
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def encode(
    baseline_rows: list[dict], current_rows: list[dict], kinds: dict[str, str]
) -> tuple[Encoding, Sample, Sample]:
    """Both sides' columns, categorical values coded in one vocabulary (baseline values first)."""
    encoding = Encoding(kinds=kinds, vocab={}, baseline_vocab={})
    sides = (Sample({}, len(baseline_rows)), Sample({}, len(current_rows)))
    for name, kind in kinds.items():
        if kind == NUMERIC:
            for side, rows in zip(sides, (baseline_rows, current_rows)):
                side.columns[name] = np.array([_number(r.get(name)) for r in rows], dtype=float)
            continue
        vocab = {MISSING: 0}
        for side, rows in zip(sides, (baseline_rows, current_rows)):
            codes = np.empty(len(rows), dtype=np.int64)
            for i, row in enumerate(rows):
                value = _category(row.get(name))
                codes[i] = 0 if value is None else vocab.setdefault(value, len(vocab))
            side.columns[name] = codes
            if side is sides[0]:
                encoding.baseline_vocab[name] = len(vocab)
        encoding.vocab[name] = vocab
    return encoding, sides[0], sides[1]


# --- One test ----------------------------------------------------------------------------------


# scipy.special's functions directly: scipy.stats' distribution objects cost ~1 ms a call, and a check
# makes hundreds of tests.
def _norm_sf(z: float) -> float:
    from scipy import special

    return float(special.ndtr(-z))


def _norm_isf(p: float) -> float:
    from scipy import special

    return float(-special.ndtri(p))


def _z(alpha: float) -> float:
    return _norm_isf(alpha / 2)


def _ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """The two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    a, b = np.sort(a), np.sort(b)
    values = np.concatenate([a, b])
    gaps = np.searchsorted(a, values, side="right") / len(a) - np.searchsorted(b, values, side="right") / len(b)
    return float(np.max(np.abs(gaps)))


def _chi2(table: np.ndarray) -> tuple[float, int]:
    """Pearson's chi-squared statistic of a contingency table (no zero rows or columns) and its dof."""
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    return float(((table - expected) ** 2 / expected).sum()), (table.shape[0] - 1) * (table.shape[1] - 1)


def _proportion_test(k1: int, n1: int, k0: int, n0: int, alpha: float) -> tuple[float, float, float]:
    """(distance, p-value, band) of the share k1/n1 against k0/n0 (Fisher's exact test)."""
    from scipy import stats

    distance = abs(k1 / n1 - k0 / n0)
    pooled = (k1 + k0 + 0.5) / (n1 + n0 + 1)
    band = _z(alpha) * math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n0))
    if (k1 == 0 and k0 == 0) or (k1 == n1 and k0 == n0):
        return distance, 1.0, band
    return distance, float(stats.fisher_exact([[k1, n1 - k1], [k0, n0 - k0]]).pvalue), band


def numeric_test(base: np.ndarray, cur: np.ndarray, alpha: float, phi: float = 1.0) -> dict | None:
    """KS on the present values (its effective sample size divided by the dispersion `phi`) and
    Fisher's exact test on the missing shares."""
    from scipy import special

    results = []
    b, c = base[~np.isnan(base)], cur[~np.isnan(cur)]
    if len(b) >= MIN_VALUES and len(c) >= MIN_VALUES:
        d = _ks_statistic(b, c)
        n_eff = len(b) * len(c) / (len(b) + len(c)) / phi
        p = float(special.kolmogorov(d * math.sqrt(n_eff)))  # the asymptotic KS distribution
        band = math.sqrt(-math.log(alpha / 2) / 2) / math.sqrt(n_eff)
        results.append(("KS", d, p, band))
    if len(base) and len(cur):
        d, p, band = _proportion_test(len(cur) - len(c), len(cur), len(base) - len(b), len(base), alpha)
        results.append(("MISSING", d, p, band))
    return _combine(results, len(cur), len(base))


def categorical_test(
    base: np.ndarray, cur: np.ndarray, seen: int, alpha: float, phi: float = 1.0, tau2: np.ndarray | None = None
) -> dict | None:
    """Chi-squared on the counts (its statistic divided by the dispersion `phi`), the largest change of
    one category's share (its variance plus `tau2`, the category's own between-span variance), and the
    new-value test. `seen`: codes below it occur in the whole baseline (others are new values)."""
    from scipy import special

    if not len(base) or not len(cur):
        return None
    size = int(max(base.max(initial=0), cur.max(initial=0))) + 1
    cb, cc = np.bincount(base, minlength=size), np.bincount(cur, minlength=size)
    pb, pc = cb / len(base), cc / len(cur)
    gaps = np.abs(pc - pb)
    worst = int(np.argmax(gaps))
    results = []
    expected = pb * len(cur)
    keep = expected >= MIN_EXPECTED
    table = [list(cb[keep]) + [int(cb[~keep].sum())], list(cc[keep]) + [int(cc[~keep].sum())]]
    columns = [i for i in range(len(table[0])) if table[0][i] + table[1][i] > 0]
    pooled = (cb[worst] + cc[worst] + 0.5) / (len(base) + len(cur) + 1)
    band = _z(alpha) * math.sqrt(phi * pooled * (1 - pooled) * (1 / len(cur) + 1 / len(base)))
    if len(columns) >= 2:
        statistic, dof = _chi2(np.array(table, dtype=float)[:, columns])
        results.append(("CHI2_LINF", float(gaps[worst]), float(special.chdtrc(dof, statistic / phi)), band))
    else:  # one category on both sides (e.g. always missing): nothing moved
        results.append(("CHI2_LINF", float(gaps[worst]), 1.0, band))
    # One category's share: a shift concentrated on one value (a fleet taking over 15% of the rides) is
    # judged against how much that value's share moved between the training spans, not the others'.
    n, m = len(base), len(cur)
    testable = np.flatnonzero((cb + cc >= MIN_EXPECTED) & (np.arange(size) < seen))
    if len(testable):
        shared = (cb[testable] + cc[testable]) / (n + m)
        extra = tau2[testable] if tau2 is not None and len(tau2) >= size else 0.0
        sd = np.sqrt(shared * (1 - shared) * (1 / n + 1 / m) + extra)
        z = np.abs(pc[testable] - pb[testable]) / np.where(sd > 0, sd, np.inf)  # sd 0: one value on both sides
        top = int(np.argmax(z))
        p = min(1.0, len(testable) * 2 * _norm_sf(float(z[top])))
        band = _norm_isf(alpha / (2 * len(testable))) * float(sd[top])
        results.append(("SHARE", float(gaps[testable[top]]), p, band))
    new = int(cc[seen:].sum())
    if new:
        # The chance that a row of the baseline's own population has a value not in the baseline
        # sample is estimated by the share of values seen once (Good-Turing, plus one), with Esty's
        # variance of that estimate: a small baseline of a many-valued feature (census tracts in a
        # previous window of 135 rows) is uncertain about it, a large one is not.
        n, m = len(base), len(cur)
        n1, n2 = int((cb[1:seen] == 1).sum()), int((cb[1:seen] == 2).sum())
        one_off = (n1 + 1) / (n + 1)
        variance = max((n1 + 2 * n2) / n**2 - n1**2 / n**3, 0.0)
        sd = math.sqrt(m * one_off * (1 - one_off) + m * m * variance)
        p = _norm_sf((new - 0.5 - m * one_off) / sd)
        band = one_off + _norm_isf(alpha) * sd / m
        results.append(("NEW_VALUES", new / m, p, band))
    return _combine(results, len(cur), len(base))


def _combine(results: list[tuple[str, float, float, float]], n: int, baseline_n: int) -> dict | None:
    if not results:
        return None
    statistic, distance, p, band = min(results, key=lambda r: (r[2], -r[1]))
    return {
        "statistic": statistic,
        "distance": round(distance, 6),
        "p_value": min(1.0, p * len(results)),
        "band": round(band, 6),
        "n": n,
        "baseline_n": baseline_n,
    }


# --- Slices ------------------------------------------------------------------------------------


def _int_like(values: list[str]) -> bool:
    try:
        [int(v) for v in values]
        return True
    except ValueError:
        return False


def slice_cells(
    encoding: Encoding, base: Sample, cur: Sample, slice_features: tuple[str, ...], min_rows: int
) -> list[tuple[str, tuple[str, ...], np.ndarray, np.ndarray]]:
    """(label, features, baseline mask, window mask) of each slice with >= min_rows rows on both sides.

    A categorical slice feature with many values (trip_start_hour) is cut into contiguous ranges of
    about equal baseline mass; a numeric one into quartiles. Pairs of slice features are crossed.
    """
    singles: list[list[tuple[str, str, np.ndarray, np.ndarray]]] = []
    for name in slice_features:
        if name not in encoding.kinds:
            continue
        cells = []
        if encoding.kinds[name] == CATEGORICAL:
            vocab = encoding.vocab[name]
            values = [v for v, code in vocab.items() if code and code < encoding.baseline_vocab[name]]
            bcodes, ccodes = base.columns[name], cur.columns[name]
            if len(values) > MAX_SLICE_VALUES and _int_like(values):
                ordered = sorted(values, key=int)
                counts = np.bincount(bcodes, minlength=len(vocab))
                total = sum(counts[vocab[v]] for v in ordered) or 1
                group, mass = [], 0.0
                for v in ordered:
                    group.append(v)
                    mass += counts[vocab[v]] / total
                    if mass >= (len(cells) + 1) / SLICE_RANGES or v == ordered[-1]:
                        codes = [vocab[g] for g in group]
                        label = f"{name}={group[0]}" if len(group) == 1 else f"{name}={group[0]}-{group[-1]}"
                        cells.append((name, label, np.isin(bcodes, codes), np.isin(ccodes, codes)))
                        group = []
            else:
                for v in values:
                    cells.append((name, f"{name}={v}", bcodes == vocab[v], ccodes == vocab[v]))
        else:
            b, c = base.columns[name], cur.columns[name]
            edges = np.nanquantile(b, [0, 0.25, 0.5, 0.75, 1.0]) if np.isfinite(b).any() else []
            for lo, hi in zip(edges[:-1], edges[1:]):
                last = hi == edges[-1]
                cells.append(
                    (
                        name,
                        f"{name}=[{lo:.4g}, {hi:.4g}{']' if last else ')'}",
                        (b >= lo) & ((b <= hi) if last else (b < hi)),
                        (c >= lo) & ((c <= hi) if last else (c < hi)),
                    )
                )
        singles.append(cells)
    out = [(label, (name,), bm, cm) for cells in singles for name, label, bm, cm in cells]
    for first, second in itertools.combinations(singles, 2):
        for (n1, l1, b1, c1), (n2, l2, b2, c2) in itertools.product(first, second):
            out.append((f"{l1}, {l2}", (n1, n2), b1 & b2, c1 & c2))
    return [(label, names, bm, cm) for label, names, bm, cm in out if bm.sum() >= min_rows and cm.sum() >= min_rows]


# --- Normal evolution: the dispersion between the training window's spans ----------------------

KS_NULL_MEAN = math.pi**2 / 12  # E[n_eff * D^2] of the two-sample KS statistic when nothing changed


def dispersion(encoding: Encoding, base: Sample, spans: np.ndarray) -> dict[str, Any]:
    """{feature: phi >= 1}: how much more each feature varies between the spans of the training
    window than sampling alone explains (the quasi-likelihood overdispersion of the span-vs-span tests);
    under SPREADS, each categorical value's between-span variance of its share (beyond sampling).

    Traffic from a later period differs from the training window at least as much as its spans differ
    from each other; dividing the window's test statistic by phi makes that normal evolution part of the
    noise. One span (or none recorded): phi = 1.
    """
    labels = [s for s in np.unique(spans)]
    phis: dict[str, Any] = {name: 1.0 for name in encoding.kinds}
    spreads: dict[str, dict[str, float]] = {}
    phis[SPREADS] = spreads
    if len(labels) < 2:
        return phis
    for name, kind in encoding.kinds.items():
        column = base.columns[name]
        if kind == NUMERIC:
            phis[name] = numeric_dispersion(column, spans)
        else:
            size = int(column.max(initial=0)) + 1
            table = np.array([np.bincount(column[spans == label], minlength=size) for label in labels])
            sizes = table.sum(axis=1, keepdims=True)
            shares = table / np.maximum(sizes, 1)
            overall = table.sum(axis=0) / max(table.sum(), 1)
            sampling = (overall * (1 - overall) / np.maximum(sizes, 1)).mean(axis=0)
            spread = np.maximum(shares.var(axis=0, ddof=1) - sampling, 0.0)
            codes = {code: value for value, code in encoding.vocab[name].items()}
            spreads[name] = {codes[k]: float(spread[k]) for k in np.flatnonzero(spread > 0) if k in codes}
            expected = table.sum(axis=0) * table.sum(axis=1).min() / table.sum()
            keep = expected >= MIN_EXPECTED
            pooled = np.concatenate([table[:, keep], table[:, ~keep].sum(axis=1, keepdims=True)], axis=1)
            pooled = pooled[:, pooled.sum(axis=0) > 0]
            if pooled.shape[1] >= 2:
                statistic, dof = _chi2(pooled.astype(float))
                phis[name] = max(1.0, statistic / dof)
    return phis


def numeric_dispersion(column: np.ndarray, spans: np.ndarray) -> float:
    """phi of a numeric column: the mean over spans of n_eff * D^2 (span vs the rest) over its null mean."""
    ratios = []
    for label in np.unique(spans):
        inside, outside = column[spans == label], column[spans != label]
        inside, outside = inside[~np.isnan(inside)], outside[~np.isnan(outside)]
        if len(inside) < MIN_VALUES or len(outside) < MIN_VALUES:
            continue
        d = _ks_statistic(inside, outside)
        ratios.append(len(inside) * len(outside) / (len(inside) + len(outside)) * d * d / KS_NULL_MEAN)
    return max(1.0, float(np.mean(ratios))) if ratios else 1.0


# --- A whole check -----------------------------------------------------------------------------


def compare(
    baseline_rows: list[dict],
    current_rows: list[dict],
    kinds: dict[str, str],
    *,
    slice_features: tuple[str, ...],
    seasonal: set[str],
    alpha: float,
    min_distance: float,
    feature_floors: dict[str, float],
    min_slice_examples: int,
    phis: dict[str, Any] | None = None,
) -> tuple[list[dict], dict[str, Any]]:
    """Every (feature, slice) test of the window against the baseline, with its verdict, and the
    dispersion of each feature (measured between the baseline rows' SPAN labels unless `phis` is given).

    Rows: {"feature", "slice" (None: all rows), "statistic", "distance", "band", "p_value", "p_threshold",
    "n", "baseline_n", "dispersion", "expected" (a seasonal feature: never alerts), "alert"}.
    """
    encoding, base, cur = encode(baseline_rows, current_rows, kinds)
    if phis is None:
        phis = dispersion(encoding, base, np.array([r.get(SPAN, 0) for r in baseline_rows]))
    cells = [(None, (), np.ones(base.size, bool), np.ones(cur.size, bool))]
    cells += slice_cells(encoding, base, cur, slice_features, min_slice_examples)
    plan = [
        (feature, cell)
        for cell in cells
        for feature in kinds
        if feature not in cell[1] and (cell[0] is None or feature not in seasonal)
    ]
    tested = sum(1 for feature, _ in plan if feature not in seasonal)
    corrected = alpha / max(tested, 1)
    tau2 = {}
    for feature, vocab in encoding.vocab.items():  # between-span share variances, by this encoding's codes
        tau2[feature] = np.zeros(len(vocab))
        for value, spread in phis.get(SPREADS, {}).get(feature, {}).items():
            if value in vocab:
                tau2[feature][vocab[value]] = spread
    rows = []
    for feature, (label, _, bmask, cmask) in plan:
        b, c = base.columns[feature][bmask], cur.columns[feature][cmask]
        phi = phis.get(feature, 1.0)
        if kinds[feature] == NUMERIC:
            result = numeric_test(b, c, corrected, phi)
        else:
            result = categorical_test(b, c, encoding.baseline_vocab[feature], corrected, phi, tau2[feature])
        if result is None:
            continue
        expected = feature in seasonal
        floor = feature_floors.get(feature, min_distance)
        result.update(
            feature=feature,
            slice=label,
            p_threshold=corrected,
            expected=expected,
            dispersion=round(phi, 3),
            alert=not expected and result["p_value"] < corrected and result["distance"] > floor,
        )
        rows.append(result)
    return rows, phis


def compare_scores(
    baseline: list[float], current: list[float], alpha: float, min_distance: float, spans: list[int] | None = None
) -> dict | None:
    """Prediction drift: KS of the window's scores against the baseline's (with the dispersion of the
    baseline's scores between `spans`, when given)."""
    if len(baseline) < MIN_VALUES or len(current) < MIN_VALUES:
        return None
    base = np.asarray(baseline, float)
    phi = numeric_dispersion(base, np.asarray(spans)) if spans is not None and len(spans) == len(base) else 1.0
    result = numeric_test(base, np.asarray(current, float), alpha, phi)
    if result is None:
        return None
    result.update(
        feature="prediction",
        slice=None,
        p_threshold=alpha,
        expected=False,
        dispersion=round(phi, 3),
        alert=result["p_value"] < alpha and result["distance"] > min_distance,
    )
    return result


def summarize(rows: list[dict]) -> list[dict]:
    """The rows a report keeps: every feature's all-rows test, and per feature its strongest slice and
    every alerting slice (the rest only count towards m)."""
    keep = [r for r in rows if r["slice"] is None]
    by_feature: dict[str, list[dict]] = {}
    for r in rows:
        if r["slice"] is not None:
            by_feature.setdefault(r["feature"], []).append(r)
    for feature, slices in by_feature.items():
        strongest = min(slices, key=lambda r: (r["p_value"], -r["distance"]))
        keep += [r for r in slices if r["alert"] or r is strongest]
    return keep


def feature_kinds(names: Any, categorical: Any) -> dict[str, str]:
    return {name: CATEGORICAL if name in categorical else NUMERIC for name in names}
