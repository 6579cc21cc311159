"""The service image the chart deploys, built for real from the top-level ``Containerfile`` with buildah on a
debootstrapped Debian 12 base (the one of ``tests/support/debian.py``, pushed to the test registry), pushed
back, converted by ducc itself and run from its flat root as an unprivileged user with ``ch-run``: the image
that nobody could build before is now built, and it runs ducc."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from ducc import layout
from ducc.model.reference import Reference
from tests.support.debian import push_debian_images

REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534
# This machine reaches PyPI through a TLS-intercepting proxy whose CA only the host's bundle has; the
# Containerfile takes such a bundle as a build secret (never kept in the image). Harmless elsewhere.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def checkout_version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def chart_uid() -> int:
    values = yaml.safe_load((REPO / "charts/ducc/values.yaml").read_text())
    return int(values["podSecurityContext"]["runAsUser"])


@pytest.fixture
def buildah(tmp_path: Path) -> Iterator[list[str]]:
    """``buildah`` with storage of its own (vfs: no overlay or fuse needed), removed afterwards."""
    binary = shutil.which("buildah")
    if binary is None:
        pytest.fail("buildah is not installed: run ./bootstrap.sh (Debian package buildah)")
    if os.geteuid() != 0:
        pytest.skip("building the container image needs root here (buildah --isolation chroot); this run is not root")
    storage = Path(tempfile.mkdtemp(prefix="ducc-buildah-", dir="/var/tmp"))
    argv = [binary, "--root", str(storage / "root"), "--runroot", str(storage / "run"), "--storage-driver", "vfs"]
    probe = subprocess.run([*argv, "info"], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        shutil.rmtree(storage, ignore_errors=True)
        pytest.skip(f"buildah cannot run on this machine: {probe.stderr.strip()[-500:]}")
    yield argv
    shutil.rmtree(storage, ignore_errors=True)


@pytest.fixture
def world_root() -> Iterator[Path]:
    """A repository root the unprivileged user can reach (pytest's own tmp is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="ducc-image-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path / "repo"
    shutil.rmtree(path, ignore_errors=True)


def run(argv: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert done.returncode == 0, f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def ch_run(flat: Path, *command: str) -> subprocess.CompletedProcess[str]:
    """``command`` inside ``flat`` under Charliecloud, as nobody (as an HPC user runs a converted image)."""
    if shutil.which("ch-run") is None:
        pytest.fail("ch-run is not installed: run ./bootstrap.sh (Debian package charliecloud)")
    argv = ["ch-run", str(flat), "--", *command]
    if os.geteuid() == 0:
        argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]
    env = {"USER": "nobody", "HOME": "/", "PATH": "/usr/bin:/bin", "LANG": "C"}
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_the_containerfile_builds_an_image_that_ducc_converts_and_that_runs_ducc(registry, buildah, world_root, tmp_path):
    timings: dict[str, float] = {}
    started = time.monotonic()
    base = f"{registry.host}/{push_debian_images(registry.host, ('base',))}:base"
    image = f"{registry.host}/ducc:test"
    timings["base pushed"] = time.monotonic() - started

    build = [*buildah, "bud", "--isolation", "chroot", "--tls-verify=false", "-f", str(REPO / "Containerfile"),
             "--build-arg", f"BASE={base}", "-t", image]
    if HOST_CA_BUNDLE.exists():
        build += ["--secret", f"id=pip-cert,src={HOST_CA_BUNDLE}"]
    run([*build, str(REPO)], timeout=900, cwd=tmp_path)
    timings["built"] = time.monotonic() - started
    config = json.loads(run([*buildah, "inspect", "--type", "image", image], timeout=60).stdout)["OCIv1"]["config"]
    assert config["Entrypoint"] == ["ducc"]
    assert config["User"].split(":")[0] == str(chart_uid()), "the image's user must be the chart's runAsUser"
    run([*buildah, "push", "--tls-verify=false", image, f"docker://{image}"], timeout=300)
    timings["pushed"] = time.monotonic() - started

    env = {**os.environ, "DUCC_CACHE_DIR": "off"}
    env.pop("DUCC_REDIS_URL", None)
    run([sys.executable, "-m", "ducc", "convert", image, "--root", str(world_root)], timeout=600, env=env, cwd=tmp_path)
    timings["converted"] = time.monotonic() - started
    flat = (world_root / layout.tag_link(Reference.parse(image))).resolve(strict=True)

    expected = f"ducc {checkout_version()}"
    direct = ch_run(flat, "/opt/ducc/bin/ducc", "--version")
    assert (direct.returncode, direct.stdout.strip()) == (0, expected), direct.stderr
    # The image's ENTRYPOINT through the runscript, with docker run's semantics: arguments replace CMD.
    entrypoint = ch_run(flat, "/.singularity.d/actions/run", "--version")
    assert (entrypoint.returncode, entrypoint.stdout.strip()) == (0, expected), entrypoint.stderr
    # Everything the worker and the web app import is installed (the Redis transport once was not);
    # the test extras and redis-server (only `ducc serve` needs it) are not.
    imports = ch_run(flat, "/opt/ducc/bin/python", "-c", "import kombu.transport.redis, gunicorn, flask, celery, ducc.service.tasks")
    assert imports.returncode == 0, imports.stderr
    assert ch_run(flat, "/opt/ducc/bin/python", "-c", "import pytest").returncode != 0
    assert not (flat / "usr/bin/redis-server").exists() and not (flat / "usr/src/ducc").exists()
    assert not (flat / "run/secrets/pip-cert").exists()
    timings["ran"] = time.monotonic() - started
    print("container image: " + ", ".join(f"{step} at {at:.0f}s" for step, at in timings.items()))
