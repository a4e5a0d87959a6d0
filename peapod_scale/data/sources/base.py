"""What every reader of raw interactions shares: the :class:`RawSequences` they return and the line-level
helpers (UTF-8 lines with their numbers, a byte-order mark skipped, ids and numbers parsed with the file, line
and field named in the error). The bottom of ``data/sources``: it imports no reader.

Text files may start with a UTF-8 byte-order mark (Windows editors and Excel write one): it is not data.
"""

from __future__ import annotations

import codecs
import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from peapod_scale.data.errors import DataFormatError
from peapod_scale.tools.progress import advance_to, file_bar

PROGRESS_EVERY_LINES = 1 << 14  # lines between updates of a reading bar (one tell() each)
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


@dataclass
class RawSequences:
    """Every user's interactions, users in input order, each user's items in chronological order.

    User ``k`` (0-based, input order) owns ``items[offsets[k]:offsets[k + 1]]``. Keys are the raw
    integer ids of the input; ``*_original`` turn an array of keys into the raw id strings.
    """

    inputs: list[Path]
    user_keys: np.ndarray  # int64 [users]
    offsets: np.ndarray  # int64 [users + 1]
    items: np.ndarray  # int64 [interactions], raw item keys
    user_original: Callable[[np.ndarray], list[str]]
    item_original: Callable[[np.ndarray], list[str]]
    # "appearance": number users 1..U in input order; "key": by ascending raw id (P5 keeps its ids).
    user_numbering: str
    description: str  # e.g. "MovieLens u.data", for the summary
    # Explanation target per interaction, aligned with ``items`` ("" = none); None when the source
    # has no text at all. An Arrow array, not a list, so that it costs no Python object per row.
    texts: pa.Array | None = None
    # Top-N negatives per user from a file (raw item keys, one row per user), None = sample them.
    negatives: np.ndarray | None = None
    # Records the reader dropped, by reason, for the manifest and the summary.
    skipped: dict[str, int] = field(default_factory=dict)



def skip_bom(handle) -> None:
    """Step over a UTF-8 byte-order mark at the start of a binary handle, if there is one."""
    if handle.read(len(codecs.BOM_UTF8)) != codecs.BOM_UTF8:
        handle.seek(0)


def content_lines(path: Path, progress: bool = False) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, text without its line ending) for every non-blank line.

    Blank lines are allowed only at the end of the file; one followed by more data is an error
    (a hole in the middle of a file usually means it was cut or concatenated wrongly).
    """
    first_blank = None
    with open(path, "rb") as handle, file_bar(os.path.getsize(path), path.name, enabled=progress) as bar:
        skip_bom(handle)
        for lineno, raw in enumerate(handle, 1):
            if not lineno % PROGRESS_EVERY_LINES:
                advance_to(bar, handle.tell())
            raw = raw.rstrip(b"\r\n")
            if not raw.strip():
                first_blank = first_blank or lineno
                continue
            if first_blank is not None:
                raise DataFormatError(
                    path, first_blank, "user",
                    "empty line in the middle of the file; every line must hold one record "
                    "(blank lines are allowed only at the end): remove it",
                )
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataFormatError(
                    path, lineno, "line",
                    f"not valid UTF-8 ({exc.reason} at byte {exc.start}); re-save the file as UTF-8",
                ) from None
            yield lineno, text


def empty_file(path: Path, what: str) -> DataFormatError:
    return DataFormatError(path, 1, "user", f"the file is empty: it holds no {what}; check the path")


def parse_id(token: str, path: Path, lineno: int, field: str) -> int:
    token = token.strip()
    if not (token.isascii() and token.isdigit()):
        raise DataFormatError(
            path, lineno, field,
            f"{token!r} is not a non-negative integer id; fix or remove the line",
        )
    return int(token)


def parse_number(token: str, path: Path, lineno: int, field: str) -> float:
    token = token.strip()
    value = float(token) if _NUMBER.fullmatch(token) else math.nan
    if not math.isfinite(value):
        raise DataFormatError(path, lineno, field, f"{token!r} is not a number; fix or remove the line")
    return value


def original_strings(keys: np.ndarray) -> list[str]:
    return [str(int(k)) for k in keys]


# ---------------------------------------------------------------------------------------------
# MovieLens


def chain_first(first: tuple[int, str], rest: Iterator[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    yield first
    yield from rest


# ---------------------------------------------------------------------------------------------
# P5
