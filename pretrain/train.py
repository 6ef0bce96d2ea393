"""The pretraining loop: one function from a config to a run folder.

A run folder holds
  config.json       the resolved configuration (and the environment it ran in)
  metrics.jsonl     one JSON line per step (and one per probe, with probe_knn_map)
  loss.png          the loss curves; probe.png, the probe's mAP against steps (with --probe-data)
  checkpoint.pt     everything needed to --resume
  encoder.pt        the transferable encoder's state_dict (plain, torchvision key names for AlexNet)
  encoder.json      what transfer needs to use it: arch, input size and normalisation, pretraining time
  previews/         PNG grids (rows: masked input / prediction / original), and preview.png, the latest
"""
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision.utils import save_image
from tqdm import tqdm

from data import images
from data.imagecache import ImageCache
from data.masks import MaskSampler, load_region_shapes
from data.pixels import channel_stats, readable_only
from data.pretrain_items import PretrainImages
from data.sampling import EpochOrder
from runtime import distributed, speedups
from runtime.device import check_scaling_options, resolve_device, seed_everything, seed_worker
from runtime.engine import Engine, prepare_model
from runtime.errors import UserError
from runtime.runfiles import check_new_run_dir, check_resumable, create_run_dir, environment_info, save_json, save_torch
from .backbones import label_with_arch
from .curves import plot_curves
from .methods import get_method
from .methods.context_encoder import default_overlap
from .probe import KNNProbe

PREVIEW_IMAGES = 8


@dataclass
class PretrainConfig:
    method: str = "context-encoder"
    arch: str = "alexnet"
    mask: str = "random-region"
    loss: str = "l2"
    data_root: str = ""
    split: str = "train"
    year: str | None = None
    mask_dir: str | None = None
    image_size: int = 96
    load_size: int | None = None
    batch_size: int = 32
    lr: float | None = None
    steps: int = 300
    seed: int = 0
    device: str = "auto"
    workers: int = 1
    # Band around the hole predicted too, at overlap_weight x. None: 0 for the feature networks
    # (the paper's Eq. 1, L2 over the dropped pixels only), 4 for --arch inpaint (released code).
    overlap: int | None = None
    overlap_weight: float = 10.0
    adv_weight: float = 0.001
    optimizer: str = "adam"     # the context encoder's generator: adam, or sgd with momentum 0.9
    preview_every: int = 100
    checkpoint_every: int = 100
    bad_images: str = "fail"
    classes: list | None = None  # class names of labelled data, for methods that use labels
    dataset_mean: list | None = None
    dataset_std: list | None = None
    precision: str = "fp32"     # fp32 | bf16 | fp16 (autocast; see pretrain.speedups)
    compile: bool = False       # torch.compile the networks
    sync_bn: bool = False       # SyncBatchNorm across processes under torchrun (CUDA)
    image_cache: bool = True    # decode and resize each image once into a uint8 memory-mapped cache
    probe_data: str | None = None   # labelled VOC root: kNN probe of the encoder (see pretrain.probe)
    probe_every: int = 100          # steps between probes (and step 0 and the last step)
    probe_train_split: str = "train"
    probe_test_split: str = "val"


