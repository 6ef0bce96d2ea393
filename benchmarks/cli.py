"""`bench`: the command line. It only parses. Each command's options are the fields of config
dataclasses (bench_runtime.options.option: help, choices, checks and defaults live there), its help is
the first line of its config's docstring and its description the rest, and its handler is one
library call with the configs."""
import argparse
import os
import sys

from bench_runtime.errors import UserError
from bench_runtime.options import HelpFormatter, Parser, add_options, command_help, option_values

# Each command's --help ends with one of these, by its path after `bench`.
EXAMPLES = {
    "pretrain": "bench pretrain --mask central --lr 1e-3 --steps 1000 --out runs/ce-central",
    "transfer": "bench transfer --task seg --init runs/ce-central",
    "table": "bench table --records runs/transfer --out results",
    "export": "bench export --run runs/ce-central --to torchvision --out ce-alexnet.pth",
    "inpaint": "bench inpaint --run runs/inpaint --images my_photos --out runs/filled",
    "eval-inpaint": "bench eval-inpaint --run runs/inpaint --mask central",
    "suite": "bench suite --preset quick",
    "report": "bench report runs/suite-quick",
    "methods": "bench methods --plugin my_methods.py",
    "data": "bench data toy --out runs/toy-voc",
    "data toy": "bench data toy --out runs/toy-voc --images 50",
    "data check": "bench data check ../shared/data/pets-voc --out problems.csv",
    "data fetch": "bench data fetch voc2012 --root data/",
    "speed": "bench speed --feature-sizes 128 --precisions fp32 bf16",
    "cache": "bench cache clean --older-than 30",
    "cache list": "bench cache list",
    "cache clean": "bench cache clean --older-than 30",
}
# Commands that only group others.
GROUPS = {
    "data": ("make, fetch or check data sets", None),
    "cache": ("list or free what commands keep in the cache folder",
              "Decoded images (the uint8 cache), detection proposals and the toy VOC set are kept in "
              "$BENCH_CACHE_DIR (default ~/.cache/context-encoder-bench) for later runs."),
}


def add_command(commands, path, config_class=None):
    """The sub-command parser of `path` (a name, or the names after `bench`), its help and
    description from `config_class`'s docstring, else GROUPS, with --quiet/--verbose and, after its
    options in --help, an example."""
    path = (path,) if isinstance(path, str) else tuple(path)
    help, description = command_help(config_class) if config_class else GROUPS[path[-1]]
    p = commands.add_parser(path[-1], help=help, description=description or help,
                            epilog=f"example: {EXAMPLES[' '.join(path)]}", formatter_class=HelpFormatter)
    loudness = p.add_mutually_exclusive_group()
    loudness.add_argument("--quiet", "-q", dest="verbosity", action="store_const", const="quiet", default="normal",
                          help="no progress bars or status lines: results and errors only")
    loudness.add_argument("--verbose", "-v", dest="verbosity", action="store_const", const="verbose",
                          help="progress lines every 5 s instead of 30 s when the output is not a terminal")
    return p


def simple_commands():
    """{command path: (config class, library call)} of the commands whose options are one config."""
    from benchmarks.report import ReportConfig, make_report
    from benchmarks.speed import SpeedConfig, measure_speed
    from benchmarks.table import TableConfig, make_table
    from bench_data.check import DataCheckConfig, check_root
    from bench_data.fetch import FetchConfig, fetch
    from bench_data.toy_voc import ToyVOCConfig, make_toy_voc
    from bench_eval.inpainting import EvalInpaintConfig, InpaintConfig, evaluate, inpaint
    from pretrain.methods import MethodsConfig, list_methods
    from bench_runtime.cache import CacheCleanConfig, CacheListConfig, clean, list_cache
    from transfer.export import ExportConfig, export
    return {("table",): (TableConfig, make_table), ("export",): (ExportConfig, export),
            ("inpaint",): (InpaintConfig, inpaint), ("eval-inpaint",): (EvalInpaintConfig, evaluate),
            ("report",): (ReportConfig, make_report), ("methods",): (MethodsConfig, list_methods),
            ("data", "toy"): (ToyVOCConfig, make_toy_voc), ("data", "check"): (DataCheckConfig, check_root),
            ("data", "fetch"): (FetchConfig, fetch),
            ("speed",): (SpeedConfig, measure_speed),
            ("cache", "list"): (CacheListConfig, list_cache), ("cache", "clean"): (CacheCleanConfig, clean)}


RESUMED = "the saved run's with --resume"


