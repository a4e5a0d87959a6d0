"""MovieLens ratings: u.data (tab-separated), ratings.dat (``::``), or a RecBole ``.inter`` file (a header row
names the columns). Users are numbered in order of appearance, each user's items in time order."""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from peapod_scale.data.errors import DataFormatError
from peapod_scale.data.sources.base import (
    RawSequences,
    chain_first,
    content_lines,
    empty_file,
    original_strings,
    parse_id,
    parse_number,
)

# The MovieLens columns in the order u.data and ratings.dat hold them.
_ML_FIELDS = ("user", "item", "rating", "timestamp")
# Names of the files a MovieLens folder may hold, most specific first.
_ML_FILE_NAMES = ("u.data", "ratings.dat")


def _movielens_file(path: Path) -> Path:
    """Accept the ratings file itself or a folder holding exactly one known ratings file."""
    if not path.is_dir():
        if not path.exists():
            raise FileNotFoundError(f"MovieLens input {path} does not exist")
        return path
    found = [path / name for name in _ML_FILE_NAMES if (path / name).is_file()]
    found += sorted(path.glob("*.inter"))
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise FileNotFoundError(
            f"{path} is a folder: expected exactly one of u.data, ratings.dat or *.inter in it "
            f"(found {names}); pass the file itself with --input"
        )
    return found[0]


def _inter_columns(path: Path, lineno: int, header: str) -> tuple[dict[str, int], int]:
    """Column positions of user, item, rating (optional) and timestamp in a RecBole header."""
    names = [column.split(":", 1)[0].strip() for column in header.split("\t")]
    wanted = {"user": "user_id", "item": "item_id", "rating": "rating", "timestamp": "timestamp"}
    columns = {}
    for field, name in wanted.items():
        if name in names:
            columns[field] = names.index(name)
        elif field != "rating":
            raise DataFormatError(
                path, lineno, field,
                f"the RecBole header has no '{name}' column (it has {', '.join(names)}); "
                "a .inter file needs user_id, item_id and timestamp",
            )
    return columns, len(names)


def read_movielens(input_path: str | Path, progress: bool = False) -> RawSequences:
    """Read u.data (tab), ratings.dat ('::') or a RecBole .inter file; the format is detected.

    Every rating counts as an interaction. Each user's ratings are ordered by timestamp, ties
    by input order; users come in order of first appearance.
    """
    path = _movielens_file(Path(input_path))
    lines = content_lines(path, progress)
    first = next(lines, None)
    if first is None:
        raise empty_file(path, "ratings")
    lineno, text = first
    if text.startswith("user_id:"):
        description, sep = "RecBole .inter", "\t"
        columns, width = _inter_columns(path, lineno, text)
        rows: Iterator[tuple[int, str]] = lines
    else:
        if "::" in text:
            description, sep = "MovieLens ratings.dat", "::"
        elif "\t" in text:
            description, sep = "MovieLens u.data", "\t"
        else:
            raise DataFormatError(
                path, lineno, "user",
                "cannot tell the format: expected tab-separated u.data, '::'-separated ratings.dat "
                "or a RecBole .inter file whose header starts with 'user_id:'",
            )
        columns, width = {name: i for i, name in enumerate(_ML_FIELDS)}, len(_ML_FIELDS)
        rows = chain_first(first, lines)

    users, items, times = array("q"), array("q"), array("d")
    by_position = sorted(columns.items(), key=lambda kv: kv[1])
    for lineno, text in rows:
        fields = text.split(sep)
        if len(fields) < width:
            missing = next((f for f, i in by_position if i >= len(fields)), "timestamp")
            raise DataFormatError(
                path, lineno, missing,
                f"missing: the line has {len(fields)} of {width} {sep!r}-separated fields",
            )
        if len(fields) > width:
            raise DataFormatError(
                path, lineno, "extra",
                f"the line has {len(fields)} {sep!r}-separated fields, expected {width}; "
                "remove the extra columns",
            )
        users.append(parse_id(fields[columns["user"]], path, lineno, "user"))
        items.append(parse_id(fields[columns["item"]], path, lineno, "item"))
        if "rating" in columns:
            parse_number(fields[columns["rating"]], path, lineno, "rating")
        times.append(parse_number(fields[columns["timestamp"]], path, lineno, "timestamp"))
    if not users:
        raise DataFormatError(path, lineno + 1, "user", "the file has a header but no ratings")

    user_of = np.frombuffer(users, dtype=np.int64)
    item_of = np.frombuffer(items, dtype=np.int64)
    time_of = np.frombuffer(times, dtype=np.float64)
    keys, first_row, inverse = np.unique(user_of, return_index=True, return_inverse=True)
    by_appearance = np.argsort(first_row, kind="stable")
    rank = np.empty_like(by_appearance)
    rank[by_appearance] = np.arange(len(keys))
    user_rank = rank[inverse]
    # Sort by user (first appearance), then timestamp, then line: ties keep input order.
    order = np.lexsort((np.arange(len(user_of)), time_of, user_rank))
    counts = np.bincount(user_rank, minlength=len(keys))
    return RawSequences(
        inputs=[path],
        user_keys=keys[by_appearance],
        offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        items=item_of[order],
        user_original=original_strings,
        item_original=original_strings,
        user_numbering="appearance",
        description=description,
    )
