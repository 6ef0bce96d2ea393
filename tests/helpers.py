"""What many test files share."""
from benchmarks.cli import main


def bench(*args):
    """Exit status of `bench ARGS` run in this process (argparse's own rejections arrive as SystemExit)."""
    try:
        return main([str(a) for a in args])
    except SystemExit as exit_info:
        return exit_info.code
