"""`bench speed`: how fast pretraining runs on this machine, and how close to the hardware.

In one run it measures
* the matmul peak: GFLOP/s of square matmuls (fp32 and bf16) after a warm-up, the ceiling the
  networks' convolutions and matmuls can reach;
* model-only training throughput: training steps of the real method on random images (holes
  from the method's mask sampler, drawn once), no data loading;
* end-to-end throughput: the real training loop on real files (DataLoader, image cache, crops,
  masks, copies to the device), exactly as `bench pretrain` runs it;
for the feature-learning network (AlexNet context encoder, random-region holes) at 128 and 227 px
and the inpainting network (central holes) at 128 px, batch 64 (the released code's settings),
in each precision asked for. It reports images/s, the ratio end-to-end / model-only (1.0: data
loading is hidden completely), the FLOPs of a training step (forward + backward, counted by
torch.utils.flop_counter.FlopCounterMode) and the achieved GFLOP/s as a fraction of the peak of
that precision; and the mean loss of the end-to-end steps, which see the same batches in every
precision, so a precision that hurts training shows there. Then the data path alone and the
bound of a paper-preset pretraining (benchmarks.loader_speed) and, with --levers, the inpainting
network's speed levers (benchmarks.inpaint_levers).

The results go to <out>/speed.json (with the machine and versions), speed.csv, loader.csv,
levers.csv and speed.md.
"""
import csv
import dataclasses
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from bench_data.masks import MASK_KINDS
from bench_data.pretrain_items import AUGMENT_ON
from bench_data.pixels import channel_stats
from pretrain.runs import (build_pretraining, count_flops, fixed_batch_step, pretraining_engine, training_batches,
                           training_images)
from pretrain.train import PretrainConfig
from bench_runtime import speedups
from bench_data.toy_voc import data_root_or_toy
from bench_runtime.device import DEVICE_NAMES, device_name, resolve_device, synchronize
from bench_runtime.options import at_least, option
from bench_runtime.progress import progress_bar
from bench_runtime.runfiles import check_new_run_dir, environment_info, save_json, staged_run_dir, write_atomically
from .inpaint_levers import DEFAULT as LEVER_DEFAULT, loss_over_seeds, measure_levers
from .loader_speed import PAPER_PRETRAINING, measure_loader, project_paper_pretraining, projection_line, \
    training_gflop_per_image


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    arch: str
    mask: str
    image_size: int
    batch_size: int


def default_cases(feature_sizes=(128, 227), feature_batch=32, inpaint_batch=64):
    """The feature network at each size (batch `feature_batch`) and the inpainting network at
    128 px (batch `inpaint_batch`, the released code's 64; 0 leaves it out)."""
    cases = [Case(f"feature-{size}", "alexnet", "random-region", size, feature_batch) for size in feature_sizes]
    if inpaint_batch:
        cases.append(Case("inpaint-128", "inpaint", "central", 128, inpaint_batch))
    return cases


