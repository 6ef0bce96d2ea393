"""Frozen-feature probes of an encoder: what its features are worth without any fine-tuning.

Two kinds of labelled data, one reading of the encoder:
* a VOC root (multi-label): weighted kNN on L2-normalised output features (as the kNN monitors of
  solo-learn and DINO); each test image scores class c by the similarity-weighted vote of its k
  nearest training images, exp(cos / T); the score is mAP over the classes that have positives
  and negatives (difficult labels ignored);
* a class-folder root (ImageNet's layout, root/<split>/<class>/<image>, single-label): the same
  kNN vote, scored as top-1 accuracy, on a class-balanced sample of each split; and, when asked,
  a linear classifier (logistic regression on standardised features) at every layer, each layer's
  map average-pooled to about 9k values as in the 2016 linear-probe protocol (Zhang et al.,
  "Colorful Image Colorization", ECCV 2016).
Both report unit health: per layer, the share of units that never fire on the probe images (a
channel whose ReLU output is zero at every position of every image; for the output, every value).
Images are decoded once; a probe is one forward pass over centre crops.
"""
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from bench_data.images import class_folders, class_images, find_voc_dir, is_voc_root, read_class_labels
from bench_data.check import checked_class_folders
from bench_data.pixels import centre_crop, load_rgb, normalized_tensor, readable_only
from bench_runtime.errors import UserError
from bench_runtime.metrics import classification_ap, nanmean
from bench_runtime.progress import warning

POOLED_VALUES = 9216    # a layer's map is average-pooled to about this many values for the linear probe
# L-BFGS iterations of a linear probe: on standardised features of a random AlexNet (64 px, imagenette,
# 300 images per class) the fits took 40-230, pool5 the most (not separable there), close to the 300
# allowed before; a fit stops early once converged, so the headroom costs only the fits that need it.
LINEAR_ITERATIONS = 1000
DEAD_WARNING = 0.10     # `bench pretrain` warns when this share of the output's values never fires


@dataclass(frozen=True)
class ProbeProtocol:
    """How a class-folder probe scores: the kNN vote's neighbours and temperature, and the images
    per class of the train and test splits (0: the whole split). The names are `bench transfer`'s
    options that change them."""
    knn_k: int
    knn_temperature: float
    probe_train_per_class: int
    probe_test_per_class: int


PROBE_PROTOCOLS = {
    # This suite's own: a fixed class-balanced sample, quick enough to probe during pretraining.
    "sampled": ProbeProtocol(knn_k=20, knn_temperature=0.07, probe_train_per_class=300, probe_test_per_class=150),
    # lightly's imagenette benchmark (docs/source/getting_started/benchmarks/imagenette_benchmark.py:
    # knn_k = 200, knn_t = 0.1, every train image against every val image), whose published kNN
    # accuracies are then comparable.
    "lightly": ProbeProtocol(knn_k=200, knn_temperature=0.1, probe_train_per_class=0, probe_test_per_class=0),
}
SAMPLED = PROBE_PROTOCOLS["sampled"]


def knn_class_scores(train_features, train_labels, test_features, k=SAMPLED.knn_k,
                     temperature=SAMPLED.knn_temperature):
    """(N_test, C) scores: the weighted share of positives among each test item's k nearest
    training items (cosine similarity on L2-normalised rows; weights exp(similarity / T))."""
    similarity = test_features @ train_features.T
    top, index = similarity.topk(min(k, len(train_features)), dim=1)
    weights = (top / temperature).softmax(1)
    return (weights.unsqueeze(2) * train_labels[index]).sum(1)


def multilabel_map(scores, labels):
    """mAP (the classification task's, bench_runtime.metrics.classification_ap) over the classes with
    positive and negative test items; labels 1 / -1 / 0 (difficult, ignored). NaN when no class
    can be scored."""
    per_class, _ = classification_ap(scores, labels == 1, labels == 0)
    # A class without negatives has AP 1 whatever its scores: left out, as one without positives is.
    return nanmean(per_class[(labels == -1).any(axis=0)])


def knn_top1(train_features, train_labels, test_features, test_labels, k=SAMPLED.knn_k,
             temperature=SAMPLED.knn_temperature):
    """Top-1 accuracy of the weighted kNN vote (features L2-normalised here; labels class indices)."""
    train, test = F.normalize(train_features, dim=1), F.normalize(test_features, dim=1)
    votes = knn_class_scores(train, F.one_hot(train_labels).float(), test, k, temperature)
    return float((votes.argmax(1) == test_labels).float().mean())


