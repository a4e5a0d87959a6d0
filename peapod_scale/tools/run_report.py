"""`peapod-scale report RUN [RUN ...]`: a run's training curves and final metrics as PNGs and one Markdown page.

Everything comes from what a run folder already holds: the TensorBoard events (``tensorboard/``), the
test metrics (``metrics_test.json``) and the resolved config (``config.json``). Several runs are drawn on
the same axes, so that two settings can be compared by eye. matplotlib is needed (the ``bench`` extra).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from peapod_scale.tools.atomic_files import replace_folder, temporary_name
from peapod_scale.tools.run_dir import RunDir

# (figure file, title, scalar tags drawn in it, y-axis label); a tag pattern ending in "/" means every tag under it
FIGURES = [
    ("loss.png", "training loss per task", "loss/", "cross-entropy"),
    ("lr.png", "learning rate", "lr", "lr"),
    ("throughput.png", "throughput (all ranks)", "throughput/samples_per_s", "samples / s"),
    ("valid.png", "validation during training", "valid/", "metric"),
]


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] from a run's TensorBoard events (the last value of a step wins on a resumed run)."""
    # lazy: tensorboard's reader takes a second to import; `report --help` needs none
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events_dir = RunDir(run_dir).tensorboard
    if not events_dir.is_dir():
        raise FileNotFoundError(f"{events_dir} not found: is {run_dir} a run folder written by `peapod-scale train`?")
    events = EventAccumulator(str(events_dir), size_guidance={"scalars": 0})
    events.Reload()
    scalars = {}
    for tag in events.Tags()["scalars"]:
        by_step = {event.step: event.value for event in events.Scalars(tag)}
        scalars[tag] = sorted(by_step.items())
    return scalars


def _tags(scalars: dict, pattern: str) -> list[str]:
    return sorted(t for t in scalars if (t.startswith(pattern) if pattern.endswith("/") else t == pattern))


def _draw(runs: dict[str, dict], output: Path) -> list[str]:
    # lazy: matplotlib is optional (the [bench]/[test] extras); without it the report has no plots
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for filename, title, pattern, ylabel in FIGURES:
        lines = [(name, tag, scalars[tag]) for name, scalars in runs.items() for tag in _tags(scalars, pattern)]
        if not lines:
            continue
        figure, axes = plt.subplots(figsize=(7, 4))
        for name, tag, points in lines:
            label = tag if len(runs) == 1 else f"{name}: {tag}"
            axes.plot([s for s, _ in points], [v for _, v in points], label=label)
        axes.set(title=title, xlabel="optimizer step", ylabel=ylabel)
        if pattern == "lr":
            axes.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
        figure.tight_layout()
        figure.savefig(output / filename, dpi=110)
        plt.close(figure)
        written.append(filename)
    return written


def _metrics_table(runs_metrics: dict[str, dict]) -> list[str]:
    rows = []
    for name, metrics in runs_metrics.items():
        for task, methods in metrics.items():
            if not isinstance(methods, dict) or "model" not in methods:
                continue
            for method, values in methods.items():
                if values:
                    rows.append((name, task, method, values))
    if not rows:
        return ["No test metrics (`metrics_test.json`) in these runs."]
    lines = []
    header = None
    for name, task, method, values in rows:
        if list(values) != header:
            header = list(values)
            lines += ["", "| run | task | method | " + " | ".join(header) + " |",
                      "|---|---|---|" + "---:|" * len(header)]
        lines.append(f"| {name} | {task} | {method} | " + " | ".join(f"{values[k]:.4f}" for k in header) + " |")
    return lines


def _last(points: list[tuple[int, float]]) -> str:
    return f"{points[-1][1]:.4g} (step {points[-1][0]})" if points else "-"


def report(run_dirs: list[str | Path], output: str | Path) -> Path:
    """Write ``output/report.md`` and its PNGs; returns the Markdown file."""
    run_dirs = [Path(r) for r in run_dirs]
    names = [r.name for r in run_dirs]
    if len(set(names)) != len(names):  # two runs called "a" in different folders
        names = [str(r) for r in run_dirs]
    runs = {name: read_scalars(r) for name, r in zip(names, run_dirs)}
    metrics = {}
    for name, r in zip(names, run_dirs):
        path = RunDir(r).metrics("test")
        if path.is_file():
            metrics[name] = json.loads(path.read_text())
    output = Path(output)
    tmp = temporary_name(output)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    figures = _draw(runs, tmp)
    lines = ["# Training report", ""]
    lines += ["| run | steps | last loss/total | samples/s (last window) | peak memory GiB | world size | ZeRO | arch |",
              "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, r in zip(names, run_dirs):
        scalars = runs[name]
        config = json.loads(RunDir(r).config.read_text()) if RunDir(r).config.is_file() else {}
        train = config.get("train", {})
        stage = config.get("deepspeed", {}).get("zero_optimization", {}).get("stage", "-")
        steps = max((points[-1][0] for points in scalars.values() if points), default=0)
        peak = scalars.get("memory/peak_gib", [])
        lines.append(f"| {name} | {steps} | {_last(scalars.get('loss/total', []))} | "
                     f"{_last(scalars.get('throughput/samples_per_s', []))} | "
                     f"{max((v for _, v in peak), default=float('nan')):.2f} | {config.get('world_size', '-')} | "
                     f"{stage} | {train.get('model') or train.get('arch', '-')} |")
    lines += ["", "## Test metrics"] + _metrics_table(metrics) + [""]
    for filename in figures:
        lines += [f"![{filename[:-4]}]({filename})", ""]
    (tmp / "report.md").write_text("\n".join(lines))
    replace_folder(tmp, output)
    return output / "report.md"
