"""Tokenisation with whole-word ids.

A pretrained T5 folder brings its own SentencePiece vocabulary; without one, ``prepare`` trains a
byte-pair model on the prepared data, sized so that template words, ``user_17`` and frequent item
numbers such as ``1042`` become single pieces and rare ones a few. (A Unigram trainer was tried first:
on this corpus it stopped at ~600 pieces and spelled template words letter by letter.)
"""

from __future__ import annotations

import json
import string
from array import array
from itertools import chain
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pyarrow.parquet as pq
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from peapod_scale.data import templates

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
TOKENIZER_FILE = "tokenizer.json"
MAX_WHOLE_WORDS = 512


def _corpus(dataset_dir: Path, manifest: dict, max_rows: int) -> Iterator[str]:
    """Rendered prompts over (a prefix of) the training rows, so the vocabulary fits what the model reads."""
    seen = 0
    for name in manifest["splits"]["train"]["files"]:
        for batch in pq.ParquetFile(dataset_dir / name).iter_batches(columns=["user", "history", "target"]):
            for user, history, target in zip(*(batch.column(c).to_pylist() for c in ("user", "history", "target"))):
                yield templates.sequential_prompt(user, history + [target])
                yield templates.topn_prompt(user, [])
                yield templates.explanation_prompt(user, target)
                seen += 1
                if seen >= max_rows:
                    return


def train_tokenizer(dataset_dir: Path, manifest: dict, vocab_size: int | None = None, max_rows: int = 200_000) -> str:
    """Train a BPE tokenizer (T5's specials: pad 0, eos 1, unk 2) and save it in the dataset folder."""
    if vocab_size is None:
        counts = manifest["counts"]
        vocab_size = min(32_000, counts["items"] + counts["users"] + 1_000)
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, EOS, UNK], show_progress=False,
                                  initial_alphabet=list(string.ascii_letters + string.digits + string.punctuation))
    tokenizer.train_from_iterator(_corpus(Path(dataset_dir), manifest, max_rows), trainer=trainer)
    tokenizer.save(str(Path(dataset_dir) / TOKENIZER_FILE))
    return TOKENIZER_FILE


# Words kept by the word cache of one process (~200 B each: ~7 MB). Item numbers come from the table of
# ``index_numbers`` instead; the cache holds template words and user words, and a bound this low is full at
# every dataset size, so a worker's memory does not grow with the number of users (a million entries
# measured 207 MB). Template words are re-cached at once after a clear.
WORD_CACHE_ENTRIES = 1 << 15


