"""Run by tests/test_distributed.py, in the test's process or under `torchrun --nproc-per-node 2`:
SimCLR's contrastive loss on a fixed global batch of view pairs, each process taking its share,
through the engine's data-parallel view (DDP averages the gradients); the main process saves
the global loss and every parameter's gradient.

    python tests/contrastive_worker.py OUT.pt
"""
import sys

import torch

from pretrain.train import PretrainConfig, build_method
from bench_runtime import distributed
from bench_runtime.engine import data_parallel_view

GLOBAL_BATCH, SIZE = 8, 64


def main(out):
    device = distributed.setup("cpu")
    # No BatchNorm in the head: it would normalise each process's share by that share's own
    # statistics (SyncBatchNorm, which would not, runs on GPUs only), so the processes would
    # compute a different function from the one process; AlexNet has none either.
    config = PretrainConfig(method="simclr", arch="alexnet", image_size=SIZE, batch_size=GLOBAL_BATCH,
                            method_options={"head_norm": "none"}, dataset_mean=[0.5] * 3, dataset_std=[0.25] * 3)
    torch.manual_seed(0)
    method = build_method(config)
    views = torch.randn(2, GLOBAL_BATCH, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    share = distributed.shard(GLOBAL_BATCH)
    first, second = views[:, share.start:share.stop]
    trained = data_parallel_view(method, device)  # kept until after backward: its DDP wrappers average
    loss = trained.contrastive_loss(first, second)
    loss.backward()
    result = {"loss": distributed.average_metrics({"loss": loss.item()})["loss"],
              "grads": {name: p.grad for name, p in method.named_parameters()}}
    if distributed.is_main():
        torch.save(result, out)
    distributed.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
