"""The resume rule is declared on each TrainConfig field; --resume and `train --help` both follow the declaration."""

import dataclasses
import subprocess
import sys

import pytest

from peapod_scale.config.train import MAY_CHANGE, MUST_MATCH, PER_ATTEMPT, TrainConfig, resume_rule
from peapod_scale.training.checkpoint import compare_run

FIELDS = [f for f in dataclasses.fields(TrainConfig)]
FINGERPRINT = {"users": 10, "items": 20, "vocab_size": 100, "dataset": "abc"}


def _other(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    return f"{value}-changed"


@pytest.mark.parametrize("name", [f.name for f in FIELDS])
def test_resuming_with_one_option_changed_does_what_its_field_declares(name):
    saved = {f.name: f.default for f in FIELDS}
    now = {**saved, name: _other(saved[name])}
    meta = {"dataset": FINGERPRINT, "zero_stage": 2, "precision": "fp32", "config": saved}
    rule = resume_rule(name)
    flag = "--" + name.replace("_", "-")
    if rule == MUST_MATCH:
        with pytest.raises(ValueError, match=f"trained with {flag} .*this run has {flag}"):
            compare_run(meta, now, FINGERPRINT, 2, "fp32", "RUN")
    else:
        changed = compare_run(meta, now, FINGERPRINT, 2, "fp32", "RUN")
        assert changed == ([] if rule == PER_ATTEMPT else [f"{flag} {saved[name]} -> {now[name]}"])


def test_every_field_declares_one_of_the_three_rules_and_the_model_defining_ones_must_match():
    rules = {f.name: f.metadata.get("resume") for f in FIELDS}
    assert set(rules.values()) == {MAY_CHANGE, MUST_MATCH, PER_ATTEMPT}
    assert {name for name, rule in rules.items() if rule == MUST_MATCH} == {
        "arch", "model", "train", "user_prompt", "pool_size", "prompt_length", "gate_heads", "tau", "user_dim",
        "task_prompt_length", "seed", "topn_candidates", "topn_history", "shuffle_buffer", "user_table"}
    assert {"output", "resume", "overwrite", "local_rank"} == {n for n, r in rules.items() if r == PER_ATTEMPT}


def test_train_help_marks_the_options_a_run_cannot_change():
    shown = subprocess.run([sys.executable, "-m", "peapod_scale.cli", "train", "--help"], capture_output=True,
                           text=True, timeout=120).stdout
    assert " ".join(shown.split()).count("[fixed for a run:") == sum(resume_rule(f.name) == MUST_MATCH for f in FIELDS)
