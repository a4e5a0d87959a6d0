"""`prepare`: raw interactions -> numbered, leave-one-out split Parquet shards + manifest.json.

Layout of the output folder (the trainer reads exactly this; see DESIGN.md "Data formats"):

    manifest.json
    users.parquet                user int32 (1..U), original string
    items.parquet                item int32 (1..I), original string
    sequences/part-*.parquet     user, items list<int32>             the full chronological sequence
    train/part-*.parquet         user, history list<int32>, target   one row per training target, in a
                                                                     seeded random order (see _split_rows)
    train_explanation/part-*.parquet  user, target, explanation      (with text only) the train rows whose
                                                                     explanation is non-empty
    valid/part-*.parquet         user, history, target, negatives    target = items[-2]
    test/part-*.parquet          user, history, target, negatives    target = items[-1]

When the source has review text (amazon-reviews, P5 with exp_splits.pkl) train/valid/test also get
an ``explanation`` string column: the explanation of the row's *target* interaction, "" when that
interaction has none (never null); ``train_explanation/`` repeats just the train rows with text, so the
explanation task streams full batches with equal steps per rank instead of skipping textless rows
(see data/tasks.py). manifest["tasks"] lists the tasks the data supports and manifest["task_rows"]
counts usable rows per split and task.

Everything is written into a temporary sibling folder that is renamed into place only when complete.
Long steps show progress bars when asked (the CLI asks; see peapod_scale.tools.progress); the summary goes
to the ``peapod_scale`` logger (peapod_scale.tools.log), not to print.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from peapod_scale import __version__
from peapod_scale.config.prepare import DEFAULT_COLUMNS, PrepareConfig, format_columns
from peapod_scale.data.prepare.filters import k_core
from peapod_scale.data.prepare.user_similarity import write_user_similarity
from peapod_scale.data.sources import load_source
from peapod_scale.data.sources.base import RawSequences
from peapod_scale.data.tokenizer import train_tokenizer
from peapod_scale.tools.atomic_files import replace_folder
from peapod_scale.tools.log import setup_cli_logging
from peapod_scale.tools.progress import progress_bar

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MIN_INTERACTIONS = 3  # leave-one-out needs at least one training item, a validation and a test item
ROW_GROUP_SIZE = 10_000
# Independent random streams derived from --seed (numpy SeedSequence entropy [seed, stream, ...]).
_STREAM_ITEM_INDEX = 1
_STREAM_NEGATIVES = 2
_STREAM_TRAIN_ORDER = 3

_IDS = pa.list_(pa.field("item", pa.int32(), nullable=False))


def _schema(*fields: tuple[str, pa.DataType]) -> pa.Schema:
    return pa.schema([pa.field(name, kind, nullable=False) for name, kind in fields])


_NAMES_SCHEMA = {
    "user": _schema(("user", pa.int32()), ("original", pa.string())),
    "item": _schema(("item", pa.int32()), ("original", pa.string())),
}
_SEQUENCES_SCHEMA = _schema(("user", pa.int32()), ("items", _IDS))
_TRAIN_SCHEMA = _schema(("user", pa.int32()), ("history", _IDS), ("target", pa.int32()))
_EVAL_SCHEMA = _schema(("user", pa.int32()), ("history", _IDS), ("target", pa.int32()), ("negatives", _IDS))
_EXPLANATION = pa.field("explanation", pa.string(), nullable=False)  # "" = no explanation


@dataclass
class _Dataset:
    """Kept users numbered 1..U (user k+1 owns items[offsets[k]:offsets[k+1]]), items 1..I."""

    offsets: np.ndarray  # int64 [U + 1]
    items: np.ndarray  # int32 [N]
    user_original: list[str]  # [U]
    item_original: list[str]  # [I]: item k+1
    skipped: int  # users with fewer than MIN_INTERACTIONS interactions
    texts: pa.Array | None = None  # [N] explanation per interaction ("" = none), aligned with items
    negatives: np.ndarray | None = None  # [U, K] item numbers from a negatives file, else sampled

    @property
    def num_users(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_items(self) -> int:
        return len(self.item_original)


@dataclass
class _Rows:
    """Rows of one split: row r belongs to user index user[r] (0-based) and its list column is
    items[lo[r]:hi[r]]; for splits with a target, the target is items[hi[r]]."""

    user: np.ndarray
    lo: np.ndarray
    hi: np.ndarray


# ---------------------------------------------------------------------------------------------
# Numbering


def _segment_positions(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Indices of the concatenated ranges [starts[k], starts[k] + lengths[k])."""
    ends = np.cumsum(lengths)
    return np.repeat(starts - (ends - lengths), lengths) + np.arange(int(ends[-1]) if len(ends) else 0)


