"""The fast paths: the uint8 image cache, --precision, --compile and --sync-bn validation, and a
tiny `bench speed`."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from bench_data.imagecache import ImageCache
from bench_data.images import list_images
from bench_data.masks import MaskSampler
from bench_data.pixels import load_rgb
from bench_data.pretrain_items import PretrainImages
from bench_runtime import speedups
from bench_runtime.errors import UserError
from helpers import bench

FAST_PRETRAIN = ["--image-size", 64, "--batch-size", 4, "--steps", 2, "--workers", 0, "--mask", "central",
                 "--preview-every", 100]


def one_line_error(capsys):
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    return lines[0]


# ------------------------------------------------------------------------------ image cache

def test_cache_holds_the_decoded_pixels_and_is_reused(toy_voc_root, tmp_path):
    paths = list_images(toy_voc_root, "train", "2012")
    cache = ImageCache(paths, 70, folder=tmp_path, progress=False)
    for index, path in enumerate(paths):
        np.testing.assert_array_equal(cache[index], np.asarray(load_rgb(path, 70)))
    files = sorted((tmp_path / "images").iterdir())
    assert [f.suffix for f in files] == [".json", ".u8"]  # nothing temporary left
    pixels_written = files[1].stat().st_mtime_ns
    again = ImageCache(paths, 70, folder=tmp_path, progress=False)  # another method, seed, epoch: reused
    assert files[1].stat().st_mtime_ns == pixels_written and len(again) == len(paths)  # not decoded again
    ImageCache(paths, 80, folder=tmp_path, progress=False)  # another size: another cache
    assert len(list((tmp_path / "images").glob("*.json"))) == 2


def test_dataset_items_are_the_same_with_and_without_cache(toy_voc_root, tmp_path):
    paths = list_images(toy_voc_root, "train", "2012")
    args = (paths, 64, 74, [0.5] * 3, [0.25] * 3, MaskSampler("random-block", 64), 3)
    plain = PretrainImages(*args)
    cached = PretrainImages(*args, cache=ImageCache(paths, 74, folder=tmp_path, progress=False))
    for key in [(0, 0), (0, 5), (7, 3)]:
        for name, value in plain[key].items():
            assert torch.equal(cached[key][name], value)


def test_a_failed_build_leaves_no_cache(toy_voc_root, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    paths = [*list_images(toy_voc_root, "train", "2012")[:3], broken]
    with pytest.raises(UserError, match="broken.jpg"):
        ImageCache(paths, 64, folder=tmp_path / "cache", progress=False)
    assert list((tmp_path / "cache" / "images").iterdir()) == []


def test_a_changed_file_makes_a_new_cache(toy_voc_root, tmp_path):
    source = list_images(toy_voc_root, "train", "2012")[0]
    path = tmp_path / "image.jpg"
    path.write_bytes(source.read_bytes())
    first = ImageCache([path], 64, folder=tmp_path, progress=False)
    os.utime(path, ns=(0, 0))
    second = ImageCache([path], 64, folder=tmp_path, progress=False)
    assert first.index_path != second.index_path


def test_pretraining_without_cache_matches_with_cache(toy_voc_root, tmp_path):
    for name, extra in (("cached", []), ("plain", ["--no-image-cache"])):
        assert bench("pretrain", "--data-root", toy_voc_root, "--out", tmp_path / name, *FAST_PRETRAIN, *extra) == 0
    cached, plain = (torch.load(tmp_path / name / "encoder.pt", weights_only=True) for name in ("cached", "plain"))
    assert all(torch.equal(cached[key], plain[key]) for key in cached)
    assert json.loads((tmp_path / "plain" / "config.json").read_text())["config"]["image_cache"] is False


# ---------------------------------------------------------------------- precision and options

def test_fp16_on_cpu_is_a_user_error(toy_voc_root, tmp_path, capsys):
    assert bench("pretrain", "--data-root", toy_voc_root, "--out", tmp_path / "run", "--device", "cpu",
                 "--precision", "fp16", *FAST_PRETRAIN) == 2
    assert "fp16 needs a CUDA device" in one_line_error(capsys)
    assert not (tmp_path / "run").exists()


def test_sync_bn_needs_cuda(toy_voc_root, tmp_path, capsys):
    assert bench("transfer", "--task", "cls", "--data-root", toy_voc_root, "--out", tmp_path / "cls",
                 "--device", "cpu", "--sync-bn", "--steps", 1) == 2
    assert "--sync-bn" in one_line_error(capsys)


def test_bf16_without_cpu_support_is_a_user_error(monkeypatch):
    monkeypatch.setattr(speedups, "cpu_has_bf16", lambda: False)
    with pytest.raises(UserError, match="no bf16 instructions"):
        speedups.check_precision("bf16", "cpu")


def test_unknown_precision_is_refused(capsys):
    assert bench("pretrain", "--precision", "fp8") == 2
    assert "--precision" in capsys.readouterr().err


def test_compile_and_precision_options_reach_the_configs(monkeypatch, tmp_path):
    """The flags arrive in the configs that pretrain() and run_task() receive (which write them into
    config.json and record.json), defaults included."""
    received = {}

    def pretrain(config, out, *_):
        received["pretrain"] = config
        return Path(out)

    def run_task(config, run_dir, *_):
        received["transfer"] = config
        return {"metric": "mean_iu", "value": 0.0}

    monkeypatch.setattr("pretrain.train.pretrain", pretrain)
    monkeypatch.setattr("transfer.tasks.run_task", run_task)
    assert bench("pretrain", "--compile", "--precision", "bf16", "--no-image-cache", "--out", tmp_path / "p") == 0
    config = received["pretrain"]
    assert (config.compile, config.precision, config.sync_bn, config.image_cache) == (True, "bf16", False, False)
    assert bench("transfer", "--task", "seg", "--compile", "--sync-bn", "--out", tmp_path / "t") == 0
    config = received["transfer"]
    assert (config.task, config.compile, config.precision, config.sync_bn) == ("seg", True, "fp32", True)


@pytest.mark.skipif(not speedups.cpu_has_bf16(), reason="this CPU has no bf16 instructions")
def test_bf16_pretraining_and_transfer_on_cpu(toy_voc_root, tmp_path):
    run = tmp_path / "bf16"
    assert bench("pretrain", "--data-root", toy_voc_root, "--out", run, "--precision", "bf16", *FAST_PRETRAIN) == 0
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(np.isfinite(line["loss"]) for line in lines)
    # (At 64 px the decoder's maps are 1x1, where CPU bf16 weight gradients need the fp32 fallback.)
    assert all(torch.isfinite(w).all() for w in torch.load(run / "encoder.pt", weights_only=True).values())
    assert bench("transfer", "--task", "cls", "--data-root", toy_voc_root, "--out", tmp_path / "cls", "--init", run,
                 "--precision", "bf16", "--steps", 2, "--batch-size", 4, "--fc-width", 16, "--workers", 0) == 0
    assert json.loads((tmp_path / "cls" / "record.json").read_text())["config"]["precision"] == "bf16"


def test_autocast_weight_cache_follows_optimiser_steps():
    """A step inside the autocast region must be seen by the next forward (the pretext methods
    step their optimisers inside train_step)."""
    if not speedups.cpu_has_bf16():
        pytest.skip("this CPU has no bf16 instructions")
    layer = torch.nn.Linear(4, 4)
    x = torch.ones(1, 4)
    with speedups.autocast("bf16", "cpu", weight_cache=False):
        before = layer(x)
        with torch.no_grad():
            layer.weight.add_(1.0)
        after = layer(x)
    assert not torch.equal(before, after)


# ------------------------------------------------------------------------------ bench speed

def test_bench_speed_writes_its_record(toy_voc_root, tmp_path, capsys, monkeypatch):
    out = tmp_path / "speed"
    options = ["speed", "--data-root", toy_voc_root, "--feature-sizes", 64, "--feature-batch", 2,
               "--inpaint-batch", 0, "--precisions", "fp32", "--steps", 1, "--warmup", 1,
               "--matmul-size", 64, "--workers", 0, "--device", "cpu", "--loader-sizes", 64,
               "--loader-batch", 4, "--loader-batches", 2, "--out", out]
    assert bench(*options) == 0
    record = json.loads((out / "speed.json").read_text())
    assert set(record["matmul_peak_gflop_s"]) == {"fp32"} and record["matmul_peak_gflop_s"]["fp32"] > 0
    (row,) = record["rows"]
    assert (row["case"], row["precision"], row["image_size"], row["batch_size"]) == ("feature-64", "fp32", 64, 2)
    for key in ("model_only_img_s", "end_to_end_img_s", "e2e_over_model_only", "gflop_per_step",
                "model_only_gflop_s", "model_only_fraction_of_peak", "end_to_end_fraction_of_peak",
                "end_to_end_mean_loss"):
        assert row[key] > 0, key
    assert row["end_to_end_speedup_over_fp32"] == 1.0
    assert "feature-64" in (out / "speed.md").read_text()
    assert (out / "speed.csv").read_text().startswith("case,")
    # The data path alone: every mask kind, per image in the loader and per batch on the device.
    loader_rows = record["loader_rows"]
    assert {(row["mask"], row["augment_on"]) for row in loader_rows} == {
        (mask, where) for mask in ("central", "random-block", "random-region", "noise") for where in ("loader", "device")}
    assert all(row["img_s_per_worker"] > 0 and row["workers"] == 1 for row in loader_rows)
    assert all((row["device_img_s"] or 0) > 0 for row in loader_rows if row["augment_on"] == "device")
    assert record["projections"] == []  # no 227 px loader row to project the paper preset from
    assert "feature-64" in capsys.readouterr().out
    # An existing result is never overwritten; with --overwrite, a run that stops midway keeps it.
    assert bench(*options) == 2
    assert "already exists" in one_line_error(capsys)
    import benchmarks.speed

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(benchmarks.speed, "measure_loader", interrupted)
    assert bench(*options, "--overwrite") == 130  # interrupted
    assert json.loads((out / "speed.json").read_text()) == record


def test_projection_names_the_side_that_bounds_a_paper_pretraining():
    from benchmarks.loader_speed import project_paper_pretraining, projection_line
    # 5 GFLOP per image on 100 TFLOP/s at 35%: 7,000 img/s; 16 workers x 350 img/s: 5,600 img/s.
    loader_bound = project_paper_pretraining(350, 16, 100, 5.0, utilization=0.35)
    assert loader_bound["bound"] == "loader" and loader_bound["device_img_s"] == pytest.approx(7000)
    assert loader_bound["paper_pretraining_hours"] == pytest.approx(12.8e6 / 5600 / 3600)
    device_bound = project_paper_pretraining(1500, 16, 100, 5.0, utilization=0.35)
    assert device_bound["bound"] == "device"
    assert device_bound["paper_pretraining_hours"] == pytest.approx(12.8e6 / 7000 / 3600)
    measured = project_paper_pretraining(350, 2, 1, 5.0, measured_model_img_s=40)
    assert measured["device_measured"] and measured["bound"] == "device" and measured["utilization"] is None
    assert "bound by the loader" in projection_line(loader_bound) and "assumed" in projection_line(loader_bound)
    assert "(measured)" in projection_line(measured)


def test_speed_levers_change_the_speed_not_the_computation():
    """`bench speed --levers` rows: the forms share parameters, so after one step from the same
    weights on the same batch the losses agree up to rounding; each row has its ratio."""
    from torch import nn

    from benchmarks.inpaint_levers import loss_over_seeds, measure_levers, set_layer_forms
    from pretrain.networks import InpaintingGenerator, PointInputUpConv, SubPixelUpConv, WholeInputConv
    net = InpaintingGenerator()
    set_layer_forms(net, matmul=False, subpixel=True)
    kinds = {type(layer) for layer in net.modules()}
    assert WholeInputConv not in kinds and PointInputUpConv not in kinds and SubPixelUpConv in kinds
    assert type(net.decoder[0]) is nn.ConvTranspose2d

    rows = measure_levers(("convolutions", "matmul", "matmul + sub-pixel"), batch_size=2, warmup=0, steps=1,
                          noise_seeds=(1,), progress=False)
    assert [(row["lever"], row["seed"]) for row in rows] == [
        ("convolutions", 0), ("matmul", 0), ("matmul + sub-pixel", 0), ("convolutions", 1), ("matmul", 1)]
    seed0 = [row["final_loss"] for row in rows if row["seed"] == 0]
    assert max(seed0) - min(seed0) < 1e-4 * abs(seed0[0])
    assert rows[0]["over_convolutions"] == 1.0 and all(row["img_s"] > 0 for row in rows)
    mean, spread, count = loss_over_seeds(rows, "matmul")
    assert count == 2 and spread > 0


def test_omp_num_threads_is_the_users_choice(monkeypatch):
    from bench_runtime.device import start_process
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        start_process()
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "4,2")  # nested-parallelism syntax: not a count, the cores decide
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
        start_process()
        assert torch.get_num_threads() == len(os.sched_getaffinity(0))
    finally:
        torch.set_num_threads(before)
