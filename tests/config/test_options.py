"""One configuration flow: every command's parser comes from its config dataclass, checks sit on the fields and run
for configs built in code as for parsed ones, and a concern shared by two commands is one declaration."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from peapod_scale.config.estimate import EstimateConfig
from peapod_scale.config.evaluation import DecodingOptions, EvalOptions, EvaluateConfig
from peapod_scale.config.inference import ExportConfig, RecommendConfig
from peapod_scale.config.options import Options, flag_of
from peapod_scale.config.prepare import PrepareConfig
from peapod_scale.config.report import ReportConfig
from peapod_scale.config.train import TrainConfig

COMMANDS = {"train": TrainConfig, "prepare": PrepareConfig, "evaluate": EvaluateConfig, "export": ExportConfig,
            "recommend": RecommendConfig, "estimate": EstimateConfig, "report": ReportConfig}
TRAIN = ["--data", "d", "--output", "o"]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_field_of_a_command_config_is_an_option_of_its_help(command):
    shown = subprocess.run([sys.executable, "-m", "peapod_scale.cli", command, "--help"], capture_output=True,
                           text=True, check=True).stdout
    for f in dataclasses.fields(COMMANDS[command]):
        name = f.name if f.metadata.get("positional") else flag_of(f.name)
        assert name in shown, f"{command} --help lacks {name}"


def test_train_help_has_one_section_per_concern_in_order():
    shown = TrainConfig.parser().format_help()
    headings = [line[:-1] for line in shown.splitlines() if line and not line.startswith(" ") and line.endswith(":")]
    assert headings == ["options", "data", "model and prompts", "optimisation", "checkpoints and resume",
                        "beam-search decoding", "evaluation and validation", "launch and logging"]
    data = shown.split("\ndata:")[1].split("\nmodel and prompts:")[0]
    assert "--topn-candidates" in data and "--lr " not in data


def test_train_and_evaluate_share_the_decoding_options_by_declaration():
    shared = {f.name for f in dataclasses.fields(DecodingOptions)}
    assert shared <= {f.name for f in dataclasses.fields(TrainConfig)}
    assert shared <= {f.name for f in dataclasses.fields(EvaluateConfig)}
    evaluate_help = EvaluateConfig.parser().format_help()
    assert "beam-search decoding:" in evaluate_help
    # evaluate redeclares two with "the run's own" as default; the section stays the shared one
    decoding = evaluate_help.split("beam-search decoding:")[1]
    assert "--num-beams" in decoding and "--constrained-decoding" in decoding
    assert EvaluateConfig(run_dir="r", data="d").num_beams is None and TrainConfig(data="d", output="o").num_beams == 20


@pytest.mark.parametrize("config, changes, message", [
    (TrainConfig, {"tau": 0.0}, "--tau 0.0: must be above 0.0"),
    (TrainConfig, {"save_every": 0}, "--save-every 0: must be at least 1"),
    (TrainConfig, {"keep_last": -1}, "--keep-last -1: must be at least 0"),
    (TrainConfig, {"dropout": 1.0}, "--dropout 1.0: must be below 1.0"),
    (TrainConfig, {"tasks": "sequential,rating"}, "--tasks sequential,rating: unknown task 'rating'"),
    (TrainConfig, {"eval_every": 5, "eval_tasks": "topn"},
     "--best-metric sequential/NDCG@10: task 'sequential' is not in --eval-tasks topn"),
    (TrainConfig, {"best_metric": "NDCG"}, "--best-metric NDCG: expected TASK/METRIC"),
    (TrainConfig, {"precision": "int8"}, "--precision 'int8': choose one of auto, bf16, fp16, fp32"),
    (PrepareConfig, {"max_history": 0}, "--max-history 0: must be at least 1"),
    (PrepareConfig, {"hf_split": "train"}, "--hf-split: only for --source hf, not --source synthetic"),
    (PrepareConfig, {"seed": 1.5}, "--seed must be an integer"),
    (EvaluateConfig, {"eval_limit": 0}, "--eval-limit 0: must be at least 1"),
    (RecommendConfig, {"k": 0}, "-k 0: must be at least 1"),
    (EstimateConfig, {"nodes": 0}, "--nodes 0: must be at least 1"),
    (ReportConfig, {"runs": []}, "give at least one run folder"),
])
def test_a_config_built_in_code_is_checked_as_a_parsed_one(config, changes, message):
    required = {TrainConfig: {"data": "d", "output": "o"}, PrepareConfig: {"source": "synthetic", "output": "o"},
                EvaluateConfig: {"run_dir": "r", "data": "d"}, RecommendConfig: {"run_dir": "r", "data": "d", "user": "1"},
                EstimateConfig: {"arch": "tiny"}, ReportConfig: {"runs": ["r"]}}[config]
    config(**required)  # the defaults pass
    with pytest.raises(ValueError) as error:
        config(**{**required, **changes})
    assert str(error.value).startswith(message)


def test_a_failed_check_on_the_command_line_is_one_usage_error_and_exit_2():
    result = subprocess.run([sys.executable, "-m", "peapod_scale.cli", "train", *TRAIN, "--save-every", "0"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == "peapod-scale train: error: --save-every 0: must be at least 1"
    assert "Traceback" not in result.stderr


def test_a_required_option_missing_from_code_is_named():
    with pytest.raises(ValueError, match="--data is required"):
        TrainConfig(output="o")


def test_dataclasses_replace_checks_again():
    cfg = TrainConfig(data="d", output="o")
    with pytest.raises(ValueError, match="--max-steps 0"):
        dataclasses.replace(cfg, max_steps=0)


def test_underscore_spellings_parse_and_stay_out_of_help():
    cfg = TrainConfig.from_args([*TRAIN, "--task_weights", "topn=1", "--no-constrained_decoding", "--max_steps", "7"])
    assert (cfg.task_weights, cfg.constrained_decoding, cfg.max_steps) == ("topn=1", False, 7)
    assert "--max_steps" not in TrainConfig.parser().format_help()


def test_every_concern_declares_a_section_and_every_command_a_name():
    concerns = {DecodingOptions, EvalOptions, *TrainConfig.__mro__[1:-2]}
    for concern in concerns:
        assert issubclass(concern, Options) and concern.__dict__.get("SECTION"), concern
    for command, config in COMMANDS.items():
        assert config.PROG == f"peapod-scale {command}" and config.DESCRIPTION
