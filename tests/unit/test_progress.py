import io

from ducc.cli.progress_line import TerminalProgress
from ducc.model.digest import Digest
from ducc.model.reference import Reference


def test_terminal_progress_shows_bytes_per_layer_and_clears_on_stage_change():
    out = io.StringIO()
    progress = TerminalProgress(stream=out)
    digest = Digest.of(b"layer")
    progress.layer(digest, 5_000_000, 20_000_000)
    assert f"{digest.short[:8]} 5.0/20.0 MB" in out.getvalue()
    progress.stage(Reference.parse("ubuntu"), "flattening")
    assert out.getvalue().endswith("\r\033[K")