def linear_top1(train_features, train_labels, test_features, test_labels, layer="features",
                max_iter=LINEAR_ITERATIONS):
    """Top-1 accuracy of a multinomial logistic regression (L2, C=1, L-BFGS) on standardised
    features. A fit that stops at `max_iter` before converging gives one warning line naming
    `layer`: its accuracy is not final."""
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # said once, below, with the layer's name
        classifier.fit(train_features.numpy(), train_labels.numpy())
    if classifier[-1].n_iter_.max() >= max_iter:
        warning(f"linear probe of {layer}: the logistic regression did not converge in {max_iter} iterations; "
                f"its top-1 is not final")
    return float((classifier.predict(test_features.numpy()) == test_labels.numpy()).mean())


def layer_names(encoder):
    """{module: name} of the activations a probe reads besides the output: for a Sequential
    encoder (AlexNet) the ReLU after each convolution, conv1 .. convN. The output is read as
    `output_name(encoder)`."""
    relus = [m for m in encoder.children() if isinstance(m, nn.ReLU)] if isinstance(encoder, nn.Sequential) else []
    return {relu: f"conv{i}" for i, relu in enumerate(relus, 1)}


def output_name(encoder):
    """pool5 for AlexNet (a Sequential ending in its fifth max-pool), else "output"."""
    if isinstance(encoder, nn.Sequential) and isinstance(encoder[-1], nn.MaxPool2d):
        return f"pool{len(layer_names(encoder))}"
    return "output"


def read_layers(encoder, images, device, pooled=False, batch_size=64):
    """One frozen pass (eval mode, no gradients; the mode is restored) over `images`.

    Returns (output features (N, D) on the CPU, {layer: each unit's largest value (see
    dead_units)}, {layer: (N, ~POOLED_VALUES) average-pooled features} when `pooled`, else {}).
    A unit is a channel for the convolution layers and a single value for the output."""
    names = layer_names(encoder)
    fired, pooled_features, outputs, current = {}, {n: [] for n in names.values()} if pooled else {}, [], {}
    hooks = [m.register_forward_hook(lambda module, _, out: current.__setitem__(names[module], out))
             for m in names]
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            for batch in images.split(batch_size):
                out = encoder(batch.to(device)).float()
                current[output_name(encoder)] = out.flatten(1)
                outputs.append(out.flatten(1).cpu())
                for name, value in current.items():
                    value = value.float()
                    peak = value.amax(dim=(0, 2, 3)) if value.dim() == 4 else value.amax(0)
                    fired[name] = torch.maximum(fired[name], peak) if name in fired else peak
                    if pooled and value.dim() == 4:
                        side = max(1, min(value.shape[-1], round(math.sqrt(POOLED_VALUES / value.shape[1]))))
                        pooled_features[name].append(F.adaptive_avg_pool2d(value, side).flatten(1).cpu())
                current.clear()
    finally:
        for hook in hooks:
            hook.remove()
        encoder.train(was_training)
    return torch.cat(outputs), {k: v.cpu() for k, v in fired.items()}, \
        {name: torch.cat(parts) for name, parts in pooled_features.items()}


def dead_units(*peaks):
    """{dead_<layer>: share of the layer's units that never fire}: whose largest value over every
    image of every `peaks` (read_layers' second result) is not positive."""
    return {f"dead_{name}": float((torch.stack([p[name] for p in peaks]).amax(0) <= 0).float().mean())
            for name in peaks[0]}


def _centre_crops(paths, image_size, mean, std):
    mean, std = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    return torch.stack([normalized_tensor(centre_crop(load_rgb(p, image_size), image_size), mean, std)
                        for p in paths])


class KNNProbe:
    """kNN mAP of an encoder's features on `root` (a labelled VOC root): train_split -> test_split."""
    score_key = "probe_knn_map"

    def __init__(self, root, image_size, mean, std, train_split="train", test_split="val", bad_images="fail"):
        voc = find_voc_dir(root)
        self.images, self.labels = {}, {}
        for split in (train_split, test_split):
            ids, labels = read_class_labels(voc, split)
            paths, labels = readable_with_labels([voc / "JPEGImages" / f"{i}.jpg" for i in ids], labels, bad_images,
                                                 f"{voc.name} {split}")
            self.images[split] = _centre_crops(paths, image_size, mean, std)
            self.labels[split] = labels
        self.train_split, self.test_split = train_split, test_split

    def __call__(self, encoder, device):
        """{probe_knn_map, dead_<layer>...}: kNN mAP on the test split and unit health on both."""
        (train, peaks_train, _), (test, peaks_test, _) = (
            read_layers(encoder, self.images[split], device) for split in (self.train_split, self.test_split))
        positives = torch.from_numpy(self.labels[self.train_split] != -1).float()  # difficult counts as present
        scores = knn_class_scores(F.normalize(train, dim=1), positives, F.normalize(test, dim=1))
        return {self.score_key: multilabel_map(scores.numpy(), self.labels[self.test_split]),
                **dead_units(peaks_train, peaks_test)}


