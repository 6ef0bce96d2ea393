"""Evaluation metrics of the transfer tasks (docs/protocol.md, "Metrics"), as pure functions. Classification's
mAP is bench_runtime.metrics.classification_ap, which the pretraining probe scores with too.

- Detection: the PASCAL VOC 2007 devkit (VOCevaldet.m): greedy matching at IoU >= 0.5 in order of
  decreasing score, "difficult" objects ignored, 11-point interpolated AP.
- Segmentation: a confusion matrix (label 255 ignored) and the FCN paper's scores from it: per-class
  IU, mean IU over classes, pixel accuracy, mean accuracy.

A class that cannot be scored (no positive to find) gets NaN and is left out of the mean, silently.
Inputs may be numpy arrays or torch tensors (any device); outputs are numpy arrays and floats.
"""
import numpy as np
import torch
from torchvision.ops import box_iou

from bench_runtime.metrics import as_numpy, nanmean

# The 11 recall thresholds of the VOC2007 AP, computed as k / 10 so that each is the double nearest
# to the decimal (np.arange(0, 1.1, 0.1), as in py-faster-rcnn's voc_eval, gives 0.30000000000000004,
# 0.6000000000000001 and 0.7000000000000001, so a recall of exactly 3/10, 6/10 or 7/10 misses them).
VOC07_RECALL_THRESHOLDS = np.arange(11) / 10


# --------------------------------------------------------------------------------- detection

def voc07_ap(recall, precision):
    """The VOC2007 devkit's 11-point interpolated AP.

    recall, precision: 1-D arrays of the same length (the points of a PR curve, in any order).
    AP = mean over t in {0, 0.1, ..., 1.0} of the largest precision at a recall >= t, 0 where no
    point reaches t. An empty curve gives 0.
    """
    recall = as_numpy(recall, np.float64).ravel()
    precision = as_numpy(precision, np.float64).ravel()
    if recall.shape != precision.shape:
        raise ValueError(f"recall and precision differ in length: {recall.size} vs {precision.size}")
    total = 0.0
    for t in VOC07_RECALL_THRESHOLDS:
        reached = precision[recall >= t]
        total += reached.max() if reached.size else 0.0
    return total / len(VOC07_RECALL_THRESHOLDS)


def _boxes(x):
    return torch.as_tensor(as_numpy(x, np.float64)).reshape(-1, 4)


def _class_labels(x, num_classes, what):
    labels = as_numpy(x).astype(np.int64).ravel()
    if labels.size and (labels.min() < 1 or labels.max() > num_classes):
        raise ValueError(f"{what} labels must be in 1..{num_classes}; got {labels.min()}..{labels.max()}")
    return labels


FALSE_POSITIVE, TRUE_POSITIVE, IGNORED = 0, 1, -1


def match_detections(boxes, scores, gt_boxes, gt_difficult, iou_threshold=0.5):
    """The VOC devkit's outcome for each detection of one class in one image (int64 (K,)):
    TRUE_POSITIVE, FALSE_POSITIVE or IGNORED, in input order.

    In order of decreasing score (ties: input order), each detection is matched to the ground-truth
    box of its class with the largest IoU (first on ties), difficult boxes included: IoU >=
    iou_threshold with a difficult box is IGNORED; with a box not yet taken, a TRUE_POSITIVE that
    takes the box; otherwise (taken, IoU too low, no box) a FALSE_POSITIVE.
    """
    boxes, gt_boxes = _boxes(boxes), _boxes(gt_boxes)
    gt_difficult = as_numpy(gt_difficult).astype(bool).ravel()
    outcomes = np.full(len(boxes), FALSE_POSITIVE, dtype=np.int64)
    if not len(boxes) or not len(gt_boxes):
        return outcomes
    iou = box_iou(boxes, gt_boxes).numpy()
    taken = np.zeros(len(gt_boxes), dtype=bool)
    for k in np.argsort(-as_numpy(scores, np.float64).ravel(), kind="stable"):
        best = int(np.argmax(iou[k]))
        if iou[k, best] < iou_threshold or (taken[best] and not gt_difficult[best]):
            continue
        if gt_difficult[best]:
            outcomes[k] = IGNORED
        else:
            taken[best] = True
            outcomes[k] = TRUE_POSITIVE
    return outcomes


