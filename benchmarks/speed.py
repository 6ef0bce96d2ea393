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
precision, so a precision that hurts training shows there.

The results go to <out>/speed.json (with the machine and versions), speed.csv and speed.md.
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

from data.pixels import channel_stats
from pretrain.train import PretrainConfig, build, pretraining_engine, resolve_config, training_batches, training_images
from runtime import speedups
from runtime.errors import UserError
from runtime.progress import progress_bar
from runtime.runfiles import create_run_dir, environment_info, save_json, write_atomically


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
    _synchronize(device)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < min_seconds or count < 3:
        torch.mm(a, b)
        count += 1
        if count % 4 == 0:
            _synchronize(device)
    _synchronize(device)
    return 2 * size**3 * count / (time.perf_counter() - started) / 1e9


def _synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _timed_steps(step, warmup, steps, device):
    """Seconds per step of `step()` over `steps` calls after `warmup` untimed ones; and the losses."""
    for _ in range(warmup):
        step()
    _synchronize(device)
    started, losses = time.perf_counter(), []
    for _ in range(steps):
        losses.append(step())
    _synchronize(device)
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
              workers=1, warmup=2, steps=5, matmul_size=2048, overwrite=False, progress=True):
    """Measure everything, write <out>/speed.json, .csv and .md; return the record."""
    if steps < 1 or warmup < 0:
        raise UserError(f"--steps must be at least 1 and --warmup 0 or more, got {steps} and {warmup}")
    cases = cases or default_cases()
    for precision in precisions:
        speedups.check_precision(precision, device)
    out = create_run_dir(out, overwrite)
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
    record = {"rows": rows, "matmul_peak_gflop_s": peaks, "matmul_size": matmul_size,
              "device": device, "device_name": device_name(device), "threads": torch.get_num_threads(),
              "cores": len(os.sched_getaffinity(0)), "workers": workers, "warmup_steps": warmup,
              "timed_steps": steps, "data_root": str(data_root), "environment": environment_info()}
    save_json(record, out / "speed.json")
    write_atomically(out / "speed.csv", lambda tmp: _write_csv(tmp, rows))
    write_atomically(out / "speed.md", lambda tmp: tmp.write_text(markdown(record)))
    return out, record


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
    return "\n".join(lines) + "\n"


def _write_csv(path, rows):
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
