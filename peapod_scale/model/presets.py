"""Backbone presets: the real dimensions of the released T5 / Flan-T5 checkpoints, plus ``tiny``.

Built with random weights (no hub here); a user with real weights passes ``--model NAME_OR_DIR``.
"""

from __future__ import annotations

from transformers import T5Config

# d_model, d_ff, d_kv, num_heads, num_layers (encoder = decoder), feed_forward_proj, tied lm_head
_DIMENSIONS = {
    "tiny": (64, 128, 16, 4, 2, "relu", True),
    "mini": (128, 512, 32, 4, 3, "relu", True),
    "t5-small": (512, 2048, 64, 8, 6, "relu", True),
    "t5-base": (768, 3072, 64, 12, 12, "relu", True),
    "t5-large": (1024, 4096, 64, 16, 24, "relu", True),
    "t5-3b": (1024, 16384, 128, 32, 24, "relu", True),
    "t5-11b": (1024, 65536, 128, 128, 24, "relu", True),
    "flan-t5-small": (512, 1024, 64, 6, 8, "gated-gelu", False),
    "flan-t5-base": (768, 2048, 64, 12, 12, "gated-gelu", False),
    "flan-t5-large": (1024, 2816, 64, 16, 24, "gated-gelu", False),
    "flan-t5-xl": (2048, 5120, 64, 32, 24, "gated-gelu", False),
    "flan-t5-xxl": (4096, 10240, 64, 64, 24, "gated-gelu", False),
}
PRESETS = tuple(_DIMENSIONS)
RELEASED_VOCAB_SIZE = 32128


def preset_config(name: str, vocab_size: int = RELEASED_VOCAB_SIZE, dropout_rate: float = 0.1) -> T5Config:
    if name not in _DIMENSIONS:
        raise ValueError(f"unknown --arch {name!r}; choose one of: {', '.join(PRESETS)}")
    d_model, d_ff, d_kv, heads, layers, ffn, tied = _DIMENSIONS[name]
    config = T5Config(
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
    )
    # transformers 5 turns tie_word_embeddings=False back into True inside T5Config.__init__;
    # Flan-T5 / T5 v1.1 have their own lm_head, so set it after construction.
    config.tie_word_embeddings = tied
    return config
