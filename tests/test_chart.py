"""The Helm chart, rendered by a real ``helm`` (fetched by ../shared/tools/get-helm.sh) and validated strictly
against Kubernetes' schemas (``kubernetes-validate``): it lints, and the objects it renders keep the promises
of the README as an operator reviews them: names not doubled, one beat, never two (Recreate), probes by role,
a Redis with a password that only ducc's pods may reach, secrets only as files, an optional Ingress."""

from __future__ import annotations

import subprocess
import tomllib

import kubernetes_validate
import pytest
import yaml

from tests.support.helm import CHART, REPO, container, helm_binary, objects, render

COMPONENTS = ("web", "worker", "beat")


@pytest.fixture(scope="module")
def helm():
    return helm_binary()


def test_chart_lints(helm):
    done = subprocess.run([str(helm), "lint", "--strict", str(CHART), "--set", "secrets.webhookToken=x"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("overrides", [
    ("secrets.webhookToken=x",),
    ("secrets.webhookToken=x", "ingress.enabled=true", "ingress.className=nginx",
     "ingress.tls[0].secretName=ducc-tls", "ingress.tls[0].hosts[0]=ducc.example.org"),
    ("secrets.existingSecret=mine", "redis.enabled=false", "redis.url=redis://redis.example.org:6379/0"),
    ("secrets.webhookToken=x", "secrets.registryUser=u", "secrets.registryPassword=p", "redis.networkPolicy.enabled=false"),
    ("secrets.webhookToken=x", "secrets.redisPassword=pw", "redis.enabled=false", "redis.url=redis://r:6379/0",
     "redis.passwordFromSecret=true"),
], ids=["defaults", "ingress", "external-redis", "registry-credentials", "external-redis-password"])
def test_every_rendered_object_passes_strict_schema_validation(helm, overrides):
    rendered = objects(helm, *overrides)
    version = kubernetes_validate.latest_version()
    for (kind, name), obj in rendered.items():
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{kind}/{name} is not a valid Kubernetes {version} object: {exc.message} at {list(exc.path)}")


@pytest.mark.parametrize(("release", "overrides", "prefix"), [
    ("ducc", (), "ducc"),
    ("ducc-prod", (), "ducc-prod"),
    ("t", (), "t-ducc"),
    ("t", ("fullnameOverride=unpacker",), "unpacker"),
], ids=["release-ducc", "release-containing-ducc", "other-release", "fullname-override"])
def test_object_names_are_the_release_and_the_component_never_doubled(helm, release, overrides, prefix):
    rendered = objects(helm, "secrets.webhookToken=x", *overrides, release=release)
    names = {name for _, name in rendered}
    expected = {f"{prefix}-{c}" for c in ("web", "worker", "beat", "redis", "secrets", "wishlist", "repository")}
    assert names == expected
    assert not any("ducc-ducc" in name for name in names)
    web = container(rendered[("Deployment", f"{prefix}-web")])
    url = next(e["value"] for e in web["env"] if e["name"] == "DUCC_REDIS_URL")
    assert url == f"redis://{prefix}-redis:6379/0"
    assert rendered[("Service", f"{prefix}-redis")]["spec"]["selector"]["app.kubernetes.io/component"] == "redis"


def test_the_default_image_is_the_containerfile_build_of_this_version(helm):
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == version, "the chart's appVersion is the ducc version it deploys"
    rendered = objects(helm, "secrets.webhookToken=x")
    for component in COMPONENTS:
        assert container(rendered[("Deployment", f"t-ducc-{component}")])["image"] == f"registry.example.org/ducc/ducc:{version}"
    custom = objects(helm, "secrets.webhookToken=x", "image.repository=reg.example.org/me/ducc", "image.tag=abc")
    assert container(custom[("Deployment", "t-ducc-web")])["image"] == "reg.example.org/me/ducc:abc"


def test_probes_by_role_redis_is_readiness_only_for_web_and_the_worker_pings_itself(helm):
    rendered = objects(helm, "secrets.webhookToken=x")
    web = container(rendered[("Deployment", "t-ducc-web")])
    assert web["readinessProbe"]["httpGet"]["path"] == "/healthz"  # checks Redis: no traffic without it
    assert web["livenessProbe"]["httpGet"]["path"] == "/livez", "web liveness must not depend on Redis"
    worker = container(rendered[("Deployment", "t-ducc-worker")])
    assert worker["args"][0] == "worker" and worker["args"][-2:] == ["--name", "ducc@$(POD_NAME)"]
    pod_name = next(e for e in worker["env"] if e["name"] == "POD_NAME")
    assert pod_name["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    ping = " ".join(worker["livenessProbe"]["exec"]["command"])
    assert "ducc worker --ping" in ping and '--name "ducc@$POD_NAME"' in ping
    beat = rendered[("Deployment", "t-ducc-beat")]["spec"]
    assert beat["replicas"] == 1 and beat["strategy"]["type"] == "Recreate"
    redis = container(rendered[("StatefulSet", "t-ducc-redis")])
    script = redis["command"][-1]
    assert "--appendonly yes" in script and "requirepass" in script
    assert "REDISCLI_AUTH" in " ".join(redis["readinessProbe"]["exec"]["command"])
    assert redis["livenessProbe"]["exec"]["command"] == ["redis-cli", "-p", "6379", "ping"]
    assert ("PersistentVolumeClaim", "t-ducc-repository") in rendered


def test_every_container_runs_unprivileged_with_resources(helm):
    rendered = objects(helm, "secrets.webhookToken=x")
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for kind, name in [("Deployment", f"t-ducc-{c}") for c in COMPONENTS] + [("StatefulSet", "t-ducc-redis")]:
        pod = rendered[(kind, name)]["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0, name
        assert pod["automountServiceAccountToken"] is False, name
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["capabilities"]["drop"] == ["ALL"] and sc["allowPrivilegeEscalation"] is False, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert c["resources"].get("requests") and c["resources"].get("limits", {}).get("memory"), name
    ducc_uid = rendered[("Deployment", "t-ducc-web")]["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert ducc_uid == values["podSecurityContext"]["runAsUser"] == 10001  # the Containerfile's user


def test_only_ducc_pods_of_the_release_may_reach_redis(helm):
    rendered = objects(helm, "secrets.webhookToken=x")
    policy = rendered[("NetworkPolicy", "t-ducc-redis")]["spec"]
    redis_pods = rendered[("StatefulSet", "t-ducc-redis")]["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"] == redis_pods
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    (peer,) = rule["from"]
    assert set(peer) == {"podSelector"}, "no namespaceSelector or ipBlock: pods of this namespace only"
    selector = peer["podSelector"]
    assert selector["matchLabels"] == {"app.kubernetes.io/name": "ducc", "app.kubernetes.io/instance": "t"}
    (components,) = selector["matchExpressions"]
    assert components == {"key": "app.kubernetes.io/component", "operator": "In", "values": list(COMPONENTS)}
    for component in COMPONENTS:  # each ducc pod matches the rule
        labels = rendered[("Deployment", f"t-ducc-{component}")]["spec"]["template"]["metadata"]["labels"]
        assert selector["matchLabels"].items() <= labels.items() and labels["app.kubernetes.io/component"] in components["values"]
    assert rule["ports"] == [{"protocol": "TCP", "port": "redis"}]
    off = objects(helm, "secrets.webhookToken=x", "redis.networkPolicy.enabled=false")
    assert ("NetworkPolicy", "t-ducc-redis") not in off


def test_secrets_reach_the_pods_only_as_files_or_references(helm):
    rendered = objects(helm, "secrets.webhookToken=s3cret-token", "secrets.registryUser=u", "secrets.redisPassword=redisPw0rd",
                       "secrets.registryPassword=pw-value", "secrets.registryHosts=reg.example.org")
    secret = rendered[("Secret", "t-ducc-secrets")]["stringData"]
    assert secret["redis-password"] == "redisPw0rd" and secret["webhook-token"] == "s3cret-token"
    for (kind, name), obj in rendered.items():
        if kind not in ("Deployment", "StatefulSet"):
            continue
        spec = str(obj["spec"])
        assert "s3cret-token" not in spec and "pw-value" not in spec and "redisPw0rd" not in spec, name
        if kind != "Deployment":
            continue
        env = {e["name"]: e for e in container(obj)["env"]}
        assert "DUCC_WEBHOOK_TOKEN" not in env and "DUCC_REGISTRY_PASSWORD" not in env
        assert env["DUCC_WEBHOOK_TOKEN_FILE"]["value"] == "/run/secrets/ducc/webhook-token"
        assert env["DUCC_REGISTRY_PASSWORD_FILE"]["value"] == "/run/secrets/ducc/registry-password"
        # The Redis password is a file of the mounted Secret too: nothing in the environment carries it.
        assert env["DUCC_REDIS_PASSWORD_FILE"]["value"] == "/run/secrets/ducc/redis-password"
        assert not any("secretKeyRef" in str(e.get("valueFrom")) for e in env.values()), name
        assert env["DUCC_REDIS_URL"]["value"] == "redis://t-ducc-redis:6379/0"
        secret_volume = next(v for v in obj["spec"]["template"]["spec"]["volumes"] if v["name"] == "secrets")
        assert secret_volume["secret"]["secretName"] == "t-ducc-secrets" and "items" not in secret_volume["secret"]
        mount = next(m for m in container(obj)["volumeMounts"] if m["name"] == "secrets")
        assert mount["mountPath"] == "/run/secrets/ducc" and mount["readOnly"] is True
    redis_volumes = rendered[("StatefulSet", "t-ducc-redis")]["spec"]["template"]["spec"]["volumes"]
    assert redis_volumes == [{"name": "password", "secret": {"secretName": "t-ducc-secrets", "defaultMode": 0o440,
                                                             "items": [{"key": "redis-password", "path": "redis-password"}]}}]


def test_a_redis_password_is_generated_when_none_is_given(helm):
    first = objects(helm, "secrets.webhookToken=x")[("Secret", "t-ducc-secrets")]["stringData"]["redis-password"]
    assert len(first) == 32 and first.isalnum()


def test_a_token_is_required_and_an_external_redis_can_replace_the_bundled_one(helm):
    missing = render(helm)
    assert missing.returncode != 0 and "webhookToken" in missing.stderr
    rendered = objects(helm, "secrets.existingSecret=mine", "redis.enabled=false", "redis.url=redis://redis.example.org:6379/0")
    assert ("StatefulSet", "t-ducc-redis") not in rendered and ("Secret", "t-ducc-secrets") not in rendered
    assert ("NetworkPolicy", "t-ducc-redis") not in rendered
    worker = container(rendered[("Deployment", "t-ducc-worker")])
    assert {"name": "DUCC_REDIS_URL", "value": "redis://redis.example.org:6379/0"} in worker["env"]
    assert "DUCC_REDIS_PASSWORD_FILE" not in {e["name"] for e in worker["env"]}
    # An external Redis with a password: from the Secret's file, like the bundled one's, never in the URL.
    protected = objects(helm, "secrets.webhookToken=x", "secrets.redisPassword=extPw0rd", "redis.enabled=false",
                        "redis.url=redis://redis.example.org:6379/0", "redis.passwordFromSecret=true")
    assert protected[("Secret", "t-ducc-secrets")]["stringData"]["redis-password"] == "extPw0rd"
    env = {e["name"]: e.get("value") for e in container(protected[("Deployment", "t-ducc-worker")])["env"]}
    assert env["DUCC_REDIS_PASSWORD_FILE"] == "/run/secrets/ducc/redis-password" and "extPw0rd" not in str(env)
    no_password = render(helm, "secrets.webhookToken=x", "redis.enabled=false", "redis.url=redis://r:6379/0",
                         "redis.passwordFromSecret=true")
    assert no_password.returncode != 0 and "secrets.redisPassword" in no_password.stderr


def test_the_ingress_is_off_by_default_and_routes_to_the_web_service_when_enabled(helm):
    assert not any(kind == "Ingress" for kind, _ in objects(helm, "secrets.webhookToken=x"))
    rendered = objects(helm, "secrets.webhookToken=x", "ingress.enabled=true", "ingress.className=nginx",
                       "ingress.hosts[0].host=ducc.example.org", "ingress.hosts[0].paths[0].path=/",
                       "ingress.tls[0].secretName=ducc-tls", "ingress.tls[0].hosts[0]=ducc.example.org")
    ingress = rendered[("Ingress", "t-ducc-web")]["spec"]
    assert ingress["ingressClassName"] == "nginx"
    assert ingress["tls"] == [{"secretName": "ducc-tls", "hosts": ["ducc.example.org"]}]
    (rule,) = ingress["rules"]
    assert rule["host"] == "ducc.example.org"
    (path,) = rule["http"]["paths"]
    assert path["pathType"] == "Prefix" and path["backend"]["service"] == {"name": "t-ducc-web", "port": {"name": "http"}}
    service_ports = rendered[("Service", "t-ducc-web")]["spec"]["ports"]
    assert any(p["name"] == "http" for p in service_ports)
