"""``--source hf``: interactions from any Hugging Face dataset, read through the ``datasets`` library.

``--input`` is, checked in this order:

1. a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` -> ``load_from_disk``;
2. one data file, ``.parquet``, ``.arrow``, ``.json`` / ``.jsonl`` or ``.csv`` (optionally compressed,
   e.g. ``.jsonl.gz``) -> ``load_dataset(<format>, data_files=...)``;
3. any other folder -> ``load_dataset(folder)``, which finds the data files in it;
4. anything else is a hub name -> ``load_dataset(name, name=--hf-config)``; it needs the network (or
   the hub cache) and fails with a clear error offline.

A dataset with several splits is read split after split in the order it lists them, unless
``--hf-split`` picks one: ``prepare`` makes its own leave-one-out split, so every interaction counts.

Each row is one interaction. ``--columns`` maps the roles to the dataset's column names:
``user`` and ``item`` (strings or integers, or ``ClassLabel`` columns, whose label names become the
original ids), ``time`` (numbers, timestamps or dates; ``time=`` with no name keeps the rows' order),
and optionally ``text`` and ``summary`` (strings; null is "no text"), which become the explanation
target by the rule of ``--source amazon-reviews`` (:func:`amazon.explanation_of`). A user's rows are
ordered by time, ties by row order; users and items are numbered by first appearance.

A bad value is a :class:`DataFormatError` ``<input>:<n>: field '<column>': ...`` where n counts rows
from 1 (for a single CSV file it is the line, the header being line 1).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from peapod_scale.config.prepare import DEFAULT_COLUMNS, REQUIRED_ROLES
from peapod_scale.data.errors import DataFormatError
from peapod_scale.data.sources.amazon import explanation_of
from peapod_scale.data.sources.base import RawSequences
from peapod_scale.tools.progress import progress_bar

BATCH_ROWS = 65_536
# data file suffix -> the datasets packaged builder that reads it (compression suffixes stripped first)
_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".json": "json", ".jsonl": "json", ".csv": "csv"}
_COMPRESSION = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".zip")
_SAVED_MARKERS = ("state.json", "dataset_dict.json")  # what save_to_disk leaves in its folder


@dataclass
class _Input:
    """Where the rows come from: what errors name, the files hashed into the manifest, how rows
    map to line numbers (CSV: +1 for the header)."""

    label: str
    files: list[Path]
    line_offset: int = 0


# ---------------------------------------------------------------------------------------------
# Loading


@contextmanager
def _datasets_bars(enabled: bool) -> Iterator[None]:
    """datasets' own bars ("Generating train split") only where ours are live, i.e. on a terminal;
    the library-wide switch is restored afterwards."""
    # lazy: datasets takes seconds to import; only --source hf needs it
    import datasets

    turn_off = not enabled and not datasets.are_progress_bars_disabled()
    if turn_off:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if turn_off:
            datasets.enable_progress_bars()


def _builder(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes]
    while suffixes and suffixes[-1] in _COMPRESSION:
        suffixes.pop()
    return _BUILDERS.get(suffixes[-1]) if suffixes else None


def _files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def _load(input_path: str, config: str | None, split: str | None):
    """(datasets.Dataset or DatasetDict, _Input) for ``--input``, by the rules of the module docstring."""
    # lazy: datasets takes seconds to import; only --source hf needs it
    import datasets

    path = Path(input_path)
    saved = path.is_dir() and any((path / marker).is_file() for marker in _SAVED_MARKERS)
    if config is not None and (saved or path.is_file()):
        raise ValueError(f"--hf-config {config}: {path} is a local {'save_to_disk folder' if saved else 'file'}, "
                         "which has no configurations; --hf-config names one of a hub dataset")
    if saved:
        return datasets.load_from_disk(str(path)), _Input(str(path), _files_under(path))
    if path.is_file():
        builder = _builder(path)
        if builder is None:
            raise ValueError(f"{path}: cannot tell the format from its name; --source hf reads "
                             f"{', '.join(sorted(_BUILDERS))} files (optionally compressed) or a save_to_disk folder")
        data = datasets.load_dataset(builder, data_files=str(path), split=split)
        return data, _Input(str(path), [path], 1 if builder == "csv" else 0)
    if path.is_dir():
        return datasets.load_dataset(str(path), name=config, split=split), _Input(str(path), _files_under(path))
    if input_path.startswith(("/", "./", "../", "~")) or _builder(path) is not None:
        raise FileNotFoundError(f"--source hf input {input_path} does not exist (a local path; a hub name "
                                "reads 'owner/name')")
    return datasets.load_dataset(input_path, name=config, split=split), _Input(input_path, [])


def _splits(data, split: str | None, label: str, mapping: dict[str, str]) -> list:
    """The wanted columns of every split (or of ``split``), as datasets.Dataset objects in order."""
    # lazy: datasets takes seconds to import; only --source hf needs it
    import datasets

    if isinstance(data, datasets.DatasetDict):
        if split is not None:
            if split not in data:
                raise ValueError(f"{label} has no split {split!r} (it has {', '.join(data)}); fix --hf-split")
            parts = [data[split]]
        else:
            parts = list(data.values())
    else:
        parts = [data]
    if not parts:
        raise ValueError(f"{label}: the dataset has no splits; nothing to prepare")
    names = parts[0].column_names
    missing = [c for c in dict.fromkeys(mapping.values()) if any(c not in part.column_names for part in parts)]
    if missing:
        roles = ",".join(f"{r}={c}" for r, c in mapping.items() if c in missing)
        raise ValueError(f"{label}: no column {', '.join(map(repr, missing))} (asked for by --columns {roles}); "
                         f"its columns are {', '.join(names)}: map user, item, time, text and summary to them "
                         "with --columns ROLE=COLUMN,... (time= keeps the rows' order)")
    return parts


# ---------------------------------------------------------------------------------------------
# Validation of one column


def _first(mask: pa.ChunkedArray | pa.Array) -> int:
    """Index of the first True of a boolean array (-1 when none)."""
    return int(pc.index(mask, True).as_py())


def _bad(where: _Input, row: int, column: str, problem: str) -> DataFormatError:
    return DataFormatError(where.label, row + 1 + where.line_offset, column, problem)


def _check_nulls(values: pa.ChunkedArray, where: _Input, column: str, role: str) -> None:
    if values.null_count:
        raise _bad(where, _first(pc.is_null(values)), column,
                   f"missing (null); every interaction needs a {role}: fix or drop the row")


def _ids(values: pa.ChunkedArray, feature, where: _Input, column: str, role: str) -> tuple[np.ndarray, list[str]]:
    """(0-based number by first appearance per row, original id string per number)."""
    kind = values.type
    _check_nulls(values, where, column, role)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        blank = pc.equal(pc.utf8_trim_whitespace(values), "")
        if pc.any(blank).as_py():
            row = _first(blank)
            raise _bad(where, row, column, f"{values[row].as_py()!r} is not a non-empty {role} id; fix or drop the row")
    elif not pa.types.is_integer(kind):
        raise ValueError(f"{where.label}: column {column!r} ({role}) holds {kind}; a {role} id must be a string or an "
                         "integer (cast the column, e.g. with Dataset.cast_column)")
    encoded = values.combine_chunks().dictionary_encode()
    names = encoded.dictionary.to_pylist()
    labels = getattr(feature, "names", None)  # a ClassLabel: the label names are the ids people know
    originals = [labels[n] for n in names] if labels and pa.types.is_integer(kind) else [str(n) for n in names]
    return np.asarray(encoded.indices).astype(np.int64), originals


def _times(values: pa.ChunkedArray, where: _Input, column: str) -> np.ndarray:
    kind = values.type
    _check_nulls(values, where, column, "time")
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind) or pa.types.is_time(kind) or pa.types.is_duration(kind):
        return np.asarray(values.cast(pa.int64())).astype(np.int64)
    if pa.types.is_integer(kind):
        return np.asarray(values.cast(pa.int64()))
    if pa.types.is_floating(kind):
        times = np.asarray(values.cast(pa.float64()))
        bad = ~np.isfinite(times)
        if bad.any():
            row = int(np.argmax(bad))
            raise _bad(where, row, column, f"{times[row]!r} is not a finite time; fix or drop the row")
        return times
    raise ValueError(f"{where.label}: column {column!r} (time) holds {kind}; time must be numbers (e.g. seconds "
                     "since 1970), timestamps or dates: cast it, or pass --columns time= to keep the rows' order")


def _strings(values: pa.ChunkedArray | None, where: _Input, column: str, role: str) -> list[str] | None:
    if values is None:
        return None
    kind = values.type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)):
        raise ValueError(f"{where.label}: column {column!r} ({role}) holds {kind}; review text must be strings")
    return [value or "" for value in values.to_pylist()]


# ---------------------------------------------------------------------------------------------
# The reader


def _columns_of(parts, mapping: dict[str, str], progress: bool) -> dict[str, pa.ChunkedArray]:
    """Each mapped column over all parts, read in batches (memory-mapped Arrow, no Python rows)."""
    wanted = list(dict.fromkeys(mapping.values()))
    chunks: dict[str, list[pa.Array]] = {column: [] for column in wanted}
    total = sum(part.num_rows for part in parts)
    with progress_bar(total, "read rows", enabled=progress, unit="rows", unit_scale=True) as bar:
        for part in parts:
            for batch in part.with_format("arrow", columns=wanted).iter(batch_size=BATCH_ROWS):
                for column in wanted:
                    chunks[column].extend(batch.column(column).chunks)
                bar.update(batch.num_rows)
    schema = parts[0].features.arrow_schema
    return {column: pa.chunked_array([chunk.cast(schema.field(column).type) for chunk in chunks[column]],
                                     type=schema.field(column).type) for column in wanted}


def read_hf(input_path: str | Path, columns: dict[str, str] | None = None, *, config: str | None = None,
            split: str | None = None, progress: bool = False):
    """Read a Hugging Face dataset into RawSequences (see the module docstring)."""
    mapping = dict(DEFAULT_COLUMNS if columns is None else columns)
    for role in REQUIRED_ROLES:
        if not mapping.get(role):
            raise ValueError(f"--columns needs {role}=COLUMN")
    with _datasets_bars(progress and sys.stderr.isatty()):
        try:
            data, where = _load(str(input_path), config, split)
        except (FileNotFoundError, ValueError):
            raise
        except Exception as exc:  # noqa: BLE001 - datasets' own errors (offline hub, damaged files, ...)
            raise ValueError(f"--source hf could not load {input_path}: {type(exc).__name__}: {exc}") from None
    parts = _splits(data, split, where.label, mapping)
    features = parts[0].features
    values = _columns_of(parts, mapping, progress)
    if not len(values[mapping["user"]]):
        raise DataFormatError(where.label, 1, mapping["user"], "the dataset has no rows; check --input and --hf-split")

    user_of, user_names = _ids(values[mapping["user"]], features[mapping["user"]], where, mapping["user"], "user")
    item_of, item_names = _ids(values[mapping["item"]], features[mapping["item"]], where, mapping["item"], "item")
    rows = np.arange(len(user_of))
    keys = [rows] + ([_times(values[mapping["time"]], where, mapping["time"])] if "time" in mapping else []) + [user_of]
    order = np.lexsort(keys)  # by user (first appearance), then time, then row
    text = _strings(values.get(mapping.get("text", "")), where, mapping.get("text", ""), "text")
    summary = _strings(values.get(mapping.get("summary", "")), where, mapping.get("summary", ""), "summary")
    texts = None
    if text is not None or summary is not None:
        text, summary = text or [""] * len(rows), summary or [""] * len(rows)
        texts = pa.array([explanation_of(t, s) if t or s else "" for t, s in zip(text, summary)],
                         pa.string()).take(pa.array(order))
    return RawSequences(
        inputs=where.files,
        user_keys=np.arange(len(user_names), dtype=np.int64),
        offsets=np.concatenate([[0], np.cumsum(np.bincount(user_of, minlength=len(user_names)))]).astype(np.int64),
        items=item_of[order],
        user_original=lambda keys: [user_names[int(k)] for k in keys],
        item_original=lambda keys: [item_names[int(k)] for k in keys],
        user_numbering="appearance",
        description=f"Hugging Face dataset {where.label}",
        texts=texts,
    )
