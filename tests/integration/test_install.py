"""ducc as an operator installs it: the built wheel in a fresh virtualenv, without the test extras and not
editable, runs the whole service (``ducc serve``: embedded Redis, a real Celery worker, beat, the web app)
and publishes a submitted image. The project's own ``.venv`` carries the test extras, which once hid a
dependency that only they pulled in; this test never imports anything from that environment into the
service it runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from ducc import __version__, layout
from tests.support.images import Dir, File, ImageSpec, Layer, push_image
from tests.support.processes import free_port, wait_for_port
from tests.support.service import DuccProcess

REPO = Path(__file__).resolve().parents[2]
# What `pip install .` reads; copied out so that building never writes into the checkout.
SOURCES = ("pyproject.toml", "README.md", "ducc")
TEST_ONLY = ("pytest", "hypothesis", "mypy", "ruff")


def _plain_env(**extra: str) -> dict[str, str]:
    """The environment of an operator's shell: no test venv on PATH, no PYTHONPATH, no DUCC_REDIS_URL."""
    keep = ("HOME", "LANG", "LC_ALL", "TMPDIR", "PIP_CERT", "PIP_FIND_LINKS", "PIP_DEFAULT_TIMEOUT", "SSL_CERT_FILE",
            "REQUESTS_CA_BUNDLE")
    return {**{k: os.environ[k] for k in keep if k in os.environ}, "PATH": "/usr/local/bin:/usr/bin:/bin", **extra}


def _run(argv: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run from ``cwd`` (never the checkout: Python would import ducc from the current directory)."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=_plain_env())
    assert done.returncode == 0, f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv holding only the built ducc wheel and its declared dependencies; returns its bin/."""
    work = tmp_path_factory.mktemp("install")
    source = work / "source"
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(REPO / name, source / name)
    wheels = work / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), str(source)], work)
    (wheel,) = wheels.glob("ducc-*.whl")
    venv = work / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], work)  # the base interpreter, not this .venv's packages
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)], work)
    return venv / "bin"


def test_the_wheel_installs_without_extras_and_not_editable(installed, tmp_path):
    version = _run([str(installed / "ducc"), "--version"], tmp_path)
    assert version.stdout.strip() == f"ducc {__version__}"
    where = _run([str(installed / "python"), "-c", "import ducc.web; print(ducc.__file__); print(ducc.web.__file__)"],
                 tmp_path)
    for line in where.stdout.split():
        assert Path(line).is_relative_to(installed.parent), f"{line} is not inside the fresh venv (editable?)"
    shown = subprocess.run([str(installed / "python"), "-m", "pip", "show", *TEST_ONLY], capture_output=True, text=True,
                           cwd=tmp_path, env=_plain_env())
    assert "Name:" not in shown.stdout, f"test extras leaked into the plain install:\n{shown.stdout}"


class VenvDucc(DuccProcess):
    """``ducc SUBCOMMAND`` from the fresh venv's own entry point, not from this interpreter."""

    def __init__(self, bin_dir: Path, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        super().__init__(argv, env, log_path)
        self.bin_dir = bin_dir

    def start(self) -> VenvDucc:
        self.process = subprocess.Popen([str(self.bin_dir / "ducc"), *self.argv], env=self.env, cwd=self.log_path.parent,
                                        stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        return self


def test_ducc_serve_from_the_plain_install_publishes_a_submitted_image(installed, client, unique_ref, tmp_path):
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (ducc serve's embedded Redis): run ./bootstrap.sh")
    ref = unique_ref()
    push_image(client, ref, ImageSpec(layers=[Layer([Dir("etc"), File("etc/os-release", b"ID=install-test\n")]),
                                              Layer([File("app", b"from the plain install\n")])]))
    port = free_port()
    env = _plain_env(DUCC_ROOT=str(tmp_path / "root"), DUCC_STATE_DIR=str(tmp_path / "state"),
                     DUCC_CACHE_DIR=str(tmp_path / "cache"), DUCC_LOG_LEVEL="INFO", DUCC_LISTEN=f"127.0.0.1:{port}",
                     DUCC_WEBHOOK_TOKEN="install-test-token", DUCC_ALLOW=f"{ref.registry}/*")
    serve = VenvDucc(installed, ["serve"], env, tmp_path / "serve.log")
    started = time.monotonic()
    try:
        serve.start()
        serve.wait_for_log("ready.", timeout=90)  # the Celery worker, started by serve, took its queue
        wait_for_port(port, timeout=30, process=serve.process)
        health = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
        assert health.status_code == 200, health.text

        submitted = subprocess.run([str(installed / "ducc"), "submit", str(ref)], env=env, cwd=tmp_path,
                                   capture_output=True, text=True, timeout=60)
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr + serve.log()[-3000:]
        job_id = submitted.stdout.strip().splitlines()[-1]
        status = subprocess.run([str(installed / "ducc"), "status", str(ref), "--wait", "120"], env=env, cwd=tmp_path,
                                capture_output=True, text=True, timeout=180)
        assert status.returncode == 0, status.stdout + status.stderr + serve.log()[-3000:]
        assert job_id in status.stdout and "published" in status.stdout

        link = tmp_path / "root" / layout.tag_link(ref)
        flat = link.resolve(strict=True)
        assert flat.is_relative_to((tmp_path / "root" / ".flat").resolve())
        assert (link / "app").read_bytes() == b"from the plain install\n"
        assert (link / "etc" / "os-release").read_bytes() == b"ID=install-test\n"
        assert "Traceback" not in serve.log(), serve.log()[-3000:]
    finally:
        serve.stop()
    print(f"ducc serve from the fresh venv: published in {time.monotonic() - started:.1f}s")
    assert serve.process is not None and serve.process.returncode is not None
