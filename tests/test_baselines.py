from peapod_scale.baselines import Popularity, Transitions

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
