"""Errors raised while reading raw interaction files."""

from __future__ import annotations

import os


class DataFormatError(ValueError):
    """A raw input file does not hold what its format promises.

    The message always reads ``<file>:<line>: field '<name>': <what is wrong, what to do>`` so that
    an editor or a grep can jump straight to the offending line (lines count from 1).
    """

    def __init__(self, path: str | os.PathLike, line: int, field: str, problem: str) -> None:
        self.path = str(path)
        self.line = int(line)
        self.field = field
        self.problem = problem
        super().__init__(f"{self.path}:{self.line}: field '{field}': {problem}")

    def __reduce__(self):  # keep it picklable (e.g. raised inside a worker process)
        return (type(self), (self.path, self.line, self.field, self.problem))
