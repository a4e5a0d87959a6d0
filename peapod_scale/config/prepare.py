"""``prepare``'s options: what to read, how to number and split it, what to write beside it."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Optional

from peapod_scale.config.options import Options, option

SOURCES = ("movielens", "p5", "amazon-reviews", "hf", "synthetic")  # data/sources/ holds one reader each
ITEM_INDEX_CHOICES = ("random", "sequential")
SYNTHETIC_DEFAULT = (1_000, 500, 20_000)  # users, items, interactions
# --columns: the roles a Hugging Face dataset's columns can play (data/sources/hf.py reads them)
ROLES = ("user", "item", "time", "text", "summary")
DEFAULT_COLUMNS = {"user": "user_id", "item": "item_id", "time": "timestamp"}
REQUIRED_ROLES = ("user", "item")
_HF_ONLY = ("columns", "hf_config", "hf_split")


def parse_columns(text: str) -> dict[str, str]:
    """``"user=reviewerID,item=asin,time="`` -> the full mapping (defaults filled in; "" = unused)."""
    mapping = dict(DEFAULT_COLUMNS)
    for part in filter(None, (p.strip() for p in text.split(","))):
        role, sep, column = part.partition("=")
        role = role.strip()
        if not sep or role not in ROLES:
            raise ValueError(f"{part!r}: expected ROLE=COLUMN with ROLE one of {', '.join(ROLES)}")
        if not column.strip() and role in REQUIRED_ROLES:
            raise ValueError(f"{role}= needs a column name: every interaction has a {role}")
        mapping[role] = column.strip()
    return {role: column for role, column in mapping.items() if column}


def format_columns(mapping: dict[str, str]) -> str:
    return ",".join(f"{role}={mapping[role]}" for role in ROLES if role in mapping)


def _columns(text: str) -> dict[str, str]:
    try:
        return parse_columns(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


@dataclass
class PrepareConfig(Options):
    PROG = "peapod-scale prepare"
    DESCRIPTION = "Validate raw interactions, split leave-one-out, write Parquet shards."

    source: str = option(
        None, "what --input holds: 'movielens' (u.data, ratings.dat or a RecBole .inter file, detected from its "
              "content), 'p5' (a folder with sequential_data.txt and datamaps.json) or 'amazon-reviews' (review JSON "
              "lines, optionally gzipped; adds explanation targets), 'hf' (any Hugging Face dataset through the "
              "datasets library: a save_to_disk folder, a Parquet, JSON or CSV file, or a hub name; see --columns) or "
              "'synthetic' (generated, no --input: Zipf popularity, walks on an item graph, templated reviews)",
        required=True, choices=SOURCES)
    input: Optional[str] = option(
        None, "the raw data. For movielens it may be left out: then the real MovieLens-100K ratings are used, fetched "
              "once from RecBole's PyPI wheel into $PEAPOD_CACHE (default ~/.cache/peapod-scale)", metavar="PATH")
    output: str = option(None, "dataset folder to create; it is built in a temporary sibling and renamed into place at "
                               "the end, so a failed run leaves nothing half-written", required=True, metavar="DIR")
    seed: int = option(42, "seeds the random item numbering and the negatives; negatives are seeded per user, so they "
                           "do not depend on processing order or sharding", at_least=0)
    max_history: int = option(20, "most preceding items kept as an example's history; the reference evaluation uses "
                                  "the last 20", at_least=1)
    num_negatives: int = option(99, "items the user never interacted with, drawn per user as top-N candidates beside "
                                    "the held-out item, as the reference evaluation does with 1 + 99", at_least=0)
    item_index: str = option("random", "how items are numbered: 'random' is a seeded permutation; 'sequential' "
                                       "numbers them by first appearance (P5's own ids), which leaks the answer "
                                       "because the next item's id is often the last id + 1",
                             choices=ITEM_INDEX_CHOICES)
    rows_per_shard: int = option(200_000, "most rows per Parquet file; more files let more ranks and loader workers "
                                          "read in parallel", at_least=1)
    neighbors: int = option(20, "most similar users kept per user (cosine on user embeddings factorised from the "
                                "training interactions only) for --user-prompt neighbors; 0 skips the embeddings and "
                                "lists", at_least=0)
    neighbor_search: str = option("auto", "how the neighbour lists are found: exact (every user against every "
                                          "other, N^2 time: hours at a million users), ann (FAISS IVF-Flat: "
                                          "minutes at a million, recall@20 about 0.94) or auto (exact below 50,000 "
                                          "users, ann from there; exact, saying so, where faiss is missing)",
                                  choices=["auto", "exact", "ann"])
    mf_dim: int = option(64, "width of those user embeddings (BPR matrix factorisation); --user-init mf needs it "
                             "equal to --user-dim", at_least=1)
    num_users: int = option(SYNTHETIC_DEFAULT[0], "--source synthetic only: number of users", at_least=1)
    num_items: int = option(SYNTHETIC_DEFAULT[1], "--source synthetic only: number of items", at_least=1)
    num_interactions: int = option(SYNTHETIC_DEFAULT[2], "--source synthetic only: number of interactions (at least 3 "
                                                         "per user)", at_least=1)
    min_interactions: int = option(0, "keep only the K-core: users and items with at least K interactions each, "
                                      "filtering both in turn until stable (the Amazon '5-core'); 0 or 1 keeps "
                                      "everything", at_least=0, metavar="K")
    columns: Optional[dict] = option(
        None, "--source hf only: the dataset's columns for each role, e.g. user=reviewerID,item=asin,"
              "time=unixReviewTime,text=reviewText (roles: user, item, time, text, summary; text and summary become "
              "explanation targets as for amazon-reviews). Unnamed roles default to "
              f"{format_columns(DEFAULT_COLUMNS)}; time= keeps the rows' order",
        metavar="ROLE=COLUMN,...", type=_columns)
    hf_split: Optional[str] = option(None, "--source hf only: read this split (default: every split of the dataset, "
                                           "in its order)", metavar="SPLIT")
    hf_config: Optional[str] = option(None, "--source hf only: the configuration of a hub dataset (load_dataset's "
                                            "name=)", metavar="NAME")
    overwrite: bool = option(False, "replace an existing output folder (only once the new one is complete); without "
                                    "it an existing folder is refused so that a finished dataset is never clobbered "
                                    "by accident")

    @property
    def synthetic_shape(self) -> tuple[int, int, int]:
        return self.num_users, self.num_items, self.num_interactions

    def _check(self) -> None:
        for name in ("seed", "max_history", "num_negatives", "rows_per_shard", "neighbors", "mf_dim",
                     "min_interactions", "num_users", "num_items", "num_interactions"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):  # a float from code, not a parsed flag
                raise ValueError(f"--{name.replace('_', '-')} must be an integer, not {value!r}")
        given = [name for name in _HF_ONLY if getattr(self, name) is not None]
        if self.source != "hf" and given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise ValueError(f"{flags}: only for --source hf, not --source {self.source}")
