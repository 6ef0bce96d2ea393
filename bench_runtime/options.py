"""Options declared once, as dataclass fields that carry their help text and choices, and turned
into command-line flags and back from there: a new option is one field in one file.

    @dataclass
    class Options:
        overlap_weight: float = option(10.0, "L2 weight of the overlap band relative to the hole")
        loss: str = option("l2", "l2: masked L2; l2+adv: with the adversarial term", choices=("l2", "l2+adv"))

`add_options(parser, Options)` adds --overlap-weight and --loss; `option_values(args, Options)`
gives back {"overlap_weight": ..., "loss": ...}; `parse_options(Options, values, where)` checks
a preset's or a saved run's values against the fields.
"""
import argparse
import dataclasses
import functools
import inspect
import math
import types
import typing

import pydantic

from .errors import UserError


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default, unless its help already says it or there is none to show; leaves
    command lines (examples, the version) unwrapped."""

    def _fill_text(self, text, width, indent):
        if text.startswith(("example:", "bench ")):  # a command line (and --version) stays whole
            return indent + text
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action):
        if "default" in (action.help or "") or action.default is None or action.default is False \
                or action.default in ("", [], argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse's parser with its errors on one line, `error: bench pretrain: ...`, as every other
    error of the suite, instead of the usage followed by the message."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def option(default, help, choices=None, metavar=None, nargs=None, required=False, check=None, flags=None,
           repeat=False):
    """A dataclass field with its command-line help. `choices` and `help` may be functions giving
    them when the parser is built (e.g. the registered methods, plug-ins included); `nargs` makes a list;
    `required`: the command line must give it (the dataclass default serves library callers);
    `check(value)` raises ValueError saying what is wrong with a value of the right type (a seed
    out of range), wherever the value comes from: a flag, a preset or a saved run; `flags`: the
    names on the command line when not --<field name> (aliases, or one name without dashes for a
    positional argument); `repeat`: a list given by repeating the flag (--run A --run B)."""
    metadata = {"help": help, "choices": choices, "metavar": metavar, "nargs": nargs, "required": required,
                "check": check, "flags": flags, "repeat": repeat}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def at_least(minimum):
    """An option's `check`: the value must be `minimum` or more."""
    def check(value):
        if value < minimum:
            raise ValueError(f"must be {minimum} or more")
        return value
    return check


def positive(value):
    """An option's `check`: more than 0."""
    if not value > 0:
        raise ValueError("must be more than 0")
    return value


def command_help(config_class):
    """(help, description) of the command whose options are `config_class`: its docstring's first
    line and the paragraph after it (later paragraphs are for readers of the code)."""
    paragraphs = inspect.cleandoc(config_class.__doc__ or "").split("\n\n")
    return paragraphs[0].strip(), " ".join(paragraphs[1].split()) if len(paragraphs) > 1 else None


def flag(name):
    return "--" + name.replace("_", "-")


def _value_type(annotation):
    """int for `int` and `int | None`, and so on; None for types the command line does not parse."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(arg for arg in typing.get_args(annotation) if arg is not type(None))
    if typing.get_origin(annotation) is list:
        annotation = typing.get_args(annotation)[0]
    return annotation if annotation in (int, float, str, bool) else None


def flag_type(kind, check=None):
    """argparse's `type`: `kind(text)`, then `check` (see option); argparse names the flag."""
    def parse(text):
        try:
            value = kind(text)
            if kind is float and not math.isfinite(value):  # an infinite learning rate trains on NaNs
                raise ValueError
        except ValueError:
            finite = "finite " if kind is float else ""
            raise argparse.ArgumentTypeError(f"takes {finite}{kind.__name__} values, got {text!r}") from None
        try:
            return check(value) if check else value
        except ValueError as problem:
            raise argparse.ArgumentTypeError(f"{problem}, got {text!r}") from None
    parse.__name__ = kind.__name__  # argparse names the type in its own messages
    return parse


