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
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from data.masks import MASK_KINDS
from data.pretrain_items import AUGMENT_ON
from data.pixels import channel_stats
from pretrain.train import PretrainConfig, build, pretraining_engine, resolve_config, training_batches, training_images
from runtime import speedups
from runtime.device import synchronize
from runtime.errors import UserError
from runtime.progress import progress_bar
from runtime.runfiles import check_new_run_dir, environment_info, save_json, staged_run_dir, write_atomically
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


def measure_case(case, precision, data_root, mask_dir, device, workers, warmup, steps, progress=True,
                 dataset_stats=(None, None)):
    """One row: model-only and end-to-end throughput of `case` in `precision`. `dataset_stats`:
    the images' (mean, std) when already known (they do not depend on the case)."""
    config = PretrainConfig(method="context-encoder", arch=case.arch, mask=case.mask, data_root=str(data_root),
                            mask_dir=mask_dir, image_size=case.image_size, batch_size=case.batch_size,
                            steps=warmup + steps, seed=0, device=device, workers=workers, precision=precision,
                            dataset_mean=dataset_stats[0], dataset_std=dataset_stats[1])
    config, paths = resolve_config(config)
    row = {"case": case.name, "arch": case.arch, "mask": case.mask, "image_size": case.image_size,
           "batch_size": case.batch_size, "precision": precision}

    # Model only: a fixed random batch, the real method, optimisers and precision.
    method, dataset = build(config, paths, progress)
    method.train()
    engine, train_step = pretraining_engine(method, config, None, progress=False)
    generator = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(case.batch_size, 3, case.image_size, case.image_size, generator=generator)}
    if dataset.mask_sampler is not None:
        hole = torch.from_numpy(dataset.mask_sampler(np.random.default_rng(0))).float()
        batch["hole"] = hole.expand(case.batch_size, 1, *hole.shape).contiguous()
    channels_last = speedups.use_channels_last(config.device)
    batch = {key: speedups.to_device(value, config.device, channels_last) for key, value in batch.items()}
    with FlopCounterMode(display=False) as counter:
        engine.train_one_step(train_step, method, batch)
    row["gflop_per_step"] = counter.get_total_flops() / 1e9
    seconds, _ = _timed_steps(lambda: engine.train_one_step(train_step, method, batch)["loss"],
                              warmup, steps, config.device)
    row["model_only_img_s"] = case.batch_size / seconds

    # End to end: a fresh method (same seed), the training loop's own batches from step 0.
    method, dataset = build(config, paths, progress)
    method.train()
    engine, train_step = pretraining_engine(method, config, None, progress=False)
    batches = training_batches(dataset, config, 0)
    seconds, losses = _timed_steps(lambda: engine.train_one_step(train_step, method, next(batches))["loss"],
                                   warmup, steps, config.device)
    batches.close()
    row["end_to_end_img_s"] = case.batch_size / seconds
    row["end_to_end_mean_loss"] = sum(losses) / len(losses)
    row["e2e_over_model_only"] = row["end_to_end_img_s"] / row["model_only_img_s"]
    row["model_only_gflop_s"] = row["gflop_per_step"] * row["model_only_img_s"] / case.batch_size
    row["end_to_end_gflop_s"] = row["gflop_per_step"] * row["end_to_end_img_s"] / case.batch_size
    return row


def run_speed(out, data_root, mask_dir=None, cases=None, precisions=("fp32", "bf16"), device="cpu",
              workers=1, warmup=2, steps=5, matmul_size=2048, overwrite=False, progress=True,
              loader_sizes=(128, 227), loader_batch=64, loader_batches=20, levers=False, assume_tflops=None, loader_cores=None):
    """Measure everything, write <out>/speed.json, .csv and .md; return the record.

    `loader_sizes`: the sizes of the loader rows (every mask kind at each; empty: none), timed over
    `loader_batches` batches of `loader_batch`;
    `levers`: also the inpainting network's speed levers (benchmarks.inpaint_levers);
    `assume_tflops`, `loader_cores`: the device peak and loader cores the projection assumes
    (default: the measured device, this machine's cores)."""
    if steps < 1 or warmup < 0:
        raise UserError(f"--steps must be at least 1 and --warmup 0 or more, got {steps} and {warmup}")
    cases = cases or default_cases()
    for precision in precisions:
        speedups.check_precision(precision, device)
    out = check_new_run_dir(out, overwrite)  # refuse before measuring, not after
    peaks = {}
    for precision in sorted(set(precisions) | {"fp32"}):
        dtype = {"fp32": torch.float32, **speedups.DTYPES}[precision]
        peaks[precision] = matmul_gflops(dtype, device, matmul_size)
        if progress:
            print(f"matmul peak {precision}: {peaks[precision]:.1f} GFLOP/s")
    rows = []
    measurements = [(case, precision) for case in cases for precision in precisions]
    # The pixel statistics are the same for every case: read the images for them once.
    stats = channel_stats(training_images(PretrainConfig(data_root=str(data_root))))
    for case, precision in progress_bar(measurements, desc="measuring", unit="case", disable=not progress):
        row = measure_case(case, precision, data_root, mask_dir, device, workers, warmup, steps, progress, stats)
        row["peak_gflop_s"] = peaks[precision]
        row["model_only_fraction_of_peak"] = row["model_only_gflop_s"] / peaks[precision]
        row["end_to_end_fraction_of_peak"] = row["end_to_end_gflop_s"] / peaks[precision]
        rows.append(row)
        if progress:
            tqdm.write(format_row(row))
    for row in rows:  # bf16 (or fp16) against fp32 on the same case
        fp32 = next((r for r in rows if r["case"] == row["case"] and r["precision"] == "fp32"), None)
        row["end_to_end_speedup_over_fp32"] = row["end_to_end_img_s"] / fp32["end_to_end_img_s"] if fp32 else None
    loader_cases = [(size, mask, where) for size in loader_sizes for where in AUGMENT_ON for mask in MASK_KINDS]
    loader_rows = [measure_loader(data_root, mask_dir, mask, size, where, device, loader_batch, max(1, workers),
                                  loader_batches, stats)
                   for size, mask, where in progress_bar(loader_cases, desc="data path", unit="case",
                                                         disable=not progress)]
    lever_rows = measure_levers(warmup=warmup, steps=steps, progress=progress) if levers else []
    projections = _projections(rows, loader_rows, peaks, assume_tflops, loader_cores)
    record = {"rows": rows, "loader_rows": loader_rows, "lever_rows": lever_rows, "projections": projections,
              "matmul_peak_gflop_s": peaks, "matmul_size": matmul_size,
              "device": device, "device_name": device_name(device), "threads": torch.get_num_threads(),
              "cores": len(os.sched_getaffinity(0)), "workers": workers, "warmup_steps": warmup,
              "timed_steps": steps, "data_root": str(data_root), "environment": environment_info()}
    # Written beside `out` and renamed: a run stopped midway leaves an earlier record in place.
    with staged_run_dir(out, overwrite) as staging:
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


def device_name(device):
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
