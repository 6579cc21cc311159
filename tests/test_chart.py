"""The Helm chart, rendered by a real ``helm`` (fetched by ../shared/tools/get-helm.sh): it lints, and the
objects it renders keep the promises of the README: one beat, never two (Recreate), probes by role,
secrets only as files."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
GET_HELM = ROOT.parent / "shared" / "tools" / "get-helm.sh"
HELM_DIR = ROOT / ".venv" / "helm"


@pytest.fixture(scope="module")
def helm() -> Path:
    binary = HELM_DIR / "helm"
    if not binary.exists():
        if not GET_HELM.exists():
            pytest.skip(f"{GET_HELM} is not on this machine: the chart is not rendered here")
        done = subprocess.run(["bash", str(GET_HELM), str(HELM_DIR)], capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            pytest.skip(f"could not fetch helm here: {done.stderr[-500:]}")
    return binary


def render(helm: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    sets = [arg for value in overrides for arg in ("--set", value)]
    return subprocess.run([str(helm), "template", "t", str(ROOT / "charts/ducc"), *sets], capture_output=True, text=True)


def objects(helm: Path, *overrides: str) -> dict[tuple[str, str], dict]:
    done = render(helm, *overrides)
    assert done.returncode == 0, done.stderr
    return {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(done.stdout) if o}


def test_chart_lints(helm):
    done = subprocess.run([str(helm), "lint", str(ROOT / "charts/ducc"), "--set", "secrets.webhookToken=x"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_components_probes_and_one_beat(helm):
    rendered = objects(helm, "secrets.webhookToken=x")
    web = rendered[("Deployment", "t-ducc-web")]["spec"]["template"]["spec"]["containers"][0]
    assert web["readinessProbe"]["httpGet"]["path"] == "/healthz" and web["livenessProbe"]["httpGet"]["path"] == "/healthz"
    worker = rendered[("Deployment", "t-ducc-worker")]["spec"]["template"]["spec"]["containers"][0]
    assert worker["args"][0] == "worker" and "exec" in worker["livenessProbe"]
    beat = rendered[("Deployment", "t-ducc-beat")]["spec"]
    assert beat["replicas"] == 1 and beat["strategy"]["type"] == "Recreate"
    redis = rendered[("StatefulSet", "t-ducc-redis")]["spec"]["template"]["spec"]["containers"][0]
    assert "--appendonly" in redis["args"]
    assert ("PersistentVolumeClaim", "t-ducc-repository") in rendered


def test_secrets_reach_the_pods_only_as_files(helm):
    rendered = objects(helm, "secrets.webhookToken=s3cret-token", "secrets.registryUser=u",
                       "secrets.registryPassword=pw-value", "secrets.registryHosts=reg.example.org")
    for kind, name in rendered:
        if kind != "Deployment":
            continue
        container = rendered[(kind, name)]["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert "DUCC_WEBHOOK_TOKEN" not in env and "DUCC_REGISTRY_PASSWORD" not in env
        assert env["DUCC_WEBHOOK_TOKEN_FILE"] == "/run/secrets/ducc/webhook-token"
        assert env["DUCC_REGISTRY_PASSWORD_FILE"] == "/run/secrets/ducc/registry-password"
        assert "s3cret-token" not in str(container) and "pw-value" not in str(container)


def test_a_token_is_required_and_an_external_redis_can_replace_the_bundled_one(helm):
    missing = render(helm)
    assert missing.returncode != 0 and "webhookToken" in missing.stderr
    rendered = objects(helm, "secrets.existingSecret=mine", "redis.enabled=false", "redis.url=redis://redis.example.org:6379/0")
    assert ("StatefulSet", "t-ducc-redis") not in rendered and ("Secret", "t-ducc-secrets") not in rendered
    worker = rendered[("Deployment", "t-ducc-worker")]["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "DUCC_REDIS_URL", "value": "redis://redis.example.org:6379/0"} in worker["env"]
