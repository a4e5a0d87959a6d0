"""Moved to ``checkpointing`` (the scanner lives with the rest of the checkpoint code); kept for importers."""

from .checkpointing import DEEPSPEED_RECORDS, UnsafeCheckpoint, verify_checkpoint

__all__ = ["DEEPSPEED_RECORDS", "UnsafeCheckpoint", "verify_checkpoint"]
