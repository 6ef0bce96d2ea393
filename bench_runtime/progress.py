"""Progress that reads well where it goes, on stderr (stdout is for results):
* on a terminal, a bar redrawn in place;
* in a file or a CI log, a whole line every LOG_EVERY_S seconds (and at the start and the end) with
  the count, rate and ETA, and no carriage-return redraws;
* with --quiet, nothing; with --verbose, a line every VERBOSE_EVERY_S seconds in logs.
`info` prints a status line (e.g. the suite's "pretraining X, seed 0") unless --quiet.
"""
import sys

from tqdm import tqdm

LOG_EVERY_S = 30
VERBOSE_EVERY_S = 5
LEVELS = ("quiet", "normal", "verbose")
LOG_FORMAT = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
_level = "normal"


def set_verbosity(level):
    global _level
    if level not in LEVELS:
        raise ValueError(f"verbosity {level!r} is not one of {LEVELS}")
    _level = level


class _WholeLines:
    """The stream under LogLines: tqdm's carriage returns dropped, and the bare newline it adds when a
    bar closes, since every line LogLines writes ends with one already."""

    def __init__(self, stream):
        self.stream, self.at_line_start = stream, True

    def write(self, text):
        text = text.replace("\r", "")
        if text and not (text == "\n" and self.at_line_start):
            self.stream.write(text)
            self.at_line_start = text.endswith("\n")

    def flush(self):
        self.stream.flush()


class LogLines(tqdm):
    """tqdm that writes whole lines: one at most every `mininterval` seconds, and one at the end."""

    def display(self, msg=None, pos=None):
        self.fp.write((msg or self.__str__()).strip() + "\n")
        self.fp.flush()
        return True


def progress_bar(iterable=None, disable=False, **options):
    """A tqdm progress bar over `iterable` (or a manual one with total=...) for where stderr goes."""
    disable = disable or _level == "quiet"
    if sys.stderr.isatty():
        return tqdm(iterable, disable=disable, dynamic_ncols=True, **options)
    every = VERBOSE_EVERY_S if _level == "verbose" else LOG_EVERY_S
    return LogLines(iterable, disable=disable, mininterval=every, maxinterval=every, bar_format=LOG_FORMAT,
                    file=_WholeLines(sys.stderr), **options)


def info(message):
    """A status line on stderr, between progress lines, unless --quiet."""
    if _level != "quiet":
        tqdm.write(message, file=sys.stderr)


def warning(message):
    """A "warning: ..." line on stderr, between progress lines; shown even with --quiet."""
    tqdm.write(f"warning: {message}", file=sys.stderr)
