"""What a table of transfer results can resolve (pure functions on `table.load_records` rows).

Per column:
  range           the largest row mean minus the smallest (measured rows of one data set);
  control         the supervised row minus the best random init: the positive control, what
                  labels do to the features, which a column must resolve before it can rank
                  label-free pretraining;
  spread          the pooled standard deviation over seeds, sqrt(sum (n_i - 1) s_i^2 / sum (n_i - 1))
                  over the rows with two or more seeds;
  ranks           whether range and control are both at least RESOLVING_SPREADS spreads.
Per pretrained row and column: its difference from the best random init of that column, from the
autoencoder and from its own no-learning control (the same pipeline without weight updates: what
the method adds beyond the data-dependent rescaling its pipeline does), with a 95% confidence
interval over seeds (Welch's t, scipy), and the verdict
above / level / below (the interval excludes zero above or below it, or contains it).
"""
import numpy as np
import pandas as pd
from scipy import stats

RESOLVING_SPREADS = 3
RANDOM_INITS = ("random", "random-gaussian", "random-kraehenbuehl")
SUPERVISED, AUTOENCODER = "supervised", "autoencoder"
LEVEL = 0.95


def shown(value):
    """A cell as people read it: "–" where it has no value (None, empty, or NaN: e.g. an interval of
    one seed), else the value itself."""
    if value is None or value == "" or (isinstance(value, float) and np.isnan(value)):
        return "–"
    return value


def pooled_spread(groups):
    """Pooled standard deviation of `groups` (lists of values), from those with two or more; NaN if none."""
    dof = sum(len(g) - 1 for g in groups if len(g) > 1)
    if dof == 0:
        return float("nan")
    return float(np.sqrt(sum((len(g) - 1) * np.var(g, ddof=1) for g in groups if len(g) > 1) / dof))


def difference_interval(values, reference, level=LEVEL):
    """(mean(values) - mean(reference), low, high): Welch's t interval at `level`; the bounds are
    NaN when either side has fewer than two values (no spread to judge by)."""
    values, reference = np.asarray(values, float), np.asarray(reference, float)
    difference = float(values.mean() - reference.mean())
    if len(values) < 2 or len(reference) < 2:
        return difference, float("nan"), float("nan")
    if np.var(values) == 0 and np.var(reference) == 0:  # no spread at all: the difference is exact
        return difference, difference, difference
    interval = stats.ttest_ind(values, reference, equal_var=False).confidence_interval(level)
    return difference, float(interval.low), float(interval.high)


def verdict(low, high):
    if np.isnan(low):
        return "one seed"
    return "above" if low > 0 else "below" if high < 0 else "level"


def _row_values(part):
    """{row name: (its pretraining method, values over seeds)} of one column's rows."""
    return {name: (group["pretrain_method"].iloc[0], group["value"].to_numpy(float))
            for name, group in part.groupby("method", sort=True)}


def _best_random(rows):
    randoms = {name: v for name, (method, v) in rows.items() if method in RANDOM_INITS}
    return max(randoms.items(), key=lambda item: item[1].mean()) if randoms else (None, None)


def column_resolution(records):
    """One row per (data, column): range, control, spread (percentage points) and whether it ranks."""
    out = []
    for (data, column), part in records.dropna(subset=["value"]).groupby(["data", "column"], sort=False):
        rows = _row_values(part)
        means = [v.mean() for _, v in rows.values()]
        spread = pooled_spread([v for _, v in rows.values()])
        best_name, best = _best_random(rows)
        supervised = [v for method, v in rows.values() if method == SUPERVISED]
        control = supervised[0].mean() - best.mean() if supervised and best is not None else float("nan")
        value_range = max(means) - min(means)
        enough = RESOLVING_SPREADS * spread
        if np.isnan(spread):
            ranks = "unknown: one seed per row"
        elif value_range < enough:
            ranks = f"no: range under {RESOLVING_SPREADS} spreads"
        elif np.isnan(control):
            ranks = "untested: no supervised and random rows"
        elif control < enough:
            ranks = f"no: labels beat random init by under {RESOLVING_SPREADS} spreads"
        else:
            ranks = "yes"
        out.append({"data": data, "column": column, "rows": len(rows), "range": 100 * value_range,
                    "supervised - best random": 100 * control, "best random": best_name,
                    "pooled seed spread": 100 * spread, "can rank pretraining": ranks})
    return pd.DataFrame(out)


def row_differences(records):
    """One row per (pretrained row, data, column, reference): the difference in percentage points
    with its 95% interval and verdict, against the best random init, the autoencoder, and the
    row's own no-learning control (the row whose pretraining identity is its control_identity)."""
    out = []
    for (data, column), part in records.dropna(subset=["value"]).groupby(["data", "column"], sort=False):
        rows = _row_values(part)
        best_name, best = _best_random(rows)
        autoencoder = next(((name, v) for name, (method, v) in rows.items() if method == AUTOENCODER), (None, None))
        controls = _controls(part)
        for name, (method, values) in rows.items():
            if method in RANDOM_INITS:
                continue
            control = controls.get(name, (None, None))
            for reference_name, reference in ((best_name, best), autoencoder, control):
                if reference is None or reference_name == name:
                    continue
                difference, low, high = difference_interval(values, reference)
                out.append({"data": data, "column": column, "row": name, "against": reference_name,
                            "difference": 100 * difference, "95% low": 100 * low, "95% high": 100 * high,
                            "verdict": verdict(low, high), "seeds": f"{len(values)} vs {len(reference)}"})
    return pd.DataFrame(out)


def _controls(part):
    """{row name: (its no-learning control's row name, the control's values)} of one column."""
    if "control_identity" not in part:
        return {}
    by_identity = {identity: (name, group["value"].to_numpy(float))
                   for (identity, name), group in part.groupby(["identity", "method"], sort=True)}
    return {name: by_identity[control] for (name, control), _ in part.groupby(["method", "control_identity"])
            if control in by_identity}
