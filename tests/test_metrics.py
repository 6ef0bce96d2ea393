"""Hand-worked cases for the metrics (classification mAP in bench_runtime.metrics, the others in
transfer.metrics); every expected number is derived in the comments."""
import warnings

import numpy as np
import pytest
import torch

from bench_runtime.metrics import classification_ap
from transfer.metrics import (FALSE_POSITIVE, IGNORED, TRUE_POSITIVE, confusion_matrix, detection_ap, match_detections,
                              segmentation_scores, voc07_ap)

# ----------------------------------------------------------------------------- classification


def test_classification_perfect_ranking():
    # Both positives ranked above both negatives: precision 1 at every recall -> AP 1.
    per_class, mean = classification_ap([[0.9], [0.8], [0.2], [0.1]], [[1], [1], [0], [0]])
    assert per_class == pytest.approx([1.0])
    assert mean == pytest.approx(1.0)


def test_classification_imperfect_ranking():
    # Ranked labels 1, 0, 1, 0: the positives are found at rank 1 (P = 1/1) and rank 3 (P = 2/3),
    # each adding recall 1/2 -> AP = (1 + 2/3) / 2 = 5/6 = 0.8333.
    per_class, mean = classification_ap([[0.9], [0.8], [0.7], [0.6]], [[1], [0], [1], [0]])
    assert per_class == pytest.approx([5 / 6])
    assert mean == pytest.approx(5 / 6)


def test_classification_difficult_entry_excluded():
    scores = np.array([[0.9], [0.8], [0.7], [0.6]])
    labels = np.array([[1], [0], [1], [0]])
    # Without `difficult` this is the 5/6 case above. Marking the negative at rank 2 difficult
    # leaves ranked labels 1, 1, 0 -> precision 1 at both positives -> AP 1.
    difficult = np.array([[False], [True], [False], [False]])
    per_class, _ = classification_ap(scores, labels, difficult)
    assert per_class == pytest.approx([1.0])
    # Torch inputs (float labels as VOCClassification gives them) work the same.
    per_class, _ = classification_ap(torch.tensor(scores), torch.tensor(labels).float(),
                                     torch.tensor(difficult))
    assert per_class == pytest.approx([1.0])


def test_classification_class_without_positive_is_nan_and_left_out():
    scores = np.array([[0.9, 0.9, 0.5], [0.8, 0.1, 0.4], [0.7, 0.2, 0.3], [0.6, 0.3, 0.2]])
    labels = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 1], [0, 0, 0]])
    # Column 2's only positive is difficult -> no kept positive -> NaN.
    difficult = np.zeros_like(labels, dtype=bool)
    difficult[2, 2] = True
    # Column 0: 5/6 (above). Column 1: ranked labels 1 (0.9), 0 (0.3), 0 (0.2), 1 (0.1) ->
    # precisions 1/1 and 2/4 -> AP = (1 + 1/2) / 2 = 3/4. Mean over columns 0, 1 = (5/6 + 3/4) / 2.
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NaN classes are silent
        per_class, mean = classification_ap(scores, labels, difficult)
    assert per_class[:2] == pytest.approx([5 / 6, 3 / 4])
    assert np.isnan(per_class[2])
    assert mean == pytest.approx((5 / 6 + 3 / 4) / 2)


def test_classification_all_nan():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        per_class, mean = classification_ap([[0.3, 0.4]], [[0, 0]])
    assert np.isnan(per_class).all() and np.isnan(mean)


def test_classification_rejects_bad_labels():
    with pytest.raises(ValueError):
        classification_ap([[0.3]], [[-1]])

# ------------------------------------------------------------------------------------ voc07_ap


def test_voc07_ap_perfect_precision():
    # Precision 1 reaches recall 1, so every one of the 11 thresholds gets 1.
    assert voc07_ap([0.5, 1.0], [1.0, 1.0]) == pytest.approx(1.0)


