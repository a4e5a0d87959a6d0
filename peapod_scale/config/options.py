"""Options declared once, as dataclass fields, and every command's parser generated from them.

A setting is a field of one concern's dataclass (``DataOptions``, ``OptimOptions``, ...): its default, its help,
its bounds, its old spellings and what ``--resume`` does when it changes all sit on that one line. A command's
config composes the concerns it needs by inheritance, so components keep reading ``cfg.lr`` while ``--help``
shows one section per concern. Bounds and cross-field checks run in ``__post_init__``, so a config built in
code (tests, benchmarks) is checked exactly as one parsed from a command line; the parser turns their
``ValueError`` into argparse's one-line usage error (exit 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field
from typing import ClassVar

from peapod_scale.config.flags import deprecated_alias, deprecated_switch, parse_args

# What resuming a run (--resume) does with an option that differs from the checkpoint's: each field says.
MAY_CHANGE, MUST_MATCH, PER_ATTEMPT = "may change", "must match", "per attempt"

_CHECKS = ("at_least", "above", "at_most", "below")


def option(default, help: str, *, resume: str = MAY_CHANGE, at_least=None, above=None, at_most=None, below=None, positional: bool = False, **argparse_kwargs):
    """A field that is also a command-line option.

    ``at_least``/``above``/``at_most``/
    ``below`` bound the value (None, "not given", is always allowed); ``positional`` makes it an argument
    without a flag; anything else goes to ``argparse.add_argument`` (``choices``, ``metavar``, ``required``...).
    """
    bounds = {name: value for name, value in zip(_CHECKS, (at_least, above, at_most, below)) if value is not None}
    return field(default=default, metadata={"help": help, "resume": resume, "bounds": bounds, "positional": positional, "argparse": argparse_kwargs})


def fixed(default, help: str, **kwargs):
    """An option that defines the model, what learns or the training stream: a resumed run must keep it."""
    return option(default, help, resume=MUST_MATCH, **kwargs)


def per_attempt(default, help: str, **kwargs):
    """An option about this attempt alone (where to write, how to start): never compared on resume."""
    return option(default, help, resume=PER_ATTEMPT, **kwargs)


def flag_of(name: str) -> str:
    """``--some-option`` for ``some_option``; a one-letter name is a short flag (``-k``)."""
    return ("-" if len(name) == 1 else "--") + name.replace("_", "-")


@dataclass
class Options:
    """Base of every concern's options: checks each field's bounds and choices, then each concern's ``_check``."""

    SECTION: ClassVar[str] = "options"  # a concern's --help heading; a command's own options stay in "options"
    # a command's old flag spellings, {field: ("--old", ...)}: accepted with a one-line notice, hidden from --help
    OLD_SPELLINGS: ClassVar[dict[str, tuple[str, ...]]] = {}

    # a command's config: its name and what it does, for the parser generated from its fields
    PROG: ClassVar[str] = ""
    DESCRIPTION: ClassVar[str] = ""

    @classmethod
    def parser(cls) -> argparse.ArgumentParser:
        return build_parser(cls, cls.PROG, cls.DESCRIPTION)

    @classmethod
    def from_args(cls, argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None):
        """The command line ``argv`` as this config: argparse's usage error and exit 2 for anything wrong."""
        return parse_config(cls, parser or cls.parser(), argv)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_field(f, getattr(self, f.name))
        for cls in reversed(type(self).__mro__):  # every concern's own cross-field check, base concerns first
            check = cls.__dict__.get("_check")
            if check is not None:
                check(self)


def _check_field(f: dataclasses.Field, value) -> None:
    if value is None:
        if f.metadata.get("argparse", {}).get("required"):
            raise ValueError(f"{flag_of(f.name)} is required")
        return
    flag = flag_of(f.name)
    choices = f.metadata.get("argparse", {}).get("choices")
    if choices is not None and value not in choices:
        raise ValueError(f"{flag} {value!r}: choose one of {', '.join(map(str, choices))}")
    for kind, bound in f.metadata.get("bounds", {}).items():
        ok = {"at_least": value >= bound, "above": value > bound, "at_most": value <= bound,
              "below": value < bound}[kind]
        if not ok:
            raise ValueError(f"{flag} {value}: must be {kind.replace('_', ' ')} {bound}")