def add_options(parser, cls, title=None, unset=None):
    """A flag (or positional argument) per field of dataclass `cls` that has help text (in a group
    titled `title`). With `unset` (where else values come from, e.g. "the preset"), flags not given
    are None, so that those values can apply before the field's defaults; the help names both."""
    group = parser.add_argument_group(title) if title else parser
    hints = typing.get_type_hints(cls)
    own = cls.__dict__.get("__annotations__", {})  # its own fields first, then the inherited ones
    for field in sorted(dataclasses.fields(cls), key=lambda field: field.name not in own):
        if "help" not in field.metadata:
            continue
        kind, meta = _value_type(hints[field.name]), field.metadata
        default = field.default_factory() if field.default is dataclasses.MISSING else field.default
        help = meta["help"]() if callable(meta["help"]) else meta["help"]
        if unset:
            help += f" (default: {unset}" + (f", else {default})" if default is not None else ")")
        default = None if unset else default
        names = meta.get("flags") or (flag(field.name),)
        choices = meta["choices"]() if callable(meta["choices"]) else meta["choices"]
        if not names[0].startswith("-"):  # positional: argparse takes its name as the destination
            group.add_argument(field.name, metavar=names[0], type=flag_type(kind, meta["check"]),
                               choices=choices, nargs=meta["nargs"], help=help)
            continue
        if kind is bool:
            group.add_argument(*names, dest=field.name, action=argparse.BooleanOptionalAction, default=default,
                               help=help)
            continue
        group.add_argument(*names, dest=field.name, type=flag_type(kind, meta["check"]), default=default,
                           choices=choices, metavar=meta["metavar"], nargs=meta["nargs"], help=help,
                           **({"required": True} if meta["required"] else {}),
                           **({"action": "append"} if meta.get("repeat") else {}))


def option_values(args, cls):
    """{field: value} of `cls`'s fields from parsed `args`."""
    return {field.name: getattr(args, field.name) for field in dataclasses.fields(cls) if hasattr(args, field.name)}


def parse_options(cls, values, where):
    """`cls(**values)`, with an unknown name or a value outside a field's choices as a one-line error
    naming `where` the values came from."""
    fields = {field.name: field for field in dataclasses.fields(cls)}
    if not isinstance(values, dict):
        raise UserError(f"{where}: expected a mapping of option names to values, got {values!r}")
    unknown = sorted(set(values) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields)) or "none"
        raise UserError(f"{where}: unknown option(s) {', '.join(unknown)} (its options: {known})")
    hints = typing.get_type_hints(cls)
    checked = {}
    for name, value in values.items():
        checked[name] = typed(hints[name], value, f"{where}.{name}")
        choices = fields[name].metadata.get("choices")
        choices = choices() if callable(choices) else choices
        if choices and checked[name] not in choices:
            raise UserError(f"{where}: {name} must be one of {', '.join(choices)}, got {value!r}")
        check = fields[name].metadata.get("check")
        try:
            if check and checked[name] is not None:  # a list's check holds for each of its values
                for each in checked[name] if isinstance(checked[name], list) else [checked[name]]:
                    check(each)
        except ValueError as problem:
            raise UserError(f"{where}: {name} {problem}, got {value!r}") from None
    return cls(**checked)


def typed(annotation, value, where):
    """`value` as type `annotation`, or a one-line error naming `where` it came from. Numbers and
    booleans are strict (YAML's `yes` is not the number 1, nor is 1 true; 5 is a float but "5" is
    not an int) and finite; a number is a string where one is expected, as YAML reads `year: 2012`."""
    try:
        return _adapter(annotation).validate_python(value)
    except pydantic.ValidationError as exc:
        problem = exc.errors()[0]
        at = "".join(f"[{part}]" for part in problem["loc"])
        raise UserError(f"{where}{at}: {problem['msg'][0].lower()}{problem['msg'][1:]}, got {value!r}") from None


STRICT_TYPES = {int: pydantic.StrictInt, float: pydantic.StrictFloat, bool: pydantic.StrictBool}


def strict(annotation):
    """`annotation` with its int, float and bool (alone, in a union or in a list) strict."""
    args = typing.get_args(annotation)
    if annotation in STRICT_TYPES:
        return STRICT_TYPES[annotation]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return typing.Union[tuple(strict(arg) for arg in args)]
    if typing.get_origin(annotation) is list and args:
        return list[strict(args[0])]
    return annotation


@functools.lru_cache(maxsize=None)
def _adapter(annotation):
    return pydantic.TypeAdapter(strict(annotation),
                                config=pydantic.ConfigDict(coerce_numbers_to_str=True, allow_inf_nan=False))


def check_ranges(rules):
    """A one-line error for the first (flag, value, ok, rule) whose `ok` is false."""
    for name, value, ok, rule in rules:
        if not ok:
            raise UserError(f"{name} must be {rule}, got {value}")
