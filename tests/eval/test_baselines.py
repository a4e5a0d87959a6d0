"""Popularity and item-to-item transitions: hand-checked rankings, and on a prepared dataset (through
evaluate()) proof that they learn from training items only."""

import numpy as np
import pytest

from peapod_scale.data.dataset import read_manifest, read_rows
from peapod_scale.data.prepare.dataset import prepare_dataset
from peapod_scale.data.tokenizer import load_codec
from peapod_scale.eval.baselines import NextIds, Popularity, Transitions
from peapod_scale.eval.evaluate import evaluate

from helpers import ScriptedBeams, write_udata

SEQUENCES = [[1, 2, 3], [1, 2, 4], [5, 2, 3], [2, 3, 1]]  # 2 is the most popular; 2 -> 3 three times


def test_popularity_ranks_by_training_count_then_id():
    pop = Popularity(SEQUENCES)
    assert pop.recommend([9], 3) == [2, 1, 3]
    assert pop.rank_candidates([9], [4, 5, 3], 2) == [3, 4]


def test_transitions_follow_the_last_item_and_fall_back_to_popularity():
    trans = Transitions(SEQUENCES)
    assert trans.recommend([7, 2], 3) == [3, 4, 2]  # 2->3 (x3), 2->4 (x1), then the most popular item
    assert trans.recommend([42], 2) == [2, 1]  # unseen last item: pure popularity
    assert trans.rank_candidates([2], [1, 4, 3], 3) == [3, 4, 1]


def test_next_ids_count_up_from_the_last_item_and_wrap():
    heuristic = NextIds(num_items=10)
    assert heuristic.recommend([4, 7], 4) == [8, 9, 10, 1]
    assert heuristic.recommend([], 2) == [1, 2]
    assert heuristic.recommend([3], 50) == [4, 5, 6, 7, 8, 9, 10, 1, 2, 3]  # never more than the catalogue
    assert heuristic.rank_candidates([7], [2, 7, 9, 8], 3) == [8, 9, 2]  # the last item itself is the farthest


VALID_ITEM, TEST_ITEM = 900, 999


def _everyone_ends_on_the_same_two_items(users=30, items=40, seen=20, seed=0):
    """Each user rates ``seen`` of ``items`` ordinary items, then VALID_ITEM, then TEST_ITEM (last).

    Those two items appear nowhere in training, yet in every user's validation / test row: a baseline
    that saw them would rank them first for everybody (HR@1 = 1); one that learns from training items
    only cannot rank them at all.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(1, users + 1):
        for t, item in enumerate(rng.choice(np.arange(1, items + 1), size=seen, replace=False)):
            rows.append((user, int(item), 4, 100 + t))
        rows += [(user, VALID_ITEM, 4, 200), (user, TEST_ITEM, 4, 300)]
    return rows


@pytest.fixture(scope="module")
def shared_ending(tmp_path_factory):
    root = tmp_path_factory.mktemp("ending")
    data = root / "data"
    prepare_dataset("movielens", str(write_udata(root, _everyone_ends_on_the_same_two_items())), str(data),
                    num_negatives=15, neighbors=0)
    return data, read_manifest(data), load_codec(data)


@pytest.mark.parametrize("split", ["valid", "test"])
def test_baselines_never_see_the_validation_or_test_items(shared_ending, split):
    data, manifest, codec = shared_ending
    rows = read_rows(data, manifest, split)
    assert len({r["target"] for r in rows}) == 1 and len(rows) == 30  # the shared item, held out for everybody
    model = ScriptedBeams(manifest, codec, rows, lambda row, task: [])
    results = evaluate(model, codec, data, manifest, split=split, batch_size=30, num_beams=2)
    for task in ("sequential", "topn"):
        for baseline in ("popularity", "transitions"):
            # top-N: every negative was rated by some user in training, the held-out item by nobody: ranked last of 16
            assert set(results[task][baseline].values()) == {0.0}, (split, task, baseline, results[task][baseline])
