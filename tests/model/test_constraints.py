"""Constrained decoding: every generated answer is a valid item; without it a random model strays."""

import pytest
import torch

from peapod_scale.data.batches import TaskBatcher, evaluation_candidates
from peapod_scale.data.dataset import read_rows
from peapod_scale.data.templates import parse_item
from peapod_scale.eval.evaluate import evaluate
from peapod_scale.model.constraints import AnswerConstraints, AnswerTrie, PrefixConstraint
from peapod_scale.model.peapod import PeaPOD, PeaPODConfig

from helpers import prepare_small

BEAMS = 6


def test_trie_follows_answers_and_stops_outside_them():
    trie = AnswerTrie([[5, 7, 1], [5, 8, 1], [9, 1]])
    assert sorted(trie.next_tokens([])) == [5, 9]
    assert sorted(trie.next_tokens([5])) == [7, 8]
    assert trie.next_tokens([5, 7]) == [1] and trie.next_tokens([5, 7, 1]) == []
    assert trie.next_tokens([6]) == []
    constraint = PrefixConstraint([trie], pad_id=0)
    assert sorted(constraint(0, torch.tensor([0, 5]))) == [7, 8]  # the decoder start token is skipped
    assert constraint(0, torch.tensor([0, 9, 1, 0])) == [0]  # a finished beam only pads


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    data, manifest, codec = prepare_small(tmp_path_factory.mktemp("constrained"), users=12)
    torch.manual_seed(3)
    config = PeaPODConfig(num_users=manifest["counts"]["users"], pool_size=4, user_dim=8, key_dim=8)
    model = PeaPOD.from_preset("tiny", codec.vocab_size, config, dropout_rate=0.0).eval()
    return data, manifest, codec, model


def _answers(setup, task, constrained):
    data, manifest, codec, model = setup
    rows = read_rows(data, manifest, "test")
    batcher = TaskBatcher(codec, manifest["counts"]["items"], seed=42)
    batch = batcher(rows, task, with_labels=False)
    constraint = AnswerConstraints(batcher).for_rows(rows, task) if constrained else None
    out = model.generate(**batch, constraint=constraint, num_beams=BEAMS, num_return_sequences=BEAMS,
                         max_new_tokens=4, do_sample=False)
    texts = codec.decode(out.tolist())
    return rows, [texts[i * BEAMS:(i + 1) * BEAMS] for i in range(len(rows))]


@pytest.mark.parametrize("task", ["sequential", "topn"])
def test_constrained_answers_are_always_valid_and_unconstrained_ones_are_not(setup, task):
    manifest = setup[1]
    valid_items = set(range(1, manifest["counts"]["items"] + 1))

    def allowed(row):
        return set(evaluation_candidates(row, 42)) if task == "topn" else valid_items

    rows, constrained = _answers(setup, task, True)
    for row, answers in zip(rows, constrained):
        assert all(parse_item(a) in allowed(row) for a in answers), answers
        assert len(set(answers)) == BEAMS  # distinct beams, each a real answer
    rows, free = _answers(setup, task, False)
    strays = sum(parse_item(a) not in allowed(row) for row, answers in zip(rows, free) for a in answers)
    assert strays > 0  # the random model does produce non-items when nothing constrains it


def test_evaluate_reports_constrained_decoding_and_its_invalid_answers(setup):
    data, manifest, codec, model = setup
    results = evaluate(model, codec, data, manifest, split="valid", batch_size=5, num_beams=4, constrained=True)
    assert results["constrained"] is True and results["sequential"]["model"]
    assert results["invalid_answers"] == {"sequential": 0.0, "topn": 0.0}
    free = evaluate(model, codec, data, manifest, split="valid", batch_size=5, num_beams=4, tasks=["topn"])
    assert free["constrained"] is False
    assert 0.0 < free["invalid_answers"]["topn"] <= 1.0  # the random model strays without the trie
