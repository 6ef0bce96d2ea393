"""Data-parallel training under `torchrun`: one process per device, joined in one process group.

`torchrun --nproc-per-node N [--nnodes M ...] -m benchmarks.cli pretrain|transfer|suite ...` starts
N processes per machine and gives each WORLD_SIZE, RANK and LOCAL_RANK. `setup(device)` joins the
group (nccl for CUDA devices, gloo for the CPU) and returns the device this process uses (on GPUs:
cuda:LOCAL_RANK). Without torchrun's environment nothing is initialised and every helper here is a
no-op on one process, so a plain run behaves exactly as before.

Rank 0 is the main process: it alone writes files (run folders, checkpoints, records) and shows
progress bars; the others wait for it at a barrier where they need what it wrote.
"""
import os
import warnings
from contextlib import contextmanager

import numpy as np
import torch
import torch.distributed as dist

from .errors import UserError


def _env_int(name, default):
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        raise UserError(f"environment variable {name}={os.environ[name]!r} is not an integer") from None


def world_size():
    """Processes taking part (torchrun's WORLD_SIZE; 1 without torchrun)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else _env_int("WORLD_SIZE", 1)


def rank():
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else _env_int("RANK", 0)


def local_rank():
    """This process's index on its machine: its GPU."""
    return _env_int("LOCAL_RANK", 0)


def is_main():
    """True in the one process that writes files and prints progress."""
    return rank() == 0


def is_local_main():
    """True in one process per machine (LOCAL_RANK 0): the one that fills machine-local caches."""
    return local_rank() == 0


def active():
    """True when this process is one of several in an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def setup(device):
    """Join torchrun's process group, once per process, and return the device to train on.

    `device` is a resolved device name ("cpu", "cuda", "cuda:N"). Under torchrun with several
    processes, CUDA devices become cuda:LOCAL_RANK (one GPU per process, whatever index was
    given) and the backend is nccl; on the CPU it is gloo. One process: `device` unchanged.
    """
    if _env_int("WORLD_SIZE", 1) <= 1:
        return device
    cuda = device.startswith("cuda")
    if not dist.is_available():
        raise UserError("this PyTorch build has no torch.distributed; run without torchrun")
    if cuda:
        if local_rank() >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {local_rank()} but only {torch.cuda.device_count()} CUDA devices; "
                            f"start at most that many processes per machine (--nproc-per-node)")
        device = f"cuda:{local_rank()}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        if cuda:
            dist.init_process_group("nccl", device_id=torch.device(device))
        else:
            dist.init_process_group("gloo")
    elif cuda != (dist.get_backend() == "nccl"):
        raise UserError(f"this process group uses {dist.get_backend()}, which cannot train on {device}")
    return device


def shutdown():
    """Leave the process group (at the end of a command)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier():
    if active():
        dist.barrier()


@contextmanager
def main_first(local=False):
    """Run the block in the main process (with `local`: one per machine) before the others, which
    wait at a barrier until it is done: for writing a file the others then read."""
    first = is_local_main() if local else is_main()
    if not first:
        barrier()
    yield
    if first:
        barrier()


def _comm_device():
    # nccl moves CUDA tensors only; gloo CPU tensors.
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(value):
    """Sum of a tensor or NumPy array over all processes (the value itself on one process), as
    the same type, on the value's device."""
    if not active():
        return value
    is_tensor = torch.is_tensor(value)
    tensor = value if is_tensor else torch.from_numpy(value)
    work = tensor.detach().to(_comm_device(), copy=True)
    dist.all_reduce(work)
    work = work.to(tensor.device)
    return work if is_tensor else work.numpy()


def all_gather_objects(obj):
    """[obj of rank 0, obj of rank 1, ...]: a picklable object from every process, to every process."""
    if not active():
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def all_gather_with_gradients(tensor):
    """Every process's `tensor` joined along dim 0 in rank order, differentiably (the tensor itself
    on one process). The backward pass hands each process the sum, over all processes, of the
    gradients they computed for its part (torch.distributed.nn's all_gather): with DDP averaging
    the parameter gradients after that, a loss whose mean over processes is the global batch's
    loss (each process's mean over its own share of it) gets exactly the one-process gradient."""
    if not active():
        return tensor
    from torch.distributed.nn.functional import all_gather  # imports torch.distributed.nn's autograd ops
    return torch.cat(all_gather(tensor))


def average_metrics(metrics):
    """A {name: float} dict averaged over processes (each process's mean over its equal share of
    the global batch, so the average is the mean over the global batch)."""
    if not active() or not metrics:
        return metrics
    values = all_reduce_sum(torch.tensor(list(metrics.values()), dtype=torch.float64))
    return {name: value / dist.get_world_size() for name, value in zip(metrics, values.tolist())}


def average_buffers(module):
    """Average floating-point buffers (BatchNorm running statistics) over processes: each process
    updates them from its own share of the batch, so they drift apart between averagings."""
    if not active():
        return
    for buffer in module.buffers():
        if buffer.is_floating_point():
            buffer.copy_(all_reduce_sum(buffer) / dist.get_world_size())


def shard(count):
    """range of the items [0, count) this process handles in evaluation: contiguous blocks in rank
    order, so concatenating the processes' results in rank order gives the single-process order."""
    size, index = world_size() if active() else 1, rank() if active() else 0
    per, extra = divmod(count, size)
    start = index * per + min(index, extra)
    return range(start, start + per + (index < extra))


def concat_in_rank_order(items):
    """Every process's list of results joined in rank order (see `shard`)."""
    return [item for part in all_gather_objects(list(items)) for item in part]


def process_seed(seed, rank):
    """The seed of process `rank`'s own draws (dropout): every process a different stream."""
    return int(np.random.default_rng([seed, rank]).integers(2**62))


def warn_main(message):
    if is_main():
        warnings.warn(message, stacklevel=2)
