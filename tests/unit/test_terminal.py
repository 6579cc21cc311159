import pytest

from ducc.terminal import printable, printable_lines

CASES = [
    ("plain text, café, 日本", "plain text, café, 日本", "plain text, café, 日本"),
    ("\x1b[2J\x1b]0;title\x07", r"\x1b[2J\x1b]0;title\x07", r"\x1b[2J\x1b]0;title\x07"),
    ("C1 \x9b1m and \x85 next line", r"C1 \x9b1m and \x85 next line", r"C1 \x9b1m and \x85 next line"),
    ("nul \x00 del \x7f", r"nul \x00 del \x7f", r"nul \x00 del \x7f"),
    ("two\nlines\tand\rback", r"two\x0alines\x09and\x0dback", "two\nlines\tand\\x0dback"),
]


@pytest.mark.parametrize("text,one_line,lines", CASES, ids=["unicode-kept", "escape-sequences", "c1", "nul-del",
                                                            "line-breaks"])
def test_control_characters_from_outside_are_shown_as_hex_escapes(text, one_line, lines):
    assert printable(text) == one_line and one_line.isprintable()
    assert printable_lines(text) == lines
