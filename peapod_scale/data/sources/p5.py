"""P5's preprocessed data: ``sequential_data.txt`` ("user item1 item2 ...", chronological) and ``datamaps.json``
(the numeric ids' raw ids), with P5's negatives and explanations beside them when present (``p5_extras.py``).
P5 keeps its own ids: users are numbered by ascending id."""

from __future__ import annotations

import json
from array import array
from pathlib import Path

import numpy as np

from peapod_scale.data.errors import DataFormatError
from peapod_scale.data.sources.base import RawSequences, content_lines, empty_file, parse_id
from peapod_scale.data.sources.p5_extras import P5_EXPLANATIONS, P5_NEGATIVES, read_explanations, read_negatives

P5_SEQUENCES = "sequential_data.txt"
P5_DATAMAPS = "datamaps.json"


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
    for lineno, text in content_lines(seq_path, progress):
        tokens = text.split()
        user = parse_id(tokens[0], seq_path, lineno, "user")
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
            item = parse_id(token, seq_path, lineno, "item")
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
        raise empty_file(seq_path, "user sequences")

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

    row_of_user = {int(u): row for row, u in enumerate(raw.user_keys)}
    if (folder / P5_NEGATIVES).is_file():
        raw.inputs.append(folder / P5_NEGATIVES)
        raw.negatives = read_negatives(folder / P5_NEGATIVES, parse_id, row_of_user, raw.offsets, raw.items,
                                       lambda item: str(item) in id2item)
    if (folder / P5_EXPLANATIONS).is_file():
        raw.inputs.append(folder / P5_EXPLANATIONS)
        user_id = {name: int(key) for key, name in id2user.items() if key.isdigit()}
        item_id = {name: int(key) for key, name in id2item.items() if key.isdigit()}
        raw.texts, unmatched = read_explanations(folder / P5_EXPLANATIONS, user_id, item_id, row_of_user,
                                                 raw.offsets, raw.items)
        raw.skipped["explanations_without_interaction"] = unmatched
