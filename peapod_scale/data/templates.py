"""Text-to-text prompts for each task: one place so training, evaluation and the tokenizer agree.

Ids stay text, as in P5/POD: users are words ``user_<n>`` and items are bare numbers, so the
generated answer is the item number and parsing it back is ``int(text)``.
"""

from __future__ import annotations

from typing import Sequence

TASKS = ("sequential", "topn", "explanation")
TASK_IDS = {name: index for index, name in enumerate(TASKS)}


def _items(items: Sequence[int]) -> str:
    return " , ".join(str(int(item)) for item in items)


def sequential_prompt(user: int, history: Sequence[int]) -> str:
    return f"user_{user} interacted with items {_items(history)} . Which item comes next ?"


def topn_prompt(user: int, candidates: Sequence[int]) -> str:
    return f"Which of these items should be recommended to user_{user} ? {_items(candidates)}"


def explanation_prompt(user: int, item: int) -> str:
    return f"Explain why user_{user} would enjoy item {int(item)} ."


def item_target(item: int) -> str:
    return str(int(item))


def parse_item(text: str) -> int | None:
    """The item number a generation names, or None (it then counts as a miss at its rank).

    Only the canonical spelling ``item_target`` writes is an answer: ASCII digits without a leading
    zero. ``str.isdigit`` alone also accepts digits such as "²" (which ``int`` refuses) and "007"
    (which would name item 7 through a spelling the model was never taught).
    """
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or (text[0] == "0" and len(text) > 1):
        return None
    return int(text)
