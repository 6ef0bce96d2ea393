"""VOC07 multi-label classification (docs/protocol.md, "Transfer tasks"): trainval -> test, per-class AP and mAP.

Two protocols:
* finetune  the whole network: encoder + fresh fc6/fc7 (dropout 0.5) + a 20-way layer, sigmoid
            cross-entropy with "difficult" labels ignored, random crops of images rescaled by
            1-2x the crop size and mirroring; testing averages 10 random crops (with flips).
* svm       frozen pool5 features, L2-normalised, one LinearSVC per class with its cost chosen by
            3-fold cross-validation; images difficult for a class are left out of its training.
"""
import time

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import GridSearchCV
from sklearn.svm import LinearSVC
from torch import nn

from bench_data.images import VOC_CLASSES
from bench_data.voc import VOCClassification
from pretrain.backbones import feature_shape, frozen_features
from bench_runtime import distributed
from bench_runtime.metrics import classification_ap
from bench_runtime.progress import progress_bar
from .encoders import calibrate_fresh_head
from .finetune import Crops, evaluation_items, fit, seeded_batches, set_up_task
from .records import write_record
from .registry import VOC, Column, TransferTask, register

TEST_CROPS = 10
SVM_COSTS = (0.01, 0.1, 1.0, 10.0)


class Classifier(nn.Module):
    """The encoder + fresh fc6/fc7 (dropout 0.5) + a class layer, on its flattened feature map."""

    def __init__(self, encoder, image_size, width, num_classes=len(VOC_CLASSES)):
        super().__init__()
        channels, side = feature_shape(encoder, image_size)
        self.encoder = encoder
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.5), nn.Linear(channels * side * side, width), nn.ReLU(inplace=True),
            nn.Dropout(0.5), nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, num_classes))

    def forward(self, x):
        return self.head(self.encoder(x))


def _batched(dataset, transform, config, device, progress, desc):
    """This process's shard of `dataset` with `transform`, in batches (see evaluation_items)."""
    dataset.transform = transform
    loader = evaluation_items(dataset, transform, config, device)
    return progress_bar(loader, desc=desc, unit="batch", disable=not (progress and distributed.is_main()))


def run_classification(config, context, run_dir, progress=True):
    started = time.perf_counter()
    task = set_up_task(config, context, VOCClassification)
    encoder, device, train_set, test_set = task.encoder, context.device, task.train_set, task.test_set
    mean, std, size = task.mean, task.std, context.image_size
    if config.protocol == "svm":
        scores = _svm_scores(encoder.to(device), train_set, test_set,
                             Crops(size, mean, std, (1, 1), flip=False, centre=True), config, device, progress)
    else:
        model = Classifier(encoder, size, config.fc_width)
        calibrate_fresh_head(model.head, frozen_features(encoder, task.calibration_images))
        scores = _finetune_scores(model.to(device), train_set, test_set, mean, std, size, config, device, run_dir,
                                  progress)
    # Every process has all the scores (gathered in item order), so each computes the same metric.
    per_class, mean_ap = classification_ap(scores, test_set.labels, test_set.difficult)
    return write_record(run_dir, config, context, task.init_info, "mAP", mean_ap, per_class.tolist(), VOC_CLASSES,
                        started)


def _finetune_scores(model, train_set, test_set, mean, std, size, config, device, run_dir, progress):
    train_set.transform = Crops(size, mean, std, (1.0, 2.0), seed=config.seed)

    def loss_fn(model, batch):
        images, target = batch
        logits = model(images.to(device))
        weights = (~target["difficult"]).float().to(device)
        return F.binary_cross_entropy_with_logits(logits, target["labels"].to(device), weight=weights)

    fit(model, loss_fn, seeded_batches(train_set, train_set.transform, config, device=device), config,
        config.lr or 1e-3, weight_decay=1e-6, desc="cls train", run_dir=run_dir, progress=progress)
    return classification_scores(model, test_set, mean, std, size, config, device, progress)


def classification_scores(model, test_set, mean, std, size, config, device, progress=False):
    """(N, 20) class probabilities of `model` on `test_set`, each the mean over TEST_CROPS random
    crops (with flips) of `size` px of the image rescaled to 1.25x the crop size.

    The crops are drawn per image from (seed, index), so they do not depend on how the test set is
    split between processes; under torchrun each process scores its shard and all get all scores.
    Evaluation runs in fp32 whatever --precision: bf16 scores would tie and move AP."""
    crops_of = Crops(size, mean, std, (1.25, 1.25), count=TEST_CROPS, seed=config.seed)
    scores = []
    with torch.no_grad():
        for crops, _ in _batched(test_set, crops_of, config, device, progress, "cls eval"):
            probs = torch.sigmoid(model(crops.flatten(0, 1).to(device, non_blocking=True)))
            scores += probs.view(crops.shape[0], TEST_CROPS, -1).mean(1).cpu()
    return torch.stack(distributed.concat_in_rank_order(scores))


def _features(encoder, dataset, transform, config, device, progress, desc):
    """L2-normalised features of every image (each process computes its shard; all get all)."""
    encoder.eval()
    features = []
    with torch.no_grad():
        for images, _ in _batched(dataset, transform, config, device, progress, desc):
            features += encoder(images.to(device, non_blocking=True)).flatten(1).cpu()
    return F.normalize(torch.stack(distributed.concat_in_rank_order(features)), dim=1).numpy()


def _svm_scores(encoder, train_set, test_set, transform, config, device, progress):
    train_x = _features(encoder, train_set, transform, config, device, progress, "svm features (train)")
    test_x = _features(encoder, test_set, transform, config, device, progress, "svm features (test)")
    # The SVMs are fitted once, by the main process; the others get its scores.
    return distributed.all_gather_objects(
        _fit_svms(train_x, test_x, train_set, config, progress) if distributed.is_main() else None)[0]


def _fit_svms(train_x, test_x, train_set, config, progress):
    scores = np.zeros((len(test_x), len(VOC_CLASSES)))
    for c in progress_bar(range(len(VOC_CLASSES)), desc="svm per class", disable=not progress):
        keep = ~train_set.difficult[:, c].numpy()
        y = train_set.labels[keep, c].numpy()
        if y.min() == y.max():  # one class only in training: no SVM to fit, AP is undefined or trivial
            scores[:, c] = y[0]
            continue
        folds = int(min(3, y.sum(), (1 - y).sum()))
        # Positives weighted 2:1, as in the common VOC07 SVM benchmark (positives are rare).
        svm = LinearSVC(class_weight={1: 2, 0: 1}, dual="auto", max_iter=5000, random_state=config.seed)
        if folds >= 2:
            svm = GridSearchCV(svm, {"C": SVM_COSTS}, cv=folds, scoring="average_precision").fit(
                train_x[keep], y)
        else:
            svm.fit(train_x[keep], y)
        scores[:, c] = svm.decision_function(test_x)
    return scores


register(TransferTask(
    "cls", "multi-label classification, mAP", run_classification, VOC, "trainval", "test", year="2007",
    protocols=("finetune", "svm"),
    columns=(Column("Classification", "finetune", paper=True), Column("Classification (SVM)", "svm"))))