def detection_ap(detections, ground_truth, num_classes, iou_threshold=0.5):
    """Per-class and mean AP of detections, as the PASCAL VOC 2007 devkit computes them.

    detections: list over images of {boxes (K, 4) x1, y1, x2, y2; scores (K,); labels (K,) 1..C}.
    ground_truth: list over the same images of {boxes (G, 4); labels (G,) 1..C; difficult (G,) bool}
    (extra keys are ignored). Label 0 (background) is not a class: class c of the result is label
    c + 1.

    Boxes are in torchvision's 0-based continuous convention, so IoU (torchvision.ops.box_iou) has no
    +1 terms. The devkit instead uses 1-based inclusive pixel corners with width xmax - xmin + 1;
    for boxes converted from those by (xmin - 1, ymin - 1, xmax, ymax), as bench_data.voc does, both
    give the same widths, areas and IoU.

    Per class, all detections of that class (over all images) are taken in order of decreasing
    score (ties in input order: image, then position), each matched in its image as
    `match_detections` does (true positive, false positive, or ignored: matched a difficult box).
    Recall = cumulative TP / number of non-difficult boxes of the class, precision = cumulative
    TP / (TP + FP), AP = voc07_ap. Ignored detections are dropped from the curve: they would repeat
    the previous point (or give 0/0 before any TP/FP), which changes no 11-point maximum.
    A class with no non-difficult box has no defined AP: NaN, left out of the mean.
    Returns (per_class float64 (C,), mean float); mean is NaN if every class is NaN.
    """
    if len(detections) != len(ground_truth):
        raise ValueError(f"{len(detections)} images of detections but {len(ground_truth)} of ground truth")
    # Per image: ground truth boxes/labels/difficult, detection boxes/scores/labels.
    gts, dets = [], []
    for det, gt in zip(detections, ground_truth):
        g_boxes, g_labels = _boxes(gt["boxes"]), _class_labels(gt["labels"], num_classes, "ground truth")
        g_difficult = as_numpy(gt["difficult"]).astype(bool).ravel()
        d_boxes, d_labels = _boxes(det["boxes"]), _class_labels(det["labels"], num_classes, "detection")
        d_scores = as_numpy(det["scores"], np.float64).ravel()
        if not len(g_boxes) == len(g_labels) == len(g_difficult):
            raise ValueError("ground truth boxes, labels and difficult differ in length")
        if not len(d_boxes) == len(d_labels) == len(d_scores):
            raise ValueError("detection boxes, scores and labels differ in length")
        gts.append((g_boxes, g_labels, g_difficult))
        dets.append((d_boxes, d_scores, d_labels))

    per_class = np.full(num_classes, np.nan)
    for c in range(1, num_classes + 1):
        n_positives = sum(int((~diff[lab == c]).sum()) for _, lab, diff in gts)
        if n_positives == 0:
            continue
        # Matching only depends on the order of detections within their image, so matching image by
        # image and then sorting all of them by score gives the devkit's global greedy pass.
        scores, outcomes = [], []
        for (d_boxes, d_scores, d_labels), (g_boxes, g_labels, g_difficult) in zip(dets, gts):
            d_mask, g_mask = d_labels == c, g_labels == c
            scores.append(d_scores[d_mask])
            outcomes.append(match_detections(d_boxes[torch.from_numpy(d_mask)], d_scores[d_mask],
                                             g_boxes[torch.from_numpy(g_mask)], g_difficult[g_mask], iou_threshold))
        outcomes = np.concatenate(outcomes)[np.argsort(-np.concatenate(scores), kind="stable")]
        is_tp = outcomes[outcomes != IGNORED] == TRUE_POSITIVE
        tp = np.cumsum(is_tp, dtype=np.float64)
        fp = np.cumsum(~is_tp, dtype=np.float64)
        recall = tp / n_positives
        precision = tp / np.maximum(tp + fp, 1.0)  # tp + fp >= 1 at every kept point
        per_class[c - 1] = voc07_ap(recall, precision)
    return per_class, nanmean(per_class)


# ------------------------------------------------------------------------------ segmentation

def confusion_matrix(pred, target, num_classes, ignore_index=255):
    """(C, C) int64 counts of pixels with ground truth i (row) predicted as j (column).

    pred, target: integer label maps of the same number of elements (any shapes; both flattened),
    numpy arrays or torch tensors. Pixels whose target is ignore_index are left out. Any other value
    outside 0..C-1, in either, raises ValueError. Matrices add up, so accumulate over a data set by
    summing the per-batch results.
    """
    pred = as_numpy(pred).ravel()
    target = as_numpy(target).ravel()
    if pred.size != target.size:
        raise ValueError(f"pred has {pred.size} elements but target has {target.size}")
    keep = target != ignore_index
    pred = pred[keep].astype(np.int64)
    target = target[keep].astype(np.int64)
    for name, values in (("pred", pred), ("target", target)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} values must be in 0..{num_classes - 1} (or ignore_index "
                             f"{ignore_index} in target); got {values.min()}..{values.max()}")
    counts = np.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64, copy=False)


def segmentation_scores(confusion):
    """Scores of a (C, C) confusion matrix (rows ground truth, columns prediction), as in FCN.

    Returns {per_class_iu: (C,) TP / (TP + FP + FN), NaN for a class absent from both ground truth
    and prediction; mean_iu: nanmean of per_class_iu (mean IU over classes); pixel_accuracy:
    correct / all pixels; mean_accuracy: nanmean over classes present in the ground truth of
    TP / ground-truth pixels}. Scalars are floats, NaN for an empty matrix.
    """
    confusion = as_numpy(confusion, np.float64)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must be square (C, C); got {confusion.shape}")
    tp = np.diag(confusion)
    gt_pixels = confusion.sum(axis=1)
    union = gt_pixels + confusion.sum(axis=0) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class_iu = np.where(union > 0, tp / union, np.nan)
        per_class_acc = np.where(gt_pixels > 0, tp / gt_pixels, np.nan)
    total = confusion.sum()
    return {
        "per_class_iu": per_class_iu,
        "mean_iu": nanmean(per_class_iu),
        "pixel_accuracy": float(tp.sum() / total) if total > 0 else float("nan"),
        "mean_accuracy": nanmean(per_class_acc),
    }
