"""The one line a failed ``cvmfs_server`` call is reported by, from outputs the real 2.12.0 script printed."""

from __future__ import annotations

import pytest

from ducc.errors import CvmfsError, reason_line

NOISE = "/usr/bin/cvmfs_server: 9263: eval: [[: not found\n"

OUTPUTS = {
    "swissknife_assertion_shortened_to_file_line_and_assertion": (
        NOISE + "cvmfs_swissknife: /tmp/realcvmfs/src/cvmfs/catalog_rw.cc:171: void catalog::WritableCatalog::"
        "AddEntry(const catalog::DirectoryEntry&, const XattrList&, const std::string&, const std::string&): "
        "Assertion `retval' failed.\nAborted\nSynchronization failed\n\nExecuted Command:\n"
        "cvmfs_swissknife ingest -u /cvmfs/r -T - -B .layers/f6 -C true",
        "cvmfs_swissknife: catalog_rw.cc:171: Assertion `retval' failed."),
    "the_transactions_refusal_not_the_generic_last_words": (
        NOISE + "CernVM-FS transaction error: another transaction is already open\nImpossible to start a transaction\n",
        "CernVM-FS transaction error: another transaction is already open"),
    "the_archive_error_before_synchronization_failed": (
        NOISE + "failed to read data from the tar entry: /cut/ducc-aborted-this-stream (-1)\n Truncated tar archive\n"
        "terminate called after throwing an instance of 'ECvmfsException'\nSynchronization failed\n",
        "failed to read data from the tar entry: /cut/ducc-aborted-this-stream (-1)"),
    "only_the_generic_words": (NOISE + "Synchronization failed\n", "Synchronization failed"),
    "nothing_but_noise": (NOISE, "(no output)"),
    "the_refusal_publish_echoes_on_stdout": ("Repository r is not in a transaction\n", "Repository r is not in a transaction"),
}


@pytest.mark.parametrize(("output", "expected"), list(OUTPUTS.values()), ids=list(OUTPUTS))
def test_the_reason_is_the_line_that_says_why(output, expected):
    assert reason_line(output) == expected


def test_a_cvmfs_error_is_one_line_and_its_detail_keeps_everything():
    output = OUTPUTS["swissknife_assertion_shortened_to_file_line_and_assertion"][0]
    error = CvmfsError(("cvmfs_server", "ingest", "-t", "-", "-b", ".layers/f6", "-c", "r"), 1, output)
    assert str(error) == "cvmfs_server ingest failed (exit 1): cvmfs_swissknife: catalog_rw.cc:171: Assertion `retval' failed."
    assert "cvmfs_swissknife ingest -u /cvmfs/r" in error.detail and "-b .layers/f6" in error.detail


def test_a_very_long_reason_is_cut_at_300_characters():
    assert len(reason_line("x" * 1000)) == 300
