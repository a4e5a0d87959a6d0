"""One flag name per setting across the commands, and the old spellings kept for a while.

``evaluate``, ``export`` and ``recommend`` name the run folder ``--run-dir`` (it may also be the run's ``model/`` or an
export; not ``--run``, which torchrun, starting ``evaluate`` on several ranks, takes for an abbreviation of its own
``--run-path``); ``evaluate``'s decoding settings carry ``train``'s names (``--eval-batch-size``, ``--eval-limit``,
``--constrained-decoding``), so a flag copied from a training command means the same thing; ``estimate`` takes
``--micro-batch-size`` as ``train`` does. A renamed flag still works: it prints one line naming its new spelling,
as argparse users expect of a deprecation, and sets the same value.
"""

from __future__ import annotations

import argparse
import sys

_REQUIRED = "_required_with_aliases"


class _Deprecated(argparse.Action):
    def __init__(self, option_strings, dest, new: str, **kwargs):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: warning: {option_string} is deprecated, use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def deprecated_alias(parser: argparse.ArgumentParser, old: str, new: str, **kwargs) -> None:
    """Accept ``old`` for the option ``new`` (same destination, hidden from --help), with a one-line notice.

    A required ``new`` stops being required for argparse, which would refuse the old spelling alone;
    ``parse_args`` below makes the check instead."""
    action = next(a for a in parser._actions if new in a.option_strings)
    if action.required:
        action.required = False
        parser.set_defaults(**{_REQUIRED: (parser.get_default(_REQUIRED) or []) + [new]})
        action.help = f"{action.help} (required)"
    parser.add_argument(old, dest=action.dest, action=_Deprecated, new=new, help=argparse.SUPPRESS, **kwargs)


def deprecated_switch(parser: argparse.ArgumentParser, old: str, new: str) -> None:
    """``--old`` / ``--no-old`` for the boolean option ``--new`` / ``--no-new``."""
    deprecated_alias(parser, old, new, nargs=0, const=True)
    deprecated_alias(parser, "--no-" + old[2:], "--no-" + new[2:], nargs=0, const=False)


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parser.parse_args``, then the required options that have a deprecated spelling: given in either."""
    args = parser.parse_args(argv)
    for flag in vars(args).pop(_REQUIRED, None) or []:
        dest = next(a.dest for a in parser._actions if flag in a.option_strings)
        if getattr(args, dest) is None:
            parser.error(f"the following arguments are required: {flag}")
    return args