def matmul_gflops(dtype, device, size=2048, min_seconds=1.0):
    """GFLOP/s of (size x size) @ (size x size) matmuls in `dtype`, after a warm-up."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    for _ in range(3):
        torch.mm(a, b)
    synchronize(device)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < min_seconds or count < 3:
        torch.mm(a, b)
        count += 1
        if count % 4 == 0:
            synchronize(device)
    synchronize(device)
    return 2 * size**3 * count / (time.perf_counter() - started) / 1e9


def _timed_steps(step, warmup, steps, device):
    """Seconds per step of `step()` over `steps` calls after `warmup` untimed ones; and the losses."""
    for _ in range(warmup):
        step()
    synchronize(device)
    started, losses = time.perf_counter(), []
    for _ in range(steps):
        losses.append(step())
    synchronize(device)
    return (time.perf_counter() - started) / steps, losses


def measure_case(case, precision, config, dataset_stats, progress=True):
    """One row: model-only and end-to-end throughput of `case` in `precision`, on the data and
    device of `config` (a SpeedConfig with both resolved). `dataset_stats`: the images' (mean, std),
    read once (they do not depend on the case)."""
    warmup, steps = config.warmup, config.steps
    config = PretrainConfig(method="context-encoder", arch=case.arch, mask=case.mask, data_root=config.data_root,
                            mask_dir=config.mask_dir, image_size=case.image_size, batch_size=case.batch_size,
                            steps=warmup + steps, seed=0, device=config.device, workers=config.workers,
                            precision=precision, dataset_mean=dataset_stats[0], dataset_std=dataset_stats[1])
    row = {"case": case.name, "arch": case.arch, "mask": case.mask, "image_size": case.image_size,
           "batch_size": case.batch_size, "precision": precision}

    # Model only: a fixed random batch, the real method, optimisers and precision.
    pretraining = build_pretraining(config, progress)
    context, sampler = pretraining.context, pretraining.dataset.mask_sampler
    hole = None if sampler is None else sampler(np.random.default_rng(0))
    step = fixed_batch_step(pretraining.method, config, context, hole)
    row["gflop_per_step"] = count_flops(step) / 1e9
    seconds, _ = _timed_steps(lambda: step()["loss"], warmup, steps, context.device)
    row["model_only_img_s"] = case.batch_size / seconds

    # End to end: a fresh method (same seed), the training loop's own batches from step 0.
    pretraining = build_pretraining(config, progress)
    method, context = pretraining.method.train(), pretraining.context
    engine, train_step = pretraining_engine(method, config, context, None, progress=False)
    batches = training_batches(pretraining.dataset, config, context, 0)
    seconds, losses = _timed_steps(lambda: engine.train_one_step(train_step, method, next(batches))["loss"],
                                   warmup, steps, context.device)
    batches.close()
    row["end_to_end_img_s"] = case.batch_size / seconds
    row["end_to_end_mean_loss"] = sum(losses) / len(losses)
    row["e2e_over_model_only"] = row["end_to_end_img_s"] / row["model_only_img_s"]
    row["model_only_gflop_s"] = row["gflop_per_step"] * row["model_only_img_s"] / case.batch_size
    row["end_to_end_gflop_s"] = row["gflop_per_step"] * row["end_to_end_img_s"] / case.batch_size
    return row


@dataclasses.dataclass
class SpeedConfig:
    """measure training throughput against the machine's matmul peak

    Measure the matmul peak (fp32, bf16), model-only training throughput on random tensors and
    end-to-end pretraining throughput on real files, for the feature network (AlexNet context
    encoder, random-region holes) at each --feature-sizes and the inpainting network at 128 px, in
    each --precisions. Prints a table and writes speed.json, speed.csv and speed.md into --out."""
    data_root: str | None = option(None, "images for the end-to-end runs (a VOC root or folder); default: the "
                                   "built-in toy VOC set")
    mask_dir: str | None = option(None, "VOC segmentation PNGs for random-region holes (default: the data root's "
                                  "SegmentationClass)")
    feature_sizes: list[int] = option([128, 227], "input sizes of the feature network", nargs="+", check=at_least(1))
    feature_batch: int = option(32, "batch size of the feature network", check=at_least(1))
    inpaint_batch: int = option(64, "batch size of the inpainting network (0: leave it out)", check=at_least(0))
    precisions: list[str] = option(["fp32", "bf16"], "autocast precisions measured", nargs="+",
                                   choices=speedups.PRECISIONS)
    steps: int = option(5, "timed training steps per measurement", check=at_least(1))
    warmup: int = option(2, "untimed steps before them", check=at_least(0))
    matmul_size: int = option(2048, "side of the square matmuls", check=at_least(1))
    device: str = option("auto", DEVICE_NAMES, check=device_name)
    workers: int = option(1, "DataLoader worker processes", check=at_least(0))
    loader_sizes: list[int] = option([128, 227], "input sizes of the data-path rows (every mask kind at each; none: "
                                     "leave them out)", nargs="*", check=at_least(1))
    loader_batch: int = option(64, "batch size of the data-path rows", check=at_least(1))
    loader_batches: int = option(20, "timed batches per data-path row", check=at_least(1))
    levers: bool = option(False, "also time the inpainting network's step with each speed lever (sub-pixel "
                          "up-convolutions, channels_last, torch.compile, threads)")
    assume_tflops: float | None = option(None, "project the paper preset for a device of this bf16 peak (default: "
                                         "the measured device)", check=at_least(1e-9))
    loader_cores: int | None = option(None, "loader workers of the projected machine (default: this machine's "
                                      "cores)", check=at_least(1))
    out: str | None = option(None, "results folder (default: runs/speed-<date>-<time>)")
    overwrite: bool = option(False, "replace an existing results folder (only one bench wrote)")

    def input_paths(self):
        """(option, path) of what the command reads: its --out must lie apart from them."""
        return [("--data-root", self.data_root), ("--mask-dir", self.mask_dir)]


def measure_speed(config, progress=True):
    """`bench speed`: measure, write the record, print speed.md."""
    out, _ = run_speed(config, progress)
    print((out / "speed.md").read_text())
    print(f"written: {out / 'speed.json'} (+ .csv, .md)")


def loader_config(config, mask, image_size, augment_on, dataset_stats):
    """The pretraining config of a data-path row of `config` (SpeedConfig): the context encoder's
    DataLoader with these holes, size and augmentation side, at least one worker."""
    return PretrainConfig(method="context-encoder", arch="alexnet", mask=mask, data_root=config.data_root,
                          mask_dir=config.mask_dir, image_size=image_size, batch_size=config.loader_batch, steps=1,
                          seed=0, device=config.device, workers=max(1, config.workers),
                          dataset_mean=dataset_stats[0], dataset_std=dataset_stats[1], augment_on=augment_on)


def run_speed(config, progress=True):
    """Measure everything `config` (SpeedConfig) asks for, write <out>/speed.json, .csv and .md;
    return (out, the record)."""
    out = config.out or f"runs/speed-{time.strftime('%Y%m%d-%H%M%S')}"
    config = dataclasses.replace(config, data_root=data_root_or_toy(config.data_root),
                                 device=resolve_device(config.device))
    precisions, device, workers, warmup, steps = config.precisions, config.device, config.workers, config.warmup, \
        config.steps
    cases = default_cases(config.feature_sizes, config.feature_batch, config.inpaint_batch)
    for precision in precisions:
        speedups.check_precision(precision, device)
    out = check_new_run_dir(out, config.overwrite, config.input_paths())  # refuse before measuring, not after
    peaks = {}
    for precision in sorted(set(precisions) | {"fp32"}):
        dtype = {"fp32": torch.float32, **speedups.DTYPES}[precision]
        peaks[precision] = matmul_gflops(dtype, device, config.matmul_size)
        if progress:
            print(f"matmul peak {precision}: {peaks[precision]:.1f} GFLOP/s")
    rows = []
    measurements = [(case, precision) for case in cases for precision in precisions]
    # The pixel statistics are the same for every case: read the images for them once.
    stats = channel_stats(training_images(PretrainConfig(data_root=config.data_root)))
    for case, precision in progress_bar(measurements, desc="measuring", unit="case", disable=not progress):
        row = measure_case(case, precision, config, stats, progress)
        row["peak_gflop_s"] = peaks[precision]
        row["model_only_fraction_of_peak"] = row["model_only_gflop_s"] / peaks[precision]
        row["end_to_end_fraction_of_peak"] = row["end_to_end_gflop_s"] / peaks[precision]
        rows.append(row)
        if progress:
            tqdm.write(format_row(row))
    for row in rows:  # bf16 (or fp16) against fp32 on the same case
        fp32 = next((r for r in rows if r["case"] == row["case"] and r["precision"] == "fp32"), None)
        row["end_to_end_speedup_over_fp32"] = row["end_to_end_img_s"] / fp32["end_to_end_img_s"] if fp32 else None
    loader_cases = [(size, mask, where) for size in config.loader_sizes for where in AUGMENT_ON for mask in MASK_KINDS]
    loader_rows = [measure_loader(loader_config(config, mask, size, where, stats), config.loader_batches)
                   for size, mask, where in progress_bar(loader_cases, desc="data path", unit="case",
                                                         disable=not progress)]
    lever_rows = measure_levers(warmup=warmup, steps=steps, progress=progress) if config.levers else []
    projections = _projections(rows, loader_rows, peaks, config.assume_tflops, config.loader_cores)
    record = {"rows": rows, "loader_rows": loader_rows, "lever_rows": lever_rows, "projections": projections,
              "matmul_peak_gflop_s": peaks, "matmul_size": config.matmul_size,
              "device": device, "device_name": hardware_name(device), "threads": torch.get_num_threads(),
              "cores": len(os.sched_getaffinity(0)), "workers": workers, "warmup_steps": warmup,
              "timed_steps": steps, "data_root": config.data_root, "environment": environment_info()}
    # Written beside `out` and renamed: a run stopped midway leaves an earlier record in place.
    with staged_run_dir(out, "speed", config.overwrite, inputs=config.input_paths()) as staging:
        save_json(record, staging / "speed.json")
        write_atomically(staging / "speed.csv", lambda tmp: _write_csv(tmp, rows))
        if loader_rows:
            write_atomically(staging / "loader.csv", lambda tmp: _write_csv(tmp, loader_rows))
        if lever_rows:
            write_atomically(staging / "levers.csv", lambda tmp: _write_csv(tmp, lever_rows))
        write_atomically(staging / "speed.md", lambda tmp: tmp.write_text(markdown(record)))
    return out, record


def _projections(rows, loader_rows, peaks, assume_tflops, loader_cores):
    """The paper-preset projections (benchmarks.loader_speed), one per --augment-on, from this
    run's rows: the loader's random-region rate at 227 px; the device's measured feature-network
    rate at 227 px in its fastest precision, less the time of the batch-level augmentation where
    that was measured on it, unless `assume_tflops` names another device."""
    feature = [row for row in rows if row["arch"] == "alexnet" and row["image_size"] == PAPER_PRETRAINING["image_size"]]
    fastest = max(feature, key=lambda row: row["model_only_img_s"], default=None)
    gflop = fastest["gflop_per_step"] / fastest["batch_size"] if fastest else \
        training_gflop_per_image(PAPER_PRETRAINING["image_size"])
    cores = loader_cores or len(os.sched_getaffinity(0))
    projections = []
    for loader in loader_rows:
        if (loader["image_size"], loader["mask"]) != (PAPER_PRETRAINING["image_size"], PAPER_PRETRAINING["mask"]):
            continue
        if assume_tflops or not fastest:  # another device, or none measured here: an assumed utilisation
            projection = project_paper_pretraining(loader["img_s_per_worker"], cores,
                                                   assume_tflops or max(peaks.values()) / 1e3, gflop)
        else:
            model = fastest["model_only_img_s"]
            if loader["device_img_s"]:
                model = 1 / (1 / model + 1 / loader["device_img_s"])
            projection = project_paper_pretraining(loader["img_s_per_worker"], cores, max(peaks.values()) / 1e3,
                                                   gflop, measured_model_img_s=model)
        if loader["augment_on"] == "device":  # the device's share of the augmentation
            projection["device_augment"] = "not included (not measured there)" if assume_tflops or not fastest \
                else "included"
        projections.append({"augment_on": loader["augment_on"], **projection})
    return projections


def hardware_name(device):
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


COLUMNS = [("case", "case", "{}"), ("precision", "precision", "{}"), ("batch_size", "batch", "{}"),
           ("model_only_img_s", "model-only img/s", "{:.1f}"), ("end_to_end_img_s", "end-to-end img/s", "{:.1f}"),
           ("e2e_over_model_only", "e2e / model-only", "{:.2f}"),
           ("end_to_end_speedup_over_fp32", "e2e vs fp32", "{:.2f}x"),
           ("gflop_per_step", "GFLOP/step", "{:.1f}"), ("model_only_gflop_s", "model GFLOP/s", "{:.1f}"),
           ("model_only_fraction_of_peak", "of peak", "{:.0%}"), ("end_to_end_mean_loss", "e2e loss", "{:.4f}")]


def _cell(row, key, fmt):
    value = row.get(key)
    return "-" if value is None else fmt.format(value)


def format_row(row):
    return "  ".join(f"{title}={_cell(row, key, fmt)}" for key, title, fmt in COLUMNS if key in row)


def markdown(record):
    lines = [f"Device: {record['device_name']} ({record['device']}, {record['threads']} threads, "
             f"{record['workers']} loader workers); matmul peak " +
             ", ".join(f"{p} {v:.1f} GFLOP/s" for p, v in record["matmul_peak_gflop_s"].items()) +
             f"; {record['timed_steps']} timed steps after {record['warmup_steps']} warm-up.", "",
             "| " + " | ".join(title for _, title, _ in COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]
    for row in record["rows"]:
        lines.append("| " + " | ".join(_cell(row, key, fmt) for key, _, fmt in COLUMNS) + " |")
    if record.get("loader_rows"):
        lines += ["", f"The data path alone (no model; batch {record['loader_rows'][0]['batch_size']}, "
                      f"{record['loader_rows'][0]['workers']} loader worker(s)); augment on device: the workers only "
                      f"slice crops, the device flips, normalises and draws the holes:", "",
                  "| mask | size | augment on | loader img/s | img/s per worker | device augment img/s |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {row['mask']} | {row['image_size']} | {row['augment_on']} | {row['loader_img_s']:.0f} | "
                  f"{row['img_s_per_worker']:.0f} | {_cell(row, 'device_img_s', '{:.0f}')} |"
                  for row in record["loader_rows"]]
    if record.get("lever_rows"):
        lines += ["", "The inpainting network's training step (128 px, batch "
                      f"{record['lever_rows'][0]['batch_size']}, fp32, model only), lever by lever:", "",
                  "| levers | seed | threads | img/s | vs convolutions | loss after the timed steps |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {row['lever']} | {row['seed']} | {row['threads']} | {row['img_s']:.1f} | "
                  f"{_cell(row, 'over_convolutions', '{:.2f}x')} | {row['final_loss']:.5f} |" for row in record["lever_rows"]]
        spreads = [(name, *loss_over_seeds(record["lever_rows"], name)) for name in ("convolutions", LEVER_DEFAULT)]
        lines += ["", "Loss after the timed steps over seeds: " + "; ".join(
            f"{name} {mean:.5f} +- {sd:.5f} ({count} seeds)" for name, mean, sd, count in spreads)]
    if record.get("projections"):
        lines += [""] + [f"- augment on {p['augment_on']}: {projection_line(p)}"
                         + (f"; the device's augmentation time {p['device_augment']}" if "device_augment" in p else "")
                         for p in record["projections"]]
    return "\n".join(lines) + "\n"


def _write_csv(path, rows):
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