def test_voc07_ap_step_curve():
    # Points (recall, precision): (0.2, 1.0), (0.4, 0.5), (0.6, 0.6).
    # t = 0, 0.1, 0.2 -> max over all points = 1.0         (3 thresholds)
    # t = 0.3 .. 0.6  -> max over (0.4, 0.5), (0.6, 0.6) or (0.6, 0.6) alone = 0.6 (4 thresholds;
    #                   recall exactly 0.6 reaches t = 0.6)
    # t = 0.7 .. 1.0  -> no point, 0                          (4 thresholds)
    # AP = (3 * 1.0 + 4 * 0.6) / 11 = 5.4 / 11
    assert voc07_ap([0.2, 0.4, 0.6], [1.0, 0.5, 0.6]) == pytest.approx(5.4 / 11)


def test_voc07_ap_exact_decimal_recalls_reach_their_threshold():
    # Recall exactly 3/10 or 7/10 (as cumulative TP / positives computes it) reaches t = 0.3 / 0.7:
    # t = 0 .. 0.3 -> 4 thresholds; t = 0 .. 0.7 -> 8 thresholds.
    assert voc07_ap([3 / 10], [1.0]) == pytest.approx(4 / 11)
    assert voc07_ap([7 / 10], [1.0]) == pytest.approx(8 / 11)


def test_voc07_ap_empty_curve():
    assert voc07_ap([], []) == 0.0

# ----------------------------------------------------------------------------------- detection


def det(boxes, scores, labels):
    return {"boxes": np.array(boxes, dtype=np.float64).reshape(-1, 4),
            "scores": np.array(scores, dtype=np.float64), "labels": np.array(labels, dtype=np.int64)}


def gt(boxes, labels, difficult=None):
    difficult = [False] * len(labels) if difficult is None else difficult
    return {"boxes": np.array(boxes, dtype=np.float64).reshape(-1, 4),
            "labels": np.array(labels, dtype=np.int64), "difficult": np.array(difficult, dtype=bool)}


A = [0, 0, 10, 10]
B = [20, 20, 30, 30]
C = [40, 0, 50, 10]


def test_detection_perfect():
    truth = [gt([A, B], [1, 2]), gt([C], [1])]
    found = [det([A, B], [0.9, 0.8], [1, 2]), det([C], [0.7], [1])]
    per_class, mean = detection_ap(found, truth, num_classes=2)
    assert per_class == pytest.approx([1.0, 1.0])
    assert mean == pytest.approx(1.0)
    # Torch tensors (as torchvision detectors and VOCDetection give them) work the same.
    as_torch = lambda d: {k: torch.as_tensor(v) for k, v in d.items()}
    per_class, _ = detection_ap([as_torch(d) for d in found], [as_torch(g) for g in truth], 2)
    assert per_class == pytest.approx([1.0, 1.0])


def test_detection_none():
    # No detection: recall never leaves 0, no threshold has a point -> AP 0 for each class.
    truth = [gt([A, B], [1, 2])]
    per_class, mean = detection_ap([det([], [], [])], truth, num_classes=2)
    assert per_class == pytest.approx([0.0, 0.0])
    assert mean == 0.0


def test_detection_duplicate_is_false_positive():
    # Two objects (A in image 0, B in image 1). Detections by score: A 0.9 (TP), A again 0.8 (A is
    # taken -> FP), B 0.7 (TP). Curve: (rec 0.5, prec 1), (0.5, 1/2), (1.0, 2/3).
    # t = 0 .. 0.5 -> 1 (6 thresholds); t = 0.6 .. 1.0 -> 2/3 (5 thresholds).
    # AP = (6 + 5 * 2/3) / 11 = 28/33 = 0.8485.
    truth = [gt([A], [1]), gt([B], [1])]
    found = [det([A, A], [0.9, 0.8], [1, 1]), det([B], [0.7], [1])]
    per_class, _ = detection_ap(found, truth, num_classes=1)
    assert per_class == pytest.approx([28 / 33])
    # Without the duplicate: precision 1 up to recall 1 -> AP 1.
    found = [det([A], [0.9], [1]), det([B], [0.7], [1])]
    assert detection_ap(found, truth, num_classes=1)[0] == pytest.approx([1.0])


