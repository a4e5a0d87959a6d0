"""The tasks' names: what ``--tasks``, ``--eval-tasks`` and ``--task-weights`` may say, checked where they are
declared; prompts (data/templates.py) and the data pipeline use the same tuple."""

from __future__ import annotations

TASKS = ("sequential", "topn", "explanation")


def task_names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def check_task_names(flag: str, text: str) -> None:
    unknown = [t for t in task_names(text) if t not in TASKS]
    if unknown:
        raise ValueError(f"{flag} {text}: unknown task {unknown[0]!r}; tasks are {', '.join(TASKS)}")
