"""The preset backbones' dimensions, apart from the model code so that option parsing can list them cheaply.

The released T5 / Flan-T5 checkpoints' real sizes, plus small ones for tests and CPU runs.
"""

# d_model, d_ff, d_kv, num_heads, num_layers (encoder = decoder), feed_forward_proj, tied lm_head
DIMENSIONS = {
    "tiny": (64, 128, 16, 4, 2, "relu", True),
    "tiny-flan": (64, 128, 16, 4, 2, "gated-gelu", False),
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
PRESETS = tuple(DIMENSIONS)
