"""``report``'s options: which runs to draw and where."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from peapod_scale.config.options import Options, option


@dataclass
class ReportConfig(Options):
    PROG = "peapod-scale report"
    DESCRIPTION = ("Training curves (per-task loss, lr, throughput, validation) and final metrics of one or more run "
                   "folders as PNGs and a Markdown page.")

    runs: list = option(None, "run folders written by `peapod-scale train` (several: drawn together)",
                        positional=True, nargs="+", type=str)
    output: Optional[str] = option(None, "folder for report.md and the PNGs, replaced atomically (default: RUN/report "
                                         "for one run, ./report for several)")

    def _check(self) -> None:
        if not self.runs:
            raise ValueError("give at least one run folder")

    def output_folder(self) -> Path:
        return Path(self.output) if self.output else Path(self.runs[0]) / "report" if len(self.runs) == 1 \
            else Path("report")