def _rng(seed: int, stream: int, *key: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, *key])


def _number(raw: RawSequences, seed: int, item_index: str, where: str) -> _Dataset:
    """Drop users too short for leave-one-out, number users 1..U and items 1..I (``where`` names the input)."""
    lengths = np.diff(raw.offsets)
    keep = lengths >= MIN_INTERACTIONS
    if not keep.any():
        raise ValueError(
            f"{where}: no user has the {MIN_INTERACTIONS} interactions leave-one-out needs "
            f"(one to train on, one to validate, one to test); nothing to prepare"
        )
    items = raw.items[np.repeat(keep, lengths)]
    texts = None if raw.texts is None else raw.texts.filter(pa.array(np.repeat(keep, lengths)))
    lengths, user_keys = lengths[keep], raw.user_keys[keep]

    # Items present in the kept users, numbered by first appearance (users in input order, each
    # user's items in time order): that is P5's own "sequential" indexing. "random" permutes it.
    keys, first, inverse = np.unique(items, return_index=True, return_inverse=True)
    sequential = np.empty(len(keys), dtype=np.int64)
    sequential[np.argsort(first, kind="stable")] = np.arange(len(keys))
    if item_index == "random":
        number = _rng(seed, _STREAM_ITEM_INDEX).permutation(len(keys))[sequential] + 1
    else:
        number = sequential + 1
    items = number[inverse].astype(np.int32)
    item_keys = np.empty_like(keys)
    item_keys[number - 1] = keys
    negatives = _number_negatives(raw, keep, keys, number)

    # Users: MovieLens in input order; P5 by ascending id, which keeps the file's ids 1..n.
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    if raw.user_numbering == "key":
        order = np.argsort(user_keys, kind="stable")
        positions = _segment_positions(starts[order], lengths[order])
        items = items[positions]
        texts = None if texts is None else texts.take(pa.array(positions))
        negatives = None if negatives is None else negatives[order]
        lengths, user_keys = lengths[order], user_keys[order]
    return _Dataset(
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        items=items,
        user_original=raw.user_original(user_keys),
        item_original=raw.item_original(item_keys),
        skipped=int((~keep).sum()),
        texts=texts,
        negatives=negatives,
    )


def _number_negatives(raw: RawSequences, keep: np.ndarray, keys: np.ndarray, number: np.ndarray) -> np.ndarray | None:
    """The kept users' file negatives, raw keys -> item numbers (keys sorted, number[i] for keys[i])."""
    if raw.negatives is None:
        return None
    negatives = raw.negatives[keep]
    at = np.searchsorted(keys, negatives).clip(max=len(keys) - 1)
    known = keys[at] == negatives
    if not known.all():
        raise ValueError(f"negative_samples.txt lists item {negatives[~known][0]}, which occurs in no kept "
                         "user's sequence, so it has no item number; use the file made for this data")
    return number[at].astype(np.int32)


# ---------------------------------------------------------------------------------------------
# Splits


