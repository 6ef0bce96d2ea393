"""The device, the seeds, and the options that depend on the device and the process count."""
import os
import random
import re
from dataclasses import dataclass

import numpy as np
import torch

from . import distributed, speedups
from .errors import UserError
from .options import option


DEVICE_NAMES = "auto, cpu, cuda, cuda:N or mps"
# The seeds a run can take: NumPy's generators accept no more than 32 bits.
SEED_LIMIT = 2**32


def device_name(name):
    """`name` when it names a device this suite can use; ValueError otherwise (see option's check)."""
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", name):
        raise ValueError(f"must be {DEVICE_NAMES}")
    return name


def seed_value(seed):
    """`seed` when NumPy, torch and Python's random all accept it; ValueError otherwise."""
    if not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"must be between 0 and {SEED_LIMIT - 1}")
    return seed


@dataclass(frozen=True)
class DeviceOptions:
    """Where and how fast a run trains: the options pretraining and transfer share. Frozen, as the
    configs built on it: what a run works out from them, the device included, goes into its context
    (pretrain.train.PretrainContext, transfer.config.TransferContext), not back into them."""
    device: str = option("auto", DEVICE_NAMES, check=device_name)
    workers: int = option(1, "DataLoader worker processes")
    precision: str = option("fp32", "autocast dtype of forward passes and losses: bf16 on CUDA or CPUs with bf16 "
                            "instructions, fp16 on CUDA (with loss scaling)", choices=speedups.PRECISIONS)
    compile: bool = option(False, "compile the networks with torch.compile")
    sync_bn: bool = option(False, "under torchrun on GPUs: BatchNorm statistics over the global batch")


def resolve_device(name):
    """"auto" -> cuda when there is a GPU, else cpu; an unknown or absent device is a user error."""
    try:
        device_name(name)
    except ValueError as problem:
        raise UserError(f"--device {problem}, got {name!r}") from None
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for, but no CUDA device is available")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise UserError(f"--device {name} asked for, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps asked for, but Apple's MPS backend is not available")
    return name


def synchronize(device):
    """Wait for the work queued on a CUDA `device` (for timing); nothing on a CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def seed_everything(seed):
    """Seed every global generator a method might draw from: Python's, NumPy's and torch's.
    (DataLoader workers get their seeds from the loader's own generator; see seed_worker.)"""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def seed_worker(_worker_id):
    """DataLoader worker_init_fn: seed Python and NumPy from the seed torch gave this worker."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def check_scaling_options(config, device):
    """Validate the precision, SyncBatchNorm and process-count options (pretraining and transfer)
    of `config` for a run on `device` (resolved)."""
    speedups.check_precision(config.precision, device)
    if config.sync_bn and not device.startswith("cuda"):
        raise UserError("--sync-bn synchronises BatchNorm between GPUs; it needs a CUDA device")
    processes = distributed.world_size()
    if config.batch_size % processes:
        raise UserError(f"--batch-size {config.batch_size} is not divisible by the {processes} processes; "
                        f"the global batch is split evenly between them")


def start_process(device_name=None):
    """Set this process up for a run, and return the device it trains on: its share of the CPU
    cores (divided between torchrun's processes on this machine; OMP_NUM_THREADS, when set, is
    the user's choice and wins), and with a device, the process group under torchrun (the device
    becomes cuda:LOCAL_RANK there). The CLI calls it before any command (the run folders' barriers
    need the group), and each run's resolve step (resolve_pretraining, resolve_transfer) for the
    device it keeps in its context; the process group is joined once."""
    processes_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    share = max(1, len(os.sched_getaffinity(0)) // processes_here)
    chosen = os.environ.get("OMP_NUM_THREADS", "")
    torch.set_num_threads(int(chosen) if chosen.isdigit() and int(chosen) > 0 else share)
    return None if device_name is None else distributed.setup(resolve_device(device_name))
