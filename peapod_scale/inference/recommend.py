"""Top-k next items for one user of a prepared dataset: original ids in, original ids out.

The user's whole known sequence (training, validation and test items: everything the dataset holds)
is the history; beam search generates item ids, unparsable or unknown generations are dropped, and
items the user already has are skipped unless --include-seen. When the beams do not yield k items,
the list is filled from the most popular items and the output says how many were filled.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import torch

from peapod_scale.data.batches import TaskBatcher
from peapod_scale.data.dataset import read_manifest, split_files, training_sequences
from peapod_scale.data.templates import parse_item
from peapod_scale.eval.baselines import Popularity
from peapod_scale.eval.evaluate import _max_answer_tokens

HISTORY_LENGTH = 20  # items in the prompt, as in evaluation


def id_maps(data_dir: str | Path) -> tuple[dict[str, int], dict[int, str]]:
    """(original user id -> index, item index -> original item id) from users.parquet / items.parquet."""
    data_dir = Path(data_dir)
    users = pq.read_table(data_dir / "users.parquet").to_pydict()
    items = pq.read_table(data_dir / "items.parquet").to_pydict()
    return dict(zip(users["original"], users["user"])), dict(zip(items["item"], items["original"]))


def user_sequence(data_dir: str | Path, manifest: dict, user: int) -> list[int]:
    for path in split_files(data_dir, manifest, "sequences"):
        table = pq.read_table(path, filters=[("user", "=", user)])
        if table.num_rows:
            return table.column("items").to_pylist()[0]
    raise ValueError(f"{data_dir}: user index {user} has no sequence")


@torch.no_grad()
def recommend(model, codec, data_dir: str | Path, original_user: str, k: int = 10, num_beams: int | None = None,
              include_seen: bool = False) -> tuple[list[str], int]:
    """(k original item ids, how many of them came from the popularity fill)."""

    manifest = read_manifest(data_dir)
    user_index, item_original = id_maps(data_dir)
    if original_user not in user_index:
        raise ValueError(f"user {original_user!r} is not in {Path(data_dir) / 'users.parquet'}")
    num_items = manifest["counts"]["items"]
    seen = user_sequence(data_dir, manifest, user_index[original_user])
    if k < 1 or k > num_items - (0 if include_seen else len(set(seen))):
        raise ValueError(f"-k {k}: the dataset has {num_items} items, {len(set(seen))} of them already seen")
    num_beams = num_beams or max(20, 2 * k)
    batcher = TaskBatcher(codec, num_items)
    row = {"user": user_index[original_user], "history": seen[-HISTORY_LENGTH:], "target": seen[-1]}
    batch = batcher([row], "sequential", with_labels=False)
    model.eval()
    device = next(model.parameters()).device
    generated = model.generate(**{n: t.to(device) for n, t in batch.items()}, num_beams=num_beams,
                               num_return_sequences=num_beams, max_new_tokens=_max_answer_tokens(codec, num_items),
                               do_sample=False, early_stopping=True)
    excluded = set() if include_seen else set(seen)
    ranked: list[int] = []
    for text in codec.decode(generated.tolist()):
        item = parse_item(text)
        if item is not None and 1 <= item <= num_items and item not in excluded and item not in ranked:
            ranked.append(item)
    from_beams = ranked[:k]
    for item in Popularity(training_sequences(data_dir, manifest)).ranking + list(range(1, num_items + 1)):
        if len(ranked) >= k:
            break
        if item not in excluded and item not in ranked:
            ranked.append(item)
    return [item_original[i] for i in ranked[:k]], k - len(from_beams)