class ClassFolderProbe:
    """kNN top-1 (and, with linear=True, a linear probe per layer) of an encoder's frozen features
    on a class-folder root: root/<train_split>/<class>/ -> root/<test_split>/<class>/, scored as
    `protocol` (a ProbeProtocol) says: its kNN vote, on a fixed class-balanced sample of its images
    per class of each split."""
    score_key = "probe_knn_top1"

    def __init__(self, root, image_size, mean, std, train_split="train", test_split="val", bad_images="fail",
                 protocol=SAMPLED):
        root = Path(root)
        self.images, self.labels, self.protocol = {}, {}, protocol
        self.classes = checked_class_folders(root, (train_split, test_split))
        for split, count in zip((train_split, test_split), (protocol.probe_train_per_class, protocol.probe_test_per_class)):
            paths, labels = class_balanced_sample(root / split, self.classes, count, bad_images=bad_images)
            self.images[split] = _centre_crops(paths, image_size, mean, std)
            self.labels[split] = torch.tensor(labels)
        self.train_split, self.test_split = train_split, test_split

    def __call__(self, encoder, device, linear=False):
        """{probe_knn_top1, dead_<layer>...}; with `linear`, also linear_top1_<layer> for every
        convolution layer (pooled to ~9k values) and for the output."""
        (train, peaks_train, pooled_train), (test, peaks_test, pooled_test) = (
            read_layers(encoder, self.images[split], device, pooled=linear) for split in (self.train_split, self.test_split))
        y_train, y_test = self.labels[self.train_split], self.labels[self.test_split]
        result = {self.score_key: knn_top1(train, y_train, test, y_test, self.protocol.knn_k,
                                           self.protocol.knn_temperature),
                  **dead_units(peaks_train, peaks_test)}
        if linear:
            pooled_train[output_name(encoder)], pooled_test[output_name(encoder)] = train, test
            for name in pooled_train:
                result[f"linear_top1_{name}"] = linear_top1(pooled_train[name], y_train, pooled_test[name], y_test,
                                                           name)
        return result


def readable_with_labels(paths, labels, policy, what):
    """`paths` and their `labels` (a list or an array, one per path) under the --bad-images policy
    (bench_data.pixels.readable_only): the labels of the images left out go with them."""
    readable = set(readable_only(paths, policy, what, progress=False))
    keep = [i for i, path in enumerate(paths) if path in readable]
    return [paths[i] for i in keep], labels[keep] if isinstance(labels, np.ndarray) else [labels[i] for i in keep]


def class_balanced_sample(split_dir, classes, per_class, seed=0, bad_images="fail"):
    """(paths, class indices): up to `per_class` images of each class folder (0: all of them), a
    fixed random choice, the unreadable ones left out under bad_images="skip"."""
    rng = np.random.default_rng(seed)
    paths, labels = [], []
    for index, name in enumerate(classes):
        files = class_images(split_dir / name)
        if not files:
            raise UserError(f"class folder {split_dir / name} has no images")
        chosen = sorted(rng.choice(len(files), size=min(per_class or len(files), len(files)), replace=False))
        paths += [files[i] for i in chosen]
        labels += [index] * len(chosen)
    return readable_with_labels(paths, labels, bad_images, str(split_dir))


def probe_layout(root, splits=("train", "val")):
    """"voc" for a labelled VOC root, "class-folder" for root/<splits[0]>/<class>/...; else a UserError."""
    if is_voc_root(root):
        return "voc"
    if (Path(root) / splits[0]).is_dir():
        return "class-folder"
    raise UserError(f"--probe-data {root} is neither a VOC root (ImageSets/Main labels) nor a class-folder "
                    f"root ({splits[0]}/<class>/<image> and {splits[1]}/<class>/<image>)")


def check_probe_data(root, splits=("train", "val")):
    """A one-line error for labelled data a probe cannot score, read before any run folder is made
    (its labels and class folders; the images are --bad-images' business, when the probe is built)."""
    if probe_layout(root, splits) == "voc":
        for split in splits:
            read_class_labels(find_voc_dir(root), split)
    else:
        checked_class_folders(root, splits)


def make_probe(root, image_size, mean, std, splits=("train", "val"), bad_images="fail"):
    """The probe that fits `root`: KNNProbe for a VOC root, ClassFolderProbe for root/<split>/<class>/."""
    probe = KNNProbe if probe_layout(root, splits) == "voc" else ClassFolderProbe
    return probe(root, image_size, mean, std, *splits, bad_images=bad_images)