def _section_of(cls: type, name: str) -> str:
    """The SECTION of the concern that first declares the field (a command may redeclare a shared one with its own
    default: it stays in its concern's section)."""
    declaring = next(c for c in reversed(cls.__mro__) if name in c.__dict__.get("__annotations__", {}))
    return declaring.__dict__.get("SECTION", Options.SECTION)  # a class without its own is a command's config


def add_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """``--some-option`` for every field of ``cls`` (underscore spellings accepted too, as launchers pass them),
    one help section per concern, old spellings as deprecated aliases."""
    hints = typing.get_type_hints(cls)
    groups: dict[str, argparse._ArgumentGroup] = {}
    own_first = sorted(dataclasses.fields(cls), key=lambda f: _section_of(cls, f.name) != Options.SECTION)
    for f in own_first:  # a command's own options first, then each shared concern's section
        if not f.init:
            continue
        section = _section_of(cls, f.name)
        if section == Options.SECTION:  # a command's own options: argparse's "options:" list
            group = parser
        else:
            group = groups.get(section) or groups.setdefault(section, parser.add_argument_group(section))
        _add_option(parser, group, f, hints[f.name], cls.OLD_SPELLINGS.get(f.name, ()))


def _add_option(parser, group, f: dataclasses.Field, hint, old_spellings: tuple[str, ...]) -> None:
    meta = f.metadata
    kwargs = {"help": meta.get("help", ""), **meta.get("argparse", {})}
    kind = next((a for a in typing.get_args(hint) if a is not type(None)), hint)  # Optional[X] -> X
    if meta.get("positional"):
        kwargs.setdefault("type", kind)
        group.add_argument(f.name, **kwargs)
        return
    flag = flag_of(f.name)
    kwargs["dest"] = f.name
    if kind in (int, float) and "choices" not in kwargs:
        kwargs.setdefault("metavar", "N" if kind is int else "X")
    if not kwargs.get("required"):
        kwargs["default"] = f.default if f.default is not dataclasses.MISSING else None
        if "(default:" not in kwargs["help"]:
            kwargs["help"] += " (default: %(default)s)"
    if meta.get("resume") == MUST_MATCH:
        kwargs["help"] += " [fixed for a run: --resume refuses another value]"
    if kind is bool:  # --flag, and --no-flag for a default that is not off
        kwargs["action"] = argparse.BooleanOptionalAction if f.default is not False else "store_true"
    else:
        kwargs.setdefault("type", kind)
    group.add_argument(flag, **kwargs)
    if "_" in f.name:  # the underscore spelling launchers and HF users pass, kept out of --help
        hidden = {**kwargs, "help": argparse.SUPPRESS, "default": argparse.SUPPRESS, "required": False}
        hidden.pop("metavar", None)
        group.add_argument(f"--{f.name}", **hidden)
    for old in old_spellings:
        if kind is bool:
            deprecated_switch(parser, old, flag)
        else:
            deprecated_alias(parser, old, flag, type=kind)


def build_parser(cls: type, prog: str, description: str, **parser_kwargs) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, **parser_kwargs)
    add_options(parser, cls)
    return parser


def parse_config(cls: type, parser: argparse.ArgumentParser, argv: list[str] | None):
    """Parse ``argv`` into ``cls``; a failed check is argparse's one usage line and exit 2, as a bad flag is."""
    args = parse_args(parser, argv)
    try:
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.init})
    except ValueError as error:
        parser.error(str(error))


def resume_rule(cls: type, name: str) -> str:
    """MAY_CHANGE, MUST_MATCH or PER_ATTEMPT of a field; options a newer version added may change."""
    field_ = next((f for f in dataclasses.fields(cls) if f.name == name), None)
    return field_.metadata.get("resume", MAY_CHANGE) if field_ else MAY_CHANGE
