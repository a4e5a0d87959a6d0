"""Explanation metrics: BLEU-1/4 and ROUGE-1/2/L F-scores, x 100, on whitespace tokens.

BLEU-n is corpus-level (Papineni et al. 2002), as the PETER / P5 / POD evaluation code computes it:
clipped n-gram counts summed over all pairs for orders 1..n, the geometric mean of the n precisions
(no smoothing: a zero precision gives 0), times the brevity penalty exp(1 - R/C) when the generated
length C is below the reference length R. ROUGE-1/2 (n-gram overlap) and ROUGE-L (longest common
subsequence) are F1 per pair (harmonic mean of precision and recall), averaged over pairs.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Sequence


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def bleu(references: Sequence[str], hypotheses: Sequence[str], max_order: int = 4) -> float:
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    matches, possible = [0] * max_order, [0] * max_order
    ref_len = hyp_len = 0
    for reference, hypothesis in zip(references, hypotheses):
        ref, hyp = reference.split(), hypothesis.split()
        ref_len, hyp_len = ref_len + len(ref), hyp_len + len(hyp)
        for n in range(1, max_order + 1):
            overlap = _ngrams(ref, n) & _ngrams(hyp, n)
            matches[n - 1] += sum(overlap.values())
            possible[n - 1] += max(0, len(hyp) - n + 1)
    if hyp_len == 0 or min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / p) for m, p in zip(matches, possible)) / max_order
    brevity = 1.0 if hyp_len >= ref_len else math.exp(1 - ref_len / hyp_len)
    return 100.0 * brevity * math.exp(log_precision)


def _f1(overlap: int, hyp_count: int, ref_count: int) -> float:
    if overlap == 0:
        return 0.0
    precision, recall = overlap / hyp_count, overlap / ref_count
    return 2 * precision * recall / (precision + recall)


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F1 over pairs, x 100."""
    if len(references) != len(hypotheses) or not references:
        raise ValueError(f"need equal, non-zero numbers of references and hypotheses "
                         f"(got {len(references)} and {len(hypotheses)})")
    totals = {"ROUGE-1": 0.0, "ROUGE-2": 0.0, "ROUGE-L": 0.0}
    for reference, hypothesis in zip(references, hypotheses):
        ref, hyp = reference.split(), hypothesis.split()
        for n in (1, 2):
            r, h = _ngrams(ref, n), _ngrams(hyp, n)
            totals[f"ROUGE-{n}"] += _f1(sum((r & h).values()), sum(h.values()), sum(r.values()))
        totals["ROUGE-L"] += _f1(_lcs(ref, hyp), len(hyp), len(ref))
    return {name: 100.0 * value / len(references) for name, value in totals.items()}


def explanation_metrics(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    return {"BLEU-1": bleu(references, hypotheses, 1), "BLEU-4": bleu(references, hypotheses, 4),
            **rouge(references, hypotheses)}
