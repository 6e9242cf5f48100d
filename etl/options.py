"""Options: how one Settings option is declared once, and the check, help text and --help order read from it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, Field, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Opt:
    """One option's declaration, kept in its Settings field's metadata.

    The CLI parser, the preset reader, the range/choice checks and report.json's settings all read it."""

    help: str  # --help text; "{default}" in it shows the field's real default
    output: bool = True  # decides the bytes written: kept in report.json and fixed under --resume
    flag: str = ""  # the CLI spelling when it is not "--" + the name with dashes ("--no-shuffle")
    also: tuple[str, ...] = ()  # other CLI spellings (--val-dir for --val)
    positional: bool = False  # a positional CLI argument (train_dir, out_dir)
    const: Any = None  # a switch: the flag takes no value and stores this one
    choices: tuple[Any, ...] = ()  # the only values allowed (also the CLI's choices)
    low: float | None = None  # the smallest value allowed ...
    high: float | None = None  # ... and the largest
    above: bool = False  # low itself is not allowed
    below: bool = False  # high itself is not allowed
    rule: str = ""  # the check message's "must be ..." wording when the generated one does not fit
    parse: Callable[[str, Any], Any] | None = None  # turns a preset or CLI value into the field's value
    preset: bool = True  # may be given in a TOML preset and to etl.convert (the folders are not)
    group: str = ""  # the --help section's title (the plain option list when empty)
    exclusive: str = ""  # options sharing this key are mutually exclusive on the command line
    since: str = ""  # the etl version that added an output option after shard markers existed (0.6.0): at its
    # default it is left out of a shard's identity, so shards an earlier etl finished stay done on --resume
    alias: tuple[str, Any, str] | None = None  # (flag, value, help): another switch that stores a value
    after: str = ""  # list it in --help after this option instead of in field order
    hidden: bool = False  # not an `etl convert` flag nor a preset key: set by another command (etl imageset)


def option(default: Any, help: str, **declaration: Any) -> Any:
    """A Settings field with its declaration: `width: int = option(224, "output width", low=1)`."""
    return field(default=default, metadata={"opt": Opt(help=help, **declaration)})


def opt_of(f: Field) -> Opt:
    return f.metadata["opt"]


def kind_of(f: Field) -> str:
    """The field's type without None: 'int', 'float', 'str', 'bool' or 'Any'."""
    return str(f.type).split("|")[0].strip()


def shown(value: Any) -> str:
    """A value as the messages and --help show it: 120 for 120.0, text quoted where asked."""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def help_text(f: Field) -> str:
    """The field's --help text, its "{default}" filled in from the real default."""
    default = "" if f.default is MISSING else shown(f.default)
    return opt_of(f).help.replace("{default}", default)


def problem(f: Field, value: Any) -> str | None:
    """What is wrong with a value outside the declared choices or range, in the CLI's words; None if nothing."""
    o = opt_of(f)
    if value is None:
        return None
    if o.choices and value not in o.choices:
        rule = o.rule or "one of " + ", ".join(shown(c) for c in o.choices)
    elif not _in_range(o, value):
        rule = o.rule or _range_text(o)
    else:
        return None
    got = f"'{value}'" if isinstance(value, str) else shown(value)
    return f"--{f.name.replace('_', '-')} must be {rule}, got {got}"


def _in_range(o: Opt, value: Any) -> bool:
    # Asked as "is it inside", never "is it outside": NaN answers no to every comparison, and must be refused.
    over_low = o.low is None or (value > o.low if o.above else value >= o.low)
    under_high = o.high is None or (value < o.high if o.below else value <= o.high)
    return over_low and under_high


def _range_text(o: Opt) -> str:
    if o.high is None:
        return f"{'above' if o.above else 'at least'} {shown(o.low)}"
    return f"from {shown(o.low)} to {'below ' if o.below else ''}{shown(o.high)}"


def cli_order(all_fields: tuple[Field, ...]) -> list[Field]:
    """Field order, except that an option declared `after` another is listed right behind it."""
    behind: dict[str, list[Field]] = {}
    for f in all_fields:
        behind.setdefault(opt_of(f).after, []).append(f)
    order: list[Field] = []

    def place(f: Field) -> None:
        order.append(f)
        for follower in behind.get(f.name, []):
            place(follower)

    for f in behind.get("", []):
        place(f)
    return order
