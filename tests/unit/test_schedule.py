"""When the next wishlist sync runs (DUCC_SYNC_SCHEDULE read as beat reads it, in UTC: Celery's own crontab is
the oracle), which images a wish covers, and why the allow-policy refuses an image when the wishlist itself is
broken."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from ducc.model.reference import Reference
from ducc.schedule import next_sync
from ducc.service.broker import parse_cron
from ducc.web.policy import Policy
from ducc.wishlist import load

CASES = [
    ("0 3 * * *", datetime(2024, 1, 1, 12, 0, tzinfo=UTC), datetime(2024, 1, 2, 3, 0, tzinfo=UTC)),
    ("0 3 * * *", datetime(2024, 1, 1, 2, 59, tzinfo=UTC), datetime(2024, 1, 1, 3, 0, tzinfo=UTC)),
    ("0 3 * * *", datetime(2024, 1, 1, 3, 0, tzinfo=UTC), datetime(2024, 1, 2, 3, 0, tzinfo=UTC)),
    ("*/5 * * * *", datetime(2024, 1, 1, 12, 1, 30, tzinfo=UTC), datetime(2024, 1, 1, 12, 5, tzinfo=UTC)),
    ("0 3 * * 1", datetime(2024, 1, 1, 12, 0, tzinfo=UTC), datetime(2024, 1, 8, 3, 0, tzinfo=UTC)),  # Mondays
    ("30 1 1 * *", datetime(2024, 1, 31, 23, 0, tzinfo=timezone(timedelta(hours=2))),
     datetime(2024, 2, 1, 1, 30, tzinfo=UTC)),
]


@pytest.mark.parametrize(("expression", "now", "expected"), CASES,
                         ids=["later-today", "in-a-minute", "just-ran", "every-5-minutes", "weekly", "now-in-another-zone"])
def test_the_next_sync_follows_the_cron_expression_in_utc(expression, now, expected):
    assert next_sync(expression, now) == expected


@pytest.mark.parametrize("expression", ["0 3 * *", "61 3 * * *"], ids=["four-fields", "minute-61"])
def test_a_schedule_that_is_not_cron_is_a_value_error_naming_the_setting(expression):
    with pytest.raises(ValueError, match="DUCC_SYNC_SCHEDULE"):
        next_sync(expression, datetime(2024, 1, 1, tzinfo=UTC))


def _celery_next(expression: str, now: datetime) -> datetime:
    """When Celery beat runs ``expression`` next after ``now``, by Celery's own crontab."""
    at = now.astimezone(UTC)
    remaining: timedelta = parse_cron(expression, nowfun=lambda: at).remaining_estimate(at)
    return at + remaining


ORACLE = {
    "daily": "0 3 * * *", "every-minute": "* * * * *", "every-25-minutes": "*/25 * * * *",
    "list-and-stepped-range": "1,2-4/2 * * * *", "hours-wrapping-midnight": "0-10/3 22-2 * * *",
    "every-6-hours-first-week-mondays": "15 */6 1-7 * mon", "weekends-by-name": "0 12 * * sat,sun",
    "weekdays-wrapping": "0 0 * * fri-mon", "every-other-weekday": "0 0 * * 0-6/2",
    "long-day-name": "0 0 * * monday", "month-by-name": "0 0 * february *",
    "day-and-weekday-both": "0 0 1 * 1", "first-and-fifteenth-wednesdays": "0 0 1,15 * wed",
    "leap-day": "0 0 29 2 *", "leap-day-on-a-monday": "0 0 29 2 1", "the-31st": "0 0 31 * *",
    "new-years-eve-last-minute": "59 23 31 12 *", "once-a-year": "7 7 7 7 *",
}
REFUSED = {"weekday-7": "0 0 * * 7", "step-without-range": "5/10 * * * *", "february-31": "0 0 31 2 *",
           "day-0": "0 0 0 * *", "minute-60": "60 * * * *", "step-0": "*/0 * * * *", "open-range": "1- * * * *",
           "not-a-name": "x * * * *", "trailing-junk": "1-5x * * * *"}
TIMES = [datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=days, seconds=seconds)
         for days, seconds in [(0, 0), (1, 59), (30, 86399), (58, 3 * 3600), (59, 0), (365, 12345), (731, 7 * 60),
                               (1095, 86340), (1500, 43200)]]


@pytest.mark.parametrize("expression", list(ORACLE.values()), ids=list(ORACLE))
def test_the_next_sync_is_when_celery_beat_runs_it(expression):
    for now in TIMES:
        assert next_sync(expression, now) == _celery_next(expression, now), now


@pytest.mark.parametrize("expression", list(REFUSED.values()), ids=list(REFUSED))
def test_a_schedule_celery_refuses_is_refused_naming_the_setting(expression):
    with pytest.raises(ValueError, match="DUCC_SYNC_SCHEDULE"):
        _celery_next(expression, TIMES[0])
    with pytest.raises(ValueError, match="DUCC_SYNC_SCHEDULE"):
        next_sync(expression, TIMES[0])


def test_a_wish_covers_the_tags_its_glob_matches_and_its_digest():
    wishes = load("version: 1\ninput:\n  - reg.example.org/team/app:1.*\n"
                  "  - {image: 'reg.example.org/team/lib:*', exclude: ['*-rc*']}\n"
                  "  - reg.example.org/team/pinned@sha256:" + "a" * 64 + "\n").wishes
    glob, excluding, pinned = wishes
    assert glob.covers(Reference.parse("reg.example.org/team/app:1.2"))
    assert not glob.covers(Reference.parse("reg.example.org/team/app:2.0"))
    assert not glob.covers(Reference.parse("reg.example.org/other/app:1.2"))
    assert not excluding.covers(Reference.parse("reg.example.org/team/lib:2-rc1"))
    assert pinned.covers(Reference.parse("reg.example.org/team/pinned@sha256:" + "a" * 64))


def test_a_broken_wishlist_refuses_with_its_reason_instead_of_a_misleading_one(tmp_path):
    path = tmp_path / "wishlist.yaml"
    path.write_text("version: 1\ninput: ['Not An Image']\n")
    decision = Policy([], path).decide(Reference.parse("reg.example.org/team/app:1"))
    assert not decision.allowed and f"the wishlist {path}: input #1: " in decision.why
    path.unlink()
    decision = Policy([], path).decide(Reference.parse("reg.example.org/team/app:1"))
    assert not decision.allowed and f"cannot read wishlist {path}" in decision.why
