"""The five ordinal severity grades and every spelling of them that users bring."""

from __future__ import annotations

import re

GRADE_NAMES: tuple[str, ...] = ("Healthy", "Doubtful", "Minimal", "Moderate", "Severe")
NUM_GRADES = len(GRADE_NAMES)

_BY_NAME = {name.lower(): index for index, name in enumerate(GRADE_NAMES)}
# `grade_3`, `grade-3`, `grade 3`, `Grade3`, plain `3` (also `3.0`, as spreadsheets write it).
_NUMBERED = re.compile(r"^(?:grade[\s_-]?)?(\d+)(?:\.0+)?$", re.IGNORECASE)


def parse_grade(value: object) -> int:
    """Read a grade written as `0`..`4`, `grade_N` or a grade name (any case).

    Raises:
        ValueError: the value is none of those; the message lists what is accepted.
    """
    if isinstance(value, bool):
        raise ValueError(f"unknown grade {value!r}; {accepted_grades()}")
    if isinstance(value, int):
        index = value
    else:
        text = str(value).strip()
        match = _NUMBERED.match(text)
        if match:
            index = int(match.group(1))
        elif text.lower() in _BY_NAME:
            index = _BY_NAME[text.lower()]
        else:
            raise ValueError(f"unknown grade {value!r}; {accepted_grades()}")
    if not 0 <= index < NUM_GRADES:
        raise ValueError(f"grade {value!r} is out of range; {accepted_grades()}")
    return index


def grade_folder(index: int) -> str:
    """The folder name this project writes for a grade: `grade_N`."""
    return f"grade_{index}"


def accepted_grades() -> str:
    """One sentence naming the accepted spellings, for error messages."""
    names = ", ".join(GRADE_NAMES)
    return f"use 0-{NUM_GRADES - 1}, grade_0-grade_{NUM_GRADES - 1} or a grade name ({names})"
