"""Explanation metrics: BLEU-1/4 and two ROUGE-1/2/L F-scores, x 100, on whitespace tokens.

BLEU-n is corpus-level (Papineni et al. 2002), as the PETER / P5 / POD evaluation code computes it:
clipped n-gram counts summed over all pairs for orders 1..n, the geometric mean of the n precisions
(no smoothing: a zero precision gives 0), times the brevity penalty exp(1 - R/C) when the generated
length C is below the reference length R.

ROUGE comes in two versions, because the papers' numbers are not standard ROUGE:

- ``ROUGE-n/papers``: what PETER's ``rouge.py`` (from Google's tf-seq2seq, used by POD and PeaPOD)
  computes. ROUGE-1/2 compare *sets* of distinct n-grams (a repeated n-gram counts once on each side)
  with F1 = 2PR / (P + R + 1e-8); ROUGE-L weights its F with beta = P / R,
  F = (1 + beta^2) P R / (R + beta^2 P), which leans towards the smaller of P and R. Words are the
  text's space-separated pieces, so an empty text is one empty word. Use these beside published tables.
- ``ROUGE-n/standard``: Lin (2004) as the rouge-score package computes F1 (on whitespace tokens,
  without its tokenizer or stemmer): clipped n-gram *counts*, ROUGE-L F1 with beta = 1.

Both are per-pair scores averaged over pairs.
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
    """Standard ROUGE (Lin 2004): mean ROUGE-1, ROUGE-2 and ROUGE-L F1 over pairs, x 100."""
    _check_pairs(references, hypotheses)
    totals = {"ROUGE-1": 0.0, "ROUGE-2": 0.0, "ROUGE-L": 0.0}
    for reference, hypothesis in zip(references, hypotheses):
        ref, hyp = reference.split(), hypothesis.split()
        for n in (1, 2):
            r, h = _ngrams(ref, n), _ngrams(hyp, n)
            totals[f"ROUGE-{n}"] += _f1(sum((r & h).values()), sum(h.values()), sum(r.values()))
        totals["ROUGE-L"] += _f1(_lcs(ref, hyp), len(hyp), len(ref))
    return {name: 100.0 * value / len(references) for name, value in totals.items()}


def _check_pairs(references: Sequence[str], hypotheses: Sequence[str]) -> None:
    if len(references) != len(hypotheses) or not references:
        raise ValueError(f"need equal, non-zero numbers of references and hypotheses "
                         f"(got {len(references)} and {len(hypotheses)})")


def _script_words(text: str) -> list[str]:
    """The script's words: ``text.split(" ")`` after joining whitespace runs (so "" is one empty word)."""
    return " ".join(text.split()).split(" ")


def _script_rouge_n(ref: list[str], hyp: list[str], n: int) -> float:
    r = {tuple(ref[i : i + n]) for i in range(len(ref) - n + 1)}
    h = {tuple(hyp[i : i + n]) for i in range(len(hyp) - n + 1)}
    overlap = len(r & h)
    precision = overlap / len(h) if h else 0.0
    recall = overlap / len(r) if r else 0.0
    return 2.0 * precision * recall / (precision + recall + 1e-8)


def _script_rouge_l(ref: list[str], hyp: list[str]) -> float:
    lcs = _lcs(hyp, ref)
    recall, precision = lcs / len(ref), lcs / len(hyp)
    beta = precision / (recall + 1e-12)
    return (1 + beta**2) * recall * precision / (recall + beta**2 * precision + 1e-12)


def rouge_papers(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """The papers' ROUGE (PETER's tf-seq2seq-style script): mean ROUGE-1/2/L F over pairs, x 100."""
    _check_pairs(references, hypotheses)
    totals = {"ROUGE-1": 0.0, "ROUGE-2": 0.0, "ROUGE-L": 0.0}
    for reference, hypothesis in zip(references, hypotheses):
        ref, hyp = _script_words(reference), _script_words(hypothesis)
        totals["ROUGE-1"] += _script_rouge_n(ref, hyp, 1)
        totals["ROUGE-2"] += _script_rouge_n(ref, hyp, 2)
        totals["ROUGE-L"] += _script_rouge_l(ref, hyp)
    return {name: 100.0 * value / len(references) for name, value in totals.items()}


ROUGE_NOTE = ("ROUGE-n/papers: the PETER/POD/PeaPOD script (distinct n-grams, ROUGE-L with beta = P/R), comparable "
              "with their tables; ROUGE-n/standard: Lin 2004 F1 (n-gram counts, beta = 1)")


def explanation_metrics(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    out = {"BLEU-1": bleu(references, hypotheses, 1), "BLEU-4": bleu(references, hypotheses, 4)}
    out.update({f"{name}/papers": value for name, value in rouge_papers(references, hypotheses).items()})
    out.update({f"{name}/standard": value for name, value in rouge(references, hypotheses).items()})
    return out
