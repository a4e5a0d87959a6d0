"""Readers of raw interactions, one module per format, and ``load_source``, which picks one.

Each reader validates every line (errors name file, line and field) and returns the users' chronological
sequences in input order as a :class:`~peapod_scale.data.sources.base.RawSequences`; numbering, splitting and
writing happen in ``data/prepare``. ``base.py`` is the bottom of the folder: the readers import it, never each
other's dispatcher.
"""

from __future__ import annotations

from pathlib import Path

from peapod_scale.config.prepare import SOURCES, SYNTHETIC_DEFAULT
from peapod_scale.data.sources.amazon import read_amazon_reviews
from peapod_scale.data.sources.base import RawSequences
from peapod_scale.data.sources.default_data import movielens_100k
from peapod_scale.data.sources.hf import read_hf
from peapod_scale.data.sources.movielens import read_movielens
from peapod_scale.data.sources.p5 import read_p5
from peapod_scale.data.sources.synthetic import generate_synthetic


def load_source(source: str, input_path: str | Path | None, *, progress: bool = False,
                columns: dict[str, str] | None = None, hf_config: str | None = None, hf_split: str | None = None,
                synthetic_shape: tuple[int, int, int] | None = None, seed: int = 42) -> RawSequences:
    """Read ``input_path`` with the reader of ``source`` (movielens without one: the bundled MovieLens-100K);
    ``columns`` and the hf_* options are --source hf's, ``synthetic_shape`` and ``seed`` --source synthetic's."""
    if source == "synthetic":
        return generate_synthetic(*(synthetic_shape or SYNTHETIC_DEFAULT), seed=seed)
    if input_path is None:
        if source != "movielens":
            raise ValueError(f"--input is required for --source {source} (p5: a folder holding "
                             "sequential_data.txt and datamaps.json; amazon-reviews: a JSON-lines file; hf: a "
                             "save_to_disk folder, a Parquet/JSON/CSV file or a hub dataset name)")
        input_path = movielens_100k()
    if source == "movielens":
        return read_movielens(input_path, progress=progress)
    if source == "p5":
        return read_p5(input_path, progress=progress)
    if source == "amazon-reviews":
        return read_amazon_reviews(input_path, progress=progress)
    if source == "hf":
        return read_hf(input_path, columns, config=hf_config, split=hf_split, progress=progress)
    raise ValueError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
