"""evaluate(): how beams become ranks (invalid answers are misses in place, duplicates count once), the
top-N candidates the model is shown, baselines that learn from training items only, and the explanation
task (BLEU/ROUGE on rows with a reference text) beside the ranking tasks."""

import math
import re

import pyarrow.parquet as pq
import pytest
import torch

from peapod_scale.data.dataset import read_manifest, read_rows, split_files
from peapod_scale.data.prepare.dataset import prepare_dataset
from peapod_scale.data.tokenizer import load_codec
from peapod_scale.eval.evaluate import evaluate, format_table, spread_rows
from peapod_scale.model.peapod import PeaPOD, PeaPODConfig

from helpers import ScriptedBeams, prepare_small, synthetic_ratings, write_udata

TOP = 10  # answers evaluate() scores per row



def _hand_metrics(ranks):
    """HR@1/5/10, NDCG@5/10 from 0-based ranks (None: missed), written out independently of metrics.py."""
    def hit(r, k):
        return r is not None and r < k
    out = {f"HR@{k}": sum(hit(r, k) for r in ranks) / len(ranks) for k in (1, 5, 10)}
    out.update({f"NDCG@{k}": sum(1 / math.log2(r + 2) for r in ranks if hit(r, k)) / len(ranks) for k in (5, 10)})
    return out


def _random_model(manifest, codec):
    torch.manual_seed(5)
    config = PeaPODConfig(num_users=manifest["counts"]["users"], pool_size=4, user_dim=8, key_dim=8)
    return PeaPOD.from_preset("tiny", codec.vocab_size, config, dropout_rate=0.0).eval()


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    """Synthetic interactions with templated review text: every target has an explanation."""
    data = tmp_path_factory.mktemp("eval") / "data"
    prepare_dataset("synthetic", None, str(data), num_negatives=9, neighbors=0, num_users=24, num_items=30, num_interactions=400)
    manifest = read_manifest(data)
    codec = load_codec(data)
    return data, manifest, codec, _random_model(manifest, codec)


def test_explanation_is_scored_on_the_rows_with_a_reference(reviews):
    data, manifest, codec, model = reviews
    results = evaluate(model, codec, data, manifest, split="test", tasks=["explanation", "sequential"],
                       batch_size=8, num_beams=2)
    with_text = [r for r in read_rows(data, manifest, "test") if r["explanation"]]
    assert results["explanation_rows"] == len(with_text) == manifest["task_rows"]["test"]["explanation"] > 0
    scores = results["explanation"]["model"]
    assert set(scores) == {"BLEU-1", "BLEU-4", *(f"ROUGE-{n}/{kind}" for n in "12L" for kind in ("papers", "standard"))}
    assert all(0.0 <= value <= 100.0 for value in scores.values())
    assert set(results["invalid_answers"]) == {"sequential"}  # only ranking tasks have item answers
    table = format_table(results)
    assert "explanation model" in " ".join(table.split()) and "BLEU-4" in table and "HR@10" in table
    assert "ROUGE-L/papers" in table and "ROUGE-n/papers: the PETER/POD/PeaPOD script" in table


def test_explanation_on_data_without_text_says_which_sources_have_it(tmp_path):
    data = tmp_path / "data"
    prepare_dataset("movielens", str(write_udata(tmp_path, synthetic_ratings(users=10, items=30))), str(data),
                    num_negatives=5, neighbors=0)
    manifest, codec = read_manifest(data), load_codec(data)
    with pytest.raises(ValueError, match="no explanation column.*amazon-reviews"):
        evaluate(_random_model(manifest, codec), codec, data, manifest, split="valid", tasks=["explanation"])


def test_unknown_task_is_refused(reviews):
    data, manifest, codec, model = reviews
    with pytest.raises(ValueError, match="cannot evaluate \\['rating'\\]"):
        evaluate(model, codec, data, manifest, tasks=["rating"])



@pytest.fixture(scope="module")
def ranking_data(tmp_path_factory):
    data, manifest, codec = prepare_small(tmp_path_factory.mktemp("scored"), users=24)
    return data, manifest, codec, read_rows(data, manifest, "test")


def _not_a_candidate(row, num_items):
    return next(i for i in range(1, num_items + 1) if i != row["target"] and i not in row["negatives"])


def _wrong_candidate(row):
    return row["negatives"][0]