def test_matching_in_one_image_goes_by_score_not_input_order():
    # Input order: a low-scoring duplicate of A first, then the best A, a difficult B, and C far from
    # everything. The 0.9 detection takes A, so the 0.5 one is the duplicate.
    outcomes = match_detections(np.array([A, A, B, [60, 60, 70, 70]], dtype=float), np.array([0.5, 0.9, 0.8, 0.7]),
                                np.array([A, B], dtype=float), np.array([False, True]))
    assert outcomes.tolist() == [FALSE_POSITIVE, TRUE_POSITIVE, IGNORED, FALSE_POSITIVE]
    assert match_detections(np.array([A], dtype=float), np.array([0.9]), np.zeros((0, 4)), np.zeros(0)).tolist() == [0]


def test_detection_difficult_match_ignored_and_not_a_positive():
    # Image: A and B non-difficult, C difficult. Detections: C 0.95, A 0.9.
    # Expected: C ignored; A TP; positives = 2 -> one point (rec 0.5, prec 1) -> t = 0..0.5 -> 6/11.
    # (Were C a FP: points (0, 0), (0.5, 0.5) -> 3/11. Were C counted as a positive: recall 1/3 ->
    # t = 0..0.3 -> 4/11.)
    truth = [gt([A, B, C], [1, 1, 1], [False, False, True])]
    with_c = detection_ap([det([C, A], [0.95, 0.9], [1, 1])], truth, num_classes=1)[0]
    without_c = detection_ap([det([A], [0.9], [1])], truth, num_classes=1)[0]
    assert with_c == pytest.approx([6 / 11])
    assert without_c == pytest.approx([6 / 11])
    # Only the difficult object detected, first: every detection ignored -> empty curve -> AP 0.
    assert detection_ap([det([C], [0.95], [1])], truth, num_classes=1)[0] == pytest.approx([0.0])


def test_detection_class_with_only_difficult_objects_is_nan():
    truth = [gt([A, B], [1, 2], [False, True])]
    per_class, mean = detection_ap([det([A, B], [0.9, 0.8], [1, 2])], truth, num_classes=2)
    assert per_class[0] == pytest.approx(1.0) and np.isnan(per_class[1])
    assert mean == pytest.approx(1.0)


@pytest.mark.parametrize("height, expected", [(4.99, 0.0), (5.0, 1.0), (5.01, 1.0)])
def test_detection_iou_threshold(height, expected):
    # Detection (0, 0, 10, h) inside A = (0, 0, 10, 10): IoU = 10 h / 100. h = 4.99 -> 0.499 (FP,
    # AP 0); h = 5 -> exactly 0.5, a TP since the devkit tests IoU >= 0.5; h = 5.01 -> 0.501 (TP, AP 1).
    truth = [gt([A], [1])]
    found = [det([[0, 0, 10, height]], [0.9], [1])]
    assert detection_ap(found, truth, num_classes=1)[0] == pytest.approx([expected])


def test_detection_class_without_ground_truth_is_nan_and_left_out():
    # Class 3 has detections but no object: NaN, and the mean is over classes 1 and 2 only.
    truth = [gt([A, B], [1, 2])]
    found = [det([A, B, C], [0.9, 0.8, 0.7], [1, 2, 3])]
    per_class, mean = detection_ap(found, truth, num_classes=3)
    assert per_class[:2] == pytest.approx([1.0, 1.0]) and np.isnan(per_class[2])
    assert mean == pytest.approx(1.0)


def test_detection_wrong_class_or_image_does_not_match():
    # Class 1 object at A, class 2 object at B (image 0); image 1 has no object.
    # Class 2 detections: at A 0.9 (only a class-1 object there -> FP), at B in image 1 0.85 (no
    # object in that image -> FP), at B in image 0 0.8 (TP).
    # Class 2 curve: (0, 0), (0, 0), (1, 1/3) -> every threshold gets 1/3 -> AP 1/3.
    # Class 1: no detection of its own -> AP 0.
    truth = [gt([A, B], [1, 2]), gt([], [])]
    found = [det([A, B], [0.9, 0.8], [2, 2]), det([B], [0.85], [2])]
    per_class, mean = detection_ap(found, truth, num_classes=2)
    assert per_class == pytest.approx([0.0, 1 / 3])
    assert mean == pytest.approx(1 / 6)


def test_detection_rejects_background_label():
    with pytest.raises(ValueError):
        detection_ap([det([A], [0.9], [0])], [gt([A], [1])], num_classes=1)

# -------------------------------------------------------------------------------- segmentation

