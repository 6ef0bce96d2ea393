"""The registry of pretext methods, `--plugin` loading and `bench methods`. The built-in methods
import `register` from here (not from the package, which imports them)."""
import importlib
import importlib.metadata
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from bench_runtime.errors import UserError
from bench_runtime.options import option

ENTRY_POINT_GROUP = "context_encoder_bench.methods"
METHODS = {}


def register(cls):
    """Class decorator adding a PretextMethod subclass under its `name`."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no name")
    METHODS[cls.name] = cls
    return cls


def load_plugins(modules=()):
    """Import the modules of installed entry points and the given module paths, so that the
    methods they define are registered. A plugin that fails to import is a one-line error."""
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()
        except Exception as exc:  # any failure inside someone else's package: name it
            raise UserError(f"pretext plugin {entry.name!r} ({entry.value}) failed to load: {exc}") from None
    for module in modules:
        try:
            _import_plugin(module)
        except Exception as exc:
            raise UserError(f"--plugin {module}: cannot import it ({type(exc).__name__}: {exc})") from None


def _import_plugin(module):
    """`module` is an import path (the current folder is searched too) or a .py file."""
    path = Path(module)
    if path.suffix == ".py":
        if not path.is_file():
            raise FileNotFoundError(f"no file {path}")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = loaded  # so worker processes and pickling find it by name
        spec.loader.exec_module(loaded)
        return
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # `bench` runs from .venv/bin, unlike `python -m`
    importlib.import_module(module)


@dataclass
class PluginOptions:
    """The modules that register more pretext methods."""
    plugin: list[str] = option([], "import MODULE (an import path or a .py file) first, so the pretext methods it "
                               "registers can be used", metavar="MODULE", repeat=True)


@dataclass
class MethodsConfig(PluginOptions):
    """list the registered pretext methods

    List every pretext method `bench pretrain --method` accepts: the built-ins, those of installed
    packages (entry-point group context_encoder_bench.methods) and those of --plugin modules."""


def list_methods(config):
    """`bench methods`: one line per method: name, description, module."""
    load_plugins(config.plugin)
    width = max(map(len, METHODS))
    for name, cls in sorted(METHODS.items()):
        masks = " [uses --mask]" if cls.uses_masks else ""
        print(f"{name:<{width}}  {cls.description}{masks}  ({cls.__module__})")


def method_names():
    """The registered methods' names (plug-ins included), sorted."""
    return sorted(METHODS)


def get_method(name):
    if name not in METHODS:
        load_plugins()  # a library user may not have gone through the CLI, which loads them first
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; registered: {', '.join(sorted(METHODS))}")
    return METHODS[name]
