"""A frozen-feature probe of the encoder during pretraining (`bench pretrain --probe-data ROOT`).

Weighted k-nearest-neighbour classification on L2-normalised pool5 features (as the kNN monitors
of solo-learn and DINO): each test image of a labelled VOC root scores class c by the
similarity-weighted vote of its k nearest training images, exp(cos / T), and the probe reports
mAP over the classes that have positives and negatives in the test split (difficult labels
ignored). It needs no training, so on 2 CPU cores it costs a few seconds: one forward pass over
the centre crops, which are decoded once.
"""
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score

from data.images import find_voc_dir, read_class_labels
from data.pixels import load_rgb, normalized_tensor
from .backbones import frozen_features

NEIGHBOURS = 20
TEMPERATURE = 0.07


def knn_class_scores(train_features, train_labels, test_features, k=NEIGHBOURS, temperature=TEMPERATURE):
    """(N_test, C) scores: the weighted share of positives among each test item's k nearest
    training items (cosine similarity on L2-normalised rows; weights exp(similarity / T))."""
    similarity = test_features @ train_features.T
    top, index = similarity.topk(min(k, len(train_features)), dim=1)
    weights = (top / temperature).softmax(1)
    return (weights.unsqueeze(2) * train_labels[index]).sum(1)


def multilabel_map(scores, labels):
    """mAP over the classes with positive and negative test items; labels 1 / -1 / 0 (difficult,
    ignored). NaN when no class can be scored."""
    aps = []
    for c in range(labels.shape[1]):
        keep = labels[:, c] != 0
        y = labels[keep, c] > 0
        if y.any() and not y.all():
            aps.append(average_precision_score(y, scores[keep, c]))
    return float(np.mean(aps)) if aps else float("nan")


class KNNProbe:
    """kNN mAP of an encoder's features on `root` (a labelled VOC root): train_split -> test_split."""

    def __init__(self, root, image_size, mean, std, train_split="train", test_split="val", year=None):
        voc = find_voc_dir(root, year)
        mean, std = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
        self.images, self.labels = {}, {}
        for split in (train_split, test_split):
            ids, labels = read_class_labels(voc, split)
            self.images[split] = torch.stack([
                normalized_tensor(_centre_square(load_rgb(voc / "JPEGImages" / f"{i}.jpg", image_size), image_size),
                                  mean, std) for i in ids])
            self.labels[split] = labels
        self.train_split, self.test_split = train_split, test_split

    def features(self, encoder, split, device):
        features = frozen_features(encoder, self.images[split].to(device)).flatten(1).float().cpu()
        return F.normalize(features, dim=1)

    def __call__(self, encoder, device):
        """The encoder's kNN mAP (in eval mode; its train/eval mode is restored)."""
        train, test = (self.features(encoder, s, device) for s in (self.train_split, self.test_split))
        positives = torch.from_numpy(self.labels[self.train_split] != -1).float()  # difficult counts as present
        scores = knn_class_scores(train, positives, test)
        return multilabel_map(scores.numpy(), self.labels[self.test_split])


def _centre_square(image, side):
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side))
