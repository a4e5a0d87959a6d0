"""Reader for Amazon review dumps: JSON lines, plain or gzipped (detected by magic bytes, not name).

Each line is one review with ``reviewerID``, ``asin`` (non-empty strings), ``unixReviewTime``
(an integer) and optionally ``overall`` (a number), ``reviewText`` and ``summary`` (strings; real
dumps leave either out now and then). Every review is one interaction; a user's reviews are ordered
by ``unixReviewTime``, ties by input order; users and items are numbered by first appearance here
and keep their reviewerID / asin strings as ``original``.

Explanation target of a review (the text the explanation task learns to generate), in this order:

1. the first sentence of ``reviewText`` -- the text up to and including the first ``.``, ``!`` or
   ``?`` that is followed by whitespace or the end -- when it has 4 to 25 whitespace tokens
   (shorter is rarely informative, longer is a run-on paragraph, not a sentence);
2. else ``summary`` when it has 2 to 25 whitespace tokens ("Five Stars" qualifies; it is short but
   is what the reviewer chose as a headline);
3. else none, written as the empty string "" (the column is never null, so readers need no null
   handling; a row whose explanation is "" is not an explanation example).

Whitespace inside the chosen text is collapsed to single spaces. A UTF-8 byte-order mark at the
start of the file is not part of the first review.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re
from array import array
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from peapod_scale.data.errors import DataFormatError
from peapod_scale.data.sources.base import PROGRESS_EVERY_LINES, RawSequences, skip_bom
from peapod_scale.tools.progress import advance_to, file_bar

GZIP_MAGIC = b"\x1f\x8b"
MIN_SENTENCE_TOKENS = 4
MAX_EXPLANATION_TOKENS = 25
MIN_SUMMARY_TOKENS = 2
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def explanation_of(review_text: str, summary: str) -> str:
    """The explanation target of one review by the rule in the module docstring ("" for none)."""
    text = " ".join(review_text.split())
    end = _SENTENCE_END.search(text)
    sentence = text[: end.end()] if end else text
    if MIN_SENTENCE_TOKENS <= len(sentence.split()) <= MAX_EXPLANATION_TOKENS:
        return sentence
    summary = " ".join(summary.split())
    if MIN_SUMMARY_TOKENS <= len(summary.split()) <= MAX_EXPLANATION_TOKENS:
        return summary
    return ""


def _decompressed(file):
    """A binary handle over ``file`` (open, at 0) that un-gzips when the file starts with the gzip
    magic bytes, past a byte-order mark when there is one."""
    gzipped = file.read(2) == GZIP_MAGIC
    file.seek(0)
    handle = gzip.GzipFile(fileobj=file, mode="rb") if gzipped else file
    skip_bom(handle)
    return handle


def _records(path: Path, progress: bool = False) -> Iterator[tuple[int, dict]]:
    """(1-based line number, parsed object) per non-blank line; damage is a DataFormatError."""
    lineno = 0
    with open(path, "rb") as file, file_bar(os.path.getsize(path), path.name, enabled=progress) as bar:
        try:
            for lineno, raw in enumerate(_decompressed(file), 1):
                if not lineno % PROGRESS_EVERY_LINES:
                    advance_to(bar, file.tell())  # the compressed file's position: the bar's total is its size
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    reason = exc.msg if isinstance(exc, json.JSONDecodeError) else exc.reason
                    raise DataFormatError(path, lineno, "json",
                                          f"not valid JSON ({reason}); fix or remove the line") from None
                if not isinstance(record, dict):
                    raise DataFormatError(path, lineno, "json", "expected one JSON object per line")
                yield lineno, record
        except (EOFError, gzip.BadGzipFile, OSError) as exc:
            # A cut download: the gzip stream ends before its end marker (or is corrupt) after
            # `lineno` complete lines. Refuse rather than silently prepare a prefix of the data.
            raise DataFormatError(
                path, lineno + 1, "gzip",
                f"the compressed file is truncated or corrupt after line {lineno} ({exc}); "
                "download it again",
            ) from None


def _string(record: dict, field: str, path: Path, lineno: int, required: bool) -> str:
    value = record.get(field)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        what = "missing" if value is None else f"{value!r} is not a non-empty string"
        raise DataFormatError(path, lineno, field, f"{what}; every review needs a {field}")
    return value


def _time(record: dict, path: Path, lineno: int) -> int:
    value = record.get("unixReviewTime")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value != int(value):
        what = "missing" if value is None else f"{value!r} is not an integer (seconds since 1970)"
        raise DataFormatError(path, lineno, "unixReviewTime", f"{what}; fix or remove the line")
    return int(value)


def _check_rating(record: dict, path: Path, lineno: int) -> None:
    value = record.get("overall")
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not math.isfinite(value)):
        raise DataFormatError(path, lineno, "overall", f"{value!r} is not a number; fix or remove the line")


def read_amazon_reviews(input_path: str | Path, progress: bool = False):
    """Read a review dump into RawSequences with ``texts`` (explanations aligned with items)."""
    path = Path(input_path)
    if not path.is_file():
        raise FileNotFoundError(f"Amazon reviews input {path} not found: --input must be a JSON-lines "
                                "file (optionally gzipped) with one review per line")
    user_id: dict[str, int] = {}
    item_id: dict[str, int] = {}
    users, items, times = array("q"), array("q"), array("q")
    texts: list[str] = []
    for lineno, record in _records(path, progress):
        user = _string(record, "reviewerID", path, lineno, True)
        item = _string(record, "asin", path, lineno, True)
        times.append(_time(record, path, lineno))
        _check_rating(record, path, lineno)
        review = _string(record, "reviewText", path, lineno, False)
        summary = _string(record, "summary", path, lineno, False)
        users.append(user_id.setdefault(user, len(user_id)))
        items.append(item_id.setdefault(item, len(item_id)))
        texts.append(explanation_of(review, summary))
    if not users:
        raise DataFormatError(path, 1, "reviewerID", "the file is empty: it holds no reviews; check the path")

    user_of = np.frombuffer(users, dtype=np.int64)
    # user keys are already numbered by first appearance, so sorting by key is appearance order
    order = np.lexsort((np.arange(len(user_of)), np.frombuffer(times, dtype=np.int64), user_of))
    user_names, item_names = list(user_id), list(item_id)
    return RawSequences(
        inputs=[path],
        user_keys=np.arange(len(user_names), dtype=np.int64),
        offsets=np.concatenate([[0], np.cumsum(np.bincount(user_of, minlength=len(user_names)))]).astype(np.int64),
        items=np.frombuffer(items, dtype=np.int64)[order],
        user_original=lambda keys: [user_names[int(k)] for k in keys],
        item_original=lambda keys: [item_names[int(k)] for k in keys],
        user_numbering="appearance",
        description="Amazon reviews JSON lines",
        texts=pa.array(texts, pa.string()).take(pa.array(order)),
    )
