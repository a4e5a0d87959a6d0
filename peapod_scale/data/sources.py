"""Readers for raw interaction data: MovieLens (u.data, ratings.dat, RecBole .inter), P5, Amazon
review JSON lines (:mod:`amazon`) and any Hugging Face dataset (:mod:`hf_source`).

Each reader validates every line and returns the users' chronological sequences in *input order*
as a :class:`RawSequences`; numbering, splitting and writing happen in :mod:`prepare`. Text files
may start with a UTF-8 byte-order mark (Windows editors and Excel write one): it is not data.
"""

from __future__ import annotations

import codecs
import json
import math
import os
import re
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from peapod_scale.data.errors import DataFormatError
from peapod_scale.progress import advance_to, file_bar

SOURCES = ("movielens", "p5", "amazon-reviews", "hf", "synthetic")  # synthetic: generated in prepare
PROGRESS_EVERY_LINES = 1 << 14  # lines between updates of a reading bar (one tell() each)

P5_SEQUENCES = "sequential_data.txt"
P5_DATAMAPS = "datamaps.json"

# The MovieLens columns in the order u.data and ratings.dat hold them.
_ML_FIELDS = ("user", "item", "rating", "timestamp")
# Names of the files a MovieLens folder may hold, most specific first.
_ML_FILE_NAMES = ("u.data", "ratings.dat")
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


def load_source(source: str, input_path: str | Path, *, progress: bool = False, columns: dict[str, str] | None = None,
                hf_config: str | None = None, hf_split: str | None = None) -> RawSequences:
    """Read ``input_path`` with the reader of ``source``; the hf_* options and ``columns`` are --source hf's."""
    if source == "movielens":
        return read_movielens(input_path, progress=progress)
    if source == "p5":
        return read_p5(input_path, progress=progress)
    if source == "amazon-reviews":
        from peapod_scale.data.amazon import read_amazon_reviews

        return read_amazon_reviews(input_path, progress=progress)
    if source == "hf":
        from peapod_scale.data.hf_source import read_hf

        return read_hf(input_path, columns, config=hf_config, split=hf_split, progress=progress)
    raise ValueError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")


# ---------------------------------------------------------------------------------------------
# Line-level helpers


def skip_bom(handle) -> None:
    """Step over a UTF-8 byte-order mark at the start of a binary handle, if there is one."""
    if handle.read(len(codecs.BOM_UTF8)) != codecs.BOM_UTF8:
        handle.seek(0)


def _content_lines(path: Path, progress: bool = False) -> Iterator[tuple[int, str]]:
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


def _empty_file(path: Path, what: str) -> DataFormatError:
    return DataFormatError(path, 1, "user", f"the file is empty: it holds no {what}; check the path")


def _parse_id(token: str, path: Path, lineno: int, field: str) -> int:
    token = token.strip()
    if not (token.isascii() and token.isdigit()):
        raise DataFormatError(
            path, lineno, field,
            f"{token!r} is not a non-negative integer id; fix or remove the line",
        )
    return int(token)


def _parse_number(token: str, path: Path, lineno: int, field: str) -> float:
    token = token.strip()
    value = float(token) if _NUMBER.fullmatch(token) else math.nan
    if not math.isfinite(value):
        raise DataFormatError(path, lineno, field, f"{token!r} is not a number; fix or remove the line")
    return value


def _strings(keys: np.ndarray) -> list[str]:
    return [str(int(k)) for k in keys]


# ---------------------------------------------------------------------------------------------
# MovieLens


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
    lines = _content_lines(path, progress)
    first = next(lines, None)
    if first is None:
        raise _empty_file(path, "ratings")
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
        rows = _chain_first(first, lines)

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
        users.append(_parse_id(fields[columns["user"]], path, lineno, "user"))
        items.append(_parse_id(fields[columns["item"]], path, lineno, "item"))
        if "rating" in columns:
            _parse_number(fields[columns["rating"]], path, lineno, "rating")
        times.append(_parse_number(fields[columns["timestamp"]], path, lineno, "timestamp"))
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
        user_original=_strings,
        item_original=_strings,
        user_numbering="appearance",
        description=description,
    )


