"""The pretraining data path alone, and which side bounds a run: `bench speed`'s loader rows and
its projection line.

A loader row is the images/s that `bench pretrain`'s own DataLoader delivers with no model: the
uint8 image cache, random crops and flips, normalisation, hole masks and collation, for one mask
kind at one input size, divided by its worker processes (0 workers: the main process does the
work, counted as one). With --augment-on device the workers only slice crops, and the row also
gives the rate of the flips, normalisation and holes done a batch at a time on the device.

The projection compares what the loader can deliver on a machine with `cores` cores (one worker
per core) with what a device of a given peak can train, for the `paper` preset's pretraining
(227 px, batch 128, 100k steps, random-region holes).
"""
import time

from bench_data.masks import central_mask
from bench_data.sampling import epoch_batches
from pretrain.runs import build_method, build_pretraining, count_flops, fixed_batch_step, resolve_pretraining
from pretrain.train import PretrainConfig
from bench_runtime.device import synchronize

# The paper preset's pretraining (benchmarks/presets/paper.yaml; docs/protocol.md, "The paper preset").
PAPER_PRETRAINING = {"image_size": 227, "batch_size": 128, "steps": 100_000, "mask": "random-region"}
# Fraction of its bf16 peak a GPU is assumed to reach on the AlexNet context encoder's training
# step when it was not measured: an assumption, printed with every projection that uses it (our
# 2-core AVX-512/AMX CPU reaches 65% of its fp32 peak and 21% of its bf16 peak on this step).
ASSUMED_UTILIZATION = 0.25
DEVICE_TIMED_BATCHES = 5


def measure_loader(config, batches=20, progress=False):
    """One loader row: images/s delivered by the pretraining DataLoader of `config` (a
    PretrainConfig), model-free, after one untimed batch (which starts the workers); with
    augment_on "device", also the images/s of the batch-level work left to the device (flip,
    normalisation, holes), timed on the last batches."""
    pretraining = build_pretraining(config, progress)
    dataset, device = pretraining.dataset, pretraining.context.device
    batch_size, workers = config.batch_size, config.workers
    loader = iter(epoch_batches(dataset, batch_size, config.seed, 0, workers, device))
    next(loader)
    started, last = time.perf_counter(), []
    for _ in range(batches):
        last = [next(loader), *last][:DEVICE_TIMED_BATCHES]
    rate = batches * batch_size / (time.perf_counter() - started)
    del loader  # stops the workers
    row = {"mask": config.mask, "image_size": config.image_size, "augment_on": config.augment_on,
           "batch_size": batch_size,
           "workers": workers, "loader_img_s": rate, "img_s_per_worker": rate / max(1, workers),
           "device_img_s": None}
    if config.augment_on == "device":
        last = [{key: value.to(device) for key, value in batch.items()} for batch in last]
        dataset.finish_batch(last[0])  # warm-up
        synchronize(device)
        started = time.perf_counter()
        for batch in last:
            dataset.finish_batch(batch)
        synchronize(device)
        row["device_img_s"] = len(last) * batch_size / (time.perf_counter() - started)
    return row


def training_gflop_per_image(image_size, mask="random-region", arch="alexnet", batch_size=2):
    """GFLOP per image of one training step of the context encoder (forward and backward,
    FlopCounterMode; a step's FLOPs are proportional to its batch)."""
    config = PretrainConfig(method="context-encoder", arch=arch, mask=mask, image_size=image_size,
                            batch_size=batch_size, device="cpu", dataset_mean=[0.5] * 3, dataset_std=[0.25] * 3)
    context = resolve_pretraining(config, paths=[])  # synthetic batches: no images to read
    step = fixed_batch_step(build_method(context.recorded(config)), config, context, central_mask(image_size))
    return count_flops(step) / 1e9 / batch_size


def project_paper_pretraining(loader_img_s_per_worker, cores, peak_tflops, gflop_per_image,
                              utilization=ASSUMED_UTILIZATION, measured_model_img_s=None):
    """Which side bounds a paper-preset pretraining step, and its projected wall time.

    The device trains `measured_model_img_s` images/s when that was measured, else
    peak x utilization / FLOPs per image; the loader delivers its per-worker rate x `cores`."""
    device_img_s = measured_model_img_s or peak_tflops * 1e3 * utilization / gflop_per_image
    loader_img_s = loader_img_s_per_worker * cores
    rate = min(device_img_s, loader_img_s)
    images = PAPER_PRETRAINING["steps"] * PAPER_PRETRAINING["batch_size"]
    return {"device_img_s": device_img_s, "device_measured": measured_model_img_s is not None,
            "loader_img_s": loader_img_s, "cores": cores, "peak_tflops": peak_tflops,
            "utilization": None if measured_model_img_s else utilization, "gflop_per_image": gflop_per_image,
            "bound": "loader" if loader_img_s < device_img_s else "device",
            "paper_pretraining_hours": images / rate / 3600}


def projection_line(projection):
    device = (f"device {projection['device_img_s']:,.0f} img/s "
              + ("(measured)" if projection["device_measured"] else
                 f"({projection['peak_tflops']:g} TFLOP/s x {projection['utilization']:.0%} / "
                 f"{projection['gflop_per_image']:.2f} GFLOP per image, assumed)"))
    return (f"paper preset pretraining (227 px, batch 128, 100k steps): {device}; loader "
            f"{projection['loader_img_s']:,.0f} img/s ({projection['cores']} workers); bound by the "
            f"{projection['bound']}; {_duration(projection['paper_pretraining_hours'])} projected per run")


def _duration(hours):
    return f"{hours:.1f} h" if hours >= 2 else f"{hours * 60:.0f} min"

