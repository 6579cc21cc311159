"""The real multi-layer Debian image (tag ``edited``: ENTRYPOINT python3, CMD -V, Env APP_HOME, a layer of
deletions, hardlinks, setuid and symlinks) converted and run under ch-run as an unprivileged user, and
checked against umoci unpack of the same image."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ducc import layout
from ducc.convert import Converter
from ducc.model.reference import Reference
from ducc.publish.directory import DirectoryPublisher
from tests.integration.test_runtimes import run_in
from tests.support.debian import push_debian_images
from tests.support.trees import hardlink_groups, snapshot, umoci_rootfs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def debian(registry) -> str:
    return f"{registry.host}/{push_debian_images(registry.host, tags=('edited',))}"


@pytest.fixture(scope="module")
def converted(debian, tmp_path_factory) -> Iterator[tuple[Path, Reference]]:
    from ducc.registry.client import RegistryClient

    base = Path(tempfile.mkdtemp(prefix="ducc-debian-", dir="/var/tmp"))
    base.chmod(0o755)
    ref = Reference.parse(f"{debian}:edited")
    Converter(RegistryClient(), DirectoryPublisher(base / "repo")).convert(ref)
    yield base / "repo", ref
    shutil.rmtree(base, ignore_errors=True)


def test_its_python_runs_through_the_runscript_under_ch_run_unprivileged(converted):
    root, ref = converted
    flat = (root / layout.tag_link(ref)).resolve()
    done = run_in("ch-run", flat, "/.singularity.d/actions/run")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Python 3.")  # CMD -V
    env = run_in("ch-run", flat, "/.singularity.d/actions/run", "-c", "import os, sys; print(os.environ['APP_HOME'], sys.argv[1:])", "a b")
    assert env.stdout.strip() == "/opt/app ['a b']", env.stderr


def test_it_matches_umoci_entry_by_entry(converted, tmp_path):
    root, ref = converted
    flat = (root / layout.tag_link(ref)).resolve()
    added = json.loads((flat / ".singularity.d/ducc.json").read_text())["added"]
    additions = frozenset({layout.CATALOG, ".singularity.d", *(a.rstrip("/") for a in added)})
    theirs = umoci_rootfs(ref.registry, ref.repository, str(ref.tag), tmp_path / "umoci")
    expected = {k: v for k, v in snapshot(theirs, normalise_modes=True).items() if k not in additions and v[0] != "special"}
    actual = snapshot(flat, skip=additions)
    assert actual == expected
    assert hardlink_groups(flat, skip=additions) == hardlink_groups(theirs)
    assert (flat / "opt/app/suid-true").stat().st_mode & 0o4000
    assert not (flat / "usr/share/doc").exists()
