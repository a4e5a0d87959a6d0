"""The DeepSpeed configs shipped with peapod-scale (installed as package data: `--deepspeed z2` finds z2.json)."""
