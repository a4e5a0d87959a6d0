"""Backbone presets: the real dimensions of the released T5 / Flan-T5 checkpoints, plus small ones for tests.

Built with random weights (no hub here); a user with real weights passes ``--model NAME_OR_DIR``.

Why the lm_head handling below: transformers 5 forces ``T5Config.tie_word_embeddings`` to True and
keeps the released flag only as ``scale_decoder_outputs`` (False for T5 v1.1 / Flan-T5). Setting the
flag to False before building a model unties *everything*, the encoder and decoder token embeddings
included, which is wrong; the released Flan-T5 shares the token embedding between encoder, decoder
and ``shared`` and has only a separate ``lm_head``. ``untie_lm_head`` gives exactly that.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import T5Config, T5ForConditionalGeneration
from transformers.initialization import no_init_weights

from peapod_scale.config.model_dimensions import DIMENSIONS, PRESETS
from peapod_scale.model.zero import initialize_weights

RELEASED_VOCAB_SIZE = 32128


def preset_config(name: str, vocab_size: int = RELEASED_VOCAB_SIZE, dropout_rate: float = 0.1) -> T5Config:
    if name not in DIMENSIONS:
        raise ValueError(f"unknown --arch {name!r}; choose one of: {', '.join(PRESETS)}")
    d_model, d_ff, d_kv, heads, layers, ffn, tied = DIMENSIONS[name]
    return T5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_ff=d_ff,
        d_kv=d_kv,
        num_heads=heads,
        num_layers=layers,
        num_decoder_layers=layers,
        feed_forward_proj=ffn,
        dropout_rate=dropout_rate,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        tie_word_embeddings=tied,  # transformers 5 keeps it as scale_decoder_outputs (see the module docstring)
    )


def has_own_lm_head(config: T5Config) -> bool:
    """True for T5 v1.1 / Flan-T5 style configs (released with ``tie_word_embeddings: false``)."""
    return not getattr(config, "scale_decoder_outputs", config.tie_word_embeddings)


class _SeparateHead(nn.Linear):
    """An lm_head created by module construction, so ``deepspeed.zero.Init`` partitions it as it is built;
    initialised as T5 v1.1 does (normal, std = initializer factor) inside ``__init__`` for the same reason."""

    def __init__(self, d_model: int, vocab_size: int, std: float):
        self._std = std
        super().__init__(d_model, vocab_size, bias=False)

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=self._std)


def untie_lm_head(model: T5ForConditionalGeneration, keep_values: bool = False) -> T5ForConditionalGeneration:
    """Give ``model`` its own lm_head when its config asks for one; encoder/decoder embeddings stay shared.

    ``keep_values`` copies the current (tied) values instead of a fresh init: for a loaded checkpoint
    whose lm_head happened to equal the token embedding.
    """
    if not has_own_lm_head(model.config):
        return model
    if model.lm_head.weight is model.shared.weight:
        config = model.config
        model.lm_head = _SeparateHead(config.d_model, config.vocab_size, config.initializer_factor)
        if keep_values:
            with torch.no_grad():
                model.lm_head.weight.copy_(model.shared.weight)
    # Save and re-tie only the embeddings from now on; the saved config says "untied" again.
    model._tied_weights_keys = {k: v for k, v in model._tied_weights_keys.items() if k != "lm_head.weight"}
    model.all_tied_weights_keys = {k: v for k, v in model.all_tied_weights_keys.items() if k != "lm_head.weight"}
    model.config.tie_word_embeddings = False
    return model


def new_backbone(config: T5Config) -> T5ForConditionalGeneration:
    """A randomly initialised backbone with the released tying (works on the meta device and under zero.Init)."""
    # Built without any init (under zero.Init Hugging Face's would write into empty placeholders), then
    # initialised once by our own pass from a seed drawn here: identical weights with or without ZeRO-3.
    seed = int(torch.randint(0, 2**62, (), device="cpu"))
    with no_init_weights():
        backbone = T5ForConditionalGeneration(config)
    backbone.tie_weights()  # init_weights, which no_init_weights skips, also ties the embeddings
    torch.manual_seed(seed)
    initialize_weights(backbone)
    return untie_lm_head(backbone)
