"""The ``ducc`` command as an operator runs it: a real process, a real registry, a real root."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ducc import layout
from ducc.model.reference import Reference
from tests.support.images import File, ImageSpec, Layer, push_image
from tests.support.proxy import FaultProxy


def ducc(*args: str, root: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "DUCC_ROOT": str(root), "DUCC_CACHE_DIR": "off", "DUCC_RETRY_ATTEMPTS": "2", **(env or {})}
    return subprocess.run([sys.executable, "-m", "ducc", *args], env=full_env, capture_output=True, text=True, timeout=300)


def spec(content: bytes) -> ImageSpec:
    return ImageSpec(layers=[Layer([File("content", content)])], cmd=["/bin/true"])


def test_help_lists_every_command():
    done = subprocess.run([sys.executable, "-m", "ducc", "--help"], capture_output=True, text=True)
    assert done.returncode == 0
    for command in ("convert", "sync", "check-wishlist", "list", "inspect"):
        assert command in done.stdout
    assert "examples:" in done.stdout


def test_convert_publishes_and_prints_the_path(client, unique_ref, root):
    ref = unique_ref()
    push_image(client, ref, spec(b"cli"))
    done = ducc("convert", str(ref), root=root)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\t")[0] == "published"
    assert (root / layout.tag_link(ref) / "content").read_bytes() == b"cli"
    again = ducc("convert", str(ref), root=root)
    assert again.stdout.startswith("unchanged")


def test_convert_reports_each_failure_and_still_converts_the_others(client, unique_ref, root):
    good = unique_ref("good")
    push_image(client, good, spec(b"good"))
    missing = unique_ref("missing")
    done = ducc("convert", str(missing), str(good), root=root)
    assert done.returncode == 1
    assert "1 of 2 failed" in done.stderr and "not found" in done.stderr
    assert (root / layout.tag_link(good) / "content").read_bytes() == b"good"
    # A reference that does not parse is a usage error of the whole command, found before any work
    # (tests/integration/test_hostile_inputs.py).


def test_sync_expands_tag_globs_and_fails_at_the_end_for_broken_entries(client, unique_ref, root, tmp_path):
    ref = unique_ref("1.0")
    for tag in ("1.0", "1.1", "1.10", "2.0", "1.1-rc1"):
        push_image(client, ref.with_tag(tag), spec(tag.encode()))
    wishlist = tmp_path / "wishlist.yaml"
    wishlist.write_text(f"""
version: 1
user: tester
cvmfs_repo: test.example.org
input:
  - 'https://{ref.registry}/{ref.repository}:1.?'
  - image: '{ref.registry}/{ref.repository}:1.1*'
    exclude: ['*-rc*']
  - '{ref.registry}/{ref.repository}-does-not-exist:1'
