"""Mixed precision, torch.compile and memory layout: the options that make a training step faster
without changing what it computes (beyond rounding).

--precision fp32|bf16|fp16: the forward pass and the loss run under torch.autocast in that dtype
(weights, gradients and optimiser state stay fp32). bf16 needs a CUDA device that supports it or
a CPU with bf16 instructions (AVX512-BF16 / AMX, or Arm's BF16); fp16 is for CUDA only and
scales the loss with a GradScaler (one per optimiser), since fp16 gradients underflow.
"""
import contextlib
import functools
from pathlib import Path

import torch

from .errors import UserError

PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def device_type(device):
    return torch.device(device).type


@functools.cache
def cpu_has_bf16():
    """True when the CPU has bf16 instructions (so bf16 matmuls and convolutions are fast)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        try:
            flags = Path("/proc/cpuinfo").read_text().split()
        except OSError:
            return False
        return any(flag in flags for flag in ("avx512_bf16", "amx_bf16", "bf16"))


def check_precision(precision, device):
    """A one-line UserError when `device` cannot train in `precision`."""
    if precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    kind = device_type(device)
    if precision == "fp16" and kind != "cuda":
        raise UserError(f"--precision fp16 needs a CUDA device (fp16 on {kind} is slow and needs loss "
                        f"scaling); use --precision bf16 or fp32")
    if precision == "bf16":
        if kind == "cuda" and not torch.cuda.is_bf16_supported():
            raise UserError(f"--precision bf16: {device} does not support bfloat16; use fp16 or fp32")
        if kind == "cpu" and not cpu_has_bf16():
            raise UserError("--precision bf16: this CPU has no bf16 instructions (AVX512-BF16, AMX or Arm "
                            "BF16), so it would be slower than fp32; use --precision fp32")


def autocast(precision, device, weight_cache=True):
    """Context manager for the forward pass and loss in `precision` (nothing for fp32).

    Autocast caches the low-precision copy of each weight until the outermost region ends. Turn
    that off (`weight_cache=False`) when optimiser steps happen inside the region, as in a
    pretext method's train_step: the cache would keep serving the weights from before the step."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type(device), dtype=DTYPES[precision], cache_enabled=weight_cache)


def grad_scaler(precision, device):
    """A GradScaler for fp16, else None (bf16 has fp32's exponent range: no scaling needed)."""
    return torch.amp.GradScaler(device_type(device)) if precision == "fp16" else None


def compile_children(module):
    """torch.compile each direct sub-network of `module` in place (nn.Module.compile keeps the
    parameter names, so checkpoints and encoder.pt stay as they are)."""
    for child in module.children():
        child.compile()


def use_channels_last(device):
    """channels_last (NHWC) helps cuDNN's convolutions, notably with tensor cores. On the CPU
    (oneDNN, one AVX512-BF16 core, model-only steps) it gave +7% for the AlexNet context encoder
    at 128 px but -26% (fp32) and -15% (bf16) for the inpainting network, so it stays off there."""
    return device_type(device) == "cuda"


def to_device(tensor, device, channels_last=False):
    """A batch tensor on the training device: a non-blocking copy (from pinned memory on CUDA),
    4-d float images in channels_last layout when asked."""
    tensor = tensor.to(device, non_blocking=True)
    if channels_last and tensor.dim() == 4 and tensor.is_floating_point():
        tensor = tensor.contiguous(memory_format=torch.channels_last)
    return tensor
