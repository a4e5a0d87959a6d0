import math

import pytest

from peapod_scale.eval import ranking_metrics as metrics


def test_hit_rank_keeps_invalid_answers_in_place_and_counts_repeats_once():
    assert metrics.hit_rank([None, 7, 7, 3, 9], target=9) == 3  # slots: invalid, 7, 3, 9 (the second 7 is no new answer)
    assert metrics.hit_rank([None, None, 9], target=9) == 2
    assert metrics.hit_rank([7, None, 7, None, 9], target=9) == 3  # repeats count once, invalid answers each once
    assert metrics.hit_rank([9, 9], target=9) == 0
    assert metrics.hit_rank([1, 2, 3], target=4) is None
    assert metrics.hit_rank([], target=4) is None


def test_summarize_matches_hand_computed_values():
    # user A: target at position 0; user B: position 4; user C: position 7; user D: not returned
    out = metrics.summarize([0, 4, 7, None])
    assert out["HR@1"] == pytest.approx(1 / 4)
    assert out["HR@5"] == pytest.approx(2 / 4)
    assert out["HR@10"] == pytest.approx(3 / 4)
    assert out["NDCG@5"] == pytest.approx((1.0 + 1 / math.log2(6)) / 4)
    assert out["NDCG@10"] == pytest.approx((1.0 + 1 / math.log2(6) + 1 / math.log2(9)) / 4)


def test_summarize_refuses_empty_input():
    with pytest.raises(ValueError):
        metrics.summarize([])
