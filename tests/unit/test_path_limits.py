"""The depth and path-length budget of an image (``DUCC_MAX_PATH_DEPTH``, ``DUCC_MAX_PATH_BYTES``): pure."""

from __future__ import annotations

import pytest

from ducc.errors import LimitExceeded
from ducc.model.limits import Limits
from ducc.settings import Settings
from ducc.unpack.limits import Budget


def test_a_path_exactly_at_both_limits_passes_and_one_more_level_or_byte_is_refused():
    budget = Budget(Limits(max_path_depth=3, max_path_bytes=7))
    budget.check_path("a/b/c")
    budget.check_path("abcdefg")
    with pytest.raises(LimitExceeded, match=r"more than DUCC_MAX_PATH_DEPTH=3 levels of directories \(4 at 'a/b/c/d'\)"):
        budget.check_path("a/b/c/d")
    with pytest.raises(LimitExceeded, match=r"longer than DUCC_MAX_PATH_BYTES=7 bytes \(8 bytes: 'abcdefgh'\)"):
        budget.check_path("abcdefgh")


def test_path_length_is_counted_in_bytes_not_characters():
    budget = Budget(Limits(max_path_bytes=4))
    budget.check_path("éé")
    with pytest.raises(LimitExceeded, match=r"\(6 bytes"):
        budget.check_path("ééé")


def test_every_entry_is_charged_for_its_path_even_one_without_bytes():
    budget = Budget(Limits(max_path_depth=2))
    budget.charge("a/b", 1, 0)
    with pytest.raises(LimitExceeded, match="DUCC_MAX_PATH_DEPTH=2"):
        budget.charge("a/b/c", 2, 0)


def test_a_kilobytes_long_path_is_shown_shortened_on_one_line():
    budget = Budget(Limits(max_path_depth=10))
    hostile = "/".join(["x\ny"] * 2000)
    with pytest.raises(LimitExceeded) as error:
        budget.check_path(hostile)
    message = str(error.value)
    assert "\n" not in message and len(message) < 300 and f"({len(hostile)} characters)" in message


def test_the_defaults_let_real_images_through_and_the_settings_read_the_environment():
    defaults = Settings.from_env({})
    assert (defaults.limits.max_path_depth, defaults.limits.max_path_bytes) == (512, 3072)
    raised = Settings.from_env({"DUCC_MAX_PATH_DEPTH": "4000", "DUCC_MAX_PATH_BYTES": "8192"})
    assert (raised.limits.max_path_depth, raised.limits.max_path_bytes) == (4000, 8192)
    Budget(Limits()).check_path("usr/lib/node_modules/" + "/".join(["node_modules/pkg"] * 60) + "/index.js")
