"""Registry of pretext methods: `bench pretrain --method NAME` looks names up here.

Built-in methods register themselves on import. Methods from other packages register through
the entry-point group ENTRY_POINT_GROUP (each entry point names a module whose import registers
them), or through `--plugin some.module` (an import path) or `--plugin path/to/file.py`.
"""
from bench_runtime.engine import take_step
from .base import PretextMethod, classification_metrics
from .registry import (ENTRY_POINT_GROUP, METHODS, MethodsConfig, PluginOptions, get_method, list_methods,
                       load_plugins, method_names, register)

# Built-ins register themselves on import.
from . import (autoencoder, context_encoder, denoising_autoencoder, mae, relative_context,  # noqa: E402,F401,I001
               rotation, simclr, supervised)

__all__ = ["ENTRY_POINT_GROUP", "METHODS", "MethodsConfig", "PluginOptions", "PretextMethod", "classification_metrics",
           "get_method", "list_methods", "load_plugins", "method_names", "register", "take_step"]