def resolve_config(config):
    """Validate `config` and fill in what depends on the data: default load size, mask folder,
    dataset statistics. Returns (resolved config, image paths)."""
    config = dataclasses.replace(config)
    for name, value, ok, rule in [
            ("--steps", config.steps, config.steps >= 1, "at least 1"),
            ("--batch-size", config.batch_size, config.batch_size >= 1, "at least 1"),
            ("--image-size", config.image_size, config.image_size >= 1, "at least 1"),
            ("--workers", config.workers, config.workers >= 0, "0 or more"),
            ("--lr", config.lr, config.lr is None or config.lr > 0, "positive"),
            ("--overlap", config.overlap, config.overlap is None or config.overlap >= 0, "0 or more"),
            ("--overlap-weight", config.overlap_weight, config.overlap_weight >= 0, "0 or more"),
            ("--adv-weight", config.adv_weight, 0 <= config.adv_weight <= 1, "in [0, 1]"),
            ("--preview-every", config.preview_every, config.preview_every >= 1, "at least 1"),
            ("--checkpoint-every", config.checkpoint_every, config.checkpoint_every >= 1, "at least 1"),
            ("--probe-every", config.probe_every, config.probe_every >= 1, "at least 1")]:
        if not ok:
            raise UserError(f"{name} must be {rule}, got {value}")
    if config.probe_data is not None and not images.is_voc_root(config.probe_data):
        raise UserError(f"--probe-data {config.probe_data} is not a VOC root (it needs ImageSets/Main labels)")
    paths = training_images(config)
    if len(paths) < config.batch_size:
        raise UserError(f"only {len(paths)} images in {config.data_root} ({config.split}) for a batch "
                        f"of {config.batch_size}; lower --batch-size")
    if config.load_size is None:
        config.load_size = round(config.image_size * 1.15)
    if config.overlap is None:
        config.overlap = default_overlap(config.arch)  # recorded as used, in config.json and encoder.json
    needs_shapes = get_method(config.method).uses_masks and config.mask == "random-region"
    if needs_shapes and config.mask_dir is None:
        # Shapes from other images of the same VOC root; their image never matches the hole.
        candidate = images.find_voc_dir(config.data_root, config.year) / "SegmentationClass" \
            if images.is_voc_root(config.data_root) else None
        if candidate is None or not candidate.is_dir():
            raise UserError("--mask random-region needs --mask-dir, a folder of VOC segmentation PNGs "
                            "(or use --mask noise)")
        config.mask_dir = str(candidate)
    if get_method(config.method).uses_labels and config.classes is None:
        config.classes = images.image_labels(paths, config.data_root, config.split, config.year)[1]
    config.device = resolve_device(config.device)
    check_scaling_options(config)
    if config.dataset_mean is None:
        config.dataset_mean, config.dataset_std = channel_stats(paths)
    return config, paths


def training_images(config):
    return readable_only(images.list_images(config.data_root, config.split, config.year), config.bad_images,
                         f"{config.data_root} ({config.split})")


def training_batches(dataset, config, start_step):
    """This process's share of each global batch (all of it on one process), on the device."""
    processes = distributed.world_size()
    sampler = EpochOrder(len(dataset), config.batch_size, config.seed, start_step,
                         distributed.rank(), processes)
    loader = DataLoader(dataset, batch_size=config.batch_size // processes, sampler=sampler,
                        num_workers=config.workers, persistent_workers=config.workers > 0,
                        pin_memory=config.device.startswith("cuda"), worker_init_fn=seed_worker,
                        # Its own generator: creating the loader must not advance the global RNG
                        # that dropout draws from, or a resumed run would diverge.
                        generator=torch.Generator().manual_seed(config.seed))
    channels_last = speedups.use_channels_last(config.device)
    for batch in loader:
        yield {key: speedups.to_device(value, config.device, channels_last) for key, value in batch.items()}


def _save_preview(method, dataset, preview_batch, run_dir, step):
    was_training = method.training
    method.eval()
    rows = method.preview(preview_batch)
    method.train(was_training)
    grid = torch.cat([dataset.denormalize(row.cpu()) for row in rows])
    path = run_dir / "previews" / f"step_{step:06d}.png"
    path.parent.mkdir(exist_ok=True)
    save_image(grid, path, nrow=len(rows[0]), padding=2)
    save_image(grid, run_dir / "preview.png", nrow=len(rows[0]), padding=2)


def pretrain(config, out, overwrite=False, progress=True):
    """Train `config.method` into a new run folder `out` and return it.

    Under torchrun every process calls this; the main one alone writes the run folder."""
    check_new_run_dir(out, overwrite)
    config, paths = resolve_config(config)
    run_config = dataclasses.replace(config, device=distributed.setup(config.device))
    method, dataset = build(run_config, paths, progress)
    distributed.barrier()  # every process has checked `out` before the main one replaces it
    if distributed.is_main():
        run_dir = create_run_dir(out, overwrite)
        save_json({"config": dataclasses.asdict(config), "images": len(paths), "processes": distributed.world_size(),
                   "environment": environment_info()}, run_dir / "config.json")
    distributed.barrier()
    return _train(run_config, method, dataset, Path(out), progress=progress)


def resume_pretraining(out, steps=None, progress=True):
    """Continue the run in `out` from its checkpoint, to `steps` (default: its configured steps).
    The number of processes may differ from the interrupted run's: the batches are the same."""
    run_dir = check_resumable(out)
    config = PretrainConfig(**json.loads((run_dir / "config.json").read_text())["config"])
    if steps is not None:
        config.steps = steps
    check_scaling_options(config)
    config.device = distributed.setup(config.device)
    method, dataset = build(config, training_images(config), progress)
    return _train(config, method, dataset, run_dir, progress)