class TextCodec:
    """Batch encode/decode around a ``tokenizers.Tokenizer``, adding ``</s>`` and whole-word ids."""

    def __init__(self, tokenizer: Tokenizer):
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self.tokenizer = tokenizer
        self.pad_id = self._special(PAD)
        self.eos_id = self._special(EOS)
        self._word_pieces: dict[str, list[int]] = {}  # word -> its pieces, for encode(..., cache_words=True)
        self._words_are_local: bool | None = None  # None: not yet checked against the tokenizer
        self._numbers: tuple[array, array] | None = None  # pieces of "1".."N": (offsets, ids)

    def index_numbers(self, count: int, chunk: int = 4096) -> None:
        """Tokenize the item numbers 1..count once into two flat arrays (~12 B per item).

        Item numbers are most of the words of a prompt (a history, a candidate list), and a catalog of
        hundreds of thousands does not fit the bounded word cache: without this every batch would send
        hundreds of evicted numbers back through the tokenizer (~10 us each). Called in the main process
        before the loader workers fork, so they share the arrays.
        """
        if count < 1 or (self._numbers is not None and len(self._numbers[0]) - 2 >= count):
            return
        lengths, ids = [], []
        for start in range(1, count + 1, chunk):
            words = [str(n) for n in range(start, min(start + chunk, count + 1))]
            encodings = self.tokenizer.encode_batch(words, add_special_tokens=False)
            lengths.append(np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings)))
            ids.append(np.fromiter(chain.from_iterable(e.ids for e in encodings), dtype=np.int32,
                                   count=int(lengths[-1].sum())))
        offsets = np.zeros(count + 2, dtype=np.int64)  # number n: ids[offsets[n]:offsets[n + 1]]
        offsets[2:] = np.cumsum(np.concatenate(lengths))
        # array.array, not numpy: as compact, and slicing one number's pieces costs a fraction of numpy's
        self._numbers = array("q", offsets.tobytes()), array("i", np.concatenate(ids).tobytes())

    def _number_pieces(self, word: str) -> list[int] | None:
        """The pieces of a canonical item number from ``index_numbers``' table (None: not one)."""
        if self._numbers is None or not (word.isascii() and word.isdigit()) or word[0] == "0":
            return None
        offsets, ids = self._numbers
        number = int(word)
        return ids[offsets[number]:offsets[number + 1]].tolist() if number < len(offsets) - 1 else None

    def _special(self, token: str) -> int:
        index = self.tokenizer.token_to_id(token)
        if index is None:
            raise ValueError(f"tokenizer has no {token!r} token; a T5-style vocabulary needs <pad>, </s> and <unk>")
        return index

    @classmethod
    def from_file(cls, path: str | Path) -> "TextCodec":
        return cls(Tokenizer.from_file(str(path)))

    @classmethod
    def from_pretrained(cls, name_or_dir: str) -> "TextCodec":
        # lazy: transformers takes seconds to import; only a pretrained tokenizer needs it
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(name_or_dir).backend_tokenizer)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def save(self, directory: str | Path) -> None:
        self.tokenizer.save(str(Path(directory) / TOKENIZER_FILE))

    def encode(self, texts: Sequence[str], max_length: int | None = None,
               cache_words: bool = False) -> dict[str, torch.Tensor]:
        """Right-padded ``input_ids``, ``attention_mask`` and ``whole_word_ids`` (1-based word index, 0 on pad/eos).

        Flat numpy scatters instead of per-row tensors: this runs in the loader workers once per
        batch, and the per-row work was most of its cost. ``cache_words`` (for rendered prompts, whose
        words -- template words, ``user_17``, item numbers -- repeat endlessly) tokenizes each distinct
        space-separated word once and reuses its pieces; see ``_cached_pieces``.
        """
        if cache_words and self._words_are_local is not False:
            lengths, ids, words = self._cached_pieces(texts)
        else:
            lengths, ids, words = self._pieces(texts)
        np.minimum(words, MAX_WHOLE_WORDS - 1, out=words)
        kept = lengths if max_length is None else np.minimum(lengths, max_length - 1)
        row = np.repeat(np.arange(len(lengths)), lengths)
        column = np.arange(len(ids)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        keep = column < kept[row]
        width = int(kept.max(initial=0)) + 1
        input_ids = np.full((len(lengths), width), self.pad_id, dtype=np.int64)
        whole_word_ids = np.zeros((len(lengths), width), dtype=np.int64)
        input_ids[row[keep], column[keep]] = ids[keep]
        whole_word_ids[row[keep], column[keep]] = words[keep]
        input_ids[np.arange(len(lengths)), kept] = self.eos_id
        attention_mask = (np.arange(width) <= kept[:, None]).astype(np.int64)
        return {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(attention_mask),
                "whole_word_ids": torch.from_numpy(whole_word_ids)}

    def _pieces(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(pieces per text, all piece ids, 1-based word index of each piece) from one ``encode_batch``."""
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        ids = np.fromiter(chain.from_iterable(e.ids for e in encodings), dtype=np.int64, count=int(lengths.sum()))
        try:  # without special tokens every piece belongs to a word; None would make fromiter fail
            words = np.fromiter(chain.from_iterable(e.word_ids for e in encodings), dtype=np.int64, count=len(ids)) + 1
        except TypeError:
            words = np.array([0 if w is None else w + 1 for e in encodings for w in e.word_ids], dtype=np.int64)
        return lengths, ids, words

    def _cached_pieces(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What ``_pieces`` gives, from per-word pieces: right for tokenizers whose pre-tokenizer splits
        at spaces and whose model never looks across a split (Metaspace + BPE/Unigram, as here and in
        T5). The first call checks that against ``_pieces`` and switches the cache off for good if a
        tokenizer disagrees, so the cache never changes what the model reads.
        """
        split = [text.split(" ") for text in texts]
        cache = self._word_pieces
        if len(cache) > WORD_CACHE_ENTRIES:  # a fixed bound, whatever the number of users and items
            cache.clear()
        numbers: dict[str, list[int]] = {}  # this batch's item numbers: the table is their cache, not the dict
        missing = []
        for word in {word for words in split for word in words if word not in cache}:
            pieces = self._number_pieces(word)
            if pieces is None:
                missing.append(word)
            else:
                numbers[word] = pieces
        if missing:
            for word, encoding in zip(missing, self.tokenizer.encode_batch(missing, add_special_tokens=False)):
                cache[word] = encoding.ids
        words_per_text = np.fromiter((len(words) for words in split), dtype=np.int64, count=len(split))
        pieces = [numbers[word] if word in numbers else cache[word] for words in split for word in words]
        counts = np.fromiter((len(p) for p in pieces), dtype=np.int64, count=len(pieces))
        ids = np.fromiter(chain.from_iterable(pieces), dtype=np.int64, count=int(counts.sum()))
        first_word = np.cumsum(words_per_text) - words_per_text
        word_in_text = np.arange(len(pieces)) - np.repeat(first_word, words_per_text)
        lengths = np.add.reduceat(counts, first_word) if len(pieces) else np.zeros(len(split), dtype=np.int64)
        result = lengths, ids, np.repeat(word_in_text + 1, counts)
        if self._words_are_local is None:
            reference = self._pieces(texts)
            self._words_are_local = all(np.array_equal(a, b) for a, b in zip(result, reference))
            return reference
        return result

    def labels(self, texts: Sequence[str], cache_words: bool = False) -> torch.Tensor:
        """Target ids with padding set to -100 so the loss ignores it."""
        encoded = self.encode(texts, cache_words=cache_words)
        return encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)

    def decode(self, ids: Iterable[Sequence[int]]) -> list[str]:
        return self.tokenizer.decode_batch([list(map(int, row)) for row in ids], skip_special_tokens=True)


def load_codec(dataset_dir: str | Path, model_dir: str | None = None) -> TextCodec:
    """The model folder's tokenizer when one is given, else the one ``prepare`` trained."""
    if model_dir is not None:
        return TextCodec.from_pretrained(model_dir)
    manifest = json.loads((Path(dataset_dir) / "manifest.json").read_text())
    if not manifest.get("tokenizer"):
        raise FileNotFoundError(f"{dataset_dir}/manifest.json names no tokenizer; re-run `peapod-scale prepare`")
    return TextCodec.from_file(Path(dataset_dir) / manifest["tokenizer"])
