"""Garbage-collection settings: DURATIONs (table-driven), the grace and schedule defaults, the policies' switches."""

from __future__ import annotations

import pytest

from ducc.settings import Settings, parse_duration

DURATIONS = {
    "zero": ("0", 0),
    "plain_seconds": ("90", 90),
    "seconds": ("90s", 90),
    "minutes": ("30m", 1800),
    "hours": ("12h", 43200),
    "days": ("7d", 604800),
    "upper_case_unit": ("2H", 7200),
    "surrounding_space": (" 5m ", 300),
    "zero_with_unit": ("0d", 0),
}


@pytest.mark.parametrize("text,seconds", list(DURATIONS.values()), ids=list(DURATIONS))
def test_a_duration_is_seconds_or_a_whole_number_with_a_unit(text, seconds):
    assert parse_duration(text) == seconds


NOT_DURATIONS = {
    "empty": "",
    "negative": "-5",
    "fraction": "1.5h",
    "unknown_unit": "3w",
    "unit_only": "d",
    "two_units": "1h30m",
    "words": "seven days",
}


@pytest.mark.parametrize("text", list(NOT_DURATIONS.values()), ids=list(NOT_DURATIONS))
def test_anything_else_is_refused_with_the_forms_it_takes(text):
    with pytest.raises(ValueError, match=r"90s, 30m, 12h, 7d"):
        parse_duration(text)


def test_the_grace_defaults_to_seven_days_and_the_schedule_to_weekly():
    settings = Settings.from_env({})
    assert settings.gc.grace == 7 * 86400
    assert settings.gc.schedule == "0 4 * * 0"
    assert not settings.web.unpublish_on_delete and not settings.sync.unpublish_removed_wishes


def test_the_environment_sets_grace_schedule_and_policies():
    settings = Settings.from_env({"DUCC_GC_GRACE": "12h", "DUCC_GC_SCHEDULE": "30 2 * * *",
                                  "DUCC_UNPUBLISH_ON_DELETE": "1", "DUCC_UNPUBLISH_REMOVED_WISHES": "yes"})
    assert settings.gc.grace == 12 * 3600 and settings.gc.schedule == "30 2 * * *"
    assert settings.web.unpublish_on_delete and settings.sync.unpublish_removed_wishes


def test_a_bad_grace_names_the_variable():
    with pytest.raises(ValueError, match="DUCC_GC_GRACE: '7 days' is not a duration"):
        Settings.from_env({"DUCC_GC_GRACE": "7 days"})
