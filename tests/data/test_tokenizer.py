import pytest

from peapod_scale.data import templates
from peapod_scale.data.prepare.dataset import prepare_dataset
from peapod_scale.data.tokenizer import load_codec


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, ):
    root = tmp_path_factory.mktemp("tok")
    lines = [f"{u}\t{(u * 7 + k) % 40 + 1}\t5\t{1000 + k}" for u in range(1, 31) for k in range(8)]
    (root / "u.data").write_text("\n".join(lines) + "\n")
    prepare_dataset("movielens", str(root / "u.data"), str(root / "ds"), seed=0, num_negatives=5)
    return root / "ds"


def test_prepare_trains_a_tokenizer_with_t5_specials(dataset):
    codec = load_codec(dataset)
    assert (codec.pad_id, codec.eos_id, codec.tokenizer.token_to_id("<unk>")) == (0, 1, 2)
    text = templates.sequential_prompt(12, [3, 17, 40])
    assert codec.decode(codec.encode([text])["input_ids"].tolist())[0] == text


def test_encode_pads_right_appends_eos_and_numbers_whole_words(dataset):
    codec = load_codec(dataset)
    batch = codec.encode(["user_3 interacted with items 17", "Which item"])
    ids, mask, words = batch["input_ids"], batch["attention_mask"], batch["whole_word_ids"]
    length0 = int(mask[0].sum())
    assert ids[0, length0 - 1] == codec.eos_id and words[0, length0 - 1] == 0
    assert int(mask[1].sum()) < length0 and (ids[1][mask[1] == 0] == codec.pad_id).all()
    pieces = codec.tokenizer.encode("user_3 interacted with items 17", add_special_tokens=False)
    assert words[0, : length0 - 1].tolist() == [w + 1 for w in pieces.word_ids]  # word k -> id k + 1, all pieces of a word alike
    assert words[0, : length0 - 1].max() == 5


def test_labels_ignore_padding(dataset):
    codec = load_codec(dataset)
    labels = codec.labels(["12", "12 , 13 , 14"])
    assert (labels[0] == -100).sum() > 0 and (labels[1] != -100).all()


def test_missing_tokenizer_is_explained(tmp_path):
    (tmp_path / "manifest.json").write_text('{"tokenizer": null}')
    with pytest.raises(FileNotFoundError, match="prepare"):
        load_codec(tmp_path)


def test_item_number_table_gives_what_the_tokenizer_gives(dataset):
    """index_numbers' table stands in for the tokenizer on canonical numbers only; everything else
    (leading zeros, numbers past the table, other digits, words) still goes through the tokenizer."""
    codec, reference = load_codec(dataset), load_codec(dataset)
    codec.index_numbers(40)
    offsets, ids = codec._numbers
    assert len(offsets) == 42 and len(ids) >= 40
    texts = [templates.sequential_prompt(3, [1, 17, 40, 39]), "007 0 41 12345 ² 40 user_40",
             templates.topn_prompt(7, list(range(1, 41)))]
    for _ in range(2):  # the first call also checks the cache path against the plain one
        cached, plain = codec.encode(texts, cache_words=True), reference.encode(texts)
        assert all(cached[k].equal(plain[k]) for k in plain)
    assert codec._words_are_local is True
    assert codec._number_pieces("17") == codec.tokenizer.encode("17", add_special_tokens=False).ids
    assert [codec._number_pieces(w) for w in ("007", "0", "41", "²", "user_4")] == [None] * 5