""")
    checked = ducc("check-wishlist", str(wishlist), root=root)
    assert checked.returncode == 1  # the missing repository is reported
    listed = [line for line in checked.stdout.splitlines() if line.startswith(f"  {ref.registry}/{ref.repository}:")]
    assert len(listed) == 3  # 1.0, 1.1, 1.10 (1.1 once, 1.1-rc1 excluded, 2.0 not matched)
    assert "does-not-exist" in checked.stderr
    done = ducc("sync", str(wishlist), root=root)
    assert done.returncode == 1
    assert "3 published" in done.stdout and "1 failed" in done.stdout
    published = sorted(p.name for p in (root / ref.registry / ref.repository).parent.iterdir())
    name = ref.repository.rsplit("/", 1)[1]
    assert published == [f"{name}:1.0", f"{name}:1.1", f"{name}:1.10"]
    again = ducc("sync", str(wishlist), root=root)
    assert "3 unchanged" in again.stdout


def test_check_wishlist_rejects_an_invalid_file_with_the_entry_named(tmp_path, root):
    wishlist = tmp_path / "bad.yaml"
    wishlist.write_text("version: 1\ninput:\n  - ok/image:1\n  - 'Bad Image'\n")
    done = ducc("check-wishlist", str(wishlist), "--no-expand", root=root)
    assert done.returncode == 2 and "input #2" in done.stderr  # a wishlist that does not validate: a usage error


def test_inspect_reports_config_layers_and_paths(client, unique_ref, root):
    ref = unique_ref()
    push_image(client, ref, ImageSpec(layers=[Layer([File("x", b"x")])], entrypoint=["/bin/app"], cmd=["--help"],
                                      working_dir="/work", user="1000:1000", labels={"org.example": "yes"}))
    assert ducc("convert", str(ref), root=root).returncode == 0
    done = ducc("inspect", str(ref), root=root)
    info = json.loads(done.stdout)
    assert info["entrypoint"] == ["/bin/app"] and info["cmd"] == ["--help"]
    assert info["working_dir"] == "/work" and info["user"] == "1000:1000" and info["labels"] == {"org.example": "yes"}
    assert Path(info["path"]).resolve() == Path(info["flat"]).resolve()
    assert all(Path(layer["path"]).is_dir() for layer in info["layers"])
    assert ".singularity.d/runscript" in info["added_by_ducc"] and "etc/hosts" in info["added_by_ducc"]
    listed = ducc("list", root=root)
    assert str(layout.tag_link(ref)) in listed.stdout


def test_registry_outage_exits_non_zero_with_a_clear_message(registry, unique_ref, root):
    proxy = FaultProxy(registry.host)
    try:
        proxy.add("status", "/v2/", method=None, times=-1, status=503)
        ref = Reference(proxy.host, unique_ref().repository, "v1")
        done = ducc("convert", str(ref), root=root, env={"DUCC_RETRY_ATTEMPTS": "2"})
        assert done.returncode == 1
        assert "HTTP 503" in done.stderr
        assert "Traceback" not in done.stderr
    finally:
        proxy.stop()


@pytest.mark.parametrize("argv", [["convert"], ["convert", "x", "--platform", "linux"], ["nope"]],
                         ids=["no-image", "bad-platform", "unknown-command"])
def test_usage_errors_exit_2_or_explain(argv, root):
    done = ducc(*argv, root=root)
    assert done.returncode != 0 and "Traceback" not in done.stderr


def test_credentials_from_a_docker_config_file(auth_registry, auth_client, root, tmp_path):
    import base64

    ref = Reference.parse(f"{auth_registry.host}/team/from-docker-config:1")
    push_image(auth_client, ref, spec(b"docker-config"))
    docker = tmp_path / "docker"
    docker.mkdir()
    (docker / "config.json").write_text(json.dumps(
        {"auths": {auth_registry.host: {"auth": base64.b64encode(b"ducc:s3cr3t-pw").decode()}}}))
    done = ducc("-v", "convert", str(ref), root=root, env={"DOCKER_CONFIG": str(docker)})
    assert done.returncode == 0, done.stderr
    assert "s3cr3t-pw" not in done.stderr + done.stdout
    without = ducc("convert", str(ref), "--force", root=tmp_path / "other", env={"DOCKER_CONFIG": str(tmp_path)})
    assert without.returncode == 1 and "requires credentials" in without.stderr


def test_credentials_from_the_environment_and_a_password_file(auth_registry, auth_client, root, tmp_path):
    ref = Reference.parse(f"{auth_registry.host}/team/from-env:1")
    push_image(auth_client, ref, spec(b"env"))
    secret = tmp_path / "password"
    secret.write_text("s3cr3t-pw\n")
    env = {"DUCC_REGISTRY_USER": "ducc", "DUCC_REGISTRY_PASSWORD_FILE": str(secret), "DUCC_REGISTRY_HOSTS": auth_registry.host,
           "DOCKER_CONFIG": str(tmp_path)}
    done = ducc("-v", "convert", str(ref), root=root, env=env)
    assert done.returncode == 0, done.stderr
    assert "s3cr3t-pw" not in done.stderr + done.stdout
    elsewhere = {**env, "DUCC_REGISTRY_HOSTS": "other.example.org"}
    refused = ducc("convert", str(ref), root=tmp_path / "other", env=elsewhere)
    assert refused.returncode == 1  # the password is not offered to a host it was not given for


def test_log_lines_are_never_glued_onto_the_terminal_progress_line(client, unique_ref, proxy, root):
    """On a terminal (a real pty) ducc keeps one live progress line; a log line written meanwhile (a retry
    of another layer here) starts on a line of its own, and the progress line comes back after it."""
    import pty
    import re
    import select

    from tests.support.proxy import via

    ref = via(proxy, unique_ref())
    built = push_image(client, ref, ImageSpec(layers=[Layer([File("slow", os.urandom(600_000))]),
                                                      Layer([File("other", os.urandom(50_000))])]))
    proxy.add("slow", f"/blobs/{built.layer_digests[0]}", keep_bytes=30_000)  # about 2 s of progress
    proxy.add("status", f"/blobs/{built.layer_digests[1]}", times=3, status=503)  # retries logged meanwhile
    master, terminal = pty.openpty()
    env = {**os.environ, "DUCC_ROOT": str(root), "DUCC_CACHE_DIR": "off", "DUCC_RETRY_ATTEMPTS": "5"}
    process = subprocess.Popen([sys.executable, "-m", "ducc", "convert", str(ref)], env=env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=terminal)
    os.close(terminal)
    output = b""
    while True:
        ready, _, _ = select.select([master], [], [], 120)
        assert ready, "ducc convert did not finish"
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the terminal's other end is closed
            break
        if not chunk:
            break
        output += chunk
    os.close(master)
    assert process.wait(60) == 0, output.decode(errors="replace")
    text = output.decode(errors="replace")
    logs = list(re.finditer(r"\d\d:\d\d:\d\d (INFO|WARNING|ERROR) ", text))
    assert logs and "Traceback" not in text
    for match in logs:
        before = text[: match.start()]
        assert before == "" or before.endswith(("\n", "\x1b[K")), f"log line glued onto {before[-80:]!r}"
    retries = [m for m in logs if text[m.end():].startswith("blob ") and "retrying" in text[m.end():].split("\n")[0]]
    shown = [m for m in retries if " MB" in text[: m.start()]]
    assert shown, "no retry was logged while the progress line was shown: the test did not exercise it"


def test_a_run_that_finds_nothing_to_do_still_removes_a_crashed_runs_staging(client, unique_ref, proxy, root):
    """``ducc convert`` killed with SIGKILL mid-download leaves staging debris; the next run, although its
    image is already current (``unchanged``: it takes no lock and builds nothing), removes it."""
    import signal
    import time

    from tests.support.proxy import via

    current = unique_ref("current")
    push_image(client, current, spec(b"already here"))
    assert ducc("convert", str(current), root=root).returncode == 0
    slow = via(proxy, unique_ref("slow"))
    built = push_image(client, slow, ImageSpec(layers=[Layer([File("big", os.urandom(2_000_000))])]))
    proxy.add("slow", f"/blobs/{built.layer_digests[0]}", keep_bytes=20_000)
    env = {**os.environ, "DUCC_ROOT": str(root), "DUCC_CACHE_DIR": "off"}
    crashing = subprocess.Popen([sys.executable, "-m", "ducc", "convert", str(slow)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staging = root / layout.STAGING
    deadline = time.monotonic() + 60
    while not any((p / built.layer_digests[0].hex / "layerfs").is_dir() for p in staging.glob("*") if p.is_dir()):
        assert time.monotonic() < deadline and crashing.poll() is None, "the slow conversion never started unpacking"
        time.sleep(0.05)
    crashing.send_signal(signal.SIGKILL)
    crashing.wait(30)
    debris = [p for p in staging.iterdir() if p.is_dir()]
    assert debris, "the killed run left nothing to clean"

    again = ducc("convert", str(current), root=root)
    assert again.returncode == 0 and again.stdout.startswith("unchanged"), again.stderr
    assert [p for p in staging.iterdir() if p.is_dir()] == []
    assert "removed 1 staging directories left by interrupted runs" in again.stderr
    assert not (root / layout.tag_link(slow)).exists()
