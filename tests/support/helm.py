"""A real ``helm`` (fetched once by ../shared/tools/get-helm.sh into .venv/helm) and the chart rendered by it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "ducc"
GET_HELM = REPO.parent / "shared" / "tools" / "get-helm.sh"
HELM_DIR = REPO / ".venv" / "helm"


def helm_binary() -> Path:
    """The helm binary; skips the calling test (saying why) where it cannot be had."""
    binary = HELM_DIR / "helm"
    if not binary.exists():
        if not GET_HELM.exists():
            pytest.skip(f"{GET_HELM} is not on this machine: the chart is not rendered here")
        done = subprocess.run(["bash", str(GET_HELM), str(HELM_DIR)], capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            pytest.skip(f"could not fetch helm here: {done.stderr[-500:]}")
    return binary


def render(helm: Path, *overrides: str, release: str = "t") -> subprocess.CompletedProcess[str]:
    sets = [arg for value in overrides for arg in ("--set", value)]
    return subprocess.run([str(helm), "template", release, str(CHART), *sets], capture_output=True, text=True)


def objects(helm: Path, *overrides: str, release: str = "t") -> dict[tuple[str, str], dict]:
    """The rendered objects by (kind, name)."""
    done = render(helm, *overrides, release=release)
    assert done.returncode == 0, done.stderr
    return {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(done.stdout) if o}


def container(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]["containers"][0]
