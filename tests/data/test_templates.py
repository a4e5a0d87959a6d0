"""Item answers parse only as the canonical number ``item_target`` writes."""

import pytest

from peapod_scale.data.templates import item_target, parse_item, topn_prompt


@pytest.mark.parametrize("text, item", [("17", 17), (" 17 ", 17), ("0", 0), ("1234567", 1234567)])
def test_canonical_numbers_parse(text, item):
    assert parse_item(text) == item


@pytest.mark.parametrize("text", ["", " ", "007", "01", "²", "1²", "١٢", "12.0", "-3", "+3", "1 2", "12,", "item 12",
                                  "1_000", "３"])
def test_anything_else_is_no_item(text):
    assert parse_item(text) is None  # never an exception, never a second spelling of an item


def test_every_target_parses_back_to_its_item():
    assert all(parse_item(item_target(i)) == i for i in range(1, 5000))


def test_topn_prompt_puts_the_recent_history_before_the_question():
    assert topn_prompt(3, [8, 2]) == "Which of these items should be recommended to user_3 ? 8 2"
    assert topn_prompt(3, [8, 2], [5, 6]) == ("user_3 interacted with items 5 6 . "
                                             "Which of these items should be recommended to user_3 ? 8 2")
