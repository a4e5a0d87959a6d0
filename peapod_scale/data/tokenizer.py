"""Tokenisation with whole-word ids.

A pretrained T5 folder brings its own SentencePiece vocabulary; without one, ``prepare`` trains a
byte-pair model on the prepared data, sized so that template words, ``user_17`` and frequent item
numbers such as ``1042`` become single pieces and rare ones a few. (A Unigram trainer was tried first:
on this corpus it stopped at ~600 pieces and spelled template words letter by letter.)
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import pyarrow.parquet as pq
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from . import templates

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


class TextCodec:
    """Batch encode/decode around a ``tokenizers.Tokenizer``, adding ``</s>`` and whole-word ids."""

    def __init__(self, tokenizer: Tokenizer):
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self.tokenizer = tokenizer
        self.pad_id = self._special(PAD)
        self.eos_id = self._special(EOS)

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
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(name_or_dir).backend_tokenizer)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def save(self, directory: str | Path) -> None:
        self.tokenizer.save(str(Path(directory) / TOKENIZER_FILE))

    def encode(self, texts: Sequence[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        """Right-padded ``input_ids``, ``attention_mask`` and ``whole_word_ids`` (1-based word index, 0 on pad/eos)."""
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        rows, words = [], []
        for encoding in encodings:
            ids = encoding.ids
            word_ids = [0 if w is None else min(w + 1, MAX_WHOLE_WORDS - 1) for w in encoding.word_ids]
            if max_length is not None and len(ids) > max_length - 1:
                ids, word_ids = ids[: max_length - 1], word_ids[: max_length - 1]
            rows.append(ids + [self.eos_id])
            words.append(word_ids + [0])
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        whole_word_ids = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (ids, word_ids) in enumerate(zip(rows, words)):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            attention_mask[i, : len(ids)] = 1
            whole_word_ids[i, : len(ids)] = torch.tensor(word_ids)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "whole_word_ids": whole_word_ids}

    def labels(self, texts: Sequence[str]) -> torch.Tensor:
        """Target ids with padding set to -100 so the loss ignores it."""
        encoded = self.encode(texts)
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