def add_pretrain_parser(commands, method):
    """`bench pretrain`: PretrainConfig's options, then those of `--method` (a name; unknown: the
    default method's)."""
    from pretrain.methods import METHODS, PluginOptions
    from pretrain.train import PretrainConfig, run_pretraining
    from bench_runtime.runfiles import RunFolder
    p = add_command(commands, "pretrain", PretrainConfig)
    add_options(p, PluginOptions)
    # Options not given are None, so that --resume can tell them from those given (and refuse
    # those that differ from the saved run's).
    add_options(p, PretrainConfig, unset=RESUMED)
    add_options(p, RunFolder)
    method_options = METHODS.get(method, METHODS[PretrainConfig.method]).Options
    add_options(p, method_options, title=f"options of --method {method or PretrainConfig.method} "
                                         f"(`bench pretrain --method NAME --help` shows another method's)",
                unset=RESUMED)

    def handler(args):
        general, own = ({name: value for name, value in option_values(args, options).items() if value is not None}
                        for options in (PretrainConfig, method_options))
        return run_pretraining(PretrainConfig(**general, method_options=own), RunFolder(**option_values(args, RunFolder)),
                               given={**general, **own})
    p.set_defaults(handler=handler)


def add_transfer_parser(commands):
    from bench_runtime.runfiles import RunFolder
    from transfer.config import TransferConfig
    from transfer.tasks import run_transfer
    p = add_command(commands, "transfer", TransferConfig)
    add_options(p, TransferConfig)
    add_options(p, RunFolder)
    p.set_defaults(handler=lambda args: run_transfer(TransferConfig(**option_values(args, TransferConfig)),
                                                     RunFolder(**option_values(args, RunFolder))))


def add_suite_parser(commands):
    from benchmarks.launcher import ClusterOptions
    from benchmarks.suite import SuiteConfig, run_suite_command
    p = add_command(commands, "suite", SuiteConfig)
    add_options(p, SuiteConfig)
    add_options(p, ClusterOptions, title="cluster resources (--launcher local|slurm)",
                unset="the preset's cluster: section")

    def handler(args):
        given = {name: value for name, value in option_values(args, ClusterOptions).items() if value is not None}
        return run_suite_command(SuiteConfig(**option_values(args, SuiteConfig), cluster=given))
    p.set_defaults(handler=handler)


def build_parser(method=None):
    """The `bench` parser; `method` chooses whose options `bench pretrain` offers."""
    parser = Parser(prog="bench", description="Context-encoder pretraining and PASCAL VOC transfer benchmarks.",
                    formatter_class=HelpFormatter,
                    epilog="example: bench suite --preset quick (then bench <command> --help)")
    parser.add_argument("--version", action=VersionAction)
    commands = parser.add_subparsers(dest="command", required=True)
    add_pretrain_parser(commands, method)
    add_transfer_parser(commands)
    add_suite_parser(commands)
    groups = {}
    for path, (config_class, run) in simple_commands().items():
        parent = commands
        if len(path) == 2:
            if path[0] not in groups:
                groups[path[0]] = add_command(commands, path[0]).add_subparsers(dest=path[0], required=True)
            parent = groups[path[0]]
        p = add_command(parent, path, config_class)
        add_options(p, config_class)
        p.set_defaults(handler=lambda args, c=config_class, run=run: run(c(**option_values(args, c))))
    return parser


class VersionAction(argparse.Action):
    """--version: worked out only when asked for (it runs git and imports torch)."""

    def __init__(self, option_strings, dest, **options):
        super().__init__(option_strings, dest, nargs=0, help="show the version, the commit and torch's, and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        print(version())  # on stdout, as argparse's own version action
        parser.exit()


def version():
    """bench's version, the commit it runs from, and torch's."""
    import torch

    from bench_runtime.runfiles import code_version, package_version
    return f"bench {package_version()} (commit {code_version()}), torch {torch.__version__}"


def early_options(argv):
    """The --plugin modules and the --method of a command line, read before the full parser is
    built: the methods the plugins register must be among --method's choices, and the method's
    own options among the flags."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--plugin", action="append", default=[])
    early.add_argument("--method", default=None)
    return early.parse_known_args(argv)[0]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    try:
        from pretrain.methods import load_plugins
        early = early_options(argv)
        load_plugins(early.plugin)
        args = build_parser(early.method).parse_args(argv)
        from bench_runtime.device import start_process
        from bench_runtime.progress import set_verbosity
        from bench_runtime.runfiles import check_out_path
        if getattr(args, "out", None):
            check_out_path(args.out)
        set_verbosity(getattr(args, "verbosity", "normal"))
        start_process(getattr(args, "device", None))  # under torchrun: join the process group first
        status = args.handler(args)  # a command's exit status (`bench data check`, `fetch`), else its result
        return status if isinstance(status, int) else 0
    except UserError as exc:
        # An error raised in a DataLoader worker arrives wrapped in the worker's traceback;
        # its last line is the message.
        message = str(exc).strip().splitlines()[-1].removeprefix(f"{UserError.__module__}.UserError: ")
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout has gone (`bench table ... | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush does not fail
        return 0
    finally:
        from bench_runtime.distributed import shutdown
        shutdown()


if __name__ == "__main__":
    sys.exit(main())