def _split_rows(ds: _Dataset, max_history: int, seed: int) -> dict[str, _Rows]:
    """The rows of every split; train's in a random order seeded by ``seed``.

    The trainer's stream shuffles windows of ~65k rows and the rows inside each (data/shard_stream.py), so
    a train split written user after user would feed one block of users at a time: on P5 Beauty the
    training loss jumped at every window change, because users' order goes with how hard they are
    (the first 3,000 test users score half the transition baseline's HR@10 of all). Shuffled at write
    time, every window is a sample of all users; valid and test keep the users' order.
    """
    starts, ends = ds.offsets[:-1], ds.offsets[1:]
    users = np.arange(ds.num_users)

    def last_history(target_at: np.ndarray) -> _Rows:
        return _Rows(users, np.maximum(starts, target_at - max_history), target_at)

    # Train: the training part t = items[:-2]; one row per position i >= 1 of t (target t[i]).
    per_user = ends - starts - MIN_INTERACTIONS
    owner = np.repeat(users, per_user)
    target_at = _segment_positions(starts + 1, per_user)
    order = _rng(seed, _STREAM_TRAIN_ORDER).permutation(len(owner))
    owner, target_at = owner[order], target_at[order]
    return {
        "sequences": _Rows(users, starts, ends),
        "train": _Rows(owner, np.maximum(starts[owner], target_at - max_history), target_at),
        "valid": last_history(ends - 2),
        "test": last_history(ends - 1),
    }


def _id_lists(offsets: np.ndarray, values: np.ndarray) -> pa.Array:
    return pa.ListArray.from_arrays(
        pa.array(offsets.astype(np.int32)), pa.array(values.astype(np.int32)), type=_IDS
    )


def _rows_table(ds: _Dataset, rows: _Rows, a: int, b: int, schema: pa.Schema,
                negatives: np.ndarray | None = None) -> pa.Table:
    lo, hi = rows.lo[a:b], rows.hi[a:b]
    offsets = np.concatenate([[0], np.cumsum(hi - lo)])
    columns = [
        pa.array((rows.user[a:b] + 1).astype(np.int32)),
        _id_lists(offsets, ds.items[_segment_positions(lo, hi - lo)]),
    ]
    if "target" in schema.names:
        columns.append(pa.array(ds.items[hi]))
    if negatives is not None:
        columns.append(_id_lists(np.arange(len(negatives) + 1) * negatives.shape[1], negatives.ravel()))
    if "explanation" in schema.names:  # the explanation of the target interaction
        columns.append(ds.texts.take(pa.array(hi)).cast(pa.string()))
    return pa.Table.from_arrays(columns, schema=schema)


def _sample_negatives(rng: np.random.Generator, blocked: np.ndarray, allowed: int, k: int) -> np.ndarray:
    """k distinct items i in 1..len(blocked)-1 with blocked[i] False, in draw order.

    ``allowed`` is how many items are not blocked (> 0 when k > 0). Chosen items get blocked.
    """
    num_items = len(blocked) - 1
    parts, have = [], 0
    while have < k:
        need = k - have
        draw = rng.integers(1, num_items + 1, size=int(need * num_items / allowed * 1.25) + 8)
        draw = draw[~blocked[draw]]
        _, first = np.unique(draw, return_index=True)
        draw = draw[np.sort(first)][:need]
        blocked[draw] = True
        parts.append(draw)
        have += len(draw)
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


