import math

import pytest

from peapod_scale.eval.text_metrics import bleu, explanation_metrics, rouge, rouge_papers

REFS = ["the cat sat on the mat", "a b c d e"]
HYPS = ["the cat is on the mat", "a b c d e"]


def test_corpus_bleu_by_hand():
    # clipped n-gram matches / hypothesis n-grams, summed over both pairs:
    # 1-grams (5+5)/(6+5), 2-grams (3+4)/(5+4), 3-grams (1+3)/(4+3), 4-grams (0+2)/(3+2); equal lengths: no penalty
    assert bleu(REFS, HYPS, 1) == pytest.approx(100 * 10 / 11)
    assert bleu(REFS, HYPS, 4) == pytest.approx(100 * (10 / 11 * 7 / 9 * 4 / 7 * 2 / 5) ** 0.25)
    assert bleu(REFS[:1], HYPS[:1], 4) == 0.0  # no matching 4-gram, no smoothing


def test_brevity_penalty_and_clipping():
    assert bleu(["a b c d"], ["a b"], 1) == pytest.approx(100 * math.exp(1 - 4 / 2))
    assert bleu(["the cat"], ["the the the"], 1) == pytest.approx(100 * 1 / 3)  # "the" counts once


def test_rouge_f_scores_by_hand():
    scores = rouge(REFS, HYPS)
    # pair 1: 5 of 6 unigrams, 3 of 5 bigrams, LCS "the cat on the mat" = 5 of 6; pair 2 is exact
    assert scores["ROUGE-1"] == pytest.approx(100 * (5 / 6 + 1) / 2)
    assert scores["ROUGE-2"] == pytest.approx(100 * (3 / 5 + 1) / 2)
    assert scores["ROUGE-L"] == pytest.approx(100 * (5 / 6 + 1) / 2)
    short = rouge(["a b c d"], ["a b"])  # precision 1, recall 1/2 -> F 2/3; bigrams P 1, R 1/3 -> F 1/2
    assert short == pytest.approx({"ROUGE-1": 100 * 2 / 3, "ROUGE-2": 50.0, "ROUGE-L": 100 * 2 / 3})
    assert rouge(["x y"], ["z"]) == {"ROUGE-1": 0.0, "ROUGE-2": 0.0, "ROUGE-L": 0.0}


def test_papers_rouge_counts_distinct_ngrams_and_weights_rouge_l_by_p_over_r():
    scores = rouge_papers(REFS, HYPS)
    # pair 1: unigram sets {the cat sat on mat} / {the cat is on mat} share 4 of 5 (standard ROUGE: 5 of 6 counts);
    # bigram sets share 3 of 5; LCS 5 of 6 both ways, so beta = 1 and F = 5/6; pair 2 is exact
    assert scores["ROUGE-1"] == pytest.approx(100 * (4 / 5 + 1) / 2)
    assert scores["ROUGE-2"] == pytest.approx(100 * (3 / 5 + 1) / 2)
    assert scores["ROUGE-L"] == pytest.approx(100 * (5 / 6 + 1) / 2)
    # P = 1, R = 1/2: ROUGE-1 F1 2/3 as standard, but ROUGE-L beta = 2: F = 5 * 1/2 / (1/2 + 4) = 5/9, not 2/3
    assert rouge_papers(["a b c d"], ["a b"]) == pytest.approx({"ROUGE-1": 100 * 2 / 3, "ROUGE-2": 50.0,
                                                                "ROUGE-L": 100 * 5 / 9})
    assert rouge_papers(["a b c d"], ["a b"])["ROUGE-L"] < rouge(["a b c d"], ["a b"])["ROUGE-L"]
    # repeats count once in the script, with their counts in standard ROUGE
    assert rouge_papers(["the the cat"], ["the cat cat"])["ROUGE-1"] == pytest.approx(100.0)
    assert rouge(["the the cat"], ["the cat cat"])["ROUGE-1"] == pytest.approx(100 * 2 / 3)
    # an empty generation is one empty word there: a zero score, no division by zero
    assert rouge_papers(["a b"], [""]) == {"ROUGE-1": 0.0, "ROUGE-2": 0.0, "ROUGE-L": 0.0}


def test_explanation_metrics_name_each_rouge_and_refuse_bad_input():
    scores = explanation_metrics(REFS, HYPS)
    assert set(scores) == {"BLEU-1", "BLEU-4", "ROUGE-1/papers", "ROUGE-2/papers", "ROUGE-L/papers",
                           "ROUGE-1/standard", "ROUGE-2/standard", "ROUGE-L/standard"}
    assert scores["ROUGE-1/papers"] == pytest.approx(100 * (4 / 5 + 1) / 2)
    assert scores["ROUGE-1/standard"] == pytest.approx(100 * (5 / 6 + 1) / 2)
    with pytest.raises(ValueError):
        bleu(["a"], ["a", "b"])
    with pytest.raises(ValueError):
        rouge_papers([], [])