def build(config, paths, progress=True):
    """The method (on config.device, with the speed options applied) and its dataset."""
    seed_everything(config.seed)
    method = prepare_model(get_method(config.method)(config, config.dataset_mean, config.dataset_std),
                           config.device, config.compile, config.sync_bn)
    labels = None
    if method.uses_labels:
        labels, classes = images.image_labels(paths, config.data_root, config.split, config.year)
        if classes != config.classes:
            raise UserError(f"the class folders of {config.data_root} changed since the run started")
    holes = None
    if method.uses_masks:  # a data-side transform, drawn per item in the loader's workers
        shapes = load_region_shapes(config.mask_dir) if config.mask == "random-region" else None
        holes = MaskSampler(config.mask, config.image_size, getattr(method, "overlap", 0), shapes)
    dataset = PretrainImages(paths, config.image_size, config.load_size, method.input_mean,
                             method.input_std, holes, config.seed, labels)
    if config.image_cache:
        with distributed.main_first(local=True):  # one process per machine builds it, the others read it
            dataset.cache = ImageCache(paths, config.load_size, progress=progress and distributed.is_local_main())
    return method, dataset


def pretraining_engine(method, config, run_dir, progress=True):
    """(the engine that trains `method` in run_dir, resuming from its checkpoint when there is one;
    the step it runs: the method's own train_step with the method's optimisers)."""
    optimizers = method.configure_optimizers()
    engine = Engine(method, optimizers, run_dir, steps=config.steps, batch_size=config.batch_size, seed=config.seed,
                    device=config.device, precision=config.precision, checkpoint_every=config.checkpoint_every,
                    desc=f"pretraining {config.method}", progress=progress)
    return engine, lambda trained, batch: trained.train_step(batch, optimizers)


def _train(config, method, dataset, run_dir, progress=True):
    """Train through the engine (which resumes from run_dir's checkpoint when there is one), with
    previews, probes and the loss curves from the main process, then write the encoder."""
    main = distributed.is_main()
    engine, train_step = pretraining_engine(method, config, run_dir, progress)
    preview_batch = _preview_batch(dataset, config) if main else None
    probe = KNNProbe(config.probe_data, config.image_size, method.input_mean, method.input_std,
                     config.probe_train_split, config.probe_test_split) if main and config.probe_data else None

    def after_step(step, metrics):
        if metrics is not None and (step % config.preview_every == 0 or step == config.steps):
            _save_preview(method, dataset, preview_batch, run_dir, step)
        # The probe curve starts at the initialisation (the call before the first step).
        if probe is not None and (step % config.probe_every == 0 or step == config.steps):
            score = probe(method.encoder, config.device)
            engine.log({"step": step, "probe_knn_map": score, "elapsed_s": round(engine.elapsed, 3)})
            plot_curves(run_dir)
            tqdm.write(f"step {step}: probe kNN mAP {100 * score:.1f}%")

    engine.run(train_step, lambda start: training_batches(dataset, config, start), after_step)
    if main:
        plot_curves(run_dir)
        _save_encoder(method, config, run_dir, engine.elapsed, engine.step)
    distributed.barrier()  # the run folder is complete for every process (a suite transfers it next)
    return run_dir


def _preview_batch(dataset, config):
    """A fixed batch (keys from an epoch no training step reaches) shows progress on the same holes."""
    preview_keys = [(2**31 - 1, i % len(dataset)) for i in range(PREVIEW_IMAGES)]
    preview_items = [dataset[k] for k in preview_keys]
    return {key: torch.stack([item[key] for item in preview_items]).to(config.device)
            for key in preview_items[0]}


def pretraining_label(config, method):
    """A table row's name: the method, its mask and overlap band when it has holes, its backbone."""
    if not method.uses_masks:
        return label_with_arch(config.method, method.encoder_arch)
    band = f", overlap {config.overlap} px x{config.overlap_weight:g}" if config.overlap else ""
    return label_with_arch(f"{config.method} ({config.mask}{band})", method.encoder_arch)


def _save_encoder(method, config, run_dir, elapsed, step):
    state = {key: value.detach().cpu() for key, value in method.encoder.state_dict().items()}
    save_torch(state, run_dir / "encoder.pt")
    loss_terms = {}
    if method.uses_masks:
        loss_terms = {"mask": config.mask, "overlap": config.overlap, "overlap_weight": config.overlap_weight}
    save_json({"method": config.method, "label": pretraining_label(config, method), "arch": method.encoder_arch,
               "image_size": config.image_size, **loss_terms,
               "input_mean": method.input_mean, "input_std": method.input_std,
               "steps": step, "pretrain_seconds": round(elapsed, 1), "seed": config.seed,
               "data_root": config.data_root, "split": config.split}, run_dir / "encoder.json")