def _negatives(ds: _Dataset, a: int, b: int, k: int, seed: int) -> np.ndarray:
    """Negatives of users a..b-1 (0-based): k distinct items each never interacted with.

    Each user's generator is seeded from (seed, user), so a user's negatives do not depend on
    which other users are processed, in which order or in which shard.
    """
    lo, hi = ds.offsets[a], ds.offsets[b]
    owner = np.repeat(np.arange(b - a), np.diff(ds.offsets[a:b + 1]))
    pairs = np.unique(owner * (ds.num_items + 1) + ds.items[lo:hi])
    distinct = np.bincount(pairs // (ds.num_items + 1), minlength=b - a)
    blocked = np.zeros(ds.num_items + 1, dtype=bool)  # the user's items and those already drawn
    blocked[0] = True
    out = np.empty((b - a, k), dtype=np.int32)
    for index in range(a, b):
        user, allowed = index + 1, ds.num_items - int(distinct[index - a])
        if allowed < k:
            raise ValueError(
                f"user {user} interacted with {distinct[index - a]} of the {ds.num_items} items, "
                f"leaving {allowed} to draw --num-negatives={k} from; lower --num-negatives"
            )
        seen = ds.items[ds.offsets[index]:ds.offsets[index + 1]]
        blocked[seen] = True
        out[index - a] = _sample_negatives(_rng(seed, _STREAM_NEGATIVES, user), blocked, allowed, k)
        blocked[seen] = False
        blocked[out[index - a]] = False
    return out


# ---------------------------------------------------------------------------------------------
# Writing


def _write_parquet(table: pa.Table, path: Path) -> None:
    # No timestamps or paths go into the file: the same input gives the same bytes.
    pq.write_table(table, path, row_group_size=ROW_GROUP_SIZE, compression="zstd",
                   write_statistics=True, store_schema=True)


def _write_shards(root: Path, n_rows: int, rows_per_shard: int,
                  make_tables: Callable[[int, int], dict[str, pa.Table]], what: str, progress: bool) -> dict[str, dict]:
    """Write rows [a, b) shard by shard; make_tables returns one table per split for the range.

    A split with no rows still gets one (empty) file, so readers always find its schema.
    """
    splits: dict[str, dict] = {}
    with progress_bar(n_rows, f"write {what}", enabled=progress, unit="rows", unit_scale=True) as bar:
        for shard, a in enumerate(range(0, max(n_rows, 1), rows_per_shard)):
            b = min(a + rows_per_shard, n_rows)
            for name, table in make_tables(a, b).items():
                relative = f"{name}/part-{shard:05d}.parquet"
                (root / name).mkdir(exist_ok=True)
                _write_parquet(table, root / relative)
                split = splits.setdefault(name, {"rows": 0, "files": []})
                split["rows"] += table.num_rows
                split["files"].append(relative)
            bar.update(b - a)
    return splits


def _names_table(kind: str, names: list[str]) -> pa.Table:
    numbers = pa.array(np.arange(1, len(names) + 1, dtype=np.int32))
    return pa.Table.from_arrays([numbers, pa.array(names, pa.string())], schema=_NAMES_SCHEMA[kind])


def _write_dataset(root: Path, ds: _Dataset, *, seed: int, max_history: int, num_negatives: int,
                   rows_per_shard: int, progress: bool = False) -> dict[str, dict]:
    _write_parquet(_names_table("user", ds.user_original), root / "users.parquet")
    _write_parquet(_names_table("item", ds.item_original), root / "items.parquet")
    rows = _split_rows(ds, max_history, seed)
    train_schema, eval_schema = _TRAIN_SCHEMA, _EVAL_SCHEMA
    if ds.texts is not None:
        train_schema, eval_schema = (s.append(_EXPLANATION) for s in (_TRAIN_SCHEMA, _EVAL_SCHEMA))

    def sequences(a: int, b: int) -> dict[str, pa.Table]:
        return {"sequences": _rows_table(ds, rows["sequences"], a, b, _SEQUENCES_SCHEMA)}

    def train(a: int, b: int) -> dict[str, pa.Table]:
        table = _rows_table(ds, rows["train"], a, b, train_schema)
        if ds.texts is None:
            return {"train": table}
        with_text = table.filter(pc.greater(pc.binary_length(table["explanation"]), 0))
        return {"train": table, "train_explanation": with_text.select(["user", "target", "explanation"])}

    def evaluation(a: int, b: int) -> dict[str, pa.Table]:
        # valid and test have one row per user: they share shard ranges, so also the negatives.
        if ds.negatives is not None:  # from negative_samples.txt, checked when read
            negatives = ds.negatives[a:b, :num_negatives]
        else:
            negatives = _negatives(ds, a, b, num_negatives, seed)
        return {name: _rows_table(ds, rows[name], a, b, eval_schema, negatives) for name in ("valid", "test")}

    splits = _write_shards(root, ds.num_users, rows_per_shard, sequences, "sequences", progress)
    splits |= _write_shards(root, len(rows["train"].user), rows_per_shard, train, "train", progress)
    splits |= _write_shards(root, ds.num_users, rows_per_shard, evaluation, "valid/test", progress)
    return {name: splits[name] for name in ("train", "valid", "test", "sequences", "train_explanation") if name in splits}


def _text_present(texts: pa.Array) -> np.ndarray:
    """Boolean per interaction: has a non-empty explanation. Dictionary-encoded texts (synthetic
    data) are measured on their few distinct strings instead of on every row."""
    if pa.types.is_dictionary(texts.type):
        return (np.asarray(pc.binary_length(texts.dictionary)) > 0)[np.asarray(texts.indices)]
    return np.asarray(pc.binary_length(texts)) > 0


def _tasks(ds: _Dataset) -> list[str]:
    """Tasks the data supports: explanation only where the source carries at least one text."""
    has_text = ds.texts is not None and bool(_text_present(ds.texts).any())
    return ["sequential", "topn"] + (["explanation"] if has_text else [])


def _task_rows(ds: _Dataset, max_history: int, tasks: list[str]) -> dict[str, dict[str, int]]:
    """Rows per split usable by each task: every row for sequential and top-N (valid/test carry
    their negatives; train rows get theirs sampled at training time), rows whose target has a
    non-empty explanation for explanation."""
    rows = _split_rows(ds, max_history, seed=0)  # counts do not depend on the train order
    counts = {}
    for name in ("train", "valid", "test"):
        counts[name] = {task: len(rows[name].user) for task in tasks if task != "explanation"}
        if "explanation" in tasks:
            has_text = _text_present(ds.texts)
            counts[name]["explanation"] = int(has_text[rows[name].hi].sum())
    return counts


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_manifest(root: Path, manifest: dict) -> None:
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def _attach_tokenizer(root: Path, manifest: dict) -> None:
    manifest["tokenizer"] = train_tokenizer(root, manifest)
    _write_manifest(root, manifest)


# ---------------------------------------------------------------------------------------------
# The output folder


def _is_replaceable(path: Path) -> bool:
    """--overwrite replaces an earlier prepare output (or an empty folder), never anything else."""
    return path.is_dir() and ((path / "manifest.json").is_file() or not any(path.iterdir()))


class OutputExistsError(FileExistsError, ValueError):
    """The --output folder is already there. A FileExistsError for Python callers; also a ValueError
    because it is bad user input, which the CLI reports as one ``error:`` line (exit 2)."""


def _check_output(out: Path, overwrite: bool) -> None:
    if not (out.exists() or out.is_symlink()):
        return
    if not overwrite:
        raise OutputExistsError(
            f"output folder {out} already exists; pass --overwrite to replace it (the old one is "
            "replaced only once the new one is complete) or choose another --output"
        )
    if not _is_replaceable(out):
        raise OutputExistsError(
            f"{out} exists and is not a prepared dataset (no manifest.json) nor an empty folder; "
            "refusing to replace it even with --overwrite: choose another --output"
        )


def _move_into_place(tmp: Path, out: Path, overwrite: bool) -> None:
    _check_output(out, overwrite)  # again: something may have appeared while we worked
    replace_folder(tmp, out)  # a trainer reading the old dataset meanwhile never finds the folder gone


def prepare_dataset(source: str, input_path: str | None, output_dir: str, *, progress: bool = False,
                    **options) -> dict:
    """Read, validate, number and split raw interactions; write the dataset folder; return its manifest.

    ``options`` are ``PrepareConfig``'s fields (the command's flags, e.g. ``neighbors=0``, ``num_users=...``),
    checked there; ``progress`` draws bars on stderr for the long steps.
    """
    return build_dataset(PrepareConfig(source=source, input=input_path, output=output_dir, **options), progress)


def build_dataset(config: PrepareConfig, progress: bool = False) -> dict:
    """``prepare_dataset`` for a config already checked: the command's path."""
    source, input_path, seed = config.source, config.input, config.seed
    hf_options = {"columns": config.columns, "hf_config": config.hf_config, "hf_split": config.hf_split}
    item_index, max_history, num_negatives = config.item_index, config.max_history, config.num_negatives
    min_interactions, overwrite = config.min_interactions, config.overwrite
    out = Path(os.path.abspath(config.output))
    _check_output(out, overwrite)
    raw = load_source(source, input_path, progress=progress, synthetic_shape=config.synthetic_shape, seed=seed,
                      **hf_options)
    if min_interactions > 1:  # K-core before leave-one-out, so both users and items have K
        raw, _ = k_core(raw, min_interactions)
    where = str(input_path) if source == "hf" else str(raw.inputs[0]) if raw.inputs else raw.description
    ds = _number(raw, seed, item_index, where)
    if ds.negatives is not None and ds.negatives.shape[1] < num_negatives:
        raise ValueError(f"negative_samples.txt holds {ds.negatives.shape[1]} negatives per user, fewer than "
                         f"--num-negatives={num_negatives}; lower --num-negatives")
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "source": source,
        "inputs": [{"path": str(p.resolve()), "bytes": p.stat().st_size, "sha256": _sha256(p)}
                   for p in raw.inputs],
        "seed": seed,
        "item_index": item_index,
        "max_history": max_history,
        **({"synthetic": dict(zip(("num_users", "num_items", "num_interactions"), config.synthetic_shape))}
           if source == "synthetic" else {}),
        **({"hf": {"input": str(input_path), "config": config.hf_config, "split": config.hf_split,
                   "columns": dict(DEFAULT_COLUMNS if config.columns is None else config.columns)}}
           if source == "hf" else {}),
        "min_interactions": min_interactions,
        "num_negatives": num_negatives,
        "counts": {"users": ds.num_users, "items": ds.num_items, "interactions": len(ds.items)},
        "skipped": {"too_short_for_leave_one_out": ds.skipped, **raw.skipped},
        "tasks": _tasks(ds),
        "splits": {},
        "tokenizer": None,
        "created_by": f"peapod-scale {__version__}",
    }

    manifest["task_rows"] = _task_rows(ds, max_history, manifest["tasks"])

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)  # left by an earlier process with our pid that was killed
    tmp.mkdir(parents=True)
    try:
        manifest["splits"] = _write_dataset(tmp, ds, seed=seed, max_history=max_history, num_negatives=num_negatives,
                                            rows_per_shard=config.rows_per_shard, progress=progress)
        if config.neighbors > 0:  # user embeddings + neighbour lists for --user-prompt neighbors / --user-init mf
            manifest["user_similarity"] = write_user_similarity(tmp, ds.offsets, ds.items, ds.num_items, seed=seed,
                                                                num_neighbors=config.neighbors, mf_dim=config.mf_dim,
                                                                neighbor_search=config.neighbor_search,
                                                                progress=progress)
        _write_manifest(tmp, manifest)
        _attach_tokenizer(tmp, manifest)
        _move_into_place(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


# ---------------------------------------------------------------------------------------------
# Command line


def _folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def format_summary(manifest: dict, output_dir: str | Path, seconds: float) -> str:
    counts, splits = manifest["counts"], manifest["splits"]
    lines = [
        f"prepared {manifest['source']} -> {output_dir}",
        *(f"  input {entry['path']} ({entry['bytes']:,} bytes)" for entry in manifest["inputs"]),
        *([f"  dataset {manifest['hf']['input']}, columns {format_columns(manifest['hf']['columns'])}"]
          if "hf" in manifest else []),
        f"  item index {manifest['item_index']}, seed {manifest['seed']}, max history "
        f"{manifest['max_history']}, negatives {manifest['num_negatives']}",
        "",
        f"  {'users':<42}{counts['users']:>12,}",
        f"  {'items':<42}{counts['items']:>12,}",
        f"  {'interactions':<42}{counts['interactions']:>12,}",
        *(f"  {'skipped: ' + reason.replace('_', ' '):<42}{n:>12,}"
          for reason, n in manifest["skipped"].items()),
        "",
        f"  {'split':<12}{'rows':>12}{'files':>8}",
        *(f"  {name:<12}{split['rows']:>12,}{len(split['files']):>8}" for name, split in splits.items()),
        "",
        f"  tasks {', '.join(manifest['tasks'])}; rows per task:",
        *(f"    {name:<10}" + ", ".join(f"{task} {n:,}" for task, n in per_task.items())
          for name, per_task in manifest["task_rows"].items()),
        "",
        f"  tokenizer {manifest['tokenizer'] or '(none)'}",
        f"  output {_folder_bytes(Path(output_dir)) / 1e6:.1f} MB in {seconds:.1f} s",
    ]
    return "\n".join(lines)


def run_prepare(config: PrepareConfig) -> dict:
    """The `prepare` command: progress bars on, the summary logged at INFO (stdout on the CLI)."""
    setup_cli_logging()  # idempotent; the command line's way of showing the package's messages
    started = time.perf_counter()
    manifest = build_dataset(config, progress=True)
    log.info(format_summary(manifest, config.output, time.perf_counter() - started))
    return manifest
