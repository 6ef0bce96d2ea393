"""Classification mAP and the array helpers the suite's metrics share, as pure functions. They live
below pretraining and transfer so that the pretraining probe and the classification task score
with the same function.

Classification mAP: per-class average precision as scikit-learn computes it (the protocol of
Krähenbühl's VOC classification script), "difficult" entries ignored per class; mean = mAP. A class
that cannot be scored (no positive to find) gets NaN and is left out of the mean, silently.
Inputs may be numpy arrays or torch tensors (any device); outputs are numpy arrays and floats.
"""
import numpy as np
import torch
from sklearn.metrics import average_precision_score


def as_numpy(x, dtype=None):
    """A numpy copy-or-view of an array-like or torch tensor."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def nanmean(values):
    """Mean over the non-NaN entries; NaN (without numpy's warning) when all are NaN or none."""
    values = np.asarray(values, dtype=np.float64)
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if kept.size else float("nan")


def classification_ap(scores, labels, difficult=None):
    """Per-class and mean average precision of multi-label scores.

    scores: (N, C) floats, higher = more confident. labels: (N, C), 1 positive / 0 negative.
    difficult: optional (N, C) bool; a True entry is excluded from its class's evaluation (VOC
    images where the class occurs only as difficult objects).

    Per-class AP is sklearn.metrics.average_precision_score on the kept entries of that column
    (sum over positives-ranked thresholds of (R_n - R_{n-1}) P_n, i.e. no interpolation). A class
    with no positive among its kept entries has no defined AP: it gets NaN and is left out of the
    mean. Returns (per_class float64 (C,), mean float); mean is NaN if every class is NaN.
    """
    scores = as_numpy(scores, np.float64)
    labels = as_numpy(labels)
    if scores.ndim != 2 or labels.shape != scores.shape:
        raise ValueError(f"scores and labels must both be (N, C); got {scores.shape} and {labels.shape}")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    labels = labels.astype(np.int64)
    if difficult is None:
        keep = np.ones(scores.shape, dtype=bool)
    else:
        difficult = as_numpy(difficult)
        if difficult.shape != scores.shape:
            raise ValueError(f"difficult must be {scores.shape}; got {difficult.shape}")
        keep = ~difficult.astype(bool)
    per_class = np.full(scores.shape[1], np.nan)
    for c in range(scores.shape[1]):
        y, s = labels[keep[:, c], c], scores[keep[:, c], c]
        if y.sum() > 0:
            per_class[c] = average_precision_score(y, s)
    return per_class, nanmean(per_class)
