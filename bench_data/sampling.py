"""The order of training items: endless seeded epochs, keyed by (epoch, index), resumable at any
step and split evenly between processes."""
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from bench_runtime import distributed
from bench_runtime.device import seed_worker
from bench_runtime.errors import UserError


class EpochOrder(Sampler):
    """Endless (epoch, index) keys: a fresh seeded permutation per epoch, whole batches only,
    starting at `start_step` so that a resumed run continues the same sequence.

    With `world_size` processes (torchrun) this also does DistributedSampler's job: process `rank`
    gets items [rank * B / N, (rank + 1) * B / N) of each global batch of B = `batch_size` keys,
    so the processes' batches (of B / N each) together are exactly the one-process batch; the
    order, and resuming from a step, do not depend on the number of processes."""

    def __init__(self, size, batch_size, seed, start_step=0, rank=0, world_size=1):
        if size < batch_size:
            raise UserError(f"only {size} images for a batch of {batch_size}; lower --batch-size")
        if batch_size % world_size:
            raise UserError(f"--batch-size {batch_size} is not divisible by the {world_size} processes; "
                            f"the global batch is split evenly between them")
        self.size, self.batch_size, self.seed, self.start_step = size, batch_size, seed, start_step
        self.batches_per_epoch = size // batch_size
        self.rank, self.world_size = rank, world_size
        self.share = batch_size // world_size

    def __iter__(self):
        epoch, batch = divmod(self.start_step, self.batches_per_epoch)
        while True:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.size)
            for first in range(batch * self.batch_size, self.batches_per_epoch * self.batch_size,
                               self.batch_size):
                start = first + self.rank * self.share
                for index in order[start:start + self.share]:
                    yield epoch, int(index)
            epoch, batch = epoch + 1, 0


class SeededItems(Dataset):
    """`dataset` looked up by the (epoch, index) keys of EpochOrder. Before each item,
    `augmenter.rng` (the numpy Generator its random crops and flips come from) is reseeded from
    (seed, epoch, index): an item is the same in whichever worker loads it, and a resumed run
    sees exactly the batches the interrupted one would have."""

    def __init__(self, dataset, augmenter, seed):
        self.dataset, self.augmenter, self.seed = dataset, augmenter, seed

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        self.augmenter.rng = np.random.default_rng([self.seed, epoch, index])
        return self.dataset[index]


# The "epoch" of evaluation items' seeds: no training epoch reaches it.
EVAL_EPOCH = 2**31 - 2


def loader_options(workers, device):
    """DataLoader settings every loader shares: worker processes kept across epochs (seeded by
    seed_worker), pinned memory for non-blocking copies to a GPU."""
    return {"num_workers": workers, "persistent_workers": workers > 0, "pin_memory": str(device).startswith("cuda"),
            "worker_init_fn": seed_worker}


def epoch_batches(dataset, batch_size, seed, start_step, workers, device, collate_fn=None):
    """Batches of `dataset` (looked up by EpochOrder's (epoch, index) keys) from `start_step` on,
    forever: under torchrun this process's share of each global batch of `batch_size`."""
    processes = distributed.world_size()
    return DataLoader(dataset, batch_size=batch_size // processes, collate_fn=collate_fn,
                      sampler=EpochOrder(len(dataset), batch_size, seed, start_step, distributed.rank(), processes),
                      **loader_options(workers, device),
                      # Its own generator: making the loader must not draw from the RNG that dropout
                      # uses, or a resumed run would diverge.
                      generator=torch.Generator().manual_seed(seed))
