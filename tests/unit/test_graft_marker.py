"""The ``.cvmfsgraft-<name>`` text for a file the repository already stores (pure)."""

from __future__ import annotations

import pytest

from ducc.publish.graft import Content

SHA1_A, SHA1_B = "a" * 40, "b" * 40


@pytest.mark.parametrize(("content", "marker"), [
    (Content(100, ((SHA1_A, 0),), "zlib"), f"size=100\nchecksum={SHA1_A}\ncompression=zlib\n"),
    (Content(0, ((SHA1_A, 0),), "none"), f"size=0\nchecksum={SHA1_A}\ncompression=none\n"),
    (Content(300, ((SHA1_A, 0), (SHA1_B, 120)), "zlib"),
     f"size=300\nchecksum={'0' * 40}\nchunk_offsets=0,120\nchunk_checksums={SHA1_A},{SHA1_B}\ncompression=zlib\n"),
    (Content(300, ((SHA1_A + "-rmd160", 0), (SHA1_B + "-rmd160", 120)), "zlib"),
     f"size=300\nchecksum={'0' * 40}-rmd160\nchunk_offsets=0,120\n"
     f"chunk_checksums={SHA1_A}-rmd160,{SHA1_B}-rmd160\ncompression=zlib\n"),
], ids=["one object", "no compression", "chunked: a null whole-file hash, as publish leaves it",
        "chunked, another hash algorithm keeps its suffix"])
def test_a_graft_marker_names_size_hash_chunks_and_compression(content, marker):
    assert content.marker() == marker.encode()
