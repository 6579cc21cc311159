"""The architecture is checked by tools, not by review: strict typing, lint, and import contracts
(the model stays pure, the web app never imports the converter, arrows point inward)."""

from __future__ import annotations

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


WEB_PROCESS = """
import sys
from ducc.web import create_app
from ducc.settings import Settings
app = create_app(Settings.from_env({"DUCC_REDIS_URL": "redis://127.0.0.1:1/0", "DUCC_WEBHOOK_TOKEN": "t",
                                    "DUCC_ROOT": sys.argv[1]})).test_client()
assert app.post("/webhooks/registry", json={"events": []}, headers={"Authorization": "Bearer t"}).status_code == 200
assert app.post("/api/v1/conversions", json={"image": "ubuntu"}).status_code == 401
assert app.get("/healthz").status_code == 503
heavy = ("ducc.convert", "ducc.unpack", "ducc.registry", "ducc.cache", "ducc.sync", "ducc.service.tasks", "isal",
         "zstandard")
print(" ".join(sorted(m for m in sys.modules if m.startswith(heavy))))
"""


def test_the_web_process_never_loads_the_converter(tmp_path):
    """The import contract allows the composition root's lazy builders; this checks the web app never runs them."""
    done = subprocess.run([sys.executable, "-c", WEB_PROCESS, str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
