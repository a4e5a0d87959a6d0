from peapod_scale.training.validation import BestTracker


def test_patience_counts_validations_without_improvement_and_resets_on_a_new_best():
    tracker = BestTracker(patience=2)
    assert tracker.update(0.1, 10) and tracker.best_step == 10
    assert not tracker.update(0.1, 20) and not tracker.should_stop  # equal is not better
    assert tracker.update(0.3, 30) and tracker.waited == 0 and not tracker.should_stop
    assert not tracker.update(0.2, 40) and not tracker.should_stop
    assert not tracker.update(0.25, 50) and tracker.should_stop
    assert (tracker.best, tracker.best_step) == (0.3, 30)


def test_patience_zero_never_stops():
    tracker = BestTracker(patience=0)
    tracker.update(1.0, 1)
    for step in range(2, 20):
        tracker.update(0.0, step)
    assert not tracker.should_stop and tracker.best_step == 1