# (beams for a row, rank of the target for sequential, for top-N, invalid answers among the 10 for each):
# "x" = a non-item text, N+1 = out of range, "0<target>" = the target with a leading zero (not canonical),
# "far" = a real item that is not one of the row's top-N candidates (valid for sequential only).
CASES = [
    (lambda r, n: [r["target"]], 0, 0, 9, 9),
    (lambda r, n: ["x", "abc", r["target"]], 2, 2, 9, 9),
    (lambda r, n: ["0" + str(r["target"]), n + 1, "0", r["target"]], 3, 3, 9, 9),
    (lambda r, n: [_wrong_candidate(r)] * 3 + [r["target"]], 1, 1, 6, 6),  # one distinct item above the target
    (lambda r, n: [_not_a_candidate(r, n)] * 2 + [r["target"]], 1, 2, 7, 9),  # top-N: each a miss in place
    (lambda r, n: ["x"] * 9 + [r["target"]], 9, 9, 9, 9),
    (lambda r, n: ["x"] * 10 + [r["target"]], None, None, 10, 10),  # the 11th answer is not returned
    (lambda r, n: [_wrong_candidate(r)], None, None, 9, 9),
]


def test_ranks_count_invalid_answers_in_place_and_duplicates_once(ranking_data):
    data, manifest, codec, rows = ranking_data
    num_items = manifest["counts"]["items"]
    case_of = {row["user"]: CASES[i % len(CASES)] for i, row in enumerate(rows)}
    model = ScriptedBeams(manifest, codec, rows, lambda row, task: case_of[row["user"]][0](row, num_items))
    results = evaluate(model, codec, data, manifest, split="test", batch_size=5, num_beams=20)
    for task, rank_at, invalid_at in (("sequential", 1, 3), ("topn", 2, 4)):
        expected = [case_of[r["user"]][rank_at] for r in rows]
        assert results[task]["model"] == pytest.approx(_hand_metrics(expected)), task
        invalid = sum(case_of[r["user"]][invalid_at] for r in rows)
        assert results["invalid_answers"][task] == pytest.approx(invalid / (TOP * len(rows))), task
    assert sum(model.calls) == 2 * len(rows) and max(model.calls) == 5  # every row once per task, 5 per batch


def test_a_limit_evaluates_users_spread_over_the_split_not_its_first_ones(ranking_data):
    """Splits are in user order and the first users need not be typical (P5 Beauty: half the transition HR@10)."""
    data, manifest, codec, rows = ranking_data
    model = ScriptedBeams(manifest, codec, rows, lambda row, task: [row["target"]])
    results = evaluate(model, codec, data, manifest, split="test", tasks=["sequential"], batch_size=4, num_beams=4,
                       limit=6)
    asked = [int(re.search(r"user_(\d+)", prompt).group(1)) for prompt in model.prompts["sequential"]]
    assert results["users"] == 6 and len(rows) == 24
    assert sorted(asked) == sorted(rows[i]["user"] for i in (0, 4, 8, 12, 16, 20))
    assert spread_rows(list(range(10)), 3) == [0, 3, 6]
    assert spread_rows(list(range(5)), None) == spread_rows(list(range(5)), 9) == list(range(5))


def test_topn_prompt_shows_the_target_and_the_users_never_seen_negatives(ranking_data):
    data, manifest, codec, rows = ranking_data
    model = ScriptedBeams(manifest, codec, rows, lambda row, task: [row["target"]])
    evaluate(model, codec, data, manifest, split="test", tasks=["topn"], batch_size=7, num_beams=4)
    sequences = {r["user"]: r["items"] for path in split_files(data, manifest, "sequences")
                 for r in pq.read_table(path).to_pylist()}
    prompts = model.prompts["topn"]
    assert len(prompts) == len(rows)
    for row, prompt in zip(rows, prompts):
        assert f"user_{row['user']} " in prompt
        shown = [int(word) for word in prompt.split("?")[-1].replace(",", " ").split()]
        assert len(shown) == len(set(shown)) == manifest["num_negatives"] + 1
        assert set(shown) == {row["target"], *row["negatives"]}
        assert not set(row["negatives"]) & set(sequences[row["user"]])  # never seen, valid and test items included
        assert all(1 <= item <= manifest["counts"]["items"] for item in shown)
