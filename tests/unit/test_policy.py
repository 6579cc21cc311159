import pytest

from ducc.errors import UnsafeLayer
from ducc.unpack.policy import clean_name, readable_mode, whiteout_of

NAMES = [("./etc/passwd", "etc/passwd"), ("etc//x/", "etc/x"), ("./", ""), (".", ""), ("a/./b", "a/b")]


@pytest.mark.parametrize("name,clean", NAMES, ids=[n for n, _ in NAMES])
def test_harmless_names_are_normalised(name, clean):
    assert clean_name(name) == clean


HOSTILE = ["/etc/passwd", "../escape", "a/../../b", "a/..", "/", "x\x00y"]


@pytest.mark.parametrize("name", HOSTILE, ids=["absolute", "dotdot", "nested-dotdot", "trailing-dotdot", "slash", "nul"])
def test_names_that_could_leave_the_root_are_refused(name):
    with pytest.raises(UnsafeLayer):
        clean_name(name)


def test_whiteouts_are_recognised():
    assert whiteout_of("etc/.wh.passwd").target == "passwd"
    assert whiteout_of("var/.wh..wh..opq").opaque
    assert whiteout_of(".wh.top").directory == ""
    assert whiteout_of("etc/passwd") is None
    with pytest.raises(UnsafeLayer):
        whiteout_of("etc/.wh...")


MODES = [(0o600, False, 0o644), (0o700, False, 0o755), (0o4750, False, 0o4755), (0o700, True, 0o755), (0o000, True, 0o555), (0o2775, True, 0o2775)]


@pytest.mark.parametrize("mode,is_dir,expected", MODES, ids=[f"{m:o}-{'dir' if d else 'file'}" for m, d, _ in MODES])
def test_everything_becomes_readable_and_owner_bits_are_kept(mode, is_dir, expected):
    assert readable_mode(mode, is_dir) == expected
