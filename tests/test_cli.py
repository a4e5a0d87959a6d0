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
    result = _run("evaluate", "--checkpoint", str(tmp_path / "nope"), "--data", str(tmp_path))
    assert result.returncode == 2 and "nope" in result.stderr
