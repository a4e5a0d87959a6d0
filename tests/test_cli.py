import subprocess
import sys

from peapod_scale import cli


def _run(*args):
    return subprocess.run([sys.executable, "-m", "peapod_scale.cli", *args], capture_output=True, text=True, timeout=120)


def test_top_level_help_lists_the_subcommands(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("prepare", "train", "evaluate"))
    assert cli.main(["frobnicate"]) == 2


def test_train_help_says_how_ranks_are_started():
    result = _run("train", "--help")
    assert result.returncode == 0
    assert "--nproc-per-node" in result.stdout and "torchrun" in result.stdout and "--deepspeed" in result.stdout


def test_malformed_input_is_a_one_line_error_and_leaves_nothing(tmp_path):
    bad = tmp_path / "u.data"
    bad.write_text("1\t10\t5\t100\n1\tten\t5\t101\n")
    result = _run("prepare", "--source", "movielens", "--input", str(bad), "--output", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "u.data:2" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u.data"]


def test_evaluate_names_a_missing_run_folder(tmp_path):
    result = _run("evaluate", "--run-dir", str(tmp_path / "nope"), "--data", str(tmp_path))
    assert result.returncode == 2 and "nope" in result.stderr


def test_old_flag_spellings_still_work_with_one_line_naming_the_new_one(tmp_path):
    """evaluate's --checkpoint / --limit / --no-constrained, recommend's --model and estimate's --micro-batch."""
    old = _run("evaluate", "--checkpoint", str(tmp_path / "nope"), "--data", str(tmp_path), "--limit", "3",
               "--no-constrained")
    new = _run("evaluate", "--run-dir", str(tmp_path / "nope"), "--data", str(tmp_path), "--eval-limit", "3",
               "--no-constrained-decoding")
    notices = [line for line in old.stderr.splitlines() if "deprecated" in line]
    assert notices == ["peapod-scale evaluate: warning: --checkpoint is deprecated, use --run-dir",
                       "peapod-scale evaluate: warning: --limit is deprecated, use --eval-limit",
                       "peapod-scale evaluate: warning: --no-constrained is deprecated, use --no-constrained-decoding"]
    assert old.returncode == new.returncode == 2 and old.stderr.splitlines()[-1] == new.stderr.splitlines()[-1]
    recommend = _run("recommend", "--model", str(tmp_path / "nope"), "--data", str(tmp_path), "--user", "1")
    assert "--model is deprecated, use --run-dir" in recommend.stderr and "nope" in recommend.stderr.splitlines()[-1]
    estimate_old = _run("estimate", "--arch", "t5-small", "--zero", "2", "--micro-batch", "16")
    estimate_new = _run("estimate", "--arch", "t5-small", "--zero", "2", "--micro-batch-size", "16")
    assert estimate_old.returncode == estimate_new.returncode == 0
    report = [[line for line in r.stdout.splitlines() if not line.startswith("[")]  # DeepSpeed's timestamped logs
              for r in (estimate_old, estimate_new)]
    assert report[0] == report[1] and "micro batch 16" in estimate_new.stdout
    assert "--micro-batch is deprecated, use --micro-batch-size" in estimate_old.stderr


def test_the_commands_share_one_name_per_setting():
    for command, flags in (("evaluate", ["--run-dir", "--eval-batch-size", "--eval-limit", "--constrained-decoding"]),
                           ("export", ["--run-dir"]), ("recommend", ["--run-dir"]), ("estimate", ["--micro-batch-size"]),
                           ("train", ["--eval-batch-size", "--eval-limit", "--constrained-decoding",
                                      "--micro-batch-size"])):
        shown = _run(command, "--help").stdout
        assert all(flag in shown for flag in flags), (command, flags)
        assert "--checkpoint" not in shown and "--micro-batch " not in shown and "--limit " not in shown, command


def test_compose_triton_that_cannot_run_is_one_error_line_before_training(tmp_path):
    import os

    from peapod_scale.data.prepare.dataset import prepare_dataset

    lines = [f"{u}\t{(u + k) % 15 + 1}\t4\t{100 * u + k}" for u in range(1, 9) for k in range(6)]
    (tmp_path / "u.data").write_text("\n".join(lines) + "\n")
    prepare_dataset("movielens", str(tmp_path / "u.data"), str(tmp_path / "ds"), seed=0, num_negatives=3)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")
    result = subprocess.run([sys.executable, "-m", "peapod_scale.cli", "train", "--data", str(tmp_path / "ds"),
                             "--output", str(tmp_path / "run"), "--compose", "triton", "--max-steps", "1",
                             "--micro-batch-size", "4"],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("peapod-scale train: error: --compose triton cannot run")
    assert "Traceback" not in result.stderr and not (tmp_path / "run" / "checkpoints").exists()


def test_an_unknown_arch_is_refused_by_the_option_parser_and_help_lists_every_preset(tmp_path):
    from peapod_scale.model.presets import PRESETS, preset_config

    result = _run("train", "--data", str(tmp_path), "--output", str(tmp_path / "run"), "--arch", "t5-huge")
    assert result.returncode == 2 and "argument --arch: invalid choice: 't5-huge'" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()
    assert "DeepSpeed" not in result.stderr + result.stdout  # refused before anything heavy started
    help_text = "".join(_run("train", "--help").stdout.split())  # argparse wraps lines, at hyphens too
    for name in PRESETS:
        assert name in help_text
        preset_config(name)  # every listed preset builds


def test_constrained_decoding_is_on_by_default_and_can_be_turned_off():
    from peapod_scale.config.train import parse_train_config

    base = ["--data", "d", "--output", "o"]
    assert parse_train_config(base).constrained_decoding is True
    assert parse_train_config(base + ["--no-constrained-decoding"]).constrained_decoding is False
    assert parse_train_config(base + ["--overwrite"]).overwrite is True  # an off-by-default flag stays a plain switch
