"""The architecture is checked by tools, not by review: strict typing, lint, and import contracts
(the model stays pure, webhooks never import the converter, arrows point inward)."""

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
    done = _run("ruff", "check", "ducc", "webhooks", "tests", "bench")
    assert done.returncode == 0, done.stdout + done.stderr


def test_import_contracts_hold():
    done = _run("lint-imports")
    assert done.returncode == 0, done.stdout + done.stderr