TARGET = np.array([[0, 1, 1],
                   [2, 255, 0]])
PRED = np.array([[0, 1, 2],
                 [2, 0, 1]])
# Kept (target, pred) pairs: (0,0) (1,1) (1,2) / (2,2) (0,1); the 255 pixel (pred 0) is dropped.
#            pred 0  1  2
EXPECTED = [[1, 1, 0],   # gt 0
            [0, 1, 1],   # gt 1
            [0, 0, 1]]   # gt 2


def test_confusion_matrix_by_hand():
    m = confusion_matrix(torch.from_numpy(PRED), TARGET, num_classes=3)
    assert m.dtype == np.int64 and m.shape == (3, 3)
    np.testing.assert_array_equal(m, EXPECTED)
    # Matrices of parts add up to the matrix of the whole (accumulation over batches).
    parts = confusion_matrix(PRED[0], TARGET[0], 3) + confusion_matrix(PRED[1], TARGET[1], 3)
    np.testing.assert_array_equal(parts, EXPECTED)


def test_segmentation_scores_by_hand():
    s = segmentation_scores(np.array(EXPECTED))
    # IU = TP / (gt row + pred column - TP): class 0: 1 / (2 + 1 - 1) = 1/2; class 1: 1 / (2 + 2 - 1)
    # = 1/3; class 2: 1 / (1 + 2 - 1) = 1/2. Mean IU = (1/2 + 1/3 + 1/2) / 3 = 4/9.
    assert s["per_class_iu"] == pytest.approx([1 / 2, 1 / 3, 1 / 2])
    assert s["mean_iu"] == pytest.approx(4 / 9)
    # Pixel accuracy = 3 correct / 5 kept. Mean accuracy = (1/2 + 1/2 + 1/1) / 3 = 2/3.
    assert s["pixel_accuracy"] == pytest.approx(3 / 5)
    assert s["mean_accuracy"] == pytest.approx(2 / 3)


def test_segmentation_perfect():
    s = segmentation_scores(confusion_matrix(TARGET, TARGET, num_classes=3))
    assert s["per_class_iu"] == pytest.approx([1.0, 1.0, 1.0])
    assert s["mean_iu"] == 1.0 and s["pixel_accuracy"] == 1.0 and s["mean_accuracy"] == 1.0


def test_segmentation_absent_classes():
    # With 5 classes, class 3 appears in neither: IU and accuracy NaN, left out of the means, which
    # stay 4/9 and 2/3.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = segmentation_scores(confusion_matrix(PRED, TARGET, num_classes=5))
    assert np.isnan(s["per_class_iu"][3:]).all()
    assert s["mean_iu"] == pytest.approx(4 / 9)
    assert s["mean_accuracy"] == pytest.approx(2 / 3)
    # Class 4 predicted on the ground-truth-0 pixel at (0, 0): IU 0 / (0 + 1 - 0) = 0 counts in the
    # mean; its accuracy (no ground truth) stays NaN. Class 0 now: TP 0 -> IU 0; class 1, 2 as
    # before -> mean IU over classes 0, 1, 2, 4 = (0 + 1/3 + 1/2 + 0) / 4 = 5/24.
    pred = PRED.copy()
    pred[0, 0] = 4
    s = segmentation_scores(confusion_matrix(pred, TARGET, num_classes=5))
    assert s["per_class_iu"][4] == 0.0 and np.isnan(s["per_class_iu"][3])
    assert s["mean_iu"] == pytest.approx(5 / 24)


def test_segmentation_empty_and_bad_values():
    m = confusion_matrix(np.array([3]), np.array([255]), num_classes=3)  # only an ignored pixel
    np.testing.assert_array_equal(m, np.zeros((3, 3)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = segmentation_scores(m)
    assert np.isnan(s["mean_iu"]) and np.isnan(s["pixel_accuracy"])
    with pytest.raises(ValueError):
        confusion_matrix(np.array([3]), np.array([0]), num_classes=3)
    with pytest.raises(ValueError):
        confusion_matrix(np.array([0]), np.array([7]), num_classes=3)
    with pytest.raises(ValueError):
        confusion_matrix(np.array([0, 1]), np.array([0]), num_classes=3)