def _chain_first(first: tuple[int, str], rest: Iterator[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    yield first
    yield from rest


# ---------------------------------------------------------------------------------------------
# P5


def _datamap(maps: dict, path: Path, kind: str) -> dict[str, str]:
    """id2<kind> from datamaps.json, or the inverse of <kind>2id when only that is present."""
    if isinstance(maps.get(f"id2{kind}"), dict):
        return {str(k): str(v) for k, v in maps[f"id2{kind}"].items()}
    if isinstance(maps.get(f"{kind}2id"), dict):
        return {str(v): str(k) for k, v in maps[f"{kind}2id"].items()}
    raise DataFormatError(
        path, 1, f"id2{kind}",
        f"missing: datamaps.json must map the numeric {kind} ids to raw ids (id2{kind} or {kind}2id)",
    )


def read_p5(folder: str | Path, progress: bool = False) -> RawSequences:
    """Read a P5 folder: sequential_data.txt ("user item1 item2 ...", chronological) + datamaps.json.

    Every user and item id must be in datamaps.json; the raw ids it maps to become ``original``.
    """
    folder = Path(folder)
    seq_path, maps_path = folder / P5_SEQUENCES, folder / P5_DATAMAPS
    for path in (seq_path, maps_path):
        if not path.is_file():
            raise FileNotFoundError(f"P5 input {path} not found: --input must be a folder holding "
                                    f"{P5_SEQUENCES} and {P5_DATAMAPS}")
    try:
        with open(maps_path, encoding="utf-8-sig") as handle:  # -sig: a byte-order mark is not JSON
            maps = json.load(handle)
    except json.JSONDecodeError as exc:
        raise DataFormatError(maps_path, exc.lineno, "json", f"not valid JSON ({exc.msg})") from None
    if not isinstance(maps, dict):
        raise DataFormatError(maps_path, 1, "json", "expected a JSON object with id2user and id2item")
    id2user, id2item = _datamap(maps, maps_path, "user"), _datamap(maps, maps_path, "item")

    user_keys, lengths, items = array("q"), array("q"), array("q")
    line_of_user: dict[int, int] = {}
    for lineno, text in _content_lines(seq_path, progress):
        tokens = text.split()
        user = _parse_id(tokens[0], seq_path, lineno, "user")
        if str(user) not in id2user:
            raise DataFormatError(
                seq_path, lineno, "user",
                f"user id {user} is not in {maps_path.name} id2user; use the datamaps.json that "
                "belongs to this sequential_data.txt",
            )
        if user in line_of_user:
            raise DataFormatError(
                seq_path, lineno, "user",
                f"user {user} already has a line ({line_of_user[user]}); each user needs exactly one",
            )
        if len(tokens) < 2:
            raise DataFormatError(
                seq_path, lineno, "items",
                f"user {user} has no items; each line must read 'user item1 item2 ...'",
            )
        line_of_user[user] = lineno
        for token in tokens[1:]:
            item = _parse_id(token, seq_path, lineno, "item")
            if str(item) not in id2item:
                raise DataFormatError(
                    seq_path, lineno, "item",
                    f"item id {item} is not in {maps_path.name} id2item; use the datamaps.json "
                    "that belongs to this sequential_data.txt",
                )
            items.append(item)
        user_keys.append(user)
        lengths.append(len(tokens) - 1)
    if not user_keys:
        raise _empty_file(seq_path, "user sequences")

    raw = RawSequences(
        inputs=[seq_path, maps_path],
        user_keys=np.frombuffer(user_keys, dtype=np.int64),
        offsets=np.concatenate([[0], np.cumsum(np.frombuffer(lengths, dtype=np.int64))]),
        items=np.frombuffer(items, dtype=np.int64),
        user_original=lambda keys: [id2user[str(int(k))] for k in keys],
        item_original=lambda keys: [id2item[str(int(k))] for k in keys],
        user_numbering="key",
        description="P5 sequential_data.txt + datamaps.json",
    )
    _read_p5_extras(folder, raw, id2user, id2item)
    return raw


def _read_p5_extras(folder: Path, raw: RawSequences, id2user: dict[str, str], id2item: dict[str, str]) -> None:
    """Attach negative_samples.txt and exp_splits.pkl when the folder has them (see p5_extras)."""
    from peapod_scale.data.p5_extras import P5_EXPLANATIONS, P5_NEGATIVES, read_explanations, read_negatives

    row_of_user = {int(u): row for row, u in enumerate(raw.user_keys)}
    if (folder / P5_NEGATIVES).is_file():
        raw.inputs.append(folder / P5_NEGATIVES)
        raw.negatives = read_negatives(folder / P5_NEGATIVES, _parse_id, row_of_user, raw.offsets, raw.items,
                                       lambda item: str(item) in id2item)
    if (folder / P5_EXPLANATIONS).is_file():
        raw.inputs.append(folder / P5_EXPLANATIONS)
        user_id = {name: int(key) for key, name in id2user.items() if key.isdigit()}
        item_id = {name: int(key) for key, name in id2item.items() if key.isdigit()}
        raw.texts, unmatched = read_explanations(folder / P5_EXPLANATIONS, user_id, item_id, row_of_user,
                                                 raw.offsets, raw.items)
        raw.skipped["explanations_without_interaction"] = unmatched
