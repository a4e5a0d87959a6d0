"""``--source synthetic``: a seeded, deterministic stand-in for Amazon-like data at any scale.

Why: the real data sets top out at ~200k interactions; scaling the pipeline to tens of millions
needs data with the same format and a similar shape, without Python objects per interaction.

Model (all draws from ``numpy.random.default_rng([seed, 7, chunk])``):

- item popularity is Zipf: item ``i`` (0-based) has weight ``1 / (i + 1) ** ZIPF_EXPONENT``;
- an item graph: every item has ``SUCCESSORS`` follow-up items, drawn by popularity;
- each user takes ``MIN_LENGTH`` interactions plus a uniform multinomial share of the rest;
- a user walks the graph: the first item is drawn by popularity, each next item is a uniformly
  chosen successor of the previous item with probability ``FOLLOW`` and a popularity draw
  otherwise -- so "what follows what" is learnable, as in real sessions;
- each interaction has a templated review sentence (template, adjective and the item's noun),
  kept as a dictionary-encoded Arrow array: int32 indices into a few hundred distinct strings.

Users are generated in fixed chunks of ``CHUNK_USERS`` with per-chunk generators, so memory holds
only numpy arrays (about 20 bytes per interaction) and the output does not depend on anything but
the options and the seed.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from peapod_scale.data.sources.base import RawSequences

ZIPF_EXPONENT = 1.0
SUCCESSORS = 8
FOLLOW = 0.7
MIN_LENGTH = 5
CHUNK_USERS = 65_536
_STREAM = 7

TEMPLATES = ("This {noun} is {adj}.", "I found the {noun} {adj} and would buy it again.",
             "A {adj} {noun} for the price.", "Honestly the {noun} feels {adj} after a month of use.",
             "My {noun} arrived quickly and it is {adj}.", "Overall a {adj} {noun}, as described.")
ADJECTIVES = ("great", "decent", "disappointing", "excellent", "cheap", "lovely", "fragile", "solid")
NOUNS = ("shampoo", "lotion", "brush", "perfume", "cream", "razor", "soap", "mask", "serum", "polish")


def _texts_dictionary() -> pa.Array:
    return pa.array([t.format(adj=a, noun=n) for t in TEMPLATES for a in ADJECTIVES for n in NOUNS], pa.string())


def _lengths(num_users: int, num_interactions: int, seed: int) -> np.ndarray:
    base = min(MIN_LENGTH, num_interactions // num_users)
    extra = np.random.default_rng([seed, _STREAM, 0]).multinomial(num_interactions - base * num_users,
                                                                 np.full(num_users, 1.0 / num_users))
    return (base + extra).astype(np.int64)


def _popular(rng: np.random.Generator, cdf: np.ndarray, size: int) -> np.ndarray:
    """Items drawn by popularity: inverse CDF (rng.choice(p=...) would redo the cumsum per call)."""
    return np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), len(cdf) - 1)


def _walk(rng: np.random.Generator, lengths: np.ndarray, cdf: np.ndarray, successors: np.ndarray) -> np.ndarray:
    """Items of the users in one chunk, concatenated (user by user), walking step by step in parallel."""
    steps = int(lengths.max(initial=0))
    walk = np.empty((len(lengths), steps), dtype=np.int64)
    current = _popular(rng, cdf, len(lengths))
    walk[:, 0] = current
    for step in range(1, steps):
        follow = rng.random(len(lengths)) < FOLLOW
        nxt = successors[current, rng.integers(0, SUCCESSORS, len(lengths))]
        current = np.where(follow, nxt, _popular(rng, cdf, len(lengths)))
        walk[:, step] = current
    return walk[np.arange(steps) < lengths[:, None]]  # row-major: user by user, in step order


def generate_synthetic(num_users: int, num_items: int, num_interactions: int, seed: int):
    """RawSequences of the synthetic data set (see the module docstring)."""
    if num_users < 1 or num_items < 2 or num_interactions < 3 * num_users:
        raise ValueError(f"synthetic data needs >= 1 user, >= 2 items and >= 3 interactions per user "
                         f"(leave-one-out); got {num_users} users, {num_items} items, {num_interactions} "
                         "interactions")
    weights = 1.0 / np.arange(1, num_items + 1) ** ZIPF_EXPONENT
    cdf = np.cumsum(weights / weights.sum())
    successors = _popular(np.random.default_rng([seed, _STREAM, 1]), cdf, num_items * SUCCESSORS)
    successors = successors.reshape(num_items, SUCCESSORS)
    lengths = _lengths(num_users, num_interactions, seed)
    items = np.empty(num_interactions, dtype=np.int64)
    text_index = np.empty(num_interactions, dtype=np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    for chunk, a in enumerate(range(0, num_users, CHUNK_USERS)):
        b = min(a + CHUNK_USERS, num_users)
        rng = np.random.default_rng([seed, _STREAM, 2, chunk])
        lo, hi = offsets[a], offsets[b]
        items[lo:hi] = _walk(rng, lengths[a:b], cdf, successors)
        template = rng.integers(0, len(TEMPLATES), hi - lo)
        adjective = rng.integers(0, len(ADJECTIVES), hi - lo)
        text_index[lo:hi] = (template * len(ADJECTIVES) + adjective) * len(NOUNS) + items[lo:hi] % len(NOUNS)
    return RawSequences(
        inputs=[],
        user_keys=np.arange(num_users, dtype=np.int64),
        offsets=offsets,
        items=items,
        user_original=lambda keys: [f"synthetic_user_{int(k)}" for k in keys],
        item_original=lambda keys: [f"synthetic_item_{int(k)}" for k in keys],
        user_numbering="appearance",
        description=f"synthetic ({num_users:,} users, {num_items:,} items, {num_interactions:,} interactions)",
        texts=pa.DictionaryArray.from_arrays(pa.array(text_index), _texts_dictionary()),
    )
