"""What the README says about definitions the code relies on, checked against the code."""

from __future__ import annotations

import re

from test_patching import space_minus_tokenizer

from conftest import REPO, make_task
from iclprobe.tokens import encode_answer

README = (REPO / "README.md").read_text()
CAPTIONS = {p.name: p.read_text() for p in (REPO / "workflow" / "report").glob("*.rst")}


# How the decision position was once mis-stated: by the first digit, which for a negative y
# is one token later than the code's position (the token holding its sign).
WRONG = re.compile(r"answer.s first digit|holding a digit|first token of the answer\)")


def test_the_decision_position_is_defined_by_the_first_character_of_y_everywhere():
    """The code's definition: the token before the first token holding a character of y, its
    sign included. No document may define it by a digit."""
    for name, text in {"README.md": README, **CAPTIONS}.items():
        flat = re.sub(r"\s+", " ", text)
        assert WRONG.search(flat) is None, (name, WRONG.search(flat))
    flat = re.sub(r"\s+", " ", README)
    for section, y in (("## Logit lens", "y"), ("## Activation patching", "f(x_t)")):
        text = flat.split(section)[1].split(" ## ")[0]
        assert f"first token holding a character of {y}, its sign included" in text, section


def test_the_sign_is_a_character_of_y_for_the_decision_position():
    """With a tokenizer that writes the space before a minus as one token (SmolLM2's "␠-"),
    a negative answer decides one token earlier than a positive one."""
    tokenizer = space_minus_tokenizer()
    task = make_task()
    context = task.context_text([1], [5]) + task.query_text(4)
    for y, first in ((11, "1"), (-11, " -")):
        answer = encode_answer(tokenizer, context, task, y)
        following = tokenizer.decode([answer.ids[answer.decision + 1]])
        assert following == first, (y, following)
    positive = encode_answer(tokenizer, context, task, 11)
    negative = encode_answer(tokenizer, context, task, -11)
    assert negative.decision == positive.decision - 1
