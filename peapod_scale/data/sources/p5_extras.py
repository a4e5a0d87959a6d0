"""The optional files of a P5 folder: ``negative_samples.txt`` and ``exp_splits.pkl``.

negative_samples.txt -- "user n1 n2 ... nK", one line per user, the top-N candidates P5 evaluated
    with. When present they replace the seeded sampling. Every line must hold the same number of
    negatives, every user of sequential_data.txt needs a line, and a negative the user interacted
    with is an *error* naming file, line and field (not a skip: a file that contradicts the
    sequences was made for other data, and silently dropping a negative would change the
    candidate set the published numbers were measured on).

exp_splits.pkl -- {"train": [...], "val": [...], "test": [...]} lists of review dicts holding at
    least reviewerID, asin and explanation. It is a pickle, and unpickling runs whatever globals the
    file names, so it is read with :class:`RestrictedUnpickler`, which refuses every global: only
    plain containers and scalars (which need none) load. Each explanation attaches to every
    interaction of that (reviewerID, asin) pair, whichever of the pickle's splits it came from (the
    leave-one-out split decides where the interaction lands); a review with no matching
    interaction is a counted skip.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa

from peapod_scale.data.errors import DataFormatError
from peapod_scale.data.sources.base import content_lines

P5_NEGATIVES = "negative_samples.txt"
P5_EXPLANATIONS = "exp_splits.pkl"
_EXP_FIELDS = ("reviewerID", "asin", "explanation")


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves no global at all, so a pickle cannot run code while loading."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(
            f"refusing global {module}.{name}: only plain lists, dicts, strings and numbers may appear"
        )


def load_plain_pickle(path: Path):
    """Unpickle ``path`` with :class:`RestrictedUnpickler`; a forbidden global is a DataFormatError."""
    try:
        with open(path, "rb") as handle:
            return RestrictedUnpickler(io.BufferedReader(handle)).load()
    except pickle.UnpicklingError as exc:
        raise DataFormatError(path, 1, "pickle", f"{exc}; re-save it as plain Python containers") from None
    except (EOFError, ValueError, TypeError, IndexError, KeyError) as exc:
        raise DataFormatError(path, 1, "pickle", f"not a readable pickle ({exc!r}); is it truncated?") from None


def read_negatives(path: Path, parse_id: Callable, row_of_user: dict[int, int], offsets: np.ndarray,
                   items: np.ndarray, known_item: Callable[[int], bool]) -> np.ndarray:
    """Negatives per user row (input order of sequential_data.txt) as raw item ids [users, K]."""
    out: np.ndarray | None = None
    line_of: dict[int, int] = {}
    for lineno, text in content_lines(path):
        tokens = text.split()
        user = parse_id(tokens[0], path, lineno, "user")
        if user not in row_of_user:
            raise DataFormatError(path, lineno, "user", f"user {user} has no line in sequential_data.txt")
        if user in line_of:
            raise DataFormatError(path, lineno, "user",
                                  f"user {user} already has a line ({line_of[user]}); each user needs exactly one")
        line_of[user] = lineno
        negatives = np.array([parse_id(t, path, lineno, "negative") for t in tokens[1:]], dtype=np.int64)
        if out is None:
            if not len(negatives):
                raise DataFormatError(path, lineno, "negative", "no negatives; each line reads 'user n1 n2 ...'")
            out = np.full((len(row_of_user), len(negatives)), -1, dtype=np.int64)
        if len(negatives) != out.shape[1]:
            raise DataFormatError(path, lineno, "negative",
                                  f"{len(negatives)} negatives, but the first line has {out.shape[1]}")
        _check_negatives(path, lineno, user, negatives, items[offsets[row_of_user[user]]:offsets[row_of_user[user] + 1]],
                         known_item)
        out[row_of_user[user]] = negatives
    if out is None:
        raise DataFormatError(path, 1, "user", "the file is empty: it holds no negatives; remove it or fill it")
    missing = [u for u in row_of_user if u not in line_of]
    if missing:
        raise DataFormatError(path, 1, "user", f"{len(missing)} users have no line, e.g. user {missing[0]}")
    return out


def _check_negatives(path: Path, lineno: int, user: int, negatives: np.ndarray, seen: np.ndarray,
                     known_item: Callable[[int], bool]) -> None:
    clash = negatives[np.isin(negatives, seen)]
    if len(clash):
        raise DataFormatError(path, lineno, "negative",
                              f"item {clash[0]} is a negative of user {user}, who interacted with it")
    if len(np.unique(negatives)) != len(negatives):
        raise DataFormatError(path, lineno, "negative", "the same item is listed twice")
    unknown = next((n for n in negatives if not known_item(int(n))), None)
    if unknown is not None:
        raise DataFormatError(path, lineno, "negative", f"item id {unknown} is not in datamaps.json id2item")


def read_explanations(path: Path, user_id: dict[str, int], item_id: dict[str, int], row_of_user: dict[int, int],
                      offsets: np.ndarray, items: np.ndarray) -> tuple[pa.Array, int]:
    """Explanation per interaction (aligned with ``items``, "" = none) and the count of reviews
    that match no interaction. ``user_id``/``item_id`` map original ids to the file's numeric ids."""
    splits = load_plain_pickle(path)
    if not isinstance(splits, dict):
        raise DataFormatError(path, 1, "pickle", f"expected a dict of train/val/test lists, got {type(splits).__name__}")
    position: dict[tuple[int, int], list[int]] = {}
    for user, row in row_of_user.items():
        for at in range(int(offsets[row]), int(offsets[row + 1])):
            position.setdefault((user, int(items[at])), []).append(at)
    texts = [""] * len(items)
    unmatched = 0
    for split, reviews in splits.items():
        if not isinstance(reviews, list):
            raise DataFormatError(path, 1, str(split), f"expected a list of review dicts, got {type(reviews).__name__}")
        for index, review in enumerate(reviews):
            if not isinstance(review, dict) or any(not isinstance(review.get(f), str) for f in _EXP_FIELDS):
                bad = next((f for f in _EXP_FIELDS if not isinstance(review, dict) or not isinstance(review.get(f), str)))
                raise DataFormatError(path, 1, bad, f"{split}[{index}] needs string {', '.join(_EXP_FIELDS)}")
            key = (user_id.get(review["reviewerID"], -1), item_id.get(review["asin"], -1))
            if key not in position:
                unmatched += 1
                continue
            for at in position[key]:
                texts[at] = " ".join(review["explanation"].split())
    return pa.array(texts, pa.string()), unmatched
