"""The in-domain evaluation (issue 21): frozen-feature probes on a class-folder root, unit health,
BatchNorm folded out of a pretrained encoder, and `bench transfer --task probe`."""
import json
import shutil
import warnings

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import pretrain.train
from helpers import bench
from pretrain.backbones import ConvBatchNorm, build_backbone, plain_encoder
from pretrain.probe import (PROBE_PROTOCOLS, ClassFolderProbe, ProbeProtocol, class_balanced_sample, dead_units,
                            knn_top1, linear_top1, make_probe, output_name, read_layers)
from sklearn.exceptions import ConvergenceWarning
from bench_runtime.errors import UserError


def clusters(n_per_class, classes=3, dims=16, noise=0.1, seed=0):
    """Features around one random centre per class, and their labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dims))
    labels = np.repeat(np.arange(classes), n_per_class)
    features = centres[labels] + noise * rng.normal(size=(len(labels), dims))
    return torch.tensor(features, dtype=torch.float32), torch.tensor(labels)


def test_knn_and_linear_top1_separate_clusters_and_fall_to_chance_on_noise():
    train, y_train = clusters(20)
    test, y_test = clusters(10, seed=0)
    assert knn_top1(train, y_train, test, y_test) == 1.0
    assert linear_top1(train, y_train, test, y_test) == 1.0
    # Shuffled training labels carry no information: about chance (1/3), far below 1.
    shuffled = y_train[torch.randperm(len(y_train), generator=torch.Generator().manual_seed(0))]
    assert knn_top1(train, shuffled, test, y_test) < 0.7
    assert linear_top1(train, shuffled, test, y_test) < 0.7


def test_read_layers_names_alexnet_layers_pools_to_about_9k_and_counts_dead_units():
    encoder = build_backbone("alexnet").eval()
    images = torch.randn(6, 3, 128, 128)
    output, peaks, pooled = read_layers(encoder, images, "cpu", pooled=True)
    assert output_name(encoder) == "pool5" and output.shape == (6, 256 * 3 * 3)
    assert list(peaks) == ["conv1", "conv2", "conv3", "conv4", "conv5", "pool5"]
    assert list(pooled) == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    assert pooled["conv1"].shape == (6, 64 * 12 * 12)        # 31x31 maps pooled to 12x12: 9216 values
    assert pooled["conv2"].shape == (6, 192 * 7 * 7)         # 9408
    assert pooled["conv5"].shape == (6, 256 * 6 * 6)         # 7x7 maps pooled to 6x6: 9216
    assert torch.allclose(output, encoder(images).flatten(1))  # the hooks change nothing
    # conv5 silenced: every conv5 channel and pool5 value is dead, the layers below are not.
    with torch.no_grad():
        encoder[10].weight.zero_()
        encoder[10].bias.fill_(-1.0)
    dead = dead_units(read_layers(encoder, images, "cpu")[1])
    assert dead["dead_conv5"] == 1.0 and dead["dead_pool5"] == 1.0
    assert dead["dead_conv1"] < 0.1 and dead["dead_conv4"] < 0.1


def test_dead_units_count_a_unit_alive_if_it_fires_on_either_split():
    first = {"conv1": torch.tensor([1.0, 0.0, 0.0, 0.0])}
    second = {"conv1": torch.tensor([0.0, 2.0, 0.0, -1.0])}
    assert dead_units(first) == {"dead_conv1": 0.75}
    assert dead_units(first, second) == {"dead_conv1": 0.5}


def test_class_balanced_sample_is_fixed_and_balanced(toy_class_folders):
    split = toy_class_folders / "train"
    classes = sorted(p.name for p in split.iterdir())
    paths, labels = class_balanced_sample(split, classes, 5)
    assert np.bincount(labels).tolist() == [5] * len(classes)
    assert class_balanced_sample(split, classes, 5) == (paths, labels)
    assert class_balanced_sample(split, classes, 100)[1].count(0) == 12  # all there are


def test_make_probe_picks_by_layout_and_names_a_wrong_root(toy_class_folders, toy_voc_root, tmp_path):
    stats = ([0.5] * 3, [0.25] * 3)
    assert isinstance(make_probe(toy_class_folders, 64, *stats), ClassFolderProbe)
    assert make_probe(toy_voc_root, 64, *stats, ("trainval", "test")).score_key == "probe_knn_map"
    with pytest.raises(UserError, match="is neither a VOC root .* nor a class-folder root"):
        make_probe(tmp_path, 64, *stats)


def test_batchnorm_encoder_folds_into_a_plain_alexnet():
    torch.manual_seed(0)
    encoder = build_backbone("alexnet", "batch")
    assert sum(isinstance(m, ConvBatchNorm) for m in encoder) == 5
    encoder.train()
    with torch.no_grad():
        for _ in range(3):  # running statistics away from their initial 0 / 1
            encoder(torch.randn(8, 3, 96, 96) * 2 + 1)
    encoder.eval()
    plain = plain_encoder(encoder)
    images = torch.randn(4, 3, 96, 96)
    assert torch.allclose(plain(images), encoder(images), atol=1e-4, rtol=1e-4)
    torchvision.models.alexnet().features.load_state_dict(plain.state_dict())  # torchvision's own key names
    assert plain_encoder(build_backbone("alexnet")).__class__ is nn.Sequential
    with pytest.raises(UserError, match="alexnet only"):
        build_backbone("timm:resnet18", "batch")


def test_pretraining_with_batchnorm_and_a_class_folder_probe_logs_unit_health(toy_class_folders, tmp_path,
                                                                               monkeypatch, capsys):
    monkeypatch.setattr(pretrain.train, "DEAD_WARNING", -1.0)  # any share warns: the warning path runs
    out = tmp_path / "run"
    assert bench("pretrain", "--data-root", toy_class_folders / "train", "--out", out, "--image-size", 64,
                 "--steps", 3, "--batch-size", 4, "--workers", 0, "--mask", "random-block",
                 "--encoder-norm", "batch", "--warmup-steps", 10, "--output-scale", 0.1,
                 "--probe-data", toy_class_folders, "--probe-every", 2) == 0
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "never fires on the probe images" in err
    probes = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "probe_knn_top1" in line]
    assert [p["step"] for p in probes] == [0, 2, 3]
    assert {f"dead_conv{i}" for i in range(1, 6)} | {"dead_pool5"} <= set(probes[0])
    assert all(0 <= p["probe_knn_top1"] <= 1 for p in probes)
    assert (out / "probe.png").read_bytes()[:4] == b"\x89PNG"
    # The saved encoder is a plain AlexNet; warm-up left the learning rate below its target.
    torchvision.models.alexnet().features.load_state_dict(torch.load(out / "encoder.pt", weights_only=True))
    options = json.loads((out / "encoder.json").read_text())["method_options"]
    assert options["output_scale"] == 0.1 and options["dropout"] == 0.5
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["optimizers"]["generator"]["param_groups"][0]["lr"] == pytest.approx(1e-4 * (0.1 + 0.9 * 3 / 10))


def test_output_scale_scales_the_last_up_convolution():
    from pretrain.networks import FeatureContextEncoder
    torch.manual_seed(0)
    full = FeatureContextEncoder(build_backbone("alexnet"), 96)
    torch.manual_seed(0)
    small = FeatureContextEncoder(build_backbone("alexnet"), 96, output_scale=0.1)
    assert torch.allclose(small.decoder[-1].weight, 0.1 * full.decoder[-1].weight)
    assert torch.equal(small.decoder[0].weight, full.decoder[0].weight)


def test_transfer_task_probe_records_every_layer_and_beats_chance(toy_class_folders, tmp_path, capsys):
    out, root = tmp_path / "probe", shutil.copytree(toy_class_folders, tmp_path / "classes")
    corrupt = root / "val" / "bird" / "0000.jpg"
    corrupt.write_bytes(corrupt.read_bytes()[:100])  # left out under --bad-images skip
    assert bench("transfer", "--task", "probe", "--init", "random-kraehenbuehl", "--data-root", root,
                 "--image-size", 64, "--bad-images", "skip", "--out", out) == 0
    assert f"warning: skipping 1 unreadable image(s) of {root / 'val'}, e.g. {corrupt}" in capsys.readouterr().err
    record = json.loads((out / "record.json").read_text())
    assert record["task"] == "probe" and record["metric"] == "top-1"
    assert list(record["per_class"]) == ["conv1", "conv2", "conv3", "conv4", "conv5", "pool5"]
    assert record["value"] == record["per_class"]["pool5"] == record["metrics"]["linear_top1_pool5"]
    # 4 classes (chance 25%) of distinct shapes and textures: random features read them well.
    assert record["value"] >= 0.6 and record["metrics"]["probe_knn_top1"] >= 0.5
    assert record["pretrain_label"] == "random + Krähenbühl init (the paper's Random Gaussian)"
    # The default protocol is the sample the probe always took: records keep the identity they had.
    assert record["config"]["knn_k"] == 20 and "knn_k" not in record["transfer_settings"]


def test_the_knn_options_change_the_score_and_the_sample(toy_class_folders):
    encoder = build_backbone("alexnet")
    # The whole train split scored against itself with one neighbour: each image finds itself.
    itself = ClassFolderProbe(toy_class_folders, 64, [0.5] * 3, [0.25] * 3, "train", "train",
                              protocol=ProbeProtocol(knn_k=1, knn_temperature=0.1, probe_train_per_class=0,
                                                     probe_test_per_class=0))
    assert len(itself.images["train"]) == 4 * 12
    assert itself(encoder, "cpu")["probe_knn_top1"] == 1.0
    sampled = ClassFolderProbe(toy_class_folders, 64, [0.5] * 3, [0.25] * 3,
                               protocol=ProbeProtocol(20, 0.07, probe_train_per_class=5, probe_test_per_class=3))
    assert (len(sampled.images["train"]), len(sampled.images["val"])) == (4 * 5, 4 * 3)
    assert PROBE_PROTOCOLS["lightly"] == ProbeProtocol(200, 0.1, 0, 0)


def test_the_linear_probe_converges_on_the_toy_data_and_says_in_one_line_when_it_does_not(toy_class_folders,
                                                                                            capsys):
    encoder = build_backbone("alexnet")
    probe = ClassFolderProbe(toy_class_folders, 64, [0.5] * 3, [0.25] * 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        scores = probe(encoder, "cpu", linear=True)
    assert len([key for key in scores if key.startswith("linear_top1_")]) == 6
    assert "warning" not in capsys.readouterr().err
    train, y_train = clusters(20)
    linear_top1(train, y_train, train, y_train, "conv3", max_iter=1)
    assert capsys.readouterr().err.strip().splitlines() == [
        "warning: linear probe of conv3: the logistic regression did not converge in 1 iterations; "
        "its top-1 is not final"]


def test_transfer_probe_runs_lightly_protocol_with_options_changing_it(toy_class_folders, tmp_path):
    out = tmp_path / "probe"
    # Train images as the test split, one neighbour: each finds itself (the whole splits, as lightly's).
    assert bench("transfer", "--task", "probe", "--init", "random", "--data-root", toy_class_folders,
                 "--image-size", 64, "--test-split", "train", "--probe-protocol", "lightly", "--knn-k", 1,
                 "--out", out) == 0
    record = json.loads((out / "record.json").read_text())
    assert record["metrics"]["probe_knn_top1"] == 1.0
    assert {key: record["config"][key] for key in ("knn_k", "knn_temperature", "probe_train_per_class",
                                                   "probe_test_per_class")} == \
        {"knn_k": 1, "knn_temperature": 0.1, "probe_train_per_class": 0, "probe_test_per_class": 0}
    # In the identity where they differ from the sample the probe always took.
    assert {key: record["transfer_settings"].get(key) for key in ("knn_k", "knn_temperature", "probe_protocol")} == \
        {"knn_k": 1, "knn_temperature": 0.1, "probe_protocol": None}


def test_transfer_task_probe_needs_a_class_folder_root(toy_voc_root, tmp_path, capsys):
    assert bench("transfer", "--task", "probe", "--init", "random", "--out", tmp_path / "a") == 2
    assert "--task probe needs --data-root" in capsys.readouterr().err
    assert bench("transfer", "--task", "probe", "--init", "random", "--data-root", tmp_path / "none",
                 "--out", tmp_path / "b") == 2
    assert "does not exist" in capsys.readouterr().err


def test_context_normalised_target_is_scored_in_context_units_and_filled_back_in_pixels(monkeypatch):
    from pretrain.methods import get_method
    from pretrain.train import PretrainConfig
    config = PretrainConfig(image_size=64, method_options={"target": "context-normalised"})
    method = get_method("context-encoder")(config, [0.5] * 3, [0.25] * 3)
    image = torch.randn(2, 3, 64, 64) * 2 + 1
    hole = torch.zeros(2, 1, 64, 64)
    hole[..., 16:40, 8:30] = 1
    visible = image.masked_select(hole.expand_as(image) == 0).view(2, 3, -1)
    mean, std = visible.mean(2).view(2, 3, 1, 1), visible.std(2, unbiased=False).view(2, 3, 1, 1)
    perfect = ((image - mean) / std).requires_grad_()  # what the network should output
    monkeypatch.setattr(method, "_predict", lambda masked: perfect * 1)
    metrics = method.train_step({"image": image, "hole": hole}, method.configure_optimizers())
    assert metrics["l2"] == pytest.approx(0.0, abs=1e-8)
    assert torch.allclose(method.complete(image, hole), image, atol=1e-4)
    with pytest.raises(UserError, match="context-normalised needs a network"):
        get_method("context-encoder")(PretrainConfig(arch="inpaint", image_size=128, mask="central",
                                                     method_options={"target": "context-normalised"}),
                                      [0.5] * 3, [0.25] * 3)


def test_autoencoder_input_normalised_target_is_scored_and_previewed_in_the_right_units(monkeypatch):
    from pretrain.methods import get_method
    from pretrain.train import PretrainConfig
    config = PretrainConfig(image_size=64, method="autoencoder", method_options={"target": "input-normalised"})
    method = get_method("autoencoder")(config, [0.5] * 3, [0.25] * 3)
    image = torch.randn(2, 3, 64, 64) * 3 - 1
    mean, std = image.mean((2, 3), keepdim=True), image.std((2, 3), unbiased=False, keepdim=True)
    perfect = ((image - mean) / std).requires_grad_()
    monkeypatch.setattr(method.generator, "forward", lambda corrupted: perfect * 1)
    assert method.train_step({"image": image}, {"generator": torch.optim.SGD([perfect], lr=0.0)})["loss"] \
        == pytest.approx(0.0, abs=1e-8)
    reconstruction, original = method.preview({"image": image})
    assert torch.allclose(reconstruction, image, atol=1e-4)
