"""Registry of pretext methods: `bench pretrain --method NAME` looks names up here."""
from ..errors import UserError
from .base import PretextMethod

METHODS = {}


def register(cls):
    """Class decorator adding a PretextMethod subclass under its `name`."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no name")
    METHODS[cls.name] = cls
    return cls


def get_method(name):
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; registered: {', '.join(sorted(METHODS))}")
    return METHODS[name]


from . import autoencoder, context_encoder  # noqa: E402,F401  (built-ins register themselves on import)

__all__ = ["METHODS", "PretextMethod", "get_method", "register"]
