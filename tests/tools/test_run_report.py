"""`peapod-scale report` on run folders whose TensorBoard events are written with torch's own SummaryWriter."""

import json
import subprocess
import sys

import pytest
from torch.utils.tensorboard import SummaryWriter

from peapod_scale.tools.run_report import read_scalars

pytest.importorskip("matplotlib")


def _run_folder(path, slope: float, resumed: bool = False):
    writer = SummaryWriter(str(path / "tensorboard"))
    for step in range(20, 101, 20):
        writer.add_scalar("loss/sequential", 3.0 - slope * step, step)
        writer.add_scalar("loss/topn", 2.5 - slope * step, step)
        writer.add_scalar("loss/total", 2.75 - slope * step, step)
        writer.add_scalar("lr", 1e-3, step)
        writer.add_scalar("throughput/samples_per_s", 500.0, step)
        writer.add_scalar("memory/peak_gib", 1.5, step)
    if resumed:  # a crash after step 100 and a resume from step 80: step 100 again, with another value
        writer.add_scalar("loss/total", 0.5, 100)
    writer.close()
    (path / "config.json").write_text(json.dumps({"train": {"arch": "tiny"}, "world_size": 2,
                                                  "deepspeed": {"zero_optimization": {"stage": 2}}}))
    metrics = {"sequential": {"model": {"HR@10": 0.25, "NDCG@10": 0.125}, "popularity": {"HR@10": 0.1, "NDCG@10": 0.05}}}
    (path / "metrics_test.json").write_text(json.dumps(metrics))
    return path


def test_report_draws_curves_and_tabulates_two_runs(tmp_path):
    a, b = _run_folder(tmp_path / "a", 0.01, resumed=True), _run_folder(tmp_path / "b", 0.02)
    result = subprocess.run([sys.executable, "-m", "peapod_scale.cli", "report", str(a), str(b), "--output",
                             str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "out" / "report.md").read_text()
    for png in ("loss.png", "lr.png", "throughput.png"):
        assert (tmp_path / "out" / png).stat().st_size > 5000 and f"]({png})" in page
    assert not (tmp_path / "out" / "valid.png").exists()  # no validation tags: no empty figure
    assert "| a | 100 | 0.5 (step 100) | 500 (step 100) | 1.50 | 2 | 2 | tiny |" in page  # the resumed value wins
    assert "| b | sequential | model | 0.2500 | 0.1250 |" in page
    assert "| a | sequential | popularity | 0.1000 | 0.0500 |" in page


def test_a_folder_without_events_is_an_error_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "peapod_scale.cli", "report", str(tmp_path)], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2 and result.stderr.startswith("peapod-scale report: error:")
    assert "tensorboard not found" in result.stderr and "Traceback" not in result.stderr


def test_read_scalars_keeps_the_last_value_of_a_step(tmp_path):
    scalars = read_scalars(_run_folder(tmp_path / "r", 0.01, resumed=True))
    assert scalars["loss/total"][-1] == (100, 0.5) and len(scalars["loss/total"]) == 5
