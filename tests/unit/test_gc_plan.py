"""Garbage collection's planning, pure: reachability, candidates, the grace and its clock, the plan's text."""

from __future__ import annotations

from ducc.gc import Collection, GcState, Item, Kind, Survey, plan
from ducc.model.digest import Digest
from ducc.tree import TreeSize

DAY = 86400
NOW = 1_800_000_000.0


def item(kind: Kind, name: str) -> Item:
    return Item(kind, Digest.of(name.encode()))


CURRENT_FLAT, OLD_FLAT = item(Kind.FLAT, "current"), item(Kind.FLAT, "old")
SHARED, ONLY_OLD, ONLY_CURRENT = item(Kind.LAYER, "shared"), item(Kind.LAYER, "only-old"), item(Kind.LAYER, "new")
PRESENT = frozenset({CURRENT_FLAT, OLD_FLAT, SHARED, ONLY_OLD, ONLY_CURRENT})
REACHABLE = frozenset({CURRENT_FLAT, SHARED, ONLY_CURRENT})


def test_everything_unreachable_is_a_candidate_first_seen_now_and_waits_for_the_grace():
    decided = plan(Survey(PRESENT, REACHABLE), GcState(), NOW, 7 * DAY)
    assert decided.delete == ()
    assert {w.item for w in decided.waiting} == {OLD_FLAT, ONLY_OLD}
    assert all(w.since == NOW and w.until == NOW + 7 * DAY for w in decided.waiting)
    assert decided.state.unreferenced == {OLD_FLAT: NOW, ONLY_OLD: NOW}
    assert decided.reachable == REACHABLE


def test_grace_zero_deletes_what_is_unreferenced_in_the_run_that_first_sees_it():
    decided = plan(Survey(PRESENT, REACHABLE), GcState(), NOW, 0)
    assert [i for i, _ in decided.delete] == sorted([OLD_FLAT, ONLY_OLD])
    assert decided.waiting == () and decided.state.unreferenced == {}


def test_a_candidate_goes_once_the_grace_has_passed_since_it_was_first_seen_not_before():
    state = GcState({OLD_FLAT: NOW - 7 * DAY, ONLY_OLD: NOW - 7 * DAY + 1})
    decided = plan(Survey(PRESENT, REACHABLE), state, NOW, 7 * DAY)
    assert [i for i, _ in decided.delete] == [OLD_FLAT]
    assert [(w.item, w.since, w.until) for w in decided.waiting] == [(ONLY_OLD, NOW - 7 * DAY + 1, NOW + 1)]
    assert decided.state.unreferenced == {ONLY_OLD: NOW - 7 * DAY + 1}  # its first time is kept, not reset


def test_a_candidate_reachable_again_loses_its_time_and_gets_a_new_one_when_unreferenced_again():
    state = GcState({OLD_FLAT: NOW - 6 * DAY, ONLY_OLD: NOW - 6 * DAY})
    again = plan(Survey(PRESENT, REACHABLE | {OLD_FLAT, ONLY_OLD}), state, NOW, 7 * DAY)
    assert again.state.unreferenced == {} and again.delete == () and again.waiting == ()
    later = plan(Survey(PRESENT, REACHABLE), again.state, NOW + 2 * DAY, 7 * DAY)
    assert later.delete == ()  # six days before plus two would have been past the grace
    assert later.state.unreferenced == {OLD_FLAT: NOW + 2 * DAY, ONLY_OLD: NOW + 2 * DAY}


def test_what_a_conversion_in_progress_reserved_is_kept_and_its_life_starts_over():
    state = GcState({OLD_FLAT: NOW - 30 * DAY, ONLY_OLD: NOW - 30 * DAY})
    decided = plan(Survey(PRESENT, REACHABLE, in_use=frozenset({ONLY_OLD, SHARED})), state, NOW, DAY)
    assert [i for i, _ in decided.delete] == [OLD_FLAT]
    assert decided.in_use == {ONLY_OLD}  # SHARED is reachable anyway
    assert decided.state.unreferenced == {}


def test_trees_that_are_gone_leave_the_state():
    gone = item(Kind.LAYER, "deleted by hand")
    state = GcState({gone: NOW - DAY}, {gone: TreeSize(3, 30), OLD_FLAT: TreeSize(5, 50)})
    decided = plan(Survey(PRESENT, REACHABLE), state, NOW, 7 * DAY)
    assert gone not in decided.state.unreferenced and gone not in decided.state.sizes
    assert decided.state.sizes == {OLD_FLAT: TreeSize(5, 50)}


def test_the_state_survives_its_own_serialisation_and_a_broken_one_only_restarts_the_clocks():
    state = GcState({OLD_FLAT: NOW - 1.5, ONLY_OLD: NOW}, {SHARED: TreeSize(7, 700)})
    assert GcState.parse(state.dump()) == state
    for broken in [b"not json", b'{"unreferenced": {"flat nonsense": 1}}', b'{"sizes": {"layer sha256:00": [1]}}', b"[]"]:
        assert GcState.parse(broken) == GcState()
    assert GcState.parse(None) == GcState()


def test_the_plan_says_what_goes_with_its_size_what_waits_and_until_when_in_absolute_time():
    state = GcState({ONLY_OLD: NOW - DAY}, {OLD_FLAT: TreeSize(1204, 5_612_345), ONLY_OLD: TreeSize(3, 100),
                                             CURRENT_FLAT: TreeSize(10, 1000)})
    decided = plan(Survey(PRESENT, REACHABLE, in_use=frozenset({OLD_FLAT})), state, NOW, 7 * DAY)
    collection = Collection(decided, state.sizes, PRESENT)
    lines = collection.lines()
    assert lines == [
        f"waiting  layer {ONLY_OLD.digest}  until 2027-01-21 08:00:00 UTC  (unreferenced since 2027-01-14 08:00:00 UTC)",
        f"in use   flat  {OLD_FLAT.digest}  reserved by a conversion in progress",
    ]
    assert "1 waiting, the first until 2027-01-21 08:00:00 UTC" in collection.summary()
    seen = GcState({ONLY_OLD: NOW - DAY, OLD_FLAT: NOW}, state.sizes)
    deleting = Collection(plan(Survey(PRESENT, REACHABLE), seen, NOW + 7 * DAY, 7 * DAY), state.sizes, PRESENT)
    assert deleting.lines() == [
        f"deleted  flat  {OLD_FLAT.digest}  1204 entries, 5612345 bytes  (unreferenced since 2027-01-15 08:00:00 UTC)",
        f"deleted  layer {ONLY_OLD.digest}  3 entries, 100 bytes  (unreferenced since 2027-01-14 08:00:00 UTC)",
    ]
    assert "deleted 1 flat root and 1 layer (1207 entries, 5612445 bytes = 5.6 MB freed)" in deleting.summary()
    dry = Collection(deleting.plan, state.sizes, PRESENT, dry_run=True)
    assert dry.lines()[0].startswith("would delete  flat") and "would delete 1 flat root" in dry.summary()
