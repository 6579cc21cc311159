"""What a job did in all when it checked its tag again (``ConversionResult.then``): pure."""

from ducc.model.digest import Digest
from ducc.model.reference import Reference
from ducc.model.request import ConversionRequest, ConversionResult

REF = Reference.parse("127.0.0.1:5000/team/app:1")
THIN = Reference.parse("127.0.0.1:5000/thin/app:1")
PUBLISHED = ConversionResult(ConversionRequest(REF), "published", "p", tag_digest=Digest.of(b"first"),
                             layers_unpacked=2, layers_reused=1, bytes_fetched=1000, seconds=3.0)


def test_an_unchanged_recheck_keeps_what_the_job_published():
    recheck = ConversionResult(ConversionRequest(REF), "unchanged", "p", tag_digest=Digest.of(b"first"), seconds=0.5)
    outcome = PUBLISHED.then(recheck)
    assert outcome.state == "published" and outcome.layers_unpacked == 2 and outcome.bytes_fetched == 1000
    assert outcome.seconds == 3.5


def test_an_unchanged_recheck_adds_the_thin_image_a_joined_request_asked_for():
    grown = ConversionRequest(REF, thin=THIN)
    recheck = ConversionResult(grown, "unchanged", "p", thin_digest=Digest.of(b"thin"), thin_pushed=True)
    outcome = PUBLISHED.then(recheck)
    assert outcome.state == "published" and outcome.layers_unpacked == 2
    assert outcome.thin == THIN.with_digest(Digest.of(b"thin")) and outcome.thin_pushed


def test_a_recheck_that_published_a_newer_image_is_the_outcome_with_the_work_of_both_runs():
    recheck = ConversionResult(ConversionRequest(REF), "published", "p", tag_digest=Digest.of(b"second"),
                               layers_unpacked=1, bytes_fetched=500, seconds=2.0)
    outcome = PUBLISHED.then(recheck)
    assert outcome.tag_digest == Digest.of(b"second") and outcome.layers_unpacked == 3
    assert outcome.bytes_fetched == 1500 and outcome.seconds == 5.0


def test_a_thin_push_cancelled_in_a_recheck_says_so_unless_an_earlier_run_pushed_it():
    grown = ConversionRequest(REF, thin=THIN)
    skipped = ConversionResult(grown, "unchanged", "p", thin_error="cancelled by cli (a@b) while thin")
    assert PUBLISHED.then(skipped).thin_error == "cancelled by cli (a@b) while thin"
    pushed = ConversionResult(grown, "published", "p", thin_digest=Digest.of(b"thin"))
    assert pushed.then(skipped).thin_error == "" and pushed.then(skipped).thin_digest == Digest.of(b"thin")


def test_the_thin_error_survives_the_job_record():
    result = ConversionResult(ConversionRequest(REF, thin=THIN), "published", "p", thin_error="cancelled by x")
    assert ConversionResult.from_json(result.to_json()) == result
