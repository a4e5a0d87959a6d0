"""evaluate(): the explanation task (BLEU/ROUGE on rows with a reference text) beside the ranking tasks."""

import pytest
import torch

from peapod_scale.data.prepare import prepare_dataset
from peapod_scale.data.stream import read_manifest, read_rows
from peapod_scale.data.tokenizer import load_codec
from peapod_scale.evaluation import evaluate, format_table
from peapod_scale.model.peapod import PeaPOD, PeaPODConfig

from test_data_user_similarity import synthetic_ratings, write_udata


def _random_model(manifest, codec):
    torch.manual_seed(5)
    config = PeaPODConfig(num_users=manifest["counts"]["users"], pool_size=4, user_dim=8, key_dim=8)
    return PeaPOD.from_preset("tiny", codec.vocab_size, config, dropout_rate=0.0).eval()


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    """Synthetic interactions with templated review text: every target has an explanation."""
    data = tmp_path_factory.mktemp("eval") / "data"
    prepare_dataset("synthetic", None, str(data), num_negatives=9, num_neighbors=0, synthetic_shape=(24, 30, 400))
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
    assert set(scores) == {"BLEU-1", "BLEU-4", "ROUGE-1", "ROUGE-2", "ROUGE-L"}
    assert all(0.0 <= value <= 100.0 for value in scores.values())
    assert set(results["invalid_answers"]) == {"sequential"}  # only ranking tasks have item answers
    table = format_table(results)
    assert "explanation model" in " ".join(table.split()) and "BLEU-4" in table and "HR@10" in table


def test_explanation_on_data_without_text_says_which_sources_have_it(tmp_path):
    data = tmp_path / "data"
    prepare_dataset("movielens", str(write_udata(tmp_path, synthetic_ratings(users=10, items=30))), str(data),
                    num_negatives=5, num_neighbors=0)
    manifest, codec = read_manifest(data), load_codec(data)
    with pytest.raises(ValueError, match="no explanation column.*amazon-reviews"):
        evaluate(_random_model(manifest, codec), codec, data, manifest, split="valid", tasks=["explanation"])


def test_unknown_task_is_refused(reviews):
    data, manifest, codec, model = reviews
    with pytest.raises(ValueError, match="cannot evaluate \\['rating'\\]"):
        evaluate(model, codec, data, manifest, tasks=["rating"])
