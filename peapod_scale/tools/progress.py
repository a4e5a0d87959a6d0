"""Progress bars for long host-side work (reading inputs, BPR epochs, neighbour search, shard writing).

The same rule as training's bar (``progress_interval``): live on a terminal, sparse in a
log file. A bar also waits that long before it first appears, so a step that ends sooner leaves no
trace -- on a terminal no flicker of sub-second bars, and in a batch job's log nothing at all unless
a step really takes minutes. Bars are transient (``leave=False``): what remains is the summary.
"""

from __future__ import annotations

import sys

from tqdm import tqdm


def progress_interval() -> float:
    """Seconds between progress-bar refreshes: live on a terminal, sparse in a log file."""
    return 0.5 if sys.stderr.isatty() else 30.0


def progress_bar(total: int | None, desc: str, *, enabled: bool, unit: str = "it",
                 unit_scale: bool = False) -> tqdm:
    """A bar on stderr; ``enabled=False`` gives tqdm's inert bar, whose updates cost a call each."""
    interval = progress_interval()
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit_scale, disable=not enabled, leave=False,
                dynamic_ncols=True, mininterval=interval, delay=interval)


def file_bar(size: int, name: str, *, enabled: bool) -> tqdm:
    """Bytes of one input file read so far (readers update it every few thousand lines)."""
    return progress_bar(size, f"read {name}", enabled=enabled, unit="B", unit_scale=True)


def advance_to(bar: tqdm, position: int) -> None:
    """Move a bar to an absolute count (a file offset), not by a step."""
    if position > bar.n:
        bar.update(position - bar.n)
