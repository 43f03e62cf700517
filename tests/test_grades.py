import pytest

from spine_hf.grades import GRADE_NAMES, grade_folder, parse_grade


@pytest.mark.parametrize(
    ("text", "grade"),
    [("0", 0), ("4", 4), (3, 3), ("3.0", 3), ("grade_2", 2), ("Grade-1", 1), ("grade 4", 4), ("GRADE3", 3)]
    + [(name, i) for i, name in enumerate(GRADE_NAMES)]
    + [("moderate", 3), (" SEVERE ", 4)],
)
def test_parse_grade_accepts_every_spelling(text, grade):
    assert parse_grade(text) == grade


@pytest.mark.parametrize("text", ["5", "-1", "grade_7", "mild", "", "2.5", True, "KL-x"])
def test_parse_grade_rejects_the_rest_with_a_helpful_message(text):
    with pytest.raises(ValueError, match="Healthy"):
        parse_grade(text)


def test_grade_folder_round_trips():
    assert [parse_grade(grade_folder(i)) for i in range(5)] == list(range(5))
