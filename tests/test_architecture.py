"""The architecture is checked by tools, not by review: strict typing, lint, and import contracts
(the model stays pure, the web app never imports the converter, arrows point inward)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    executable = BIN / tool if (BIN / tool).exists() else shutil.which(tool)
    if executable is None:
        pytest.fail(f"{tool} is not installed: run ./bootstrap.sh")
    return subprocess.run([str(executable), *args], cwd=ROOT, capture_output=True, text=True)


def test_mypy_strict_passes():
    done = _run("mypy")
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_passes():
    done = _run("ruff", "check", "ducc", "tests", "bench")
    assert done.returncode == 0, done.stdout + done.stderr


def test_import_contracts_hold():
    done = _run("lint-imports")
    assert done.returncode == 0, done.stdout + done.stderr


# The web process as gunicorn loads it (``ducc web`` runs ``gunicorn ducc.web.wsgi:app``), settings from the
# environment the test gives; Redis is unreachable, so every endpoint that reads it answers 503.
WEB_PROCESS = """
import json, os, sys
os.environ.update(json.loads(sys.argv[1]))
from ducc.web.wsgi import app
web = app.test_client()
assert web.post("/webhooks/registry", json={"events": []}, headers={"Authorization": "Bearer t"}).status_code == 200
assert web.post("/api/v1/conversions", json={"image": "ubuntu"}).status_code == 401
assert web.get("/healthz").status_code == 503
assert web.get("/").status_code == 503  # the page reads the repository's location, then Redis
assert web.get("/api/v1/images?ref=ubuntu").status_code == 503  # reads the repository, then Redis
heavy = ("ducc.convert", "ducc.unpack", "ducc.registry", "ducc.cache", "ducc.sync", "ducc.service.tasks", "isal",
         "zstandard", "celery", "kombu", "billiard", "ducc.publish.cvmfs", "ducc.publish.cvmfs_server",
         "ducc.publish.tarstream")
print(" ".join(sorted(m for m in sys.modules if m in heavy or m.startswith(tuple(h + "." for h in heavy)))))
"""


@pytest.mark.parametrize("publisher", ["directory", "cvmfs"])
def test_the_web_process_loads_neither_the_converter_nor_celery_nor_the_cvmfs_publisher(tmp_path, publisher):
    """The import contracts allow the composition root's lazy builders (the converter, the publisher, Celery);
    this checks the web app never runs them, whichever repository it reads."""
    env = {"DUCC_REDIS_URL": "redis://127.0.0.1:1/0", "DUCC_WEBHOOK_TOKEN": "t", "DUCC_ROOT": str(tmp_path),
           "DUCC_PUBLISHER": publisher, "DUCC_WISHLIST": str(tmp_path / "wishlist.yaml")}
    if publisher == "cvmfs":
        env |= {"DUCC_CVMFS_REPO": "repo.example.org/containers", "DUCC_CVMFS_MOUNT": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", WEB_PROCESS, json.dumps(env)], cwd=ROOT, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
